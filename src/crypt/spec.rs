//! A dm-crypt cipher specification, read as the kernel's `crypt_ctr_cipher_old` and
//! `crypt_ctr_cipher_new` read it, then `crypt_ctr_ivmode`.

/// The block cipher under the chaining mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockCipher {
    Aes,
    /// `cipher_null`: bytes pass through (only under `ecb`, with no key).
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    Ecb,
    Cbc,
    Xts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EssivHash {
    Sha1,
    Sha256,
}

impl EssivHash {
    /// The salt's length: the AES key the ESSIV cipher gets.
    pub fn digest_len(self) -> usize {
        match self {
            EssivHash::Sha1 => 20,
            EssivHash::Sha256 => 32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvMode {
    Plain,
    Plain64,
    Plain64Be,
    Essiv(EssivHash),
    Benbi,
    Null,
}

/// A parsed cipher specification. `text` is kept as written: the kernel prints it back as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    pub text: String,
    pub cipher: BlockCipher,
    pub chain: Chain,
    /// `None` for `ecb`, which takes no IV (an IV mode given with it is ignored, as the kernel
    /// ignores it with "Selected cipher does not support IVs").
    pub iv: Option<IvMode>,
}

const ALLOC_FAILED: &str = "Error allocating crypto tfm";

impl CipherSpec {
    /// Reads `cipher[:keycount]-chainmode-ivmode[:ivopts]` or `capi:api-ivmode[:ivopts]`.
    /// Refusals are the kernel's `ti->error` words where it refuses the same text; where the
    /// kernel would accept what dmfs does not implement, the words say so.
    pub fn parse(text: &str) -> Result<CipherSpec, String> {
        let (cipher, chain, ivmode, ivopts) = match text.strip_prefix("capi:") {
            Some(rest) => parse_new(rest)?,
            None => parse_old(text)?,
        };
        // crypt_ctr_ivmode: a transform without an IV ignores the IV mode.
        let iv = if chain == Chain::Ecb {
            None
        } else {
            let Some(ivmode) = ivmode else {
                // The kernel accepts `capi:xts(aes)` with no IV mode and then encrypts with
                // whatever its IV buffer held; dmfs refuses it rather than guess.
                return Err(
                    "IV mechanism required (a capi: cipher without an IV mode is not supported)"
                        .to_string(),
                );
            };
            Some(match ivmode {
                "plain" => IvMode::Plain,
                "plain64" => IvMode::Plain64,
                "plain64be" => IvMode::Plain64Be,
                "essiv" => IvMode::Essiv(essiv_hash(ivopts)?),
                "benbi" => IvMode::Benbi,
                "null" => IvMode::Null,
                "eboiv" | "elephant" | "lmk" | "tcw" | "random" => {
                    return Err(format!("IV mode {ivmode} is not supported by dmfs"));
                }
                _ => return Err("Invalid IV mode".to_string()),
            })
        };
        Ok(CipherSpec {
            text: text.to_string(),
            cipher,
            chain,
            iv,
        })
    }

    /// Whether a key of `key_len` bytes can be set (`crypt_setkey`), in the kernel's words.
    pub fn key_size_ok(&self, key_len: usize) -> Result<(), String> {
        let ok = match (self.cipher, self.chain) {
            (BlockCipher::Null, _) => key_len == 0,
            (BlockCipher::Aes, Chain::Xts) => matches!(key_len, 32 | 48 | 64),
            (BlockCipher::Aes, _) => matches!(key_len, 16 | 24 | 32),
        };
        // ESSIV keys an AES cipher with the hash of the key: only a hash whose digest is an
        // AES key size works (sha1's 20 bytes do not).
        let salt_ok = match self.iv {
            Some(IvMode::Essiv(hash)) => matches!(hash.digest_len(), 16 | 24 | 32),
            _ => true,
        };
        if ok && salt_ok {
            Ok(())
        } else {
            Err("Error decoding and setting key".to_string())
        }
    }
}

type Parsed<'a> = (BlockCipher, Chain, Option<&'a str>, Option<&'a str>);

/// `capi:cipher_api_spec-ivmode:ivopts`: the IV options after the last ':', the IV mode after
/// the last '-'.
fn parse_new(rest: &str) -> Result<Parsed<'_>, String> {
    let (rest, ivopts) = match rest.rfind(':') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (api, ivmode) = match rest.rfind('-') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if ivmode == Some("essiv") && ivopts.is_none() {
        return Err("Digest algorithm missing for ESSIV mode".to_string());
    }
    let (chain, cipher) = api
        .strip_suffix(')')
        .and_then(|a| a.split_once('('))
        .ok_or_else(|| ALLOC_FAILED.to_string())?;
    let (cipher, chain) = transform(cipher, chain)?;
    check_essiv_alloc(cipher, chain, ivmode, ivopts)?;
    Ok((cipher, chain, ivmode, ivopts))
}

/// `cipher[:keycount]-chainmode-ivmode[:ivopts]`, the kernel's strsep walk.
fn parse_old(text: &str) -> Result<Parsed<'_>, String> {
    if text.contains('(') {
        return Err("Bad cipher specification".to_string());
    }
    let mut tmp = Some(text);
    let keycount = strsep(&mut tmp, '-');
    let (cipher, keycount) = match keycount {
        Some(k) => match k.split_once(':') {
            Some((c, n)) => (c, Some(n)),
            None => (k, None),
        },
        None => ("", None),
    };
    if let Some(n) = keycount {
        let count = (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| n.parse::<u32>().ok())
            .flatten();
        match count {
            Some(1) => {}
            Some(c) if c.is_power_of_two() => {
                return Err(format!(
                    "Multi-key cipher specification (key count {c}) is not supported by dmfs"
                ));
            }
            _ => return Err("Bad cipher key count specification".to_string()),
        }
    }
    let mut chainmode = strsep(&mut tmp, '-');
    let mut ivmode = strsep(&mut tmp, ':');
    let ivopts = tmp;
    // Compatibility with the original mapping format: a cipher name alone means cbc-plain.
    if chainmode.is_none() || (chainmode == Some("plain") && ivmode.is_none()) {
        chainmode = Some("cbc");
        ivmode = Some("plain");
    }
    let chainmode = chainmode.unwrap_or("cbc");
    if chainmode != "ecb" && ivmode.is_none() {
        return Err("IV mechanism required".to_string());
    }
    if ivmode == Some("essiv") && ivopts.is_none() {
        return Err("Digest algorithm missing for ESSIV mode".to_string());
    }
    let (cipher, chain) = transform(cipher, chainmode)?;
    check_essiv_alloc(cipher, chain, ivmode, ivopts)?;
    Ok((cipher, chain, ivmode, ivopts))
}

/// C's `strsep`: the text up to `sep` (taking it off `rest`), or all of it, or `None` when
/// `rest` is already used up.
fn strsep<'a>(rest: &mut Option<&'a str>, sep: char) -> Option<&'a str> {
    let text = rest.take()?;
    match text.find(sep) {
        Some(i) => {
            *rest = Some(&text[i + sep.len_utf8()..]);
            Some(&text[..i])
        }
        None => Some(text),
    }
}

/// The crypto API transform `chain(cipher)`: what dmfs has of it.
fn transform(cipher: &str, chain: &str) -> Result<(BlockCipher, Chain), String> {
    let chain = match chain {
        "ecb" => Chain::Ecb,
        "cbc" => Chain::Cbc,
        "xts" => Chain::Xts,
        _ => return Err(ALLOC_FAILED.to_string()),
    };
    match (cipher, chain) {
        ("aes", _) => Ok((BlockCipher::Aes, chain)),
        ("cipher_null", Chain::Ecb) => Ok((BlockCipher::Null, chain)),
        _ => Err(ALLOC_FAILED.to_string()),
    }
}

/// The `essiv(chain(cipher),hash)` template exists only for a chaining mode with an IV of the
/// cipher's block size and a hash whose digest fits the cipher's key sizes.
fn check_essiv_alloc(
    cipher: BlockCipher,
    chain: Chain,
    ivmode: Option<&str>,
    ivopts: Option<&str>,
) -> Result<(), String> {
    if ivmode != Some("essiv") {
        return Ok(());
    }
    if cipher != BlockCipher::Aes || chain == Chain::Ecb {
        return Err(ALLOC_FAILED.to_string());
    }
    essiv_hash(ivopts).map(|_| ())
}

fn essiv_hash(ivopts: Option<&str>) -> Result<EssivHash, String> {
    match ivopts {
        Some("sha256") => Ok(EssivHash::Sha256),
        Some("sha1") => Ok(EssivHash::Sha1),
        None => Err("Digest algorithm missing for ESSIV mode".to_string()),
        // The kernel keys AES-128 with md5's digest; dmfs has no md5.
        Some("md5") => Err("ESSIV hash md5 is not supported by dmfs".to_string()),
        Some(_) => Err(ALLOC_FAILED.to_string()),
    }
}
