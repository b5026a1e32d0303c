//! CRC-32 with the reflected polynomial 0xedb88320, the one both formats use: zlib's and EFI's
//! `crc32` (GPT headers and entry arrays) inverts the register before and after; LVM2's
//! `calc_crc` (PV labels, metadata area headers, metadata text) runs the bare register from
//! its own seed.

const TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The register after `data`, from `register` (no inversion: LVM2's `calc_crc`).
pub fn crc32_register(register: u32, data: &[u8]) -> u32 {
    let mut c = register;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

/// zlib's and EFI's CRC-32, continued from `crc` (0 to start).
pub fn crc32(crc: u32, data: &[u8]) -> u32 {
    !crc32_register(!crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs_and_continues() {
        assert_eq!(crc32(0, b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(crc32(0, b"1234"), b"56789"), 0xcbf4_3926);
    }
}
