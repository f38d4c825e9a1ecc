//! Tar output byte-for-byte as KitOps writes it: Go's `archive/tar` fed headers that
//! kit has sanitised (uid 1000, gid 0, no user or group names, zero times).
//!
//! Go picks the first format that can hold a header: USTAR (long ASCII names split into
//! prefix and name), else PAX (an extended header `DIR/PaxHeaders.0/FILE` carrying `path`
//! or `size`). Its octal fields are zero-padded and NUL-terminated, its checksum field is
//! six digits, NUL, space, and the archive ends with two zero blocks. The `tar` crate's
//! encoders differ in all of these, so the blocks are formatted here; the `tar` crate still
//! reads every layer.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
const NAME: (usize, usize) = (0, 100);
const MODE: (usize, usize) = (100, 8);
const UID: (usize, usize) = (108, 8);
const GID: (usize, usize) = (116, 8);
const SIZE: (usize, usize) = (124, 12);
const MTIME: (usize, usize) = (136, 12);
const CHKSUM: (usize, usize) = (148, 8);
const TYPEFLAG: usize = 156;
const MAGIC: (usize, usize) = (257, 6);
const VERSION: (usize, usize) = (263, 2);
const DEVMAJOR: (usize, usize) = (329, 8);
const DEVMINOR: (usize, usize) = (337, 8);
const PREFIX: (usize, usize) = (345, 155);

/// The uid kit writes for every entry (its `sanitizeTarHeader`).
pub const KIT_UID: u64 = 1000;

/// One entry: a regular file of `size` bytes or a directory. `mode` keeps the permission
/// bits plus setuid (0o4000), setgid (0o2000) and sticky (0o1000), as Go's
/// `FileInfoHeader` does.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub size: u64,
    pub dir: bool,
}

fn field(b: &mut [u8; BLOCK], (off, len): (usize, usize)) -> &mut [u8] {
    &mut b[off..off + len]
}

/// Go's `formatString`: copy, NUL-terminate when there is room, and never leave a
/// truncated name ending in `/`.
fn put_str(b: &mut [u8], s: &[u8]) {
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s[..n]);
    if s.len() < b.len() {
        b[s.len()] = 0;
    }
    if s.len() > b.len() && b[b.len() - 1] == b'/' {
        let keep = s[..b.len() - 1]
            .iter()
            .rposition(|&c| c != b'/')
            .map_or(0, |i| i + 1);
        b[keep] = 0;
    }
}

fn fits_octal(len: usize, x: u64) -> bool {
    len == 1 || x < 1u64 << (3 * (len as u32 - 1))
}

/// Go's `formatOctal`: zero-padded to the width minus one, NUL-terminated; a value that
/// does not fit is written as zero (PAX carries it).
fn put_octal(b: &mut [u8], x: u64) {
    let x = if fits_octal(b.len(), x) { x } else { 0 };
    let s = format!("{x:o}");
    let pad = b.len().saturating_sub(s.len() + 1);
    let mut v = vec![b'0'; pad];
    v.extend_from_slice(s.as_bytes());
    put_str(b, &v);
}

fn checksum(b: &mut [u8; BLOCK]) {
    field(b, CHKSUM).fill(b' ');
    let sum: u64 = b.iter().map(|&c| u64::from(c)).sum();
    put_octal(&mut b[CHKSUM.0..CHKSUM.0 + 7], sum);
    b[CHKSUM.0 + 7] = b' ';
}

fn set_ustar_magic(b: &mut [u8; BLOCK]) {
    field(b, MAGIC).copy_from_slice(b"ustar\0");
    field(b, VERSION).copy_from_slice(b"00");
}

/// Go's `splitUSTARPath`.
fn split_ustar(name: &str) -> Option<(&str, &str)> {
    let mut length = name.len();
    if length <= NAME.1 || !name.is_ascii() {
        return None;
    } else if length > PREFIX.1 + 1 {
        length = PREFIX.1 + 1;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let (plen, nlen) = (i, name.len() - i - 1);
    if i == 0 || nlen > NAME.1 || nlen == 0 || plen > PREFIX.1 {
        return None;
    }
    Some((&name[..i], &name[i + 1..]))
}

/// Go's `toASCII`: drops every non-ASCII character (and NUL).
fn to_ascii(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && *c != '\0').collect()
}

/// Go's `formatPAXRecord`.
fn pax_record(k: &str, v: &str) -> String {
    let mut size = k.len() + v.len() + 3;
    size += size.to_string().len();
    let mut rec = format!("{size} {k}={v}\n");
    if rec.len() != size {
        rec = format!("{} {k}={v}\n", rec.len());
    }
    rec
}

/// The fields `templateV7Plus` fills for a sanitised kit header.
fn template(e: &Entry, name: &[u8], size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[TYPEFLAG] = if e.dir { b'5' } else { b'0' };
    put_str(field(&mut b, NAME), name);
    put_octal(field(&mut b, MODE), u64::from(e.mode));
    put_octal(field(&mut b, UID), KIT_UID);
    put_octal(field(&mut b, GID), 0);
    put_octal(field(&mut b, SIZE), size);
    put_octal(field(&mut b, MTIME), 0);
    put_octal(field(&mut b, DEVMAJOR), 0);
    put_octal(field(&mut b, DEVMINOR), 0);
    b
}

/// The header block(s) Go writes for `e`: one USTAR block, or a PAX extended header
/// (block + records, padded) followed by the main block.
pub fn header(e: &Entry) -> Vec<u8> {
    let size = if e.dir { 0 } else { e.size };
    let long = e.name.len() > NAME.1;
    let mut pax: Vec<(&str, String)> = Vec::new();
    let mut ustar = true;
    if !e.name.is_ascii() || long {
        if split_ustar(e.name).is_none() {
            ustar = false;
        }
        pax.push(("path", e.name.to_string()));
    }
    if !fits_octal(SIZE.1, size) {
        ustar = false;
        pax.push(("size", size.to_string()));
    }
    if ustar {
        let (prefix, name) = split_ustar(e.name).unwrap_or(("", e.name));
        let mut b = template(e, name.as_bytes(), size);
        put_str(field(&mut b, PREFIX), prefix.as_bytes());
        set_ustar_magic(&mut b);
        checksum(&mut b);
        return b.to_vec();
    }
    pax.sort();
    let data: String = pax.iter().map(|(k, v)| pax_record(k, v)).collect();
    let (dir, file) = match e.name.rfind('/') {
        Some(i) => (&e.name[..=i], &e.name[i + 1..]),
        None => ("", e.name),
    };
    let xname = path_join(&[dir, "PaxHeaders.0", file]);
    let mut xname = to_ascii(&xname);
    xname.truncate(NAME.1);
    let xname = xname.trim_end_matches('/');
    let mut x = [0u8; BLOCK];
    x[TYPEFLAG] = b'x';
    put_str(field(&mut x, NAME), xname.as_bytes());
    for f in [MODE, UID, GID] {
        put_octal(field(&mut x, f), 0);
    }
    put_octal(field(&mut x, SIZE), data.len() as u64);
    put_octal(field(&mut x, MTIME), 0);
    set_ustar_magic(&mut x);
    checksum(&mut x);
    let mut out = x.to_vec();
    out.extend_from_slice(data.as_bytes());
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    let mut b = template(e, to_ascii(e.name).as_bytes(), size);
    set_ustar_magic(&mut b);
    checksum(&mut b);
    out.extend_from_slice(&b);
    out
}

/// Go's `path.Join` for the relative, already clean names packed here: skips empty
/// parts and collapses separators.
fn path_join(parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Streams a tar archive: headers as above, file bodies padded to 512 bytes, two zero
/// blocks at the end.
pub struct Writer<W: Write> {
    w: W,
    /// File bodies go through this one buffer: a read fills it, and a write of a whole
    /// buffer passes a `BufWriter` of the same capacity without another copy (`io::copy`
    /// would add two, through an 8 KiB stack buffer). Allocated on the first file.
    buf: Vec<u8>,
}

/// Size of [`Writer`]'s body buffer.
const BODY_BUF: usize = 1 << 20;

impl<W: Write> Writer<W> {
    pub fn new(w: W) -> Self {
        Writer { w, buf: Vec::new() }
    }

    /// Copies at most `size` bytes of `data` into the archive; returns how many it gave.
    fn body(&mut self, data: &mut dyn Read, size: u64) -> io::Result<u64> {
        if self.buf.is_empty() && size > 0 {
            self.buf = vec![0u8; BODY_BUF];
        }
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.w.write_all(&self.buf[..n])?;
            done += n as u64;
        }
        Ok(done)
    }

    /// Writes `e`'s header and, for a file, exactly `e.size` bytes from `data`.
    /// Returns how many bytes `data` gave before it ended (the caller checks it).
    pub fn append(&mut self, e: &Entry, data: &mut dyn Read) -> io::Result<u64> {
        self.w.write_all(&header(e))?;
        if e.dir {
            return Ok(0);
        }
        let n = self.body(data, e.size)?;
        if n < e.size {
            // Keep the archive well-formed; the caller reports the short read.
            io::copy(&mut io::repeat(0).take(e.size - n), &mut self.w)?;
        }
        let pad = (BLOCK - (e.size % BLOCK as u64) as usize) % BLOCK;
        self.w.write_all(&[0u8; BLOCK][..pad])?;
        Ok(n)
    }

    /// Writes the end-of-archive marker and hands back the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.w.write_all(&[0u8; 2 * BLOCK])?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(bytes: &[u8]) -> Vec<(String, u32, u64, u64, bool)> {
        let mut ar = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            out.push((
                e.path().expect("path").to_string_lossy().into_owned(),
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                e.size(),
                h.entry_type().is_dir(),
            ));
        }
        out
    }

    #[test]
    fn ustar_block_as_go_writes_it() {
        let b = header(&Entry {
            name: "model.bin",
            mode: 0o644,
            size: 5,
            dir: false,
        });
        assert_eq!(b.len(), BLOCK);
        assert_eq!(&b[MODE.0..MODE.0 + 8], b"0000644\0");
        assert_eq!(&b[UID.0..UID.0 + 8], b"0001750\0");
        assert_eq!(&b[SIZE.0..SIZE.0 + 12], b"00000000005\0");
        assert_eq!(&b[DEVMAJOR.0..DEVMAJOR.0 + 8], b"0000000\0");
        assert_eq!(&b[MAGIC.0..VERSION.0 + 2], b"ustar\x0000");
        assert_eq!(b[CHKSUM.0 + 6], 0);
        assert_eq!(b[CHKSUM.0 + 7], b' ');
        assert!(
            b[265..329].iter().all(|&c| c == 0),
            "no user or group names"
        );
    }

    #[test]
    fn long_and_unicode_names_round_trip() {
        let long_split = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let long_pax = "x".repeat(300);
        let names = [
            "a/ünïcode.bin".to_string(),
            long_split.clone(),
            long_pax.clone(),
            "e".repeat(100),
        ];
        let mut w = Writer::new(Vec::new());
        for n in &names {
            w.append(
                &Entry {
                    name: n,
                    mode: 0o4755,
                    size: 3,
                    dir: false,
                },
                &mut &b"abc"[..],
            )
            .expect("append");
        }
        let bytes = w.finish().expect("finish");
        let got = read_back(&bytes);
        let got_names: Vec<_> = got.iter().map(|g| g.0.clone()).collect();
        assert_eq!(got_names, names);
        assert!(got.iter().all(|g| g.1 == 0o4755 && g.2 == 1000 && g.3 == 3));
        // The split name is plain USTAR (no extended header); the others use PAX.
        let split = header(&Entry {
            name: &long_split,
            mode: 0o644,
            size: 0,
            dir: false,
        });
        assert_eq!(split.len(), BLOCK);
        let pax = header(&Entry {
            name: "a/ünïcode.bin",
            mode: 0o644,
            size: 0,
            dir: false,
        });
        assert_eq!(&pax[..22], b"a/PaxHeaders.0/ncode.b");
        assert_eq!(pax[TYPEFLAG], b'x');
    }

    #[test]
    fn huge_sizes_go_to_pax() {
        let h = header(&Entry {
            name: "big",
            mode: 0o644,
            size: 9 << 30,
            dir: false,
        });
        let data = std::str::from_utf8(&h[BLOCK..BLOCK + 20]).expect("utf8");
        assert!(data.starts_with("19 size=9663676416\n"), "{data:?}");
        assert_eq!(
            &h[2 * BLOCK + SIZE.0..2 * BLOCK + SIZE.0 + 12],
            b"00000000000\0"
        );
    }

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", "abc"), "12 path=abc\n");
        let v = "y".repeat(91); // 4 + 91 + 3 = 98, +2 digits = 100: three digits
        assert!(pax_record("path", &v).starts_with("101 "));
    }
}
