//! Key material: how it is wiped, where it may be shown, and keeping it out of core dumps.
//!
//! A crypt table's key is the user's secret. It lives in the table text written to
//! `ctl/create/NAME`, in the parsed line, in the target, and in every copy of the table text
//! dmfs makes for `dm/NAME/table`; each of those buffers is wiped when it is let go
//! ([`Zeroizing`]). Only the device's owner reads a table that holds a key, and the verbs
//! print it masked as dmsetup does unless asked (`--showkeys`).

use std::sync::Once;

pub use zeroize::{Zeroize, Zeroizing};

/// Bytes that may be key material (a passphrase, a key, a key slot): wiped when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// Appends `data` to `buf`, moving it into a bigger wiped buffer when it is full rather than
/// letting the allocator grow it, which would free a copy of what it held unwiped.
pub fn extend(buf: &mut Secret, data: &[u8]) {
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(needed.max(2 * buf.capacity())));
        grown.extend_from_slice(buf);
        *buf = grown;
    }
    buf.extend_from_slice(data);
}

/// `bytes` as text, in the same buffer; bytes that are not UTF-8 are wiped, and `None`.
pub fn text(mut bytes: Secret) -> Option<Zeroizing<String>> {
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            None
        }
    }
}

/// A table's text with every crypt key replaced by as many `0`s, as `dmsetup table` prints it
/// without `--showkeys`. A kernel keyring reference (`:32:logon:desc`) names no secret and stays.
/// `text` is table text, one `start length type params` line per line, optionally each line
/// prefixed by `NAME: ` (as `dmsetup table` prints all devices).
pub fn mask_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive('\n') {
        out.push_str(&mask_line(piece));
    }
    out
}

fn mask_line(line: &str) -> String {
    // dmsetup finds the key as the second word of a crypt target's parameters.
    let words: Vec<(usize, &str)> = word_spans(line);
    let Some(ty) = words.iter().position(|(_, w)| *w == "crypt") else {
        return line.to_string();
    };
    // `start length crypt`, possibly after `NAME:`; the type is the third word of the line.
    if !(2..=3).contains(&ty) {
        return line.to_string();
    }
    let Some(&(at, key)) = words.get(ty + 2) else {
        return line.to_string();
    };
    if key.starts_with(':') {
        return line.to_string();
    }
    let mut masked = String::with_capacity(line.len());
    masked.push_str(&line[..at]);
    masked.extend(std::iter::repeat_n('0', key.len()));
    masked.push_str(&line[at + key.len()..]);
    masked
}

/// The words of `line` split on spaces, with their byte offsets.
fn word_spans(line: &str) -> Vec<(usize, &str)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        match (c.is_ascii_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, &line[s..]));
    }
    spans
}

/// Keeps this process out of core dumps (and its memory from ptrace by other users) once it
/// holds a key, as cryptsetup's users expect of anything that holds one: `PR_SET_DUMPABLE` 0.
pub fn no_core_dumps() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with PR_SET_DUMPABLE takes an integer argument and touches no memory.
        let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if rc != 0 {
            log::warn!(
                "cannot keep key material out of core dumps: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_keeps_the_bytes_and_text_checks_them() {
        let mut buf: Secret = Zeroizing::new(Vec::with_capacity(2));
        for chunk in [&b"ab"[..], b"cde", b"", b"fghijklmnop"] {
            extend(&mut buf, chunk);
        }
        assert_eq!(&buf[..], b"abcdefghijklmnop");
        assert_eq!(
            text(buf).as_deref().map(String::as_str),
            Some("abcdefghijklmnop")
        );
        assert!(text(Zeroizing::new(vec![0xff, b'a'])).is_none());
    }

    #[test]
    fn masks_crypt_keys_as_dmsetup_does() {
        let text = "0 8 crypt aes-xts-plain64 00112233aabbccdd 0 /img 0\n\
                    8 8 linear /img 8\n\
                    16 8 crypt aes-cbc-essiv:sha256 :32:logon:cryptsetup:x 0 /img 0 1 allow_discards\n";
        assert_eq!(
            mask_keys(text),
            "0 8 crypt aes-xts-plain64 0000000000000000 0 /img 0\n\
             8 8 linear /img 8\n\
             16 8 crypt aes-cbc-essiv:sha256 :32:logon:cryptsetup:x 0 /img 0 1 allow_discards\n"
        );
        assert_eq!(
            mask_keys("c: 0 8 crypt aes-ecb abcd 0 /img 0\n"),
            "c: 0 8 crypt aes-ecb 0000 0 /img 0\n"
        );
        // A linear device over a file named "crypt" is no crypt target.
        let linear = "0 8 linear crypt 0\n";
        assert_eq!(mask_keys(linear), linear);
        // The null cipher's "-" key is masked too, as dmsetup masks any word there.
        assert_eq!(
            mask_keys("0 8 crypt cipher_null-ecb - 0 /img 0"),
            "0 8 crypt cipher_null-ecb 0 0 /img 0"
        );
    }
}
