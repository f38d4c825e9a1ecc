//! Safe, streaming extraction of one layer: a hostile layer can never write outside the
//! target directory.
//!
//! Every layer is digest-verified while it streams. Entries are checked one by one:
//! absolute paths, `..`, links whose target leaves the directory, device nodes, fifos and
//! duplicate entries are refused, and no entry is ever written through a symlink. When a
//! layer fails (bad entry or bad digest), the files it created are removed again.
//!
//! Interrupt safety: every file is written as a hidden temporary sibling
//! (`.NAME.<pid>-<n>.kitsnap-part`, registered with [`crate::cleanup`]) and renamed to its
//! final name only once complete, so a killed unpack never leaves a truncated file under
//! a final name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use crate::cleanup::TempPath;
use crate::digest::{Digest, DirectWrite, HashedRead, HashingReader};
use crate::error::{Error, IoContext, Result};
use crate::imageview::RawWrapper;
use crate::layers::LayerPlan;
use crate::modelpack::FileMetadata;
use crate::oci::{Compression, Descriptor, LayerType, ModelFormat};

pub(crate) const IO_BUF: usize = 1 << 20;
/// Files at least this large are written by a reader that can ([`DirectWrite`]); smaller
/// ones are not worth a second file handle.
const DIRECT_MIN: u64 = 1 << 20;

/// How a layer is written.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions {
    /// Replace files that already exist.
    pub overwrite: bool,
    /// Leave files that already exist as they are (kit's `unpack -i`).
    pub skip_existing: bool,
    /// Refuse a layer whose files add up to more than this many bytes (decompression
    /// bombs, a node's size limits): checked against each entry's declared size, before it
    /// is written.
    pub max_bytes: Option<ByteLimit>,
}

/// A cap on the bytes a layer's files add up to, and what the error says of it: the
/// reason and the setting that sets it, so that the user knows which one to raise.
#[derive(Clone, Copy, Debug)]
pub struct ByteLimit {
    pub bytes: u64,
    pub why: &'static str,
}

impl ByteLimit {
    /// The cap against decompression bombs.
    pub fn bomb(bytes: u64) -> ByteLimit {
        ByteLimit {
            bytes,
            why: "a decompression bomb",
        }
    }
}

/// Extracts one planned layer (tar of any compression, or a raw file) into `dest`,
/// verifying its digest and size while it streams. Returns the bytes of file content
/// written.
///
/// ModelPack files get their attributes back: a raw layer's file takes the mode (permission
/// bits only) and mtime of its `org.cncf.model.file.metadata+json` annotation (as `modctl
/// extract` restores them; a malformed one is an error naming the layer, before anything is
/// written), and a tar layer's regular files the mtime of their tar headers (model-spec puts
/// file attributes in the tar headers; mtime 0, the reproducible-build placeholder kit and
/// kitsnap write, is left alone). A KitOps ModelKit's files are written as before.
///
/// `blob` hashes what it reads: `HashingReader::new(file)`, or a reader that hands its
/// pieces to the hasher uncopied.
pub fn extract<B: HashedRead>(
    blob: B,
    l: &LayerPlan,
    dest: &Path,
    opts: ExtractOptions,
) -> Result<u64> {
    extract_planned(blob, l, dest, opts, false).map(|(n, _)| n)
}

/// [`extract`], also returning the layer's diff ID as an image view names it: the digest
/// of the uncompressed tar (for a raw layer, of the tar around the file), computed from
/// the very bytes extracted. Files are written as that tar has them (a raw layer's as
/// [`RawWrapper`] makes it, with its file metadata), so that a snapshot made with this
/// equals what unpacking the image view gives. (One difference is left: containerd sets
/// the mtime 0 of a KitOps tar entry, 1970; this leaves the extraction time.)
pub fn extract_with_diff_id<B: HashedRead>(
    blob: B,
    l: &LayerPlan,
    dest: &Path,
    opts: ExtractOptions,
) -> Result<(u64, Digest)> {
    let (n, diff_id) = extract_planned(blob, l, dest, opts, true)?;
    let diff_id = diff_id.ok_or_else(|| Error::Internal("no diff ID computed".into()))?;
    Ok((n, diff_id))
}

/// One layer; `for_view`: files as the image view's tar has them, and the diff ID computed
/// (for a raw layer, a second hash of every byte: only the node needs it).
fn extract_planned<B: HashedRead>(
    blob: B,
    l: &LayerPlan,
    dest: &Path,
    opts: ExtractOptions,
    for_view: bool,
) -> Result<(u64, Option<Digest>)> {
    let what = format!(
        "{} layer {} ({})",
        l.kind.user_str(),
        l.path,
        l.desc.digest.short()
    );
    if l.raw && !for_view {
        let meta = raw_metadata(&l.desc, &what)?;
        extract_raw_with(blob, &l.desc, dest, &l.path, opts, &what, meta.as_ref())?;
        Ok((l.desc.size, None))
    } else if l.raw {
        // The blob is the file: its size is known and checked.
        let meta = raw_metadata(&l.desc, &what)?;
        let wrapper = RawWrapper::with_metadata(&l.path, l.desc.size, meta.as_ref(), &what)?;
        let mut tar = Sha256::new();
        tar.update(wrapper.prefix());
        let hashed = Sha256Tee {
            inner: blob,
            hasher: &mut tar,
        };
        extract_raw_with(hashed, &l.desc, dest, &l.path, opts, &what, meta.as_ref())?;
        tar.update(wrapper.suffix());
        Ok((
            l.desc.size,
            Some(Digest::from_sha256_bytes(&tar.finalize())),
        ))
    } else {
        let restore_mtimes = LayerType::parse(&l.desc.media_type)
            .is_some_and(|t| t.format == ModelFormat::ModelPack);
        extract_tar_layer(
            blob,
            &l.desc,
            l.compression,
            dest,
            opts,
            &what,
            restore_mtimes,
        )
        .map(|(n, d)| (n, Some(d)))
    }
}

/// A raw layer's file metadata annotation, checked against the layer: it must describe a
/// regular file of the blob's size. Nothing in it names a path (the file's path is the
/// layer's `org.cncf.model.filepath`), and only its permission bits and mtime are used.
pub(crate) fn raw_metadata(desc: &Descriptor, what: &str) -> Result<Option<FileMetadata>> {
    let bad = |msg: String| Error::Invalid(format!("{what}: {msg}"));
    let Some(m) = FileMetadata::of(desc).map_err(bad)? else {
        return Ok(None);
    };
    if !m.is_regular() {
        return Err(bad(format!(
            "its file metadata has typeflag {}, not a regular file; a raw layer holds one regular file",
            m.typeflag
        )));
    }
    // A size of 0 is Go's zero value: a tool that records only mode and mtime left it out.
    if m.size != 0 && u64::try_from(m.size).ok() != Some(desc.size) {
        return Err(bad(format!(
            "its file metadata says {} bytes, the layer has {}",
            m.size, desc.size
        )));
    }
    Ok(Some(m))
}

/// Hashes what passes through (in the reading thread: raw layers of image views only).
struct Sha256Tee<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
}

impl<R: Read> Read for Sha256Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<B: HashedRead> HashedRead for Sha256Tee<'_, B> {
    fn finish(mut self) -> Result<(Digest, u64)> {
        // What is left passes through the tee too.
        std::io::copy(&mut self, &mut std::io::sink())?;
        self.inner.finish()
    }
}

/// The paths a layer created, in order, packed into one buffer: a layer of 100,000 files
/// keeps a few MiB here instead of one allocation per path.
#[derive(Default)]
struct Created {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Created {
    fn push(&mut self, p: &Path) {
        self.bytes
            .extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
        self.ends.push(self.bytes.len());
    }

    /// Newest first.
    fn iter_rev(&self) -> impl Iterator<Item = PathBuf> + '_ {
        let (bytes, ends) = (&self.bytes, &self.ends);
        (0..ends.len()).rev().map(move |i| {
            let start = if i == 0 { 0 } else { ends[i - 1] };
            PathBuf::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                    &bytes[start..ends[i]],
                ),
            )
        })
    }
}

/// Which entries a layer holds, by a 128-bit digest of the entry's normalized path (a
/// collision is as likely as one in SHA-256), so that memory per entry stays small.
type EntryKey = [u8; 16];

fn entry_key(parts: &[String]) -> EntryKey {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"/");
        }
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// Removes what a failed layer created, newest first.
struct Rollback(Created);

impl Rollback {
    fn undo(&mut self) {
        for p in self.0.iter_rev() {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir(&p);
                }
                Ok(_) => {
                    let _ = fs::remove_file(&p);
                }
                Err(_) => {}
            }
        }
        self.0 = Created::default();
    }
}

/// Streams one tar layer (any compression) into `dest`, verifying its digest and size.
/// Returns the bytes written and the digest of the uncompressed tar (the diff ID).
pub fn extract_layer<R: Read>(
    reader: R,
    desc: &Descriptor,
    compression: Compression,
    dest: &Path,
    opts: ExtractOptions,
    what: &str,
) -> Result<(u64, Digest)> {
    extract_tar_layer(
        HashingReader::new(reader),
        desc,
        compression,
        dest,
        opts,
        what,
        false,
    )
}

/// [`extract_layer`]; with `mtimes`, regular files take their tar header's mtime (unless 0).
fn extract_tar_layer<B: HashedRead>(
    mut hr: B,
    desc: &Descriptor,
    compression: Compression,
    dest: &Path,
    opts: ExtractOptions,
    what: &str,
    mtimes: bool,
) -> Result<(u64, Digest)> {
    let mut rb = Rollback(Created::default());
    // The uncompressed stream is hashed to its end (tar padding included), like the blob.
    let untar = |r: &mut dyn Read, rb: &mut Created| -> Result<(u64, Digest)> {
        let mut plain = HashingReader::new(r);
        let n = extract_tar(&mut plain, dest, opts, what, rb, mtimes, None)?;
        Ok((n, plain.finish()?.0))
    };
    let res = (|| -> Result<(u64, Digest)> {
        match compression {
            // Uncompressed: the blob is the tar, its (verified) digest the diff ID.
            Compression::None => {
                let direct = hr.direct();
                extract_tar(&mut hr, dest, opts, what, &mut rb.0, mtimes, direct)
                    .map(|n| (n, desc.digest.clone()))
            }
            Compression::Gzip | Compression::GzipFastest => {
                untar(&mut flate2::read::GzDecoder::new(&mut hr), &mut rb.0)
            }
            Compression::Zstd => untar(&mut zstd::stream::read::Decoder::new(&mut hr)?, &mut rb.0),
        }
    })();
    let checked = res.and_then(|r| verify(hr, desc).map(|()| r));
    if checked.is_err() {
        rb.undo();
    }
    checked
}

pub(crate) fn verify<B: HashedRead>(hr: B, desc: &Descriptor) -> Result<()> {
    let (actual, n) = hr.finish()?;
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            digest: desc.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    if n != desc.size {
        return Err(Error::SizeMismatch {
            digest: desc.digest.to_string(),
            expected: desc.size,
            actual: n,
        });
    }
    Ok(())
}

/// Splits a path from an archive into safe components, refusing absolute paths and `..`.
fn safe_components(raw: &str, what: &str) -> Result<Vec<String>> {
    let unsafe_err = |msg: String| Error::UnsafeLayer {
        layer: what.to_string(),
        msg,
    };
    if raw.starts_with('/') {
        return Err(unsafe_err(format!("entry {raw:?} has an absolute path")));
    }
    if raw.contains('\0') || raw.contains('\\') && raw.contains("..") {
        return Err(unsafe_err(format!("entry {raw:?} has an invalid path")));
    }
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(unsafe_err(format!("entry {raw:?} contains `..`"))),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Makes sure every parent of `rel` under `dest` is a real directory (creating missing
/// ones), so nothing is ever written through a symlink.
fn ensure_parents(
    dest: &Path,
    parts: &[String],
    checked: &mut HashSet<PathBuf>,
    created: &mut Created,
    what: &str,
) -> Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    for p in &parts[..parts.len().saturating_sub(1)] {
        cur.push(p);
        if checked.contains(&cur) {
            continue;
        }
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::UnsafeLayer {
                    layer: what.to_string(),
                    msg: format!(
                        "entry {:?} would be written through the symlink {}",
                        parts.join("/"),
                        cur.display()
                    ),
                });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{}: cannot create a directory where a file exists",
                    cur.display()
                )));
            }
            Err(_) => {
                if make_dir(&cur)? {
                    created.push(&cur);
                }
            }
        }
        checked.insert(cur.clone());
    }
    Ok(cur.join(parts.last().map(String::as_str).unwrap_or("")))
}

/// Creates a directory; false when another layer unpacking into the same tree at the same
/// time made it first (a directory, not a symlink or a file: that stays an error).
fn make_dir(p: &Path) -> Result<bool> {
    match fs::create_dir(p) {
        Ok(()) => Ok(true),
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).at(p),
    }
}

/// Creates a new file, never following a symlink planted at `target`.
fn create_file(target: &Path, mode: u32) -> Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .at(target)
}

/// Suffix of the temporary siblings files are written under until complete.
pub const PART_SUFFIX: &str = ".kitsnap-part";

static PART_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `target` through a hidden temporary sibling that `write` fills; renamed into
/// place only when `write` succeeded, removed otherwise (and on SIGINT/SIGTERM).
fn write_file_atomically(
    target: &Path,
    mode: u32,
    write: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = TempPath::register(target.with_file_name(format!(
        ".{name}.{}-{}{PART_SUFFIX}",
        std::process::id(),
        PART_SEQ.fetch_add(1, Ordering::Relaxed)
    )));
    let mut f = create_file(tmp.path(), mode)?;
    write(&mut f)?;
    drop(f);
    fs::rename(tmp.path(), target).at(target)?;
    tmp.keep();
    Ok(())
}

/// Clears the way for a new file at `target`: refuses an existing one unless overwriting,
/// or (skipping) answers false to leave it as it is.
fn make_room(target: &Path, overwrite: bool, skip: bool) -> Result<bool> {
    match fs::symlink_metadata(target) {
        Err(_) => Ok(true),
        Ok(_) if skip => Ok(false),
        Ok(_) if !overwrite => Err(Error::Exists(target.to_path_buf())),
        Ok(m) if m.is_dir() => Err(Error::Invalid(format!(
            "{}: a directory is in the way of a file",
            target.display()
        ))),
        Ok(_) => fs::remove_file(target).at(target).map(|()| true),
    }
}

/// `direct`: the reader can write large files' content into them itself (uncopied).
fn extract_tar<R: Read>(
    reader: R,
    dest: &Path,
    opts: ExtractOptions,
    what: &str,
    created: &mut Created,
    mtimes: bool,
    direct: Option<DirectWrite>,
) -> Result<u64> {
    let unsafe_err = |msg: String| Error::UnsafeLayer {
        layer: what.to_string(),
        msg,
    };
    let mut archive = tar::Archive::new(reader);
    let mut seen: HashSet<EntryKey> = HashSet::new();
    let mut files: HashSet<EntryKey> = HashSet::new();
    let mut checked: HashSet<PathBuf> = HashSet::new();
    let (overwrite, skip) = (opts.overwrite, opts.skip_existing);
    let mut total: u64 = 0;
    let mut buf = vec![0u8; IO_BUF];
    for entry in archive
        .entries()
        .map_err(|e| unsafe_err(format!("not a tar archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| unsafe_err(format!("corrupt tar: {e}")))?;
        let et = entry.header().entry_type();
        if matches!(et, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let raw = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| unsafe_err("entry name is not UTF-8".into()))?;
        let parts = safe_components(&raw, what)?;
        if parts.is_empty() {
            if et.is_dir() {
                continue;
            }
            return Err(unsafe_err(format!("entry {raw:?} has an empty path")));
        }
        if !seen.insert(entry_key(&parts)) {
            return Err(unsafe_err(format!("duplicate entry {raw:?}")));
        }
        let target = ensure_parents(dest, &parts, &mut checked, created, what)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match et {
            tar::EntryType::Directory => match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(unsafe_err(format!(
                        "directory entry {raw:?} collides with a symlink"
                    )));
                }
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "{}: a file is in the way of a directory",
                        target.display()
                    )));
                }
                Err(_) => {
                    if make_dir(&target)? {
                        created.push(&target);
                        // Keep directories writable for the rest of the layer.
                        fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                            .at(&target)?;
                    }
                }
            },
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total = total.saturating_add(entry.size());
                if let Some(max) = opts.max_bytes.filter(|m| total > m.bytes) {
                    return Err(unsafe_err(format!(
                        "unpacks to more than {} bytes (at {raw:?}); refused as {}",
                        max.bytes, max.why
                    )));
                }
                if !make_room(&target, overwrite, skip)? {
                    files.insert(entry_key(&parts));
                    continue;
                }
                let mtime = entry
                    .header()
                    .mtime()
                    .ok()
                    .filter(|t| mtimes && *t > 0)
                    // A header can claim any 64-bit time: one past SystemTime's range is
                    // left out, not a panic.
                    .and_then(|t| UNIX_EPOCH.checked_add(Duration::from_secs(t)));
                // A file of a few pieces or more is written by the reader itself: the tar
                // reader passes a regular file's bytes through as they are.
                let direct = direct.as_ref().filter(|_| entry.size() >= DIRECT_MIN);
                write_file_atomically(&target, mode, |f| {
                    if let Some(d) = direct {
                        d.set(f.try_clone().at(&target)?);
                    }
                    let copied: Result<()> = (|| loop {
                        let n = entry
                            .read(&mut buf)
                            .map_err(|e| unsafe_err(format!("truncated entry {raw:?}: {e}")))?;
                        if n == 0 {
                            return Ok(());
                        }
                        if direct.is_none() {
                            f.write_all(&buf[..n]).at(&target)?;
                        }
                    })();
                    if let Some(e) = direct.and_then(DirectWrite::clear) {
                        return Err(e).at(&target);
                    }
                    copied?;
                    if let Some(t) = mtime {
                        f.set_modified(t).at(&target)?;
                    }
                    Ok(())
                })?;
                created.push(&target);
                files.insert(entry_key(&parts));
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_err(format!("symlink {raw:?} has no target")))?;
                let link = String::from_utf8(link.into_owned())
                    .map_err(|_| unsafe_err(format!("symlink {raw:?} target is not UTF-8")))?;
                if link.starts_with('/') {
                    return Err(unsafe_err(format!(
                        "symlink {raw:?} points to absolute path {link:?}"
                    )));
                }
                // Resolve the target against the link's directory; it must stay inside.
                let mut depth: Vec<&str> = parts[..parts.len() - 1]
                    .iter()
                    .map(String::as_str)
                    .collect();
                for c in link.split('/') {
                    match c {
                        "" | "." => {}
                        ".." => {
                            if depth.pop().is_none() {
                                return Err(unsafe_err(format!(
                                    "symlink {raw:?} -> {link:?} points outside the target directory"
                                )));
                            }
                        }
                        c => depth.push(c),
                    }
                }
                if !make_room(&target, overwrite, skip)? {
                    continue;
                }
                std::os::unix::fs::symlink(&link, &target).at(&target)?;
                created.push(&target);
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_err(format!("hardlink {raw:?} has no target")))?;
                let link = String::from_utf8(link.into_owned())
                    .map_err(|_| unsafe_err(format!("hardlink {raw:?} target is not UTF-8")))?;
                let lparts = safe_components(&link, what).map_err(|_| {
                    unsafe_err(format!(
                        "hardlink {raw:?} -> {link:?} points outside the target directory"
                    ))
                })?;
                if !files.contains(&entry_key(&lparts)) {
                    return Err(unsafe_err(format!(
                        "hardlink {raw:?} -> {link:?} must name a file earlier in the same layer"
                    )));
                }
                if !make_room(&target, overwrite, skip)? {
                    files.insert(entry_key(&parts));
                    continue;
                }
                let src = lparts.iter().fold(dest.to_path_buf(), |p, c| p.join(c));
                fs::hard_link(&src, &target).at(&target)?;
                created.push(&target);
                files.insert(entry_key(&parts));
            }
            other => {
                let kind = match other {
                    tar::EntryType::Char | tar::EntryType::Block => "device node",
                    tar::EntryType::Fifo => "fifo",
                    _ => "unsupported entry type",
                };
                return Err(unsafe_err(format!("entry {raw:?} is a {kind}; refused")));
            }
        }
    }
    Ok(total)
}

/// A ModelPack `.raw` layer: the blob is the file itself.
pub fn extract_raw<R: Read>(
    reader: R,
    desc: &Descriptor,
    dest: &Path,
    path: &str,
    opts: ExtractOptions,
    what: &str,
) -> Result<()> {
    extract_raw_with(
        HashingReader::new(reader),
        desc,
        dest,
        path,
        opts,
        what,
        None,
    )
}

/// [`extract_raw`]; with file metadata, the file gets its permission bits (exactly, as
/// modctl's chmod: never setuid, setgid or sticky) and mtime.
fn extract_raw_with<B: HashedRead>(
    mut hr: B,
    desc: &Descriptor,
    dest: &Path,
    path: &str,
    opts: ExtractOptions,
    what: &str,
    meta: Option<&FileMetadata>,
) -> Result<()> {
    // Checked before anything is created.
    let mtime = match meta.map(FileMetadata::modified).transpose() {
        Ok(t) => t.flatten(),
        Err(msg) => return Err(Error::Invalid(format!("{what}: {msg}"))),
    };
    let mode = meta.and_then(FileMetadata::permissions);
    let parts = safe_components(path, what)?;
    if parts.is_empty() {
        return Err(Error::UnsafeLayer {
            layer: what.to_string(),
            msg: "raw layer has an empty file path".into(),
        });
    }
    let mut created = Created::default();
    let target = match ensure_parents(dest, &parts, &mut HashSet::new(), &mut created, what)
        .and_then(|t| make_room(&t, opts.overwrite, opts.skip_existing).map(|go| (t, go)))
    {
        Ok((_, false)) => return Ok(()),
        Ok((t, true)) => t,
        Err(e) => {
            Rollback(created).undo();
            return Err(e);
        }
    };
    // The digest is checked before the rename: a raw file never becomes final unverified.
    let res = write_file_atomically(&target, 0o644, |f| {
        std::io::copy(&mut hr, f).at(&target)?;
        verify(hr, desc)?;
        if let Some(m) = mode {
            f.set_permissions(fs::Permissions::from_mode(m))
                .at(&target)?;
        }
        if let Some(t) = mtime {
            f.set_modified(t).at(&target)?;
        }
        Ok(())
    });
    if res.is_err() {
        Rollback(created).undo();
    }
    res
}

/// Paths under `dest` that extracting layer `l` (its blob opened as `blob`) would collide
/// with: an existing file where the layer has any entry, or a non-directory where it
/// needs a directory. Reads only the tar headers of an uncompressed layer (seeking over
/// the content); a compressed one is decompressed once without writing anything.
pub fn conflicts(blob: File, l: &LayerPlan, dest: &Path) -> Result<Vec<PathBuf>> {
    let what = format!("{} layer {}", l.kind.user_str(), l.path);
    let mut entries: Vec<(Vec<String>, bool)> = Vec::new();
    if l.raw {
        entries.push((safe_components(&l.path, &what)?, false));
    } else {
        let corrupt = |e: std::io::Error| Error::UnsafeLayer {
            layer: what.clone(),
            msg: format!("corrupt tar: {e}"),
        };
        let mut collect = |it: &mut dyn Iterator<Item = std::io::Result<(Vec<u8>, bool)>>| {
            for e in it {
                let (raw, is_dir) = e.map_err(corrupt)?;
                let raw = String::from_utf8_lossy(&raw).into_owned();
                // Unsafe names are refused by the extraction itself, with its message.
                if let Some(parts) = safe_components(&raw, &what).ok().filter(|p| !p.is_empty()) {
                    entries.push((parts, is_dir));
                }
            }
            Ok::<(), Error>(())
        };
        fn names<R: Read>(
            a: &mut tar::Archive<R>,
        ) -> std::io::Result<impl Iterator<Item = std::io::Result<(Vec<u8>, bool)>> + '_> {
            Ok(a.entries()?.map(|e| {
                e.map(|e| {
                    let t = e.header().entry_type();
                    (e.path_bytes().into_owned(), t.is_dir())
                })
            }))
        }
        let buffered = std::io::BufReader::with_capacity(IO_BUF, blob);
        match l.compression {
            Compression::None => {
                let mut a = tar::Archive::new(buffered);
                let mut it = a.entries_with_seek().map_err(corrupt)?.map(|e| {
                    e.map(|e| {
                        (
                            e.path_bytes().into_owned(),
                            e.header().entry_type().is_dir(),
                        )
                    })
                });
                collect(&mut it)?;
            }
            Compression::Gzip | Compression::GzipFastest => {
                let mut a = tar::Archive::new(flate2::read::GzDecoder::new(buffered));
                collect(&mut names(&mut a).map_err(corrupt)?)?;
            }
            Compression::Zstd => {
                let mut a = tar::Archive::new(zstd::stream::read::Decoder::new(buffered)?);
                collect(&mut names(&mut a).map_err(corrupt)?)?;
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (parts, is_dir) in entries {
        let mut cur = dest.to_path_buf();
        for (i, p) in parts.iter().enumerate() {
            cur.push(p);
            let last = i + 1 == parts.len();
            let needs_dir = !last || is_dir;
            match fs::symlink_metadata(&cur) {
                Err(_) => break,
                Ok(m) if m.is_dir() && needs_dir => {}
                Ok(_) => {
                    if seen.insert(cur.clone()) {
                        out.push(cur.clone());
                    }
                    break;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_safety() {
        assert!(safe_components("/etc/passwd", "l").is_err());
        assert!(safe_components("a/../../b", "l").is_err());
        assert_eq!(safe_components("./a//b/", "l").unwrap(), vec!["a", "b"]);
    }

    /// A gzip layer of one zero-filled file: a few KiB that unpack to `len` bytes.
    fn zero_bomb(len: u64) -> (Vec<u8>, LayerPlan) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "zeros.bin", std::io::repeat(0).take(len))
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&raw).unwrap();
        let blob = gz.finish().unwrap();
        let plan = dataset_plan(&blob, "zeros.bin", Compression::Gzip);
        (blob, plan)
    }

    /// The plan of a dataset tar layer `blob` at `path`.
    fn dataset_plan(blob: &[u8], path: &str, compression: Compression) -> LayerPlan {
        LayerPlan {
            kind: crate::oci::LayerKind::Dataset,
            name: String::new(),
            path: path.into(),
            desc: Descriptor {
                digest: crate::digest::Digest::of(blob),
                size: blob.len() as u64,
                ..Descriptor::default()
            },
            compression,
            raw: false,
        }
    }

    #[test]
    fn decompression_bombs_are_refused_before_they_are_written() {
        let (blob, plan) = zero_bomb(64 << 20);
        assert!(blob.len() < 1 << 20, "the bomb is small: {}", blob.len());
        let d = tempfile::tempdir().unwrap();
        let opts = ExtractOptions {
            overwrite: false,
            skip_existing: false,
            max_bytes: Some(ByteLimit::bomb(8 << 20)),
        };
        let e = extract(HashingReader::new(&blob[..]), &plan, d.path(), opts).unwrap_err();
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing left"
        );
        // Within the limit, the same layer unpacks.
        let opts = ExtractOptions {
            max_bytes: Some(ByteLimit::bomb(64 << 20)),
            ..opts
        };
        extract(HashingReader::new(&blob[..]), &plan, d.path(), opts).unwrap();
        assert_eq!(
            std::fs::metadata(d.path().join("zeros.bin")).unwrap().len(),
            64 << 20
        );
    }

    /// Reads `inner`, writing into the target itself while one is set, as a download's
    /// reader does; counts what it wrote so.
    struct DirectReader<'a> {
        inner: HashingReader<&'a [u8]>,
        direct: DirectWrite,
        wrote: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Read for DirectReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut piece = vec![0u8; buf.len()];
            let n = self.inner.read(&mut piece)?;
            if self.direct.write(&piece[..n])? {
                self.wrote
                    .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
            } else {
                buf[..n].copy_from_slice(&piece[..n]);
            }
            Ok(n)
        }
    }

    impl HashedRead for DirectReader<'_> {
        fn finish(self) -> Result<(Digest, u64)> {
            self.inner.finish()
        }
        fn direct(&self) -> Option<DirectWrite> {
            Some(self.direct.clone())
        }
    }

    /// A reader that can write files itself is given the large files' content (and only
    /// that: headers, small files and padding go through the tar reader), and what it
    /// writes is the layer's bytes.
    #[test]
    fn large_files_are_written_by_a_reader_that_can() {
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in [("a/big.bin", &big[..]), ("a/small.txt", &b"hello"[..])] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        }
        let blob = tar.into_inner().unwrap();
        let plan = dataset_plan(&blob, "a", Compression::None);
        let d = tempfile::tempdir().unwrap();
        let wrote = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = DirectReader {
            inner: HashingReader::new(&blob[..]),
            direct: DirectWrite::default(),
            wrote: wrote.clone(),
        };
        extract(r, &plan, d.path(), ExtractOptions::default()).unwrap();
        assert_eq!(std::fs::read(d.path().join("a/big.bin")).unwrap(), big);
        assert_eq!(
            std::fs::read(d.path().join("a/small.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            wrote.load(std::sync::atomic::Ordering::SeqCst),
            big.len() as u64,
            "the big file's bytes, and nothing else"
        );
    }

    fn raw_plan(data: &[u8], metadata: Option<&str>) -> LayerPlan {
        let mut desc = Descriptor {
            media_type: "application/vnd.cnai.model.weight.v1.raw".into(),
            digest: crate::digest::Digest::of(data),
            size: data.len() as u64,
            ..Descriptor::default()
        };
        if let Some(m) = metadata {
            desc.annotations
                .insert(crate::oci::ANNOTATION_FILE_METADATA_LEGACY.into(), m.into());
        }
        LayerPlan {
            kind: crate::oci::LayerKind::Model,
            name: String::new(),
            path: "weights/w.bin".into(),
            desc,
            compression: Compression::None,
            raw: true,
        }
    }

    fn mode_and_mtime(p: &Path) -> (u32, i64, i64) {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.mtime(), m.mtime_nsec())
    }

    /// A raw layer's file takes its metadata annotation's permission bits (never setuid,
    /// setgid or sticky) and mtime, on the node's path (image views) as well.
    #[test]
    fn raw_layers_restore_mode_and_mtime() {
        let data = b"weights".as_slice();
        // 3565 is 0o6755: setuid and setgid are dropped.
        let meta = r#"{"name":"../../evil","mode":3565,"uid":0,"gid":0,"size":7,"mtime":"2021-03-04T06:06:07.123456789+01:00","typeflag":0}"#;
        let d = tempfile::tempdir().unwrap();
        let plan = raw_plan(data, Some(meta));
        extract(
            HashingReader::new(data),
            &plan,
            d.path(),
            ExtractOptions::default(),
        )
        .unwrap();
        let f = d.path().join("weights/w.bin");
        assert_eq!(fs::read(&f).unwrap(), data);
        assert_eq!(mode_and_mtime(&f), (0o755, 1_614_834_367, 123_456_789));
        assert!(
            !d.path().join("evil").exists() && !d.path().parent().unwrap().join("evil").exists()
        );

        // The image-view path too, and its diff ID is that of the tar that says so.
        let d = tempfile::tempdir().unwrap();
        let (_, diff) = extract_with_diff_id(
            HashingReader::new(data),
            &plan,
            d.path(),
            ExtractOptions::default(),
        )
        .unwrap();
        let f = d.path().join("weights/w.bin");
        assert_eq!(mode_and_mtime(&f), (0o755, 1_614_834_367, 123_456_789));
        let w = RawWrapper::for_layer(&plan).unwrap();
        let tar = [w.prefix(), data, &w.suffix()].concat();
        assert_eq!(diff, crate::digest::Digest::of(&tar));

        // Without metadata: 0644 (less the umask), now.
        let d = tempfile::tempdir().unwrap();
        let plain = raw_plan(data, None);
        extract_with_diff_id(
            HashingReader::new(data),
            &plain,
            d.path(),
            ExtractOptions::default(),
        )
        .unwrap();
        let (mode, mtime, _) = mode_and_mtime(&d.path().join("weights/w.bin"));
        assert_eq!(mode & 0o111, 0, "not executable: {mode:o}");
        assert!(mtime > 1_614_834_367);
    }

    /// A bad metadata annotation is an error naming the layer, and nothing is written.
    #[test]
    fn raw_metadata_errors_name_the_layer() {
        let data = b"weights".as_slice();
        for (meta, says) in [
            (
                r#"{"mtime":"yesterday"}"#,
                "malformed org.cnai.model.file.metadata+json annotation",
            ),
            (
                "{not json",
                "malformed org.cnai.model.file.metadata+json annotation",
            ),
            (
                r#"{"mode":"rwx"}"#,
                "malformed org.cnai.model.file.metadata+json annotation",
            ),
            (
                r#"{"size":7,"typeflag":53}"#,
                "typeflag 53, not a regular file",
            ),
            (r#"{"size":8}"#, "says 8 bytes, the layer has 7"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let e = extract(
                HashingReader::new(data),
                &raw_plan(data, Some(meta)),
                d.path(),
                ExtractOptions::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("model layer weights/w.bin (sha256:"), "{e}");
            assert!(e.contains(says), "{e}");
            assert_eq!(
                fs::read_dir(d.path()).unwrap().count(),
                0,
                "nothing left: {meta}"
            );
        }
    }

    /// A ModelPack tar layer's files take their headers' mtimes (mtime 0 is left alone); a
    /// KitOps layer's do not.
    #[test]
    fn modelpack_tar_layers_restore_mtimes() {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, mtime) in [("a.bin", 1_614_834_367), ("zero.bin", 0)] {
            let mut h = tar::Header::new_ustar();
            h.set_size(3);
            h.set_mode(0o4750);
            h.set_mtime(mtime);
            h.set_cksum();
            tar.append_data(&mut h, name, &b"abc"[..]).unwrap();
        }
        let blob = tar.into_inner().unwrap();
        for (media_type, restored) in [
            ("application/vnd.cnai.model.weight.v1.tar", true),
            ("application/vnd.cncf.model.weight.v1.tar", true),
            ("application/vnd.kitops.modelkit.model.v1.tar", false),
        ] {
            let plan = LayerPlan {
                kind: crate::oci::LayerKind::Model,
                name: String::new(),
                path: ".".into(),
                desc: Descriptor {
                    media_type: media_type.into(),
                    digest: crate::digest::Digest::of(&blob),
                    size: blob.len() as u64,
                    ..Descriptor::default()
                },
                compression: Compression::None,
                raw: false,
            };
            let d = tempfile::tempdir().unwrap();
            extract(
                HashingReader::new(&blob[..]),
                &plan,
                d.path(),
                ExtractOptions::default(),
            )
            .unwrap();
            let (mode, mtime, _) = mode_and_mtime(&d.path().join("a.bin"));
            assert_eq!(mode & 0o7000, 0, "{media_type}: {mode:o}");
            assert_eq!(mtime == 1_614_834_367, restored, "{media_type}");
            assert!(mode_and_mtime(&d.path().join("zero.bin")).1 > 1_614_834_367);
        }
    }
}
