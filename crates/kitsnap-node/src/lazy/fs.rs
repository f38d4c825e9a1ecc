//! The read-only FUSE view of a lazy layer: the index's table of contents as inodes, file
//! reads served from the blob once their chunks are verified.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request, SessionACL,
};
use kitsnap_core::lazy::EntryKind;

use super::LazyBlob;
use crate::error::{Error, Result};

/// Nothing in a layer ever changes: the kernel may keep names, attributes and pages.
const TTL: Duration = Duration::from_secs(3600);
/// One FUSE thread per mount (each holds a 16 MiB request buffer): a read whose bytes are
/// not there yet waits on the blocking pool instead, so it never holds up the others.
const THREADS: usize = 1;

struct Node {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    offset: u64,
    link: Option<OsString>,
    parent: u64,
    children: BTreeMap<OsString, u64>,
}

pub struct LazyFs {
    nodes: Vec<Node>,
    blob: Arc<LazyBlob>,
    rt: tokio::runtime::Handle,
}

fn dir_node(parent: u64) -> Node {
    Node {
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        offset: 0,
        link: None,
        parent,
        children: BTreeMap::new(),
    }
}

impl LazyFs {
    /// The tree of the index's entries; directories a path implies but the layer does not
    /// list are made 0755 (as extraction makes them), a later entry for a path wins.
    pub fn new(blob: Arc<LazyBlob>, rt: tokio::runtime::Handle) -> LazyFs {
        let mut nodes = vec![dir_node(1)];
        for e in &blob.layer().entries {
            let mut ino = 1u64;
            let parts: Vec<&str> = e.path.split('/').filter(|p| !p.is_empty()).collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let name = OsString::from(*part);
                let next = match nodes[(ino - 1) as usize].children.get(&name) {
                    Some(&n) => n,
                    None => {
                        nodes.push(dir_node(ino));
                        let n = nodes.len() as u64;
                        nodes[(ino - 1) as usize].children.insert(name, n);
                        n
                    }
                };
                if !last && nodes[(next - 1) as usize].kind != EntryKind::Dir {
                    // A file in the way of a directory: the directory replaces it.
                    let n = &mut nodes[(next - 1) as usize];
                    *n = dir_node(ino);
                }
                ino = next;
            }
            let n = &mut nodes[(ino - 1) as usize];
            if e.kind != EntryKind::Dir {
                n.children.clear();
            }
            n.kind = e.kind;
            n.mode = e.mode;
            n.uid = e.uid as u32;
            n.gid = e.gid as u32;
            n.mtime = e.mtime;
            n.size = e.size;
            n.offset = e.offset;
            n.link = e.link.as_ref().map(OsString::from);
        }
        LazyFs { nodes, blob, rt }
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get((ino.0 as usize).checked_sub(1)?)
    }

    fn attr(&self, ino: u64, n: &Node) -> FileAttr {
        let t = if n.mtime >= 0 {
            UNIX_EPOCH + Duration::from_secs(n.mtime as u64)
        } else {
            UNIX_EPOCH
        };
        let (kind, size) = match n.kind {
            EntryKind::Dir => (FileType::Directory, 4096),
            EntryKind::File => (FileType::RegularFile, n.size),
            EntryKind::Symlink => (
                FileType::Symlink,
                n.link.as_ref().map_or(0, |l| l.len() as u64),
            ),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            // The bytes live once, in the snapshot's blob: walks that add up blocks (`kitsnap
            // df`) count that file, not this view of it.
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: (n.mode & 0o7777) as u16,
            nlink: if n.kind == EntryKind::Dir { 2 } else { 1 },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.node(parent).and_then(|p| p.children.get(name)) {
            Some(&ino) => {
                let n = &self.nodes[(ino - 1) as usize];
                reply.entry(&TTL, &self.attr(ino, n), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &self.attr(ino.0, n)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| n.link.as_ref()) {
            Some(l) => reply.data(l.as_bytes()),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.node(ino) {
            Some(n) if n.kind == EntryKind::File => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if offset >= n.size {
            return reply.data(&[]);
        }
        let len = (size as u64).min(n.size - offset);
        let start = n.offset + offset;
        let serve = move |blob: &LazyBlob, ready: Result<(), i32>, reply: ReplyData| match ready
            .and_then(|()| blob.read_at(start, len as usize))
        {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(Errno::from_i32(e)),
        };
        if self.blob.has(start, start + len) {
            serve(&self.blob, Ok(()), reply);
        } else {
            // The wait is a task, not a thread; only the read itself (disk) and the reply
            // take the blocking pool.
            let blob = self.blob.clone();
            self.rt.spawn(async move {
                let ready = blob.ensure(start, start + len).await;
                let _ = tokio::task::spawn_blocking(move || serve(&blob, ready, reply)).await;
            });
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(n) if n.kind == EntryKind::Dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (n.parent, FileType::Directory, OsStr::new("..")),
        ];
        let kids = n.children.iter().map(|(name, &c)| {
            let kind = match self.nodes[(c - 1) as usize].kind {
                EntryKind::Dir => FileType::Directory,
                EntryKind::File => FileType::RegularFile,
                EntryKind::Symlink => FileType::Symlink,
            };
            (c, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots
            .into_iter()
            .chain(kids)
            .enumerate()
            .skip(offset as usize)
        {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// Layers carry no extended attributes (overlayfs asks for its own on every lower).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let l = self.blob.layer();
        reply.statfs(
            l.size.div_ceil(4096),
            0,
            0,
            self.nodes.len() as u64,
            0,
            4096,
            255,
            4096,
        );
    }
}

/// Mounts `fs` read-only on `at`, readable by every user (containers run as any uid), with
/// the kernel checking modes as on any file system.
pub fn mount(fs: LazyFs, at: &Path) -> Result<fuser::BackgroundSession> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("kitsnap".into()),
        MountOption::Subtype("kitsnap".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(THREADS);
    fuser::spawn_mount(fs, at, &cfg).map_err(|e| {
        Error::invalid(format!(
            "mounting the lazy layer on {}: {e} (FUSE needs /dev/fuse and root; set lazy = false in the daemon's config to pull layers whole)",
            at.display()
        ))
    })
}
