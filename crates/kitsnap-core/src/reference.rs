//! ModelKit references: `[registry/]repository[:tag][@digest]`, as in the distribution spec.
//! A reference without a registry lives in the local store under `localhost`, as in KitOps.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const DEFAULT_REGISTRY: &str = "localhost";
pub const DEFAULT_TAG: &str = "latest";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `registry/repository`, the key the local store files tags under.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository, naming the manifest `digest` (and no tag).
    pub fn at_digest(&self, digest: &Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest.clone()),
            ..self.clone()
        }
    }

    /// The tag, or `latest` when neither tag nor digest was given.
    pub fn tag_or_default(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }
}

fn invalid(s: &str, msg: &str) -> Error {
    Error::InvalidReference(s.to_string(), msg.to_string())
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    if c.is_empty() {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid(s, "empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid(s, &format!("invalid tag {t:?}")));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(invalid(s, "invalid registry host"));
        }
        // `name:v/1` would otherwise be the repository `1` on a host `name` at port `v`.
        if let Some((_, port)) = registry
            .rsplit_once(':')
            .filter(|_| !registry.ends_with(']'))
            && !port.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid(
                s,
                &format!(
                    "{registry:?} is not a registry host (its port is not a number), and a tag cannot contain '/'"
                ),
            ));
        }
        if repository.is_empty() {
            return Err(invalid(s, "missing repository name"));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                s,
                "repository names use lowercase letters, digits and separators (. _ __ -), with / between parts",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r: Reference = "mymodel:v1".parse().unwrap();
        assert_eq!(r.to_string(), "localhost/mymodel:v1");
        let r: Reference = "ghcr.io/org/model".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("ghcr.io", "org/model")
        );
        assert_eq!(r.tag_or_default(), Some("latest"));
        let r: Reference = "127.0.0.1:5000/a/b:c-1.0".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.tag.as_deref(), Some("c-1.0"));
        let d = Digest::of(b"x");
        let r: Reference = format!("org/m@{d}").parse().unwrap();
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.tag_or_default(), None);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "UPPER:v1",
            "a//b",
            "a:b:c",
            "a:",
            "-a",
            "a@sha256:12",
            "a/b:t@x",
            "name:v/1",
            "host:port/a:b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad} accepted");
        }
    }
}
