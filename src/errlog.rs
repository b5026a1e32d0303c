//! The most recent failures, for `ctl/errors` and the daemon log: one line each with the time,
//! the operation, the device name and the reason.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::DmError;

/// How many failures `ctl/errors` keeps.
const KEEP: usize = 100;

#[derive(Default)]
pub struct ErrorLog {
    lines: Mutex<VecDeque<String>>,
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (Howard Hinnant's days-to-civil algorithm).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The symbolic name of the errnos dmfs answers with.
pub fn errno_name(errno: i32) -> String {
    match errno {
        libc::EINVAL => "EINVAL".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EEXIST => "EEXIST".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EIO => "EIO".into(),
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENXIO => "ENXIO".into(),
        libc::ENOTBLK => "ENOTBLK".into(),
        libc::EISDIR => "EISDIR".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOKEY => "ENOKEY".into(),
        other => format!("errno {other}"),
    }
}

impl ErrorLog {
    /// Records a failure and logs it. `name` may be empty when no device is concerned.
    pub fn record(&self, operation: &str, name: &str, err: &DmError) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = if name.is_empty() { "-" } else { name };
        // One line each, whatever the reason contains.
        let reason = err.reason.replace(['\n', '\r'], " ");
        let errno = errno_name(err.errno);
        let line = format!(
            "{} {operation} {name}: {reason} ({errno})",
            utc_timestamp(now)
        );
        log::warn!("{operation} {name}: {reason} ({errno})");
        let mut lines = self.lines.lock();
        if lines.len() == KEEP {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn text(&self) -> String {
        self.lines.lock().iter().map(|l| format!("{l}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_502_873), "2026-11-24T06:47:53Z");
    }

    #[test]
    fn keeps_the_most_recent() {
        let log = ErrorLog::default();
        for i in 0..KEEP + 5 {
            log.record("create", &format!("d{i}"), &DmError::invalid("bad"));
        }
        let text = log.text();
        assert_eq!(text.lines().count(), KEEP);
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains(&format!("create d{}: bad", KEEP + 4))
        );
        assert!(!text.contains("create d4:"));
    }
}
