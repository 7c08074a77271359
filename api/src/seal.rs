//! Sealing a secret for one node: the head encrypts it with that node's key, so it can cross
//! the plain-HTTP network to that node and no other (the munge key the jobs need).
//!
//! Encrypt-then-MAC with HMAC-SHA256 only, the primitive both sides already have (the agent
//! builds SHA-256 in software, with no SSE code): a keystream of HMAC(k_enc, nonce || counter)
//! blocks (a PRF in counter mode), then HMAC(k_mac, context || nonce || ciphertext). Encryption
//! and MAC keys are derived from the node key, bound to what the secret is for (`context`),
//! so a sealed munge key cannot be replayed as anything else.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::NodeKey;

type HmacSha256 = Hmac<Sha256>;

/// A sealed secret as it travels (hex in JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// 16 random bytes, hex.
    pub nonce: String,
    pub ciphertext: String,
    /// HMAC-SHA256 over context, nonce and ciphertext, hex.
    pub tag: String,
}

fn prf(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as hmac::Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// The two keys a node key gives for `context`.
fn subkeys(key: &NodeKey, context: &str) -> ([u8; 32], [u8; 32]) {
    (
        prf(&key.0, &[b"enlist-seal-enc-v1\n", context.as_bytes()]),
        prf(&key.0, &[b"enlist-seal-mac-v1\n", context.as_bytes()]),
    )
}

fn keystream_xor(k_enc: &[u8; 32], nonce: &[u8], data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(32).enumerate() {
        let block = prf(k_enc, &[nonce, &(i as u64).to_be_bytes()]);
        for (b, k) in chunk.iter_mut().zip(block) {
            *b ^= k;
        }
    }
}

fn tag(k_mac: &[u8; 32], context: &str, nonce: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    prf(k_mac, &[context.as_bytes(), b"\n", nonce, ciphertext])
}

/// Seal `secret` for the holder of `key`, for `context` (e.g. `"munge-key"`). `nonce` must be
/// 16 fresh random bytes.
pub fn seal(key: &NodeKey, context: &str, nonce: [u8; 16], secret: &[u8]) -> Sealed {
    let (k_enc, k_mac) = subkeys(key, context);
    let mut ct = secret.to_vec();
    keystream_xor(&k_enc, &nonce, &mut ct);
    let t = tag(&k_mac, context, &nonce, &ct);
    Sealed {
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(&ct),
        tag: hex::encode(t),
    }
}

/// Why a sealed secret was not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError(pub &'static str);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot open a sealed secret: {}", self.0)
    }
}

impl std::error::Error for OpenError {}

/// Open a sealed secret: its tag is checked (in constant time) before anything is decrypted.
pub fn open(key: &NodeKey, context: &str, s: &Sealed) -> Result<Vec<u8>, OpenError> {
    let nonce = hex::decode(&s.nonce).map_err(|_| OpenError("nonce is not hex"))?;
    let mut data = hex::decode(&s.ciphertext).map_err(|_| OpenError("ciphertext is not hex"))?;
    let got = hex::decode(&s.tag).map_err(|_| OpenError("tag is not hex"))?;
    if nonce.len() != 16 {
        return Err(OpenError("nonce is not 16 bytes"));
    }
    let (k_enc, k_mac) = subkeys(key, context);
    let mut m =
        <HmacSha256 as hmac::Mac>::new_from_slice(&k_mac).expect("HMAC takes any key length");
    m.update(context.as_bytes());
    m.update(b"\n");
    m.update(&nonce);
    m.update(&data);
    m.verify_slice(&got)
        .map_err(|_| OpenError("wrong key or tampered"))?;
    keystream_xor(&k_enc, &nonce, &mut data);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_for_one_node_and_one_purpose() {
        let (a, b) = (NodeKey([1; 32]), NodeKey([2; 32]));
        let secret: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        let s = seal(&a, "munge-key", [9; 16], &secret);
        assert_ne!(hex::decode(&s.ciphertext).unwrap(), secret, "encrypted");
        assert_eq!(open(&a, "munge-key", &s).unwrap(), secret);
        assert!(open(&b, "munge-key", &s).is_err(), "another node's key");
        assert!(open(&a, "something-else", &s).is_err(), "another purpose");
        let mut t = s.clone();
        t.ciphertext.replace_range(0..2, "00");
        assert!(open(&a, "munge-key", &t).is_err(), "tampered");
        let fresh = seal(&a, "munge-key", [8; 16], &secret);
        assert_ne!(
            fresh.ciphertext, s.ciphertext,
            "a new nonce, new ciphertext"
        );
    }
}
