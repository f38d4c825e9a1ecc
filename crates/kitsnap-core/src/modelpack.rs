//! ModelPack (CNCF model-spec v1) specifics: the per-file metadata annotation
//! (`org.cncf.model.file.metadata+json`) in the form modctl writes it, Go's `time.Time` JSON
//! form it carries, and a Kitfile made from a ModelPack's config and layers for a ModelPack
//! that carries none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kitfile::{self, Kitfile};
use crate::layers;
use crate::oci::{self, Descriptor, LayerKind, Manifest, ModelPackConfig};

/// model-spec's `FileMetadata`, in Go's field order (what modctl's `json.Marshal` writes).
/// Read as Go's decoder reads it: absent fields are zero, unknown ones ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMetadata {
    #[serde(default)]
    pub name: String,
    /// Permission bits (Go's `FileMode.Perm()`, so never setuid, setgid or sticky).
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub size: i64,
    /// Go's `time.Time` as JSON: RFC 3339 with up to nanoseconds; `null` is Go's zero time.
    #[serde(default)]
    pub mtime: Option<String>,
    /// tar's type flag: 0 (or `'0'`) for a regular file.
    #[serde(default)]
    pub typeflag: u8,
}

impl FileMetadata {
    /// The metadata modctl records for a regular file (its `getFileMetadata`): base name,
    /// permission bits, owner, size and modification time. `clamp` (SOURCE_DATE_EPOCH)
    /// caps the modification time, as reproducible builds do.
    pub fn for_file(name: &str, meta: &std::fs::Metadata, clamp: Option<i64>) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let (mut secs, mut nanos) = (meta.mtime(), meta.mtime_nsec() as u32);
        if let Some(c) = clamp.filter(|c| (secs, nanos) > (*c, 0)) {
            (secs, nanos) = (c, 0);
        }
        let mtime = format_go_time(secs, nanos).ok_or_else(|| {
            Error::Invalid(format!(
                "{name}: modification time {secs} is outside the years 0 to 9999, which Go's time JSON (and model-spec file metadata) cannot hold"
            ))
        })?;
        Ok(FileMetadata {
            name: name.to_string(),
            mode: meta.mode() & 0o777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len() as i64,
            mtime: Some(mtime),
            typeflag: 0,
        })
    }

    /// The metadata annotation of a layer (current or legacy key), parsed and checked;
    /// None without one. The error says what is wrong, for the caller to name the layer.
    pub fn of(desc: &Descriptor) -> std::result::Result<Option<FileMetadata>, String> {
        let Some((key, json)) = oci::layer_file_metadata(desc) else {
            return Ok(None);
        };
        let bad = |e: String| format!("malformed {key} annotation ({e}): {json}");
        let m: FileMetadata = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        m.modified().map_err(bad)?;
        Ok(Some(m))
    }

    /// The permission bits to give the file; None for Go's zero mode (left as written).
    pub fn permissions(&self) -> Option<u32> {
        Some(self.mode & 0o777).filter(|m| *m != 0)
    }

    /// The modification time as seconds and nanoseconds since the Unix epoch; None when
    /// absent (Go's zero time, as modctl skips it).
    pub fn mtime_since_epoch(&self) -> std::result::Result<Option<(i64, u32)>, String> {
        let Some(s) = self.mtime.as_deref() else {
            return Ok(None);
        };
        let (secs, nanos) = parse_go_time(s).map_err(|e| format!("mtime {s:?}: {e}"))?;
        Ok((secs != GO_ZERO_TIME).then_some((secs, nanos)))
    }

    /// The modification time; None when absent (Go's zero time, as modctl skips it).
    pub fn modified(&self) -> std::result::Result<Option<SystemTime>, String> {
        let Some((secs, nanos)) = self.mtime_since_epoch()? else {
            return Ok(None);
        };
        let s = self.mtime.as_deref().unwrap_or_default();
        let t = if secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(nanos as u64)))
        };
        t.map(Some)
            .ok_or_else(|| format!("mtime {s:?} is out of range"))
    }

    /// A regular file by its type flag (Go's `TypeReg` is `'0'`; modctl writes 0).
    pub fn is_regular(&self) -> bool {
        self.typeflag == 0 || self.typeflag == b'0'
    }

    /// The annotation value, as Go's `json.Marshal` writes it.
    pub fn to_json(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&oci::to_go_json(self)?).into_owned())
    }
}

/// Seconds from the Unix epoch to Go's zero `time.Time` (0001-01-01T00:00:00Z).
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count from 1970-01-01: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    days_from_civil(
        if m == 12 { y + 1 } else { y },
        if m == 12 { 1 } else { m + 1 },
        1,
    ) - days_from_civil(y, m, 1)
}

/// Go's `time.Time` JSON form (RFC 3339, nanoseconds without trailing zeros) in UTC:
/// `2021-03-04T05:06:07.123456789Z`. None outside the years 0 to 9999, which Go refuses.
pub fn format_go_time(secs: i64, nanos: u32) -> Option<String> {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Some(s)
}

/// Parses RFC 3339 as Go's `time.Time` JSON decoding accepts it (any offset, fractional
/// seconds): seconds from the Unix epoch and nanoseconds.
pub fn parse_go_time(s: &str) -> std::result::Result<(i64, u32), String> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> std::result::Result<i64, String> {
        let part = b
            .get(from..from + len)
            .filter(|p| p.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| "not an RFC 3339 time".to_string())?;
        Ok(part.iter().fold(0, |n, c| n * 10 + i64::from(c - b'0')))
    };
    let sep = |at: usize, ok: &[u8]| {
        b.get(at)
            .filter(|c| ok.contains(c))
            .map(|_| ())
            .ok_or_else(|| "not an RFC 3339 time".to_string())
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt")?;
    let (h, mi, se) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59
    {
        return Err("date or time out of range".into());
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err("empty fraction of a second".into());
        }
        for k in 0..9 {
            let digit = if k < digits { b[i + 1 + k] - b'0' } else { 0 };
            nanos = nanos * 10 + u32::from(digit);
        }
        i += 1 + digits;
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() => {
            sep(i + 3, b":")?;
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err("time zone offset out of range".into());
            }
            let o = oh * 3600 + om * 60;
            if *c == b'-' { -o } else { o }
        }
        _ => return Err("no time zone (Z or ±hh:mm) at its end".into()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset;
    Ok((secs, nanos))
}

/// A Kitfile describing a ModelPack that carries none (modctl's, for one): the config's
/// descriptor as the package (name, or else title; version; description; authors; its
/// licenses joined by ` AND ` as one SPDX expression), `config.format` as the model's
/// format, and one entry per layer, its path from `org.cncf.model.filepath`: the first
/// weight layer is the model's path, other weights and weight configs its parts, then
/// datasets, code, docs and prompts in manifest order.
pub fn kitfile_from_modelpack(manifest: &Manifest, config: &[u8]) -> Result<Kitfile> {
    let cfg: ModelPackConfig = serde_json::from_slice(config).map_err(|source| Error::Json {
        what: "ModelPack config".into(),
        source,
    })?;
    let d = &cfg.descriptor;
    let mut kf = Kitfile {
        manifest_version: "1.0.0".into(),
        package: kitfile::Package {
            name: if d.name.is_empty() {
                d.title.clone()
            } else {
                d.name.clone()
            },
            version: d.version.clone(),
            description: d.description.clone(),
            license: d.licenses.join(" AND "),
            authors: d.authors.clone(),
        },
        ..Default::default()
    };
    let mut model: Option<kitfile::Model> =
        (!cfg.config.format.is_empty()).then(|| kitfile::Model {
            format: cfg.config.format.clone(),
            ..Default::default()
        });
    for l in layers::plan_layers(manifest, None)? {
        let path = l.path;
        match l.kind {
            LayerKind::Model if model.as_ref().is_none_or(|m| m.path.is_empty()) => {
                model.get_or_insert_with(Default::default).path = path;
            }
            LayerKind::Model | LayerKind::ModelPart => {
                model
                    .get_or_insert_with(Default::default)
                    .parts
                    .push(kitfile::ModelPart {
                        path,
                        ..Default::default()
                    });
            }
            LayerKind::Dataset => kf.datasets.push(kitfile::Dataset {
                path,
                ..Default::default()
            }),
            LayerKind::Code => kf.code.push(kitfile::Code {
                path,
                ..Default::default()
            }),
            LayerKind::Docs => kf.docs.push(kitfile::Docs {
                path,
                ..Default::default()
            }),
            LayerKind::Prompt => kf.prompts.push(kitfile::Prompt {
                path,
                ..Default::default()
            }),
        }
    }
    kf.model = model;
    Ok(kf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use std::collections::BTreeMap;

    #[test]
    fn go_time_round_trips() {
        for (secs, nanos, text) in [
            (0, 0, "1970-01-01T00:00:00Z"),
            (1_614_834_367, 123_456_789, "2021-03-04T05:06:07.123456789Z"),
            (1_795_000_000, 815_183_420, "2026-11-18T11:06:40.81518342Z"),
            (951_782_400, 500_000_000, "2000-02-29T00:00:00.5Z"),
            (-1, 0, "1969-12-31T23:59:59Z"),
            (-315_619_200, 1, "1960-01-01T00:00:00.000000001Z"),
            (GO_ZERO_TIME, 0, "0001-01-01T00:00:00Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59Z"),
        ] {
            assert_eq!(format_go_time(secs, nanos).as_deref(), Some(text));
            assert_eq!(parse_go_time(text), Ok((secs, nanos)), "{text}");
        }
        assert_eq!(format_go_time(253_402_300_800, 0), None);
        // Offsets, as Go writes a local time.
        assert_eq!(
            parse_go_time("2021-03-04T06:06:07.1+01:00"),
            Ok((1_614_834_367, 100_000_000))
        );
        assert_eq!(
            parse_go_time("2021-03-03T21:36:07-07:30"),
            Ok((1_614_834_367, 0))
        );
        for bad in [
            "",
            "yesterday",
            "2021-03-04",
            "2021-03-04T05:06:07",
            "2021-02-29T05:06:07Z",
            "2021-03-04T24:06:07Z",
            "2021-03-04T05:06:07.Z",
            "2021-03-04T05:06:07+0100",
            "2021-03-04T05:06:07Zjunk",
            "2021-13-04T05:06:07Z",
        ] {
            assert!(parse_go_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_metadata_reads_what_modctl_writes() {
        let modctl = r#"{"name":"run.sh","mode":493,"uid":0,"gid":0,"size":18,"mtime":"2021-03-04T05:06:07.123456789Z","typeflag":0}"#;
        let mut d = Descriptor::default();
        d.annotations
            .insert(oci::ANNOTATION_FILE_METADATA_LEGACY.into(), modctl.into());
        let m = FileMetadata::of(&d).unwrap().unwrap();
        assert_eq!(m.mode, 0o755);
        assert_eq!(m.size, 18);
        assert!(m.is_regular());
        assert_eq!(
            m.modified().unwrap(),
            Some(UNIX_EPOCH + Duration::new(1_614_834_367, 123_456_789))
        );
        // Written back, byte for byte.
        assert_eq!(m.to_json().unwrap(), modctl);
        // Go's zero time and null are "no mtime"; missing fields are zero.
        for zero in [
            r#"{"mtime":"0001-01-01T00:00:00Z"}"#,
            r#"{"mtime":null}"#,
            "{}",
        ] {
            d.annotations
                .insert(oci::ANNOTATION_FILE_METADATA.into(), zero.into());
            let m = FileMetadata::of(&d).unwrap().unwrap();
            assert_eq!(m.modified(), Ok(None), "{zero}");
        }
        for bad in [
            r#"{"mode":"0755"}"#,
            r#"{"mtime":"last tuesday"}"#,
            "not json",
            r#"{"mode":-1}"#,
        ] {
            d.annotations
                .insert(oci::ANNOTATION_FILE_METADATA.into(), bad.into());
            let e = FileMetadata::of(&d).unwrap_err();
            assert!(
                e.contains("malformed org.cncf.model.file.metadata+json annotation"),
                "{e}"
            );
        }
    }

    #[test]
    fn for_file_is_what_modctl_records() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a<b>.bin");
        std::fs::write(&p, b"12345").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::new(1_614_834_367, 120_000_000))
            .unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let m = FileMetadata::for_file("a<b>.bin", &meta, None).unwrap();
        assert_eq!(m.mode, 0o755, "permission bits only");
        assert_eq!(m.size, 5);
        let json = m.to_json().unwrap();
        assert!(
            json.starts_with(r#"{"name":"a\u003cb\u003e.bin","mode":493,"uid":"#),
            "{json}"
        );
        assert!(
            json.ends_with(r#""size":5,"mtime":"2021-03-04T05:06:07.12Z","typeflag":0}"#),
            "{json}"
        );
        let clamped = FileMetadata::for_file("x", &meta, Some(1_000_000_000)).unwrap();
        assert_eq!(clamped.mtime.as_deref(), Some("2001-09-09T01:46:40Z"));
        let later = FileMetadata::for_file("x", &meta, Some(2_000_000_000)).unwrap();
        assert_eq!(later.mtime, m.mtime, "only later times are clamped");
    }

    fn layer(media_type: &str, path: &str) -> Descriptor {
        let mut d = Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(path.as_bytes()),
            size: 1,
            ..Default::default()
        };
        d.annotations
            .insert(oci::ANNOTATION_FILEPATH_LEGACY.into(), path.into());
        d
    }

    #[test]
    fn kitfile_from_a_modctl_artifact() {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_MANIFEST.into()),
            artifact_type: Some(oci::ARTIFACT_TYPE_MODELPACK_LEGACY.into()),
            config: Descriptor {
                media_type: oci::MODELPACK_CONFIG_MEDIA_TYPE_LEGACY.into(),
                ..Default::default()
            },
            layers: vec![
                layer(
                    "application/vnd.cnai.model.weight.config.v1.raw",
                    "config.json",
                ),
                layer("application/vnd.cnai.model.weight.v1.raw", "model.bin"),
                layer(
                    "application/vnd.cnai.model.weight.v1.tar",
                    "sub/b.safetensors",
                ),
                layer("application/vnd.cnai.model.dataset.v1.raw", "data/t.csv"),
                layer("application/vnd.cnai.model.code.v1.raw", "run.sh"),
                layer("application/vnd.cnai.model.doc.v1.raw", "README.md"),
            ],
            subject: None,
            annotations: BTreeMap::new(),
        };
        let config = br#"{"descriptor":{"createdAt":"2026-12-05T09:05:18.017294109Z","authors":["A","B"],"family":"llama","name":"demo-mp","version":"v2","licenses":["MIT","Apache-2.0"],"description":"d"},"modelfs":{"type":"layers","diffIds":[]},"config":{"architecture":"transformer","format":"safetensors","paramSize":"7b"}}"#;
        let kf = kitfile_from_modelpack(&manifest, config).unwrap();
        assert_eq!(
            kf.to_yaml().unwrap(),
            "manifestVersion: 1.0.0\npackage:\n  name: demo-mp\n  version: v2\n  description: d\n  license: MIT AND Apache-2.0\n  authors: [A, B]\nmodel:\n  path: model.bin\n  format: safetensors\n  parts:\n    - path: config.json\n    - path: sub/b.safetensors\ncode:\n  - path: run.sh\ndatasets:\n  - path: data/t.csv\ndocs:\n  - path: README.md\n"
        );
        // Only configs: a model with parts and no path.
        let only = Manifest {
            layers: manifest.layers[..1].to_vec(),
            ..manifest.clone()
        };
        let kf = kitfile_from_modelpack(&only, b"{}").unwrap();
        let m = kf.model.unwrap();
        assert!(m.path.is_empty());
        assert_eq!(m.parts[0].path, "config.json");
        assert!(kitfile_from_modelpack(&manifest, b"[").is_err());
    }
}
