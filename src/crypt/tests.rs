//! Known answers: IEEE 1619's XTS vectors, and ciphertexts of every chaining and IV mode
//! computed with OpenSSL by fixtures/kernel/crypt/kat.py (dm-crypt's IV rules written out
//! independently). The kernel's own bytes are compared in tests/crypt.rs.

use sha2::Digest;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + (i >> 9)) & 0xff) as u8).collect()
}

fn engine(spec: &str, key: &[u8], sector_size: u32, large: bool) -> SectorCipher {
    let spec = CipherSpec::parse(spec).unwrap();
    SectorCipher::new(&spec, key, sector_size, large).unwrap()
}

#[test]
fn ieee_1619_xts_vectors() {
    // Vector 1: both keys zero, data unit 0, 32 zero bytes (the first two blocks of a sector).
    let c = engine("aes-xts-plain64", &[0; 32], 512, false);
    let mut buf = vec![0u8; 512];
    c.encrypt(&mut buf, 0);
    assert_eq!(
        to_hex(&buf[..32]),
        "917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"
    );
    // Vector 4: data unit 0, bytes 00..ff twice.
    let key = hex(concat!(
        "27182818284590452353602874713526",
        "31415926535897932384626433832795"
    ));
    let c = engine("aes-xts-plain64", &key, 512, false);
    let plain: Vec<u8> = (0..512).map(|i| i as u8).collect();
    let mut buf = plain.clone();
    c.encrypt(&mut buf, 0);
    assert_eq!(
        to_hex(&buf[..32]),
        "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c"
    );
    c.decrypt(&mut buf, 0);
    assert_eq!(buf, plain);
}

const CASES: &[(&str, &str, u32, bool, u64, &str)] = &[
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        0,
        "12b538305b4b48cd7cb2badaf887ae82baed53a9fb775cef7825d170b697cb18",
    ),
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        512,
        false,
        5,
        "5c7176651bea0a8669ce1590ccc6ed180e0b7e50a0ee23c48dbde3159c4c5da7",
    ),
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        1099511627779,
        "c976bf16093910ce92b58952b1873d5ad92b725c00d8c5b5f8e917c206634ad5",
    ),
    (
        "aes-xts-plain",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        4294967293,
        "cc15128015f1bee62d7b91fce08e6b54cf0051017ebcaffdac2cb6cf1ca569d2",
    ),
    (
        "aes-xts-plain64be",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        77,
        "f79c80e426fe123940d88200a42b2f2816d2259d6f9c1cb527efd6e684fff516",
    ),
    (
        "aes-xts-benbi",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        9,
        "77c23bfcfd6bb08a440313ae1dbe4ee8788b22b979df0aa106d7260745aa82ea",
    ),
    (
        "aes-xts-null",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        9,
        "f17ed44b8e5c33607cec7b036c835d1aff2dbca73d5236f491f03a0e8f0f81df",
    ),
    (
        "aes-xts-essiv:sha256",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        512,
        false,
        11,
        "d763c8866819452fed23f49688395d7e692bc153f2b3948da4c3849c7af55896",
    ),
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        4096,
        false,
        8,
        "dee14cd6a81547d89aeb98d1aee208c8bc34c23033ede498c947f1c777d6d902",
    ),
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        4096,
        true,
        8,
        "1d5052cc14f92dc5d31e788de8f7381dd4aa60a930fd3068ad2ba8938959432f",
    ),
    (
        "aes-xts-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f40",
        1024,
        true,
        2,
        "35a0f02cf706b9684e35561871e09d0fa813b7885c5d2817e07e8021486ffb30",
    ),
    (
        "aes-cbc-essiv:sha256",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        512,
        false,
        3,
        "ebacddadf77581db8a6d54ef5218efe226a3cb74c0ba01e7816b22644962f0ab",
    ),
    (
        "aes-cbc-essiv:sha256",
        "0102030405060708090a0b0c0d0e0f10",
        4096,
        true,
        16,
        "3338fb5088c99dbd1d4baa4821e31c81cc4aef7f21482c38b987ea53ec6e2ae5",
    ),
    (
        "aes-cbc-plain",
        "0102030405060708090a0b0c0d0e0f10",
        512,
        false,
        1,
        "4fd4ca73944af72c4d12abc2153cd6eda0493c1a8a98a77e83f6b1ba804e0557",
    ),
    (
        "aes-cbc-plain64",
        "0102030405060708090a0b0c0d0e0f101112131415161718",
        512,
        false,
        1,
        "4e7367af7422de413bf32ac1c896e7c7910f6c48043feca0d65d757684da6226",
    ),
    (
        "aes-cbc-plain64be",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        512,
        false,
        1,
        "eb22970c7f10b7b8475dcb4de1c54370c2233e18b931ec43d158f1887ae2b32f",
    ),
    (
        "aes-cbc-benbi",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        512,
        false,
        1,
        "8e7cb440c3a326132571d5fcb63a6ef5d2e321fe1c535ba0d3f059a53eb99d29",
    ),
    (
        "aes-ecb",
        "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20",
        512,
        false,
        0,
        "4534dc7ba42057bd7f6677e451b7ddf38c28ca023c4fee08c37bff54b942cf45",
    ),
];

#[test]
fn every_mode_matches_openssl_and_round_trips() {
    let plain = pattern(8192);
    for &(spec, key, sector_size, large, iv_sector, digest) in CASES {
        let c = engine(spec, &hex(key), sector_size, large);
        let mut buf = plain.clone();
        c.encrypt(&mut buf, iv_sector);
        assert_eq!(
            to_hex(&sha2::Sha256::digest(&buf)),
            digest,
            "{spec} sector_size {sector_size} large {large} iv_sector {iv_sector}"
        );
        c.decrypt(&mut buf, iv_sector);
        assert!(buf == plain, "{spec} round trip");
    }
}

#[test]
fn a_buffer_is_the_same_as_its_sectors_one_by_one() {
    // XTS batches small sectors (here across a batch boundary and into a partial batch).
    for (spec, key_len, sector_size, len) in [
        ("aes-cbc-essiv:sha256", 32, 1024, 4096),
        ("aes-xts-plain64", 64, 512, 9 * 512 + 4096),
        ("aes-xts-essiv:sha256", 32, 512, 3 * 512),
        ("aes-xts-plain64", 64, 2048, 3 * 2048),
    ] {
        let c = engine(spec, &[7; 64][..key_len], sector_size, false);
        let plain = pattern(len);
        let mut whole = plain.clone();
        c.encrypt(&mut whole, 40);
        let mut pieces = plain.clone();
        let step = u64::from(sector_size / 512);
        for (i, s) in pieces.chunks_mut(sector_size as usize).enumerate() {
            c.encrypt(s, 40 + step * i as u64);
        }
        assert!(whole == pieces, "{spec} {sector_size}: encrypt");
        for (i, s) in pieces.chunks_mut(sector_size as usize).enumerate() {
            c.decrypt(s, 40 + step * i as u64);
        }
        assert!(pieces == plain, "{spec} {sector_size}: decrypt");
        c.decrypt(&mut whole, 40);
        assert!(whole == plain, "{spec} {sector_size}: decrypt whole");
    }
}

#[test]
fn null_cipher_passes_bytes_through() {
    let c = engine("cipher_null-ecb", &[], 512, false);
    let mut buf = pattern(1024);
    c.encrypt(&mut buf, 3);
    assert_eq!(buf, pattern(1024));
}

#[test]
fn specs_are_read_as_the_kernel_reads_them() {
    let ok = |s: &str| CipherSpec::parse(s).unwrap();
    let p = ok("aes-xts-plain64");
    assert_eq!((p.chain, p.iv), (Chain::Xts, Some(IvMode::Plain64)));
    assert_eq!(p.text, "aes-xts-plain64");
    let p = ok("capi:xts(aes)-plain64");
    assert_eq!((p.chain, p.iv), (Chain::Xts, Some(IvMode::Plain64)));
    let p = ok("capi:cbc(aes)-essiv:sha256");
    assert_eq!(p.iv, Some(IvMode::Essiv(EssivHash::Sha256)));
    // A cipher name alone, or with "plain", is cbc-plain.
    for s in ["aes", "aes-plain"] {
        let p = ok(s);
        assert_eq!((p.chain, p.iv), (Chain::Cbc, Some(IvMode::Plain)), "{s}");
    }
    // ECB takes no IV: an IV mode, even an unknown one, is ignored.
    for s in [
        "aes-ecb",
        "aes-ecb-plain64",
        "aes-ecb-bogus",
        "capi:ecb(aes)",
    ] {
        assert_eq!(ok(s).iv, None, "{s}");
    }
    assert_eq!(ok("aes:1-cbc-plain").chain, Chain::Cbc);

    let err = |s: &str| CipherSpec::parse(s).unwrap_err();
    assert_eq!(err("aes-xts"), "IV mechanism required");
    assert_eq!(
        err("aes-cbc-essiv"),
        "Digest algorithm missing for ESSIV mode"
    );
    assert_eq!(
        err("capi:cbc(aes)-essiv"),
        "Digest algorithm missing for ESSIV mode"
    );
    assert_eq!(err("aes-xts-plain65"), "Invalid IV mode");
    assert_eq!(err("aes-xts-plain64-x"), "Invalid IV mode");
    assert_eq!(err("aes-cbc(x)-plain"), "Bad cipher specification");
    assert_eq!(err("aes:3-cbc-plain"), "Bad cipher key count specification");
    assert_eq!(err("aes:x-cbc-plain"), "Bad cipher key count specification");
    for s in [
        "serpent-xts-plain64",
        "aes-lrw-plain64",
        "aes--plain64",
        "aes-ecb-essiv:sha256",
        "aes-cbc-essiv:sha512",
        "capi:xts(serpent)-plain64",
        "capi:xtsaes-plain64",
    ] {
        assert_eq!(err(s), "Error allocating crypto tfm", "{s}");
    }
    assert!(err("aes-xts-eboiv").contains("not supported"));
    assert!(err("aes:2-cbc-plain").contains("not supported"));
}

#[test]
fn key_sizes_are_the_kernels() {
    let check = |spec: &str, len: usize| CipherSpec::parse(spec).unwrap().key_size_ok(len);
    for len in [32, 48, 64] {
        assert!(check("aes-xts-plain64", len).is_ok(), "xts {len}");
    }
    for len in [0, 16, 24, 33, 128] {
        assert_eq!(
            check("aes-xts-plain64", len).unwrap_err(),
            "Error decoding and setting key"
        );
    }
    for len in [16, 24, 32] {
        assert!(check("aes-cbc-essiv:sha256", len).is_ok());
        assert!(check("aes-ecb", len).is_ok());
    }
    assert!(check("aes-cbc-plain", 64).is_err());
    assert!(check("aes-cbc-essiv:sha1", 32).is_err());
    assert!(check("cipher_null-ecb", 0).is_ok());
    assert!(check("cipher_null-ecb", 16).is_err());
}

#[test]
fn hex_keys_are_read_and_printed_as_the_kernel_does() {
    let k = Key::from_kernel_hex("00FFa5").unwrap();
    assert_eq!(k.as_bytes(), &[0, 255, 0xa5]);
    assert_eq!(k.to_kernel_hex(), "00ffa5");
    assert!(Key::from_kernel_hex("-").unwrap().is_empty());
    assert_eq!(Key::from_kernel_hex("-").unwrap().to_kernel_hex(), "-");
    assert!(Key::from_kernel_hex("0g").is_none());
    assert!(Key::from_kernel_hex("").is_none());
    // Debug never shows the bytes.
    assert_eq!(format!("{k:?}"), "Key(3 bytes)");
}

#[test]
fn engines_are_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SectorCipher>();
}
