//! Per-node keys, derived from the head's secret so nothing per node has to be stored.

use enlist_api::{Mac, NodeKey};
use hmac::{Hmac, Mac as _};
use rand::RngCore;
use sha2::Sha256;

use crate::store::{Store, StoreError};

const SECRET_META_KEY: &str = "head_secret";

pub struct Keys {
    secret: [u8; 32],
}

impl Keys {
    /// Load the head's secret from the database, creating it on first start.
    pub fn load(store: &Store) -> Result<Keys, StoreError> {
        let hexed = store.meta_or_insert(SECRET_META_KEY, || {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        })?;
        let mut secret = [0u8; 32];
        // The value was written by us; a damaged one is replaced rather than trusted.
        match hex::decode(&hexed) {
            Ok(v) if v.len() == 32 => secret.copy_from_slice(&v),
            _ => {
                tracing::warn!("head secret in the database is damaged; generating a new one (nodes re-register after their next boot)");
                rand::thread_rng().fill_bytes(&mut secret);
                store.set_meta(SECRET_META_KEY, &hex::encode(secret))?;
            }
        }
        Ok(Keys { secret })
    }

    /// The key of the node with this MAC; bumping `epoch` revokes the old one.
    pub fn node_key(&self, mac: Mac, epoch: i64) -> NodeKey {
        let mut m = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes any key length");
        m.update(b"enlist-node-key-v1\n");
        m.update(mac.to_string().as_bytes());
        m.update(b"\n");
        m.update(epoch.to_string().as_bytes());
        NodeKey(m.finalize().into_bytes().into())
    }
}

/// A random token as hex (sessions, nonces).
pub fn token() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}
