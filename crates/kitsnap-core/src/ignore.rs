//! `.kitignore`: Docker-style ignore patterns (`*`, `?`, `**`, `!` exceptions; the last
//! matching line wins; a pattern that matches a directory covers everything below it).

use globset::{GlobBuilder, GlobMatcher};

use crate::error::{Error, Result};

pub const IGNORE_FILE: &str = ".kitignore";

#[derive(Clone, Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<(GlobMatcher, bool)>,
}

impl IgnoreRules {
    pub fn parse(text: &str) -> Result<IgnoreRules> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            let pat = pat.trim_end_matches('/');
            if pat.is_empty() {
                continue;
            }
            let glob = GlobBuilder::new(pat)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Ignore(line.to_string(), e.to_string()))?;
            rules.push((glob.compile_matcher(), !negate));
        }
        Ok(IgnoreRules { rules })
    }

    /// Whether a path relative to the context directory (with `/` separators) is ignored.
    pub fn is_ignored(&self, rel: &str) -> bool {
        let mut ignored = false;
        for (m, ignore) in &self.rules {
            if matches_self_or_parent(m, rel) {
                ignored = *ignore;
            }
        }
        ignored
    }

    /// With `!` exceptions present, an ignored directory may still hold kept files, so the
    /// walk must descend into it.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, ignore)| !ignore)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn matches_self_or_parent(m: &GlobMatcher, rel: &str) -> bool {
    if m.is_match(rel) {
        return true;
    }
    rel.match_indices('/').any(|(i, _)| m.is_match(&rel[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let r =
            IgnoreRules::parse("# comment\n*.tmp\n/build\ndata/**/cache\n!keep.tmp\n\n./logs/\n")
                .unwrap();
        assert!(r.is_ignored("a.tmp"));
        assert!(!r.is_ignored("sub/a.tmp")); // `*` does not cross `/`
        assert!(!r.is_ignored("keep.tmp"));
        assert!(r.is_ignored("build"));
        assert!(r.is_ignored("build/x/y.bin"));
        assert!(r.is_ignored("data/a/b/cache/file"));
        assert!(r.is_ignored("logs/today.txt"));
        assert!(!r.is_ignored("models/m.bin"));
        assert!(r.has_exceptions());
        assert!(IgnoreRules::parse("[").is_err());
    }
}
