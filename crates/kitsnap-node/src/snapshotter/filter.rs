//! containerd's filter syntax, as used by `List`: a filter is selectors joined by `,`
//! (all must hold); several filters are alternatives. A selector is a field path
//! (`name`, `parent`, `kind`, `labels."k"` or `labels.k`) with an optional operator
//! (`==`, `!=`, `~=` regular expression) and value (bare or quoted); a bare field path
//! means "is present and not empty".

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Re(regex_lite::Regex),
}

#[derive(Clone, Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Clone, Debug)]
pub struct Filter {
    alternatives: Vec<Vec<Selector>>,
}

/// The fields a snapshot exposes to filters.
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.i += 1;
        }
    }
    fn quoted(&mut self) -> Result<String, String> {
        let q = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'\\' {
                if let Some(n) = self.peek() {
                    out.push(n);
                    self.i += 1;
                }
            } else if c == q {
                return String::from_utf8(out).map_err(|_| "invalid UTF-8".into());
            } else {
                out.push(c);
            }
        }
        Err("unterminated quoted string".into())
    }
    fn field(&mut self) -> Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => self.quoted(),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'/'
                }) {
                    self.i += 1;
                }
                if start == self.i {
                    return Err(format!("expected a field at offset {}", self.i));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
            }
        }
    }
    fn value(&mut self) -> Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => self.quoted(),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != b',') {
                    self.i += 1;
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.i])
                    .trim()
                    .to_string())
            }
        }
    }
}

fn parse_one(s: &str) -> Result<Vec<Selector>, String> {
    let mut lx = Lexer {
        s: s.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        let mut path = vec![lx.field()?];
        while lx.peek() == Some(b'.') {
            lx.i += 1;
            path.push(lx.field()?);
        }
        lx.skip_ws();
        let rest = &lx.s[lx.i..];
        let op = if rest.starts_with(b"==") {
            lx.i += 2;
            Op::Eq(lx.value()?)
        } else if rest.starts_with(b"!=") {
            lx.i += 2;
            Op::Ne(lx.value()?)
        } else if rest.starts_with(b"~=") {
            lx.i += 2;
            let v = lx.value()?;
            Op::Re(
                regex_lite::Regex::new(&v)
                    .map_err(|e| format!("bad regular expression {v:?}: {e}"))?,
            )
        } else {
            Op::Present
        };
        out.push(Selector { path, op });
        lx.skip_ws();
        match lx.peek() {
            None => return Ok(out),
            Some(b',') => lx.i += 1,
            Some(c) => return Err(format!("unexpected {:?} at offset {}", c as char, lx.i)),
        }
    }
}

impl Filter {
    /// Parses the `filters` of a List request; none or only empty ones match everything.
    pub fn parse(filters: &[String]) -> Result<Filter, String> {
        let alternatives = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_one(f).map_err(|e| format!("filter {f:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter { alternatives })
    }

    pub fn matches(&self, f: &Fields<'_>) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|sels| sels.iter().all(|s| s.matches(f)))
    }
}

/// An indexed lookup that yields every snapshot one alternative of a filter can match
/// (the filter itself is still applied to what it yields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hint {
    /// `name==N`
    Name(String),
    /// `parent==P`
    Parent(String),
    /// `parent==P` with `labels."<indexed label>"==V` (V not empty).
    ParentLabel { parent: String, value: String },
}

impl Filter {
    /// One lookup per alternative, or `None` when some alternative (or an empty filter,
    /// which matches everything) needs every record read. `indexed_label` is the one
    /// label indexed together with the parent.
    pub fn hints(&self, indexed_label: &str) -> Option<Vec<Hint>> {
        if self.alternatives.is_empty() {
            return None;
        }
        self.alternatives
            .iter()
            .map(|sels| {
                let eq = |field: &str| {
                    sels.iter().find_map(|s| match (&s.op, s.path.as_slice()) {
                        (Op::Eq(v), [f]) if f == field => Some(v.clone()),
                        _ => None,
                    })
                };
                let label = sels.iter().find_map(|s| match &s.op {
                    Op::Eq(v)
                        if !v.is_empty()
                            && s.path.len() >= 2
                            && s.path[0] == "labels"
                            && s.path[1..].join(".") == indexed_label =>
                    {
                        Some(v.clone())
                    }
                    _ => None,
                });
                if let Some(n) = eq("name") {
                    return Some(Hint::Name(n));
                }
                let parent = eq("parent")?;
                Some(match label {
                    Some(value) => Hint::ParentLabel { parent, value },
                    None => Hint::Parent(parent),
                })
            })
            .collect()
    }
}

impl Selector {
    fn matches(&self, f: &Fields<'_>) -> bool {
        let value: Option<&str> = match self.path.first().map(String::as_str) {
            Some("name") if self.path.len() == 1 => Some(f.name),
            Some("parent") if self.path.len() == 1 => Some(f.parent),
            Some("kind") if self.path.len() == 1 => Some(f.kind),
            Some("labels") if self.path.len() >= 2 => {
                f.labels.get(&self.path[1..].join(".")).map(String::as_str)
            }
            _ => None,
        };
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Eq(want) => value.unwrap_or("") == want && (value.is_some() || want.is_empty()),
            Op::Ne(want) => value.unwrap_or("") != want,
            Op::Re(re) => value.is_some_and(|v| re.is_match(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_filters() {
        let mut labels = BTreeMap::new();
        labels.insert(
            "containerd.io/snapshot.ref".to_string(),
            "sha256:abc".to_string(),
        );
        labels.insert("team".to_string(), "ml".to_string());
        let f = Fields {
            name: "default/3/x",
            parent: "default/1/p",
            kind: "committed",
            labels: &labels,
        };
        let ok = |s: &str| Filter::parse(&[s.to_string()]).unwrap().matches(&f);
        assert!(ok(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/1/p""#
        ));
        assert!(!ok(
            r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="other""#
        ));
        assert!(ok("kind==committed"));
        assert!(ok("labels.team"));
        assert!(!ok("labels.missing"));
        assert!(ok("name~=^default/"));
        assert!(ok("kind!=active"));
        assert!(ok(r#"parent==default/1/p"#));
        let any = Filter::parse(&["kind==active".into(), "labels.team==ml".into()]).unwrap();
        assert!(any.matches(&f));
        assert!(Filter::parse(&[]).unwrap().matches(&f));
        assert!(Filter::parse(&["labels.\"unterminated".into()]).is_err());
    }

    #[test]
    fn index_hints() {
        let t = "containerd.io/snapshot.ref";
        let h = |fs: &[&str]| {
            Filter::parse(&fs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .hints(t)
        };
        assert_eq!(
            h(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p""#]),
            Some(vec![Hint::ParentLabel {
                parent: "p".into(),
                value: "sha256:abc".into()
            }])
        );
        assert_eq!(
            h(&["labels.containerd.io/snapshot.ref==x,parent==\"\""]),
            Some(vec![Hint::ParentLabel {
                parent: "".into(),
                value: "x".into()
            }])
        );
        assert_eq!(
            h(&["name==p", "parent==q,kind==view"]),
            Some(vec![Hint::Name("p".into()), Hint::Parent("q".into())])
        );
        assert_eq!(
            h(&["parent==p,labels.l"]),
            Some(vec![Hint::Parent("p".into())])
        );
        // Any alternative without an indexed equality means a scan.
        assert_eq!(h(&["name==p", "kind==view"]), None);
        assert_eq!(h(&["parent!=p"]), None);
        assert_eq!(h(&[r#"labels."containerd.io/snapshot.ref"==x"#]), None);
        assert_eq!(h(&[]), None);
    }
}
