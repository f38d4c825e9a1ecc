//! Lazy indexes: what a node needs to serve an uncompressed layer to a container before it
//! has all of it. For each layer: a table of contents (every entry's path, metadata and
//! where its bytes start in the blob) and a BLAKE3 digest of every fixed-size chunk of
//! the blob, so that each chunk fetched on demand is verified before a container sees it.
//!
//! The index is a blob of its own, published as an OCI referrer of the ModelKit's manifest
//! (artifact type [`ARTIFACT_TYPE`]). The ModelKit's manifest, config and layers stay
//! byte for byte what kit writes; a registry or tool that knows nothing of the index
//! ignores it. Chunk digests are BLAKE3 rather than SHA-256 because a node checks every
//! chunk *and* the layer's own SHA-256: BLAKE3 costs a fifth of a core where a second
//! SHA-256 would cost a whole one.

use std::collections::HashMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::oci::Descriptor;

/// The referrer's artifact type, and the media type of the index blob.
pub const ARTIFACT_TYPE: &str = "application/vnd.kitsnap.lazy.index.v1+json";
/// Bytes per verified chunk: one range request on a first read.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// The most an index may be (a 100,000-file dataset takes about 15 MiB).
pub const MAX_INDEX: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LazyIndex {
    pub schema_version: u32,
    pub layers: Vec<LazyLayer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LazyLayer {
    pub digest: Digest,
    pub size: u64,
    pub chunk_size: u64,
    /// BLAKE3 of each chunk, hex; the last one may be short.
    pub chunks: Vec<String>,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

/// One path of the layer. A hard link is listed as a file sharing its target's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub mode: u32,
    #[serde(default)]
    pub uid: u64,
    #[serde(default)]
    pub gid: u64,
    #[serde(default)]
    pub mtime: i64,
    #[serde(default)]
    pub size: u64,
    /// Where the file's bytes start in the blob.
    #[serde(default)]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

impl LazyIndex {
    pub fn parse(bytes: &[u8]) -> Result<LazyIndex> {
        let i: LazyIndex = serde_json::from_slice(bytes).map_err(|e| Error::Json {
            what: "a lazy index".into(),
            source: e,
        })?;
        if i.schema_version != 1 {
            return Err(Error::Invalid(format!(
                "lazy index schema version {} (this kitsnap reads 1)",
                i.schema_version
            )));
        }
        for l in &i.layers {
            l.check()?;
        }
        Ok(i)
    }

    pub fn layer(&self, digest: &Digest) -> Option<&LazyLayer> {
        self.layers.iter().find(|l| &l.digest == digest)
    }
}

impl LazyLayer {
    /// The chunk table covers the blob exactly and every file lies inside it: a node can
    /// trust the arithmetic of an index it fetched before any byte is checked.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Invalid(format!(
                "lazy index of {}: {m}",
                self.digest
            )))
        };
        if self.chunk_size == 0 || self.chunk_size > 64 << 20 {
            return bad(format!("chunk size {}", self.chunk_size));
        }
        if self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size) {
            return bad(format!(
                "{} chunks for {} bytes of {}",
                self.chunks.len(),
                self.size,
                self.chunk_size
            ));
        }
        if let Some(c) = self
            .chunks
            .iter()
            .find(|c| c.len() != 64 || hex::decode(c).is_err())
        {
            return bad(format!("chunk digest {c:?} is not 64 hex digits"));
        }
        for e in &self.entries {
            if e.offset
                .checked_add(e.size)
                .is_none_or(|end| end > self.size)
            {
                return bad(format!("{} lies outside the blob", e.path));
            }
            match clean_path(&e.path) {
                None => return bad(format!("unsafe path {:?}", e.path)),
                Some(p) if p.is_empty() && e.kind != EntryKind::Dir => {
                    return bad("the layer's root is not a directory".into());
                }
                Some(p) if p.split('/').any(|n| n.len() > 255) => {
                    return bad(format!("a name in {:?} is over 255 bytes", e.path));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The BLAKE3 digest chunk `k` must have.
    pub fn chunk_digest(&self, k: usize) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.chunks.get(k)?, &mut out).ok()?;
        Some(out)
    }

    /// The bytes chunk `k` spans in the blob.
    pub fn chunk_range(&self, k: usize) -> (u64, u64) {
        // Past the last chunk: an empty range at the end.
        let start = (k as u64).saturating_mul(self.chunk_size).min(self.size);
        (start, (start + self.chunk_size).min(self.size))
    }
}

/// BLAKE3 of one chunk, as the index stores it.
pub fn chunk_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// A path relative to the layer root, without `./`, empty parts or a trailing `/`; None
/// for one that climbs out (`..`) or is absolute.
pub fn clean_path(p: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            s => parts.push(s),
        }
    }
    if p.starts_with('/') {
        return None;
    }
    Some(parts.join("/"))
}

/// Reads a layer through while hashing its chunks.
struct Chunker<R> {
    inner: R,
    chunk_size: u64,
    hasher: blake3::Hasher,
    in_chunk: u64,
    total: u64,
    chunks: Vec<String>,
}

impl<R: Read> Read for Chunker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = ((self.chunk_size - self.in_chunk) as usize).min(rest.len());
            self.hasher.update(&rest[..take]);
            self.in_chunk += take as u64;
            rest = &rest[take..];
            if self.in_chunk == self.chunk_size {
                self.chunks
                    .push(self.hasher.finalize().to_hex().to_string());
                self.hasher.reset();
                self.in_chunk = 0;
            }
        }
        self.total += n as u64;
        Ok(n)
    }
}

/// The lazy index of one uncompressed tar layer, read once from `r`. None when the layer
/// holds something a read-only lazy view does not serve (devices, FIFOs, whiteouts, a hard
/// link to nothing before it): such a layer is pulled whole, as before.
pub fn index_layer<R: Read>(r: R, desc: &Descriptor) -> Result<Option<LazyLayer>> {
    let mut chunker = Chunker {
        inner: r,
        chunk_size: CHUNK_SIZE,
        hasher: blake3::Hasher::new(),
        in_chunk: 0,
        total: 0,
        chunks: Vec::new(),
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut eligible = true;
    {
        let mut ar = tar::Archive::new(&mut chunker);
        let mut at: HashMap<String, usize> = HashMap::new();
        for e in ar.entries()? {
            let e = e?;
            let h = e.header();
            let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Some(path) = clean_path(&raw) else {
                eligible = false;
                continue;
            };
            let name = path.rsplit('/').next().unwrap_or_default();
            if name.starts_with(".wh.") {
                eligible = false;
                continue;
            }
            let link = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let (kind, size, offset, link) = match h.entry_type() {
                tar::EntryType::Directory => (EntryKind::Dir, 0, 0, None),
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    (EntryKind::File, e.size(), e.raw_file_position(), None)
                }
                tar::EntryType::Symlink => (EntryKind::Symlink, 0, 0, link),
                tar::EntryType::Link => {
                    let target = link.as_deref().and_then(clean_path);
                    match target.and_then(|t| at.get(&t).map(|&i| &entries[i])) {
                        Some(t) if t.kind == EntryKind::File => {
                            (EntryKind::File, t.size, t.offset, None)
                        }
                        _ => {
                            eligible = false;
                            continue;
                        }
                    }
                }
                _ => {
                    eligible = false;
                    continue;
                }
            };
            if path.is_empty() && kind != EntryKind::Dir {
                eligible = false;
                continue;
            }
            let entry = Entry {
                path: path.clone(),
                kind,
                mode: h.mode().unwrap_or(0o644) & 0o7777,
                uid: h.uid().unwrap_or(0),
                gid: h.gid().unwrap_or(0),
                mtime: h.mtime().map(|m| m as i64).unwrap_or(0),
                size,
                offset,
                link,
            };
            at.insert(path, entries.len());
            entries.push(entry);
        }
    }
    // The end-of-archive blocks and any padding after them are chunked too.
    io::copy(&mut chunker, &mut io::sink())?;
    if chunker.in_chunk > 0 {
        chunker
            .chunks
            .push(chunker.hasher.finalize().to_hex().to_string());
    }
    if chunker.total != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.to_string(),
            expected: desc.size,
            actual: chunker.total,
        });
    }
    if !eligible {
        return Ok(None);
    }
    let layer = LazyLayer {
        digest: desc.digest.clone(),
        size: desc.size,
        chunk_size: CHUNK_SIZE,
        chunks: chunker.chunks,
        entries,
    };
    layer.check()?;
    Ok(Some(layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "data/", io::empty()).unwrap();
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o640);
            h.set_size(d.len() as u64);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, p, *d).unwrap();
        }
        if files.iter().any(|(p, _)| *p == "data/big") {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "data/again", "data/big").unwrap();
        }
        b.into_inner().unwrap()
    }

    fn desc(b: &[u8]) -> Descriptor {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": Digest::of(b).to_string(), "size": b.len()
        }))
        .unwrap()
    }

    #[test]
    fn offsets_and_chunks_describe_the_blob() {
        let big: Vec<u8> = (0..(CHUNK_SIZE as usize * 2 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let long = format!("data/{}", "n".repeat(150));
        let blob = tar_of(&[
            ("./data/small", b"hello"),
            ("data/big", &big),
            (&long, b"x"),
        ]);
        let l = index_layer(&blob[..], &desc(&blob)).unwrap().unwrap();
        assert_eq!(
            l.chunks.len() as u64,
            (blob.len() as u64).div_ceil(CHUNK_SIZE)
        );
        for (k, c) in l.chunks.iter().enumerate() {
            let (s, e) = l.chunk_range(k);
            assert_eq!(
                c,
                &blake3::hash(&blob[s as usize..e as usize])
                    .to_hex()
                    .to_string()
            );
            assert_eq!(
                l.chunk_digest(k),
                Some(chunk_hash(&blob[s as usize..e as usize]))
            );
        }
        let by: HashMap<_, _> = l.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let of = |p: &str| {
            let e = by[p];
            &blob[e.offset as usize..(e.offset + e.size) as usize]
        };
        assert_eq!(of("data/small"), b"hello");
        assert_eq!(of("data/big"), &big[..]);
        assert_eq!(of(&long), b"x");
        assert_eq!(
            of("data/again"),
            &big[..],
            "a hard link shares its target's bytes"
        );
        assert_eq!(by["data"].kind, EntryKind::Dir);
        assert_eq!(by["data/small"].mode, 0o640);
        assert_eq!(by["data/small"].mtime, 1_700_000_000);
        let back = LazyIndex::parse(
            &serde_json::to_vec(&LazyIndex {
                schema_version: 1,
                layers: vec![l.clone()],
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(back.layers[0], l);
    }

    #[test]
    fn layers_a_lazy_view_cannot_serve_are_left_whole() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        b.append_data(&mut h, "pipe", io::empty()).unwrap();
        let blob = b.into_inner().unwrap();
        assert_eq!(index_layer(&blob[..], &desc(&blob)).unwrap(), None);
        let blob = tar_of(&[("data/.wh.gone", b"")]);
        assert_eq!(index_layer(&blob[..], &desc(&blob)).unwrap(), None);
    }

    #[test]
    fn indexes_that_lie_about_their_blob_are_refused() {
        let blob = tar_of(&[("data/small", b"hello")]);
        let l = index_layer(&blob[..], &desc(&blob)).unwrap().unwrap();
        let refuse = |l: LazyLayer| {
            let j = serde_json::to_vec(&LazyIndex {
                schema_version: 1,
                layers: vec![l],
            })
            .unwrap();
            LazyIndex::parse(&j).unwrap_err().to_string()
        };
        let mut short = l.clone();
        short.chunks.clear();
        assert!(refuse(short).contains("chunks for"));
        let mut out = l.clone();
        out.entries[1].offset = l.size;
        assert!(refuse(out).contains("outside the blob"));
        let mut up = l.clone();
        up.entries[1].path = "../etc/passwd".into();
        assert!(refuse(up).contains("unsafe path"));
        let mut trunc = desc(&blob);
        trunc.size += 1;
        assert!(index_layer(&blob[..], &trunc).is_err());
    }
}
