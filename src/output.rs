//! Standard output for the verbs. A reader that goes away (`kitsnap list | head -1`) ends
//! the command quietly, as with other Unix tools, but only when it is *stdout* that
//! closed: SIGPIPE stays ignored, so a daemon dropping its socket is an error like any
//! other instead of killing the CLI silently.

use std::io::{self, Write};

/// Marks a write error as stdout's reader having gone away.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for StdoutClosed {}

pub struct Stdout(io::StdoutLock<'static>);

/// The locked standard output.
pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Whether `e` is stdout's reader having gone away (then the command ends quietly).
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<StdoutClosed>())
            || c.is::<StdoutClosed>()
    })
}

/// `--format`: `table` (aligned columns, the default), `json` (indented, one document), or
/// any other text as a Go template run once per row, as kit's and docker's `--format`.
/// Template fields are the JSON keys with the first letter in capitals (`{{.Digest}}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Template(String),
}

impl std::str::FromStr for Format {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Format, Self::Err> {
        Ok(match s {
            "" | "table" => Format::Table,
            "json" => Format::Json,
            t => Format::Template(t.to_string()),
        })
    }
}

/// Rows printed in `format`: `json` keeps the rows' field order; `table` gets `columns` as
/// (header, JSON key). Templates have docker's `join` and `json` functions besides Go's.
pub fn print_rows<T: serde::Serialize>(
    format: &Format,
    rows: &[T],
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut out = stdout();
    match format {
        Format::Json => {
            writeln!(out, "{}", go_json_pretty(rows)?)?;
        }
        Format::Template(t) => {
            let mut tpl = gtmpl::Template::default();
            tpl.add_func("join", tpl_join);
            tpl.add_func("json", tpl_json);
            tpl.parse(t.as_str())
                .map_err(|e| anyhow::anyhow!("--format {t:?}: not a Go template: {e}"))?;
            for row in rows {
                let ctx = gtmpl::Context::from(template_value(&serde_json::to_value(row)?, true));
                let s = tpl
                    .render(&ctx)
                    .map_err(|e| anyhow::anyhow!("--format {t:?}: {e}"))?;
                out.write_all(s.as_bytes())?;
                if !t.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
        Format::Table => {
            let mut cells = Vec::new();
            for r in rows {
                let v = serde_json::to_value(r)?;
                cells.push(columns.iter().map(|(_, k)| cell(&v[*k])).collect());
            }
            let headers: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
            write_table(&mut out, &headers, &cells)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `{{join .Tags ","}}`, as in docker's templates.
fn tpl_join(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    match args {
        [gtmpl::Value::Array(a), sep] => Ok(gtmpl::Value::String(
            a.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(&sep.to_string()),
        )),
        _ => Err(gtmpl::FuncError::Generic(
            "join takes a list and a separator".into(),
        )),
    }
}

/// `{{json .}}`: the value as compact JSON, as in docker's templates.
fn tpl_json(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    fn conv(v: &gtmpl::Value) -> serde_json::Value {
        use gtmpl::Value as G;
        match v {
            G::Bool(b) => (*b).into(),
            G::String(s) => s.clone().into(),
            G::Number(n) => n
                .as_i64()
                .map(serde_json::Value::from)
                .or_else(|| n.as_f64().map(serde_json::Value::from))
                .unwrap_or_default(),
            G::Array(a) => a.iter().map(conv).collect(),
            G::Object(o) | G::Map(o) => o.iter().map(|(k, v)| (k.clone(), conv(v))).collect(),
            _ => serde_json::Value::Null,
        }
    }
    match args {
        [v] => Ok(gtmpl::Value::String(conv(v).to_string())),
        _ => Err(gtmpl::FuncError::ExactlyXArgs("json".into(), 1)),
    }
}

/// Columns sized to their content, three spaces apart (Go's tabwriter as kit sets it up).
pub fn write_table(
    out: &mut impl Write,
    headers: &[String],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> io::Result<()> {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths[i] - c.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{s}")
    };
    line(out, headers)?;
    for r in rows {
        line(out, r)?;
    }
    Ok(())
}

fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// JSON indented by two spaces with `<`, `>` and `&` escaped, as Go's encoding/json writes
/// it (kit's `--format json`).
pub fn go_json_pretty<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
    let s = serde_json::to_string_pretty(v)?;
    Ok(s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

fn template_value(v: &serde_json::Value, top: bool) -> gtmpl::Value {
    use gtmpl::Value as G;
    match v {
        serde_json::Value::Null => G::Nil,
        serde_json::Value::Bool(b) => G::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => G::from(u),
            (_, Some(i), _) => G::from(i),
            (_, _, Some(f)) => G::from(f),
            _ => G::Nil,
        },
        serde_json::Value::String(s) => G::String(s.clone()),
        serde_json::Value::Array(a) => {
            G::Array(a.iter().map(|x| template_value(x, false)).collect())
        }
        serde_json::Value::Object(o) => G::Object(
            o.iter()
                .map(|(k, x)| {
                    let key = if top { capitalise(k) } else { k.clone() };
                    (key, template_value(x, false))
                })
                .collect(),
        ),
    }
}

fn capitalise(k: &str) -> String {
    let mut c = k.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fields_are_capitalised() {
        let row = serde_json::json!({"repo": "m", "tags": ["v1", "v2"], "size": "1.0 KiB"});
        let mut t = gtmpl::Template::default();
        t.add_func("join", tpl_join);
        t.parse("{{.Repo}} {{range .Tags}}{{.}};{{end}} {{.Size}} {{join .Tags \",\"}}")
            .expect("parse");
        let s = t
            .render(&gtmpl::Context::from(template_value(&row, true)))
            .expect("render");
        assert_eq!(s, "m v1;v2; 1.0 KiB v1,v2");
    }

    #[test]
    fn table_columns_fit_their_content() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A".into(), "BB".into()],
            &[vec!["long-value".into(), "x".into()]],
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "A            BB\nlong-value   x\n"
        );
    }

    #[test]
    fn json_escapes_like_go() {
        let s = go_json_pretty(&serde_json::json!({"a": "<none>"})).expect("json");
        assert_eq!(s, "{\n  \"a\": \"\\u003cnone\\u003e\"\n}");
    }
}
