//! The FUSE adapter: maps inodes to the registry's devices and files, and replies. It owns no
//! business logic: tables are assembled in `control`, I/O is done by `device`, texts come from
//! `table`, `report` and `target`.

mod activate;
mod nodes;
mod passthrough;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::access::Caller;
use crate::coherence::{CacheMode, Coherence};
use crate::control::{CommandInput, TableSession, UuidInput, Writer};
use crate::device::Device;
use crate::error::DmError;
use crate::registry::Registry;
use crate::secret::Zeroizing;
use crate::units::Bytes;
use activate::{ActivateInput, Verb};
use nodes::{CtlFile, DmFile, Node};
pub use passthrough::Mode as PassthroughMode;
use passthrough::Passthrough;

/// Nothing is cached by the kernel: devices come and go, and their texts change.
const TTL: Duration = Duration::ZERO;

enum Handle {
    /// An open device; a passthrough handle keeps its backing id alive (the kernel closes the
    /// backing file when the last one is dropped).
    Dev(Arc<Device>, Option<Arc<BackingId>>),
    /// A text file's content, taken at open so one reader sees one consistent text.
    Text(Zeroizing<Vec<u8>>),
    Table(Mutex<Option<Box<TableSession>>>),
    Command(Mutex<CommandInput>),
    Uuid(Mutex<UuidInput>),
    Activate(Mutex<ActivateInput>),
}

pub struct DmFs {
    registry: Arc<Registry>,
    /// The mount's page-cache coherence: requests are answered once what they made stale is
    /// gone.
    coherence: Arc<Coherence>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    passthrough: Passthrough,
    cache: CacheMode,
    /// The largest read-ahead the kernel may send, in bytes (0: the kernel's default).
    read_ahead: u32,
}

/// The inode number of `dev/NAME` for the device with this id (for page cache notifications).
pub fn device_ino(id: u64) -> INodeNo {
    Node::DevFile(id).ino()
}

/// The inode number of `dev/` (for dropping its entries).
pub fn dev_dir_ino() -> INodeNo {
    Node::DevDir.ino()
}

fn errno(e: &DmError) -> Errno {
    Errno::from_i32(e.errno)
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

thread_local! {
    /// Each request thread reads into one buffer, grown to the largest request it has seen
    /// (1 MiB at most): no allocation per read.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn read_device(device: &Device, offset: u64, size: u32, reply: ReplyData) {
    // Where the bytes lie in a backing file's page cache, the reply is written from there.
    let mut reply = Some(reply);
    let mut send = |bytes: &[u8]| {
        if let Some(reply) = reply.take() {
            reply.data(bytes);
        }
    };
    if device.read_in_place(Bytes(offset), size as usize, &mut send) {
        return;
    }
    let Some(reply) = reply else { return };
    READ_BUF.with_borrow_mut(|buf| {
        if buf.len() < size as usize {
            buf.resize(size as usize, 0);
        }
        let buf = &mut buf[..size as usize];
        match device.read(Bytes(offset), buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(io_errno(&e)),
        }
    })
}

/// Writes through `dev/NAME`, and answers once the pages this made stale in other devices
/// showing the same bytes (and elsewhere in this one) are dropped. The written range of this
/// file's own pages is the kernel's to keep (see `Device::write`: a held cached reader of the
/// same file was seen to get every write made through a direct open). A writeback
/// write is answered at once: the kernel holds its pages under writeback until it has the
/// answer.
fn write_device(
    coherence: &Coherence,
    device: &Device,
    offset: u64,
    data: &[u8],
    writeback: bool,
    reply: ReplyWrite,
) {
    let answer = move |result: std::io::Result<usize>| match result {
        Ok(n) => reply.written(n as u32),
        Err(e) => reply.error(io_errno(&e)),
    };
    let result = device.write(Bytes(offset), data);
    if writeback {
        // Cut short at the device's end, or refused past it (Device::write says which): the
        // kernel took these bytes into its cache and grew its size of dev/NAME to hold them
        // (it owns the size with the writeback cache), so that inode goes at the last close.
        let past_end = match &result {
            Ok(n) => *n < data.len(),
            Err(e) => e.raw_os_error() == Some(libc::ENOSPC),
        };
        if past_end {
            device.kernel_size.mark_wrong();
        }
        // The write queued its drops before this answer: an fsync the answer lets through
        // answers behind them (Coherence::reply_when_dropped).
        answer(result);
    } else {
        coherence.reply_when_dropped(move || answer(result));
    }
}

/// Runs a request handler so that a panic (a bug, never an answer to input) ends only that
/// request: the unsent reply answers EIO as it unwinds, and the request thread lives on.
fn guard(op: &str, handler: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)).is_err() {
        log::error!("{op}: request handler panicked; answered EIO");
    }
}

/// The process behind a request, for what it may do.
fn caller(req: &Request) -> Caller {
    Caller::of_request(req.uid(), req.gid(), req.pid())
}

/// The process behind a write or flush of a table file: who began an unfinished line, and
/// whether a close is theirs.
fn writer(req: &Request, lock_owner: Option<LockOwner>) -> Writer {
    Writer {
        pid: req.pid(),
        lock_owner: lock_owner.map(|o| o.0),
    }
}

/// The working directory of the process behind a request, for relative paths in tables.
fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

impl DmFs {
    pub fn new(
        registry: Arc<Registry>,
        coherence: Arc<Coherence>,
        passthrough: PassthroughMode,
        cache: CacheMode,
        read_ahead: u32,
    ) -> DmFs {
        DmFs {
            registry,
            coherence,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started: SystemTime::now(),
            passthrough: Passthrough::new(passthrough),
            cache,
            read_ahead,
        }
    }

    /// How an open of `dev/NAME` uses the page cache: see `CacheMode`. Opens for writing
    /// stay direct in page-cache mode, so a write never holds page locks while the pages it
    /// made stale elsewhere are dropped.
    fn dev_open_flags(&self, device: &Device, writing: bool) -> FopenFlags {
        let direct = FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        if self.cache == CacheMode::Direct {
            return direct;
        }
        // Even a direct open can mmap, which caches pages: every open counts.
        self.coherence.opened_cached(device);
        match self.cache {
            CacheMode::PageCache if writing => direct,
            _ => FopenFlags::FOPEN_KEEP_CACHE,
        }
    }

    fn device(&self, id: u64) -> Option<Arc<Device>> {
        self.registry.get_by_id(id)
    }

    /// The text a readable file shows, or None if the node is gone. A table's text may hold a
    /// key, so every text is wiped when dropped.
    fn text(&self, node: Node) -> Option<Zeroizing<String>> {
        Some(Zeroizing::new(match node {
            Node::Ctl(CtlFile::Targets) => crate::target::targets_text(),
            Node::Ctl(CtlFile::Version) => crate::report::version_text(),
            Node::Ctl(CtlFile::Errors) => self.registry.errors.text(),
            Node::DmFile(id, f) => {
                let device = self.device(id)?;
                match f {
                    DmFile::Table => return Some(device.table().table_text()),
                    DmFile::InactiveTable => {
                        return Some(
                            device
                                .inactive_table()
                                .map(|t| t.table_text())
                                .unwrap_or_default(),
                        );
                    }
                    DmFile::Status => self.registry.status_text(&device),
                    DmFile::Info => crate::report::info_text(&device),
                    DmFile::Deps => crate::report::deps_text(&device),
                    DmFile::Uuid => device.uuid().map(|u| format!("{u}\n")).unwrap_or_default(),
                    DmFile::Suspended => format!("{}\n", u8::from(device.is_suspended())),
                }
            }
            _ => String::new(),
        }))
    }

    /// Whether `dm/NAME/table` or `inactive-table` shows a key: then it is its owner's only.
    fn shows_key(&self, id: u64, file: DmFile) -> bool {
        let Some(device) = self.device(id) else {
            return false;
        };
        match file {
            DmFile::Table => device.table().holds_key(),
            DmFile::InactiveTable => device.inactive_table().is_some_and(|t| t.holds_key()),
            _ => false,
        }
    }

    /// Attributes of a node, or None if it no longer exists. Owners and modes are what the
    /// kernel checks (`default_permissions`): `ctl/` is the daemon user's (and the ctl group's),
    /// a device's files are its owner's.
    fn attr(&self, node: Node) -> Option<FileAttr> {
        let policy = &self.registry.policy;
        let (daemon, gid) = (policy.uid, policy.gid);
        let owner = |id| self.device(id).map(|d| d.owner);
        let (uid, gid, perm, size) = match node {
            Node::DevFile(id) => {
                let device = self.device(id)?;
                let (uid, gid, mode) = policy.dev_file(device.owner, device.is_read_only());
                (uid, gid, mode, device.size().bytes().0)
            }
            Node::DmDevDir(id) => (owner(id)?, gid, 0o755, 0),
            Node::DmFile(id, DmFile::Uuid) => {
                (owner(id)?, gid, 0o644, self.text(node)?.len() as u64)
            }
            Node::DmFile(id, f) => {
                let mode = if self.shows_key(id, f) { 0o400 } else { 0o444 };
                (owner(id)?, gid, mode, self.text(node)?.len() as u64)
            }
            Node::Ctl(CtlFile::Targets | CtlFile::Version | CtlFile::Errors) => {
                (daemon, gid, 0o444, self.text(node)?.len() as u64)
            }
            Node::Ctl(CtlFile::Command(_)) => {
                let (gid, mode) = policy.ctl_file();
                (daemon, gid, mode, 0)
            }
            // Who may write it may read back, from the same open file, what it made.
            Node::Ctl(CtlFile::Activate | CtlFile::Deactivate) => {
                let (gid, mode) = policy.ctl_file();
                (daemon, gid, mode | mode << 1, 0)
            }
            Node::Pending(_) => (daemon, gid, 0o200, 0),
            Node::CreateDir | Node::ReloadDir => {
                let (gid, mode) = policy.ctl_dir();
                (daemon, gid, mode, 0)
            }
            // With a ctl group, its members may remove their own devices with rm; the sticky bit
            // keeps them from removing the others' (dmfs checks that too).
            Node::DevDir if policy.ctl_gid.is_some() => {
                let (gid, mode) = policy.ctl_dir();
                (daemon, gid, mode | 0o1000, 0)
            }
            _ => (daemon, gid, 0o755, 0),
        };
        let kind = node.kind();
        Some(FileAttr {
            ino: node.ino(),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm: perm as u16,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: Node, name: &str) -> Option<Node> {
        match parent {
            Node::Root => match name {
                "ctl" => Some(Node::CtlDir),
                "dev" => Some(Node::DevDir),
                "dm" => Some(Node::DmDir),
                _ => None,
            },
            Node::CtlDir => {
                match name {
                    "create" => return Some(Node::CreateDir),
                    "reload" => return Some(Node::ReloadDir),
                    _ => {}
                }
                CtlFile::ALL
                    .into_iter()
                    .find(|f| f.name() == name)
                    .map(Node::Ctl)
            }
            Node::DevDir => self.registry.get(name).map(|d| Node::DevFile(d.id)),
            Node::DmDir => self.registry.get(name).map(|d| Node::DmDevDir(d.id)),
            Node::DmDevDir(id) => DmFile::ALL
                .into_iter()
                .find(|f| f.name() == name)
                .map(|f| Node::DmFile(id, f)),
            _ => None,
        }
    }

    /// Directory entries after "." and "..".
    fn children(&self, dir: Node) -> Option<Vec<(Node, String)>> {
        Some(match dir {
            Node::Root => vec![
                (Node::CtlDir, "ctl".into()),
                (Node::DevDir, "dev".into()),
                (Node::DmDir, "dm".into()),
            ],
            Node::CtlDir => [
                (Node::CreateDir, "create".to_string()),
                (Node::ReloadDir, "reload".to_string()),
            ]
            .into_iter()
            .chain(
                CtlFile::ALL
                    .into_iter()
                    .map(|f| (Node::Ctl(f), f.name().to_string())),
            )
            .collect(),
            Node::CreateDir | Node::ReloadDir => Vec::new(),
            Node::DevDir => self
                .registry
                .list()
                .into_iter()
                .map(|d| (Node::DevFile(d.id), d.name()))
                .collect(),
            Node::DmDir => self
                .registry
                .list()
                .into_iter()
                .map(|d| (Node::DmDevDir(d.id), d.name()))
                .collect(),
            Node::DmDevDir(id) => {
                self.device(id)?;
                DmFile::ALL
                    .into_iter()
                    .map(|f| (Node::DmFile(id, f), f.name().to_string()))
                    .collect()
            }
            _ => return None,
        })
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        self.handles.write().insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles.read().get(&fh.0).cloned()
    }

    fn parent_of(node: Node) -> Node {
        match node {
            Node::CtlDir | Node::DevDir | Node::DmDir | Node::Root => Node::Root,
            Node::CreateDir | Node::ReloadDir => Node::CtlDir,
            Node::DmDevDir(_) => Node::DmDir,
            _ => Node::Root,
        }
    }
}

impl Filesystem for DmFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Optional speed-ups; a kernel without them still works.
        for flag in [InitFlags::FUSE_ASYNC_DIO, InitFlags::FUSE_PARALLEL_DIROPS] {
            let _ = config.add_capabilities(flag);
        }
        // mmap of a direct-I/O file maps page cache pages. In page-cache mode those are kept
        // true like any other (every open counts as cached); in direct mode nothing may be
        // cached, so mmap is refused (ENODEV) rather than left to go stale.
        if self.cache != CacheMode::Direct {
            let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        }
        if self.cache == CacheMode::Writeback
            && let Err(missing) = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
        {
            log::warn!("the kernel does not offer {missing:?}: writes are not cached");
        }
        if self.read_ahead > 0
            && let Err(nearest) = config.set_max_readahead(self.read_ahead)
        {
            let _ = config.set_max_readahead(nearest);
        }
        // Backing files live on ordinary filesystems: one level of stacking is enough.
        let offered = self.passthrough.wanted()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.negotiated(offered);
        Ok(())
    }

    fn destroy(&mut self) {
        self.registry.flush_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guard("lookup", || {
            let (Some(parent), Some(name)) = (Node::from_ino(parent), name.to_str()) else {
                return reply.error(Errno::ENOENT);
            };
            match self.child(parent, name).and_then(|n| self.attr(n)) {
                Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
                None => reply.error(Errno::ENOENT),
            }
        })
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        guard("getattr", || {
            match Node::from_ino(ino).and_then(|n| self.attr(n)) {
                Some(attr) => reply.attr(&TTL, &attr),
                None => reply.error(Errno::ENOENT),
            }
        })
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guard("setattr", || {
            let Some(node) = Node::from_ino(ino) else {
                return reply.error(Errno::ENOENT);
            };
            if let (Node::DevFile(id), Some(mode)) = (node, mode) {
                // chmod a-w makes the device read-only, as `blockdev --setro` does; u+w undoes it.
                if let Some(device) = self.device(id) {
                    let caller = caller(req);
                    if let Err(e) = self
                        .registry
                        .check_manager(&caller, &device)
                        .and_then(|()| self.registry.set_read_only(&device, mode & 0o222 == 0))
                    {
                        self.registry.errors.record("chmod", &device.name(), &e);
                        return reply.error(errno(&e));
                    }
                }
            }
            let Some(attr) = self.attr(node) else {
                return reply.error(Errno::ENOENT);
            };
            if let Some(size) = size {
                let ok = match node {
                    // A device's size is its table's: only a no-op "truncate" to that size passes.
                    Node::DevFile(_) => size == attr.size,
                    // `echo NAME > ctl/remove` truncates before writing.
                    Node::Ctl(CtlFile::Command(_) | CtlFile::Activate)
                    | Node::Pending(_)
                    | Node::DmFile(_, DmFile::Uuid) => size == 0,
                    _ => false,
                };
                if !ok {
                    if let Node::DevFile(id) = node {
                        let name = self.device(id).map(|d| d.name()).unwrap_or_default();
                        let err = DmError::invalid(format!(
                            "dev/{name} has the fixed size of its table ({} bytes) and cannot be truncated \
                             (use dd conv=notrunc)",
                            attr.size
                        ));
                        self.registry.errors.record("truncate", &name, &err);
                    }
                    return reply.error(if attr.kind == FileType::Directory {
                        Errno::EISDIR
                    } else {
                        Errno::EINVAL
                    });
                }
            }
            reply.attr(&TTL, &attr)
        })
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guard("unlink", || {
            let (Some(Node::DevDir), Some(name)) = (Node::from_ino(parent), name.to_str()) else {
                return reply.error(Errno::EACCES);
            };
            match self.registry.remove(name, &caller(req)) {
                Ok(()) => reply.ok(),
                Err(e) => {
                    self.registry.errors.record("remove", name, &e);
                    reply.error(errno(&e))
                }
            }
        })
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guard("open", || {
            let Some(node) = Node::from_ino(ino) else {
                return reply.error(Errno::ENOENT);
            };
            let writing = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
            let handle = match node {
                Node::DevFile(id) => {
                    let Some(device) = self.device(id) else {
                        return reply.error(Errno::ENOENT);
                    };
                    if writing && device.is_read_only() {
                        return reply.error(Errno::EROFS);
                    }
                    let backing = self.passthrough.for_open(&device, writing, &reply);
                    device.open_count.fetch_add(1, Ordering::SeqCst);
                    device.kernel_size.opened();
                    if let Some(id) = backing {
                        device.passthrough_opens.fetch_add(1, Ordering::SeqCst);
                        let fh = self.add_handle(Handle::Dev(device, Some(id.clone())));
                        return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    }
                    let flags = self.dev_open_flags(&device, writing);
                    let fh = self.add_handle(Handle::Dev(device, None));
                    return reply.opened(FileHandle(fh), flags);
                }
                Node::Ctl(CtlFile::Command(c)) => {
                    Handle::Command(Mutex::new(CommandInput::new(c, caller(req))))
                }
                Node::Ctl(CtlFile::Activate) => Handle::Activate(Mutex::new(ActivateInput::new(
                    Verb::Activate,
                    caller(req),
                    cwd_of(req.pid()),
                ))),
                Node::Ctl(CtlFile::Deactivate) => Handle::Activate(Mutex::new(ActivateInput::new(
                    Verb::Deactivate,
                    caller(req),
                    cwd_of(req.pid()),
                ))),
                Node::DmFile(id, DmFile::Uuid) if writing => {
                    let Some(device) = self.device(id) else {
                        return reply.error(Errno::ENOENT);
                    };
                    Handle::Uuid(Mutex::new(UuidInput::new(device, caller(req))))
                }
                Node::Ctl(_) | Node::DmFile(..) => {
                    if writing {
                        return reply.error(Errno::EACCES);
                    }
                    // The mode says so too, but the kernel may hold attributes from before a
                    // reload brought the key.
                    if let Node::DmFile(id, f) = node {
                        let caller = caller(req);
                        let owner = self.device(id).map(|d| d.owner);
                        if self.shows_key(id, f) && caller.uid != 0 && Some(caller.uid) != owner {
                            return reply.error(Errno::EACCES);
                        }
                    }
                    let Some(mut text) = self.text(node) else {
                        return reply.error(Errno::ENOENT);
                    };
                    Handle::Text(Zeroizing::new(std::mem::take(&mut *text).into_bytes()))
                }
                Node::Pending(_) => return reply.error(Errno::ENOENT),
                _ => return reply.error(Errno::EISDIR),
            };
            let fh = self.add_handle(handle);
            reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
            )
        })
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        guard("create", || {
            let parent = Node::from_ino(parent);
            if !matches!(parent, Some(Node::CreateDir | Node::ReloadDir)) {
                return reply.error(Errno::EACCES);
            }
            let Some(name) = name.to_str() else {
                let err = DmError::invalid("Invalid device name: not UTF-8");
                self.registry
                    .errors
                    .record("create", &name.to_string_lossy(), &err);
                return reply.error(errno(&err));
            };
            let cwd = cwd_of(req.pid());
            let caller = caller(req);
            let session = if parent == Some(Node::CreateDir) {
                // A table file created without write permission makes a read-only device.
                TableSession::create(&self.registry, name, cwd, caller, mode & 0o222 == 0)
            } else {
                TableSession::reload(&self.registry, name, cwd, caller)
            };
            match session {
                Ok(session) => {
                    let fh = self.add_handle(Handle::Table(Mutex::new(Some(Box::new(session)))));
                    let attr = self
                        .attr(Node::Pending(fh))
                        .expect("pending nodes always have attributes");
                    reply.created(
                        &TTL,
                        &attr,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO,
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        guard("read", || {
            let Some(handle) = self.handle(fh) else {
                return reply.error(Errno::EBADF);
            };
            match &*handle {
                Handle::Dev(device, _) => {
                    let mut slot = Some(reply);
                    let parked = device.defer_if_suspended(|| {
                        let (device, reply) = (device.clone(), slot.take().expect("reply"));
                        Box::new(move || read_device(&device, offset, size, reply))
                    });
                    if let (false, Some(reply)) = (parked, slot) {
                        read_device(device, offset, size, reply)
                    }
                }
                Handle::Text(text) => {
                    let start = std::cmp::min(offset as usize, text.len());
                    let end = std::cmp::min(start + size as usize, text.len());
                    reply.data(&text[start..end])
                }
                Handle::Activate(input) => {
                    let input = input.lock();
                    let text = input.report();
                    let start = std::cmp::min(offset as usize, text.len());
                    let end = std::cmp::min(start + size as usize, text.len());
                    reply.data(&text[start..end])
                }
                Handle::Table(_) | Handle::Command(_) | Handle::Uuid(_) => {
                    reply.error(Errno::EBADF)
                }
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guard("write", || {
            let Some(handle) = self.handle(fh) else {
                return reply.error(Errno::EBADF);
            };
            let result = match &*handle {
                Handle::Dev(device, _) => {
                    let writeback = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
                    let mut slot = Some(reply);
                    let parked = device.defer_if_suspended(|| {
                        let (device, reply, data) =
                            (device.clone(), slot.take().expect("reply"), data.to_vec());
                        let coherence = self.coherence.clone();
                        Box::new(move || {
                            write_device(&coherence, &device, offset, &data, writeback, reply)
                        })
                    });
                    if let (false, Some(reply)) = (parked, slot) {
                        write_device(&self.coherence, device, offset, data, writeback, reply)
                    }
                    return;
                }
                // A command may change what devices show (a resume swapping tables in): it is
                // answered once their stale pages are gone.
                Handle::Table(session) => match &mut *session.lock() {
                    Some(s) => s.write(&self.registry, data, writer(req, lock_owner)),
                    None => Err(DmError::new(libc::EBADF, "the table file is closed")),
                },
                Handle::Command(input) => input.lock().write(&self.registry, data),
                Handle::Uuid(input) => input.lock().write(&self.registry, data),
                Handle::Activate(input) => input.lock().write(&self.registry, data),
                Handle::Text(_) => return reply.error(Errno::EBADF),
            };
            let len = data.len() as u32;
            self.coherence.reply_when_dropped(move || match result {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(errno(&e)),
            })
        })
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guard("flush", || {
            let Some(handle) = self.handle(fh) else {
                return reply.ok();
            };
            // A table or command may change what devices show (a resume swapping tables in):
            // the close is answered once their stale pages are gone. The kernel flushes a
            // closing dev/ file's writeback pages first: its close returns once the other
            // devices showing them have dropped their copies.
            let result = match &*handle {
                Handle::Table(session) => match &mut *session.lock() {
                    Some(s) => s.commit(&self.registry, writer(req, Some(lock_owner))),
                    None => Ok(()),
                },
                Handle::Command(input) => input.lock().flush(&self.registry),
                Handle::Uuid(input) => input.lock().flush(&self.registry),
                Handle::Activate(input) => input.lock().flush(&self.registry),
                Handle::Dev(..) | Handle::Text(_) => Ok(()),
            };
            self.coherence.reply_when_dropped(move || match result {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            })
        })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        guard("release", || {
            let handle = self.handles.write().remove(&fh.0);
            if let Some(handle) = handle {
                match &*handle {
                    Handle::Dev(device, backing) => {
                        let last = device.open_count.fetch_sub(1, Ordering::SeqCst) == 1;
                        if backing.is_some() {
                            device.passthrough_opens.fetch_sub(1, Ordering::SeqCst);
                        }
                        if last && let Some(why) = device.kernel_size.take_at_last_close() {
                            self.coherence.device_resized(device, why);
                        }
                    }
                    Handle::Table(session) => {
                        if let Some(s) = session.lock().take() {
                            s.close(&self.registry);
                        }
                    }
                    Handle::Command(input) => {
                        let _ = input.lock().flush(&self.registry);
                    }
                    Handle::Uuid(input) => {
                        let _ = input.lock().flush(&self.registry);
                    }
                    Handle::Activate(input) => {
                        let _ = input.lock().flush(&self.registry);
                    }
                    Handle::Text(_) => {}
                }
            }
            reply.ok()
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guard("fsync", || {
            let Some(handle) = self.handle(fh) else {
                return reply.error(Errno::EBADF);
            };
            match &*handle {
                // Writeback writes were answered before their aliases' pages were dropped:
                // fsync returns once they have been.
                Handle::Dev(device, _) => {
                    let result = device.flush();
                    self.coherence.reply_when_dropped(move || match result {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(io_errno(&e)),
                    })
                }
                _ => reply.ok(),
            }
        })
    }

    /// No extended attributes; ENOSYS tells the kernel to stop asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        guard("readdir", || {
            let Some(dir) = Node::from_ino(ino) else {
                return reply.error(Errno::ENOENT);
            };
            let Some(children) = self.children(dir) else {
                return reply.error(Errno::ENOTDIR);
            };
            let entries = [
                (dir, ".".to_string()),
                (Self::parent_of(dir), "..".to_string()),
            ]
            .into_iter()
            .chain(children);
            for (i, (node, name)) in entries.enumerate().skip(offset as usize) {
                if reply.add(node.ino(), (i + 1) as u64, node.kind(), name) {
                    break;
                }
            }
            reply.ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn a_panicking_handler_is_contained() {
        let mut after = false;
        guard("test", || panic!("bug"));
        guard("test", || after = true);
        assert!(after);
    }
}
