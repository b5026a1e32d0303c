//! The one error type that crosses layers: an errno the shell will show plus a one-line reason
//! a person can act on (in the kernel's words where the kernel has words for it).

use std::fmt;
use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmError {
    pub errno: i32,
    pub reason: String,
}

pub type DmResult<T> = Result<T, DmError>;

impl DmError {
    pub fn new(errno: i32, reason: impl Into<String>) -> DmError {
        DmError {
            errno,
            reason: reason.into(),
        }
    }
    pub fn invalid(reason: impl Into<String>) -> DmError {
        DmError::new(libc::EINVAL, reason)
    }
    pub fn not_found(reason: impl Into<String>) -> DmError {
        DmError::new(libc::ENOENT, reason)
    }
    pub fn busy(reason: impl Into<String>) -> DmError {
        DmError::new(libc::EBUSY, reason)
    }
    /// Wraps an OS error with what was being attempted.
    pub fn io(context: impl fmt::Display, err: &io::Error) -> DmError {
        DmError::new(
            err.raw_os_error().unwrap_or(libc::EIO),
            format!("{context}: {err}"),
        )
    }
    /// Prefixes the reason, keeping the errno: "linear: " + "Invalid device sector".
    pub fn context(self, prefix: impl fmt::Display) -> DmError {
        DmError {
            errno: self.errno,
            reason: format!("{prefix}: {}", self.reason),
        }
    }
}

impl fmt::Display for DmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DmError {}
