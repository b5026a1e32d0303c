//! A passphrase or key file, read as cryptsetup 2.6 reads it (`src/utils_password.c`,
//! `crypt_keyfile_device_read`), into buffers that are wiped when let go.
//!
//! - From a terminal (standard input is one, no key file): a prompt on standard error, the
//!   input not echoed, up to the first newline; at most 512 bytes; an offset is refused.
//! - From standard input that is not a terminal, no key file (`printf pw | dmfs open ...`):
//!   after skipping `--keyfile-offset` bytes, up to the first newline or the end, cut to
//!   `--keyfile-size` bytes; at most 8 MiB, and not nothing.
//! - From a key file (`--key-file F`, `-` for standard input): every byte, newlines included,
//!   after skipping `--keyfile-offset` bytes, and exactly `--keyfile-size` bytes when given; at
//!   most 8 MiB.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crate::secret::Zeroizing;

/// cryptsetup's compiled-in limits: a key file (`DEFAULT_KEYFILE_SIZE_MAXKB`) and an
/// interactive passphrase (`DEFAULT_PASSPHRASE_SIZE_MAX`).
pub const MAX_KEYFILE_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_PASSPHRASE_BYTES: u64 = 512;

/// Where the key comes from.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    /// `--key-file`: a path, or `-` for standard input.
    pub key_file: Option<PathBuf>,
    /// `--keyfile-offset`: bytes skipped at the start of the key file (or of piped input).
    pub offset: u64,
    /// `--keyfile-size`: bytes read from the key file (else all of it), or kept of a piped
    /// passphrase.
    pub size: Option<u64>,
}

impl KeySource {
    /// Whether asking means prompting on a terminal (then a wrong passphrase can be asked
    /// again, as cryptsetup asks up to three times).
    pub fn is_interactive(&self) -> bool {
        // SAFETY: isatty only inspects the descriptor.
        self.key_file.is_none() && unsafe { libc::isatty(0) } == 1
    }

    /// The key: from the key file, else from standard input, with `prompt` on a terminal.
    pub fn read(&self, prompt: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        match &self.key_file {
            Some(path) if path.as_os_str() == "-" => self.read_key_file(&mut io::stdin().lock()),
            Some(path) => {
                let mut f = File::open(path).map_err(|e| {
                    format!("Failed to open key file {}: {}", path.display(), plain(&e))
                })?;
                self.read_key_file(&mut f)
            }
            None if self.is_interactive() => {
                if self.offset != 0 {
                    return Err("Cannot use offset with terminal input.".into());
                }
                read_from_terminal(prompt)
            }
            None => self.read_piped(&mut io::stdin().lock()),
        }
    }

    fn read_piped(&self, input: &mut dyn Read) -> Result<Zeroizing<Vec<u8>>, String> {
        skip(input, self.offset)?;
        let mut key = read_until(input, MAX_KEYFILE_BYTES, true)?;
        if let Some(size) = self.size {
            key.truncate(usize::try_from(size).unwrap_or(usize::MAX));
        }
        // cryptsetup refuses piped input that ends before giving anything.
        if key.is_empty() {
            return Err("Nothing to read on input.".into());
        }
        Ok(key)
    }

    fn read_key_file(&self, input: &mut dyn Read) -> Result<Zeroizing<Vec<u8>>, String> {
        skip(input, self.offset)?;
        let limit = self.size.unwrap_or(MAX_KEYFILE_BYTES);
        if limit > MAX_KEYFILE_BYTES {
            return Err(format!(
                "Maximum keyfile size exceeded ({} KiB).",
                MAX_KEYFILE_BYTES / 1024
            ));
        }
        let key = read_until(input, limit, false)?;
        match self.size {
            Some(size) if (key.len() as u64) < size => {
                Err("Cannot read requested amount of data.".into())
            }
            None if key.len() as u64 == MAX_KEYFILE_BYTES && !at_end(input) => Err(format!(
                "Maximum keyfile size exceeded ({} KiB).",
                MAX_KEYFILE_BYTES / 1024
            )),
            _ => Ok(key),
        }
    }
}

/// Reads and drops the first `offset` bytes (`--keyfile-offset`).
fn skip(input: &mut dyn Read, offset: u64) -> Result<(), String> {
    let mut skipped = 0u64;
    let mut sink = Zeroizing::new([0u8; 4096]);
    while skipped < offset {
        let want = (offset - skipped).min(sink.len() as u64) as usize;
        match input.read(&mut sink[..want]) {
            Ok(0) => return Err("Cannot seek to requested keyfile offset.".into()),
            Ok(n) => skipped += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("Error reading keyfile: {}", plain(&e))),
        }
    }
    Ok(())
}

fn plain(e: &io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

fn at_end(input: &mut dyn Read) -> bool {
    let mut one = [0u8; 1];
    matches!(input.read(&mut one), Ok(0) | Err(_))
}

/// Up to `limit` bytes, stopping after a newline (not kept) when `stop_at_newline`, in a buffer
/// that grows without leaving copies (`secret::extend`).
fn read_until(
    input: &mut dyn Read,
    limit: u64,
    stop_at_newline: bool,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut key: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(256));
    let mut byte = [0u8; 1];
    let mut chunk = Zeroizing::new([0u8; 4096]);
    loop {
        let room = limit.saturating_sub(key.len() as u64) as usize;
        if room == 0 {
            return Ok(key);
        }
        // A passphrase ends at its newline: read a byte at a time so that what follows it on
        // standard input is left there, as cryptsetup leaves it.
        let n = if stop_at_newline {
            match input.read(&mut byte) {
                Ok(0) => return Ok(key),
                Ok(_) if byte[0] == b'\n' => return Ok(key),
                Ok(_) => {
                    chunk[0] = byte[0];
                    byte[0] = 0;
                    1
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("Error reading passphrase: {}", plain(&e))),
            }
        } else {
            let want = room.min(chunk.len());
            match input.read(&mut chunk[..want]) {
                Ok(0) => return Ok(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("Error reading keyfile: {}", plain(&e))),
            }
        };
        crate::secret::extend(&mut key, &chunk[..n]);
    }
}

/// The prompt on standard error, echo off while the passphrase is typed, restored after.
fn read_from_terminal(prompt: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let stdin = io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is standard input, a terminal; saved is a valid termios.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) };
    }
    eprint!("{prompt}");
    let key = read_until(&mut stdin.lock(), MAX_PASSPHRASE_BYTES, true);
    if have_termios {
        // SAFETY: restores what tcgetattr gave.
        unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
        eprintln!();
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(offset: u64, size: Option<u64>) -> KeySource {
        KeySource {
            key_file: Some(PathBuf::from("-")),
            offset,
            size,
        }
    }

    #[test]
    fn passphrases_end_at_their_newline_and_key_files_do_not() {
        let mut piped: &[u8] = b"correct horse\nrest";
        assert_eq!(
            &read_until(&mut piped, MAX_KEYFILE_BYTES, true).unwrap()[..],
            b"correct horse"
        );
        assert_eq!(piped, b"rest");
        let mut file: &[u8] = b"line one\nline two\n";
        let k = key_file(0, None).read_key_file(&mut file).unwrap();
        assert_eq!(&k[..], b"line one\nline two\n");
        let mut file: &[u8] = b"0123456789";
        let k = key_file(3, Some(4)).read_key_file(&mut file).unwrap();
        assert_eq!(&k[..], b"3456");
        let mut short: &[u8] = b"0123";
        assert_eq!(
            key_file(2, Some(4))
                .read_key_file(&mut short)
                .err()
                .unwrap(),
            "Cannot read requested amount of data."
        );
        let mut short: &[u8] = b"01";
        assert_eq!(
            key_file(5, None).read_key_file(&mut short).err().unwrap(),
            "Cannot seek to requested keyfile offset."
        );
        let big = vec![7u8; MAX_KEYFILE_BYTES as usize + 1];
        let mut big: &[u8] = &big;
        assert!(key_file(0, None).read_key_file(&mut big).is_err());
        let piped = |offset, size| KeySource {
            key_file: None,
            offset,
            size,
        };
        let mut input: &[u8] = b"xxcorrect horse\nrest";
        assert_eq!(
            &piped(2, Some(7)).read_piped(&mut input).unwrap()[..],
            b"correct"
        );
        assert_eq!(input, b"rest");
        let mut empty: &[u8] = b"\n";
        assert_eq!(
            piped(0, None).read_piped(&mut empty).err().unwrap(),
            "Nothing to read on input."
        );
        let mut short: &[u8] = b"ab";
        assert_eq!(
            piped(3, None).read_piped(&mut short).err().unwrap(),
            "Cannot seek to requested keyfile offset."
        );
        let exact = vec![7u8; 5000];
        let mut exact: &[u8] = &exact;
        assert_eq!(
            key_file(0, None).read_key_file(&mut exact).unwrap().len(),
            5000
        );
    }
}
