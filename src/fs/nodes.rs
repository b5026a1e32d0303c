//! The inodes of a dmfs mount and their numbers. Device inodes are derived from the device's
//! id, which is never reused, so a stale inode of a removed device can never reach a new one.

use fuser::{FileType, INodeNo};

use crate::control::Command;

/// Files directly under `ctl/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtlFile {
    /// A write-only file taking one command per line.
    Command(Command),
    Targets,
    Version,
    Errors,
    /// `ctl/activate`: one image per line; the same open file reads back what was made.
    Activate,
    /// `ctl/deactivate`: images, volume groups or devices per line; read back as activate.
    Deactivate,
}

impl CtlFile {
    pub const ALL: [CtlFile; 10] = [
        CtlFile::Command(Command::ALL[0]),
        CtlFile::Command(Command::ALL[1]),
        CtlFile::Command(Command::ALL[2]),
        CtlFile::Command(Command::ALL[3]),
        CtlFile::Command(Command::ALL[4]),
        CtlFile::Targets,
        CtlFile::Version,
        CtlFile::Errors,
        CtlFile::Activate,
        CtlFile::Deactivate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CtlFile::Command(c) => c.operation(),
            CtlFile::Targets => "targets",
            CtlFile::Version => "version",
            CtlFile::Errors => "errors",
            CtlFile::Activate => "activate",
            CtlFile::Deactivate => "deactivate",
        }
    }
}

/// Files under `dm/NAME/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmFile {
    Table,
    InactiveTable,
    Status,
    Info,
    Deps,
    Uuid,
    Suspended,
}

impl DmFile {
    pub const ALL: [DmFile; 7] = [
        DmFile::Table,
        DmFile::InactiveTable,
        DmFile::Status,
        DmFile::Info,
        DmFile::Deps,
        DmFile::Uuid,
        DmFile::Suspended,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DmFile::Table => "table",
            DmFile::InactiveTable => "inactive-table",
            DmFile::Status => "status",
            DmFile::Info => "info",
            DmFile::Deps => "deps",
            DmFile::Uuid => "uuid",
            DmFile::Suspended => "suspended",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Root,
    CtlDir,
    DevDir,
    DmDir,
    CreateDir,
    ReloadDir,
    Ctl(CtlFile),
    /// A table being written into `ctl/create/NAME` or `ctl/reload/NAME`, by its file handle.
    Pending(u64),
    /// `dev/NAME`, by device id.
    DevFile(u64),
    /// `dm/NAME/`, by device id.
    DmDevDir(u64),
    DmFile(u64, DmFile),
}

const CTL_BASE: u64 = 16;
const DEVICE_BASE: u64 = 1 << 32;
const DEVICE_SLOTS: u64 = 16;
const PENDING_BASE: u64 = 1 << 60;

impl Node {
    pub fn ino(self) -> INodeNo {
        INodeNo(match self {
            Node::Root => 1,
            Node::CtlDir => 2,
            Node::DevDir => 3,
            Node::DmDir => 4,
            Node::CreateDir => 5,
            Node::ReloadDir => 6,
            Node::Ctl(f) => {
                CTL_BASE + CtlFile::ALL.iter().position(|&c| c == f).unwrap_or(0) as u64
            }
            Node::Pending(fh) => PENDING_BASE + fh,
            Node::DevFile(id) => DEVICE_BASE + id * DEVICE_SLOTS,
            Node::DmDevDir(id) => DEVICE_BASE + id * DEVICE_SLOTS + 1,
            Node::DmFile(id, f) => {
                DEVICE_BASE
                    + id * DEVICE_SLOTS
                    + 2
                    + DmFile::ALL.iter().position(|&d| d == f).unwrap_or(0) as u64
            }
        })
    }

    pub fn from_ino(ino: INodeNo) -> Option<Node> {
        let n = ino.0;
        Some(match n {
            1 => Node::Root,
            2 => Node::CtlDir,
            3 => Node::DevDir,
            4 => Node::DmDir,
            5 => Node::CreateDir,
            6 => Node::ReloadDir,
            _ if n >= PENDING_BASE => Node::Pending(n - PENDING_BASE),
            _ if n >= DEVICE_BASE => {
                let id = (n - DEVICE_BASE) / DEVICE_SLOTS;
                match (n - DEVICE_BASE) % DEVICE_SLOTS {
                    0 => Node::DevFile(id),
                    1 => Node::DmDevDir(id),
                    slot => Node::DmFile(id, *DmFile::ALL.get(slot as usize - 2)?),
                }
            }
            _ if n >= CTL_BASE => Node::Ctl(*CtlFile::ALL.get((n - CTL_BASE) as usize)?),
            _ => return None,
        })
    }

    pub fn kind(self) -> FileType {
        match self {
            Node::Root
            | Node::CtlDir
            | Node::DevDir
            | Node::DmDir
            | Node::CreateDir
            | Node::ReloadDir
            | Node::DmDevDir(_) => FileType::Directory,
            _ => FileType::RegularFile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        let mut nodes = vec![
            Node::Root,
            Node::CtlDir,
            Node::DevDir,
            Node::DmDir,
            Node::CreateDir,
            Node::ReloadDir,
            Node::Pending(7),
        ];
        nodes.extend(CtlFile::ALL.map(Node::Ctl));
        for id in [0, 1, 12345] {
            nodes.extend([Node::DevFile(id), Node::DmDevDir(id)]);
            nodes.extend(DmFile::ALL.map(|f| Node::DmFile(id, f)));
        }
        for n in nodes {
            assert_eq!(Node::from_ino(n.ino()), Some(n), "{n:?}");
        }
        assert_eq!(Node::from_ino(INodeNo(0)), None);
    }
}
