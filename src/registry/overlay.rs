//! The per-node part of the initrd: a small uncompressed cpio appended to the image's initrd
//! (Linux unpacks concatenated archives in order), so one image serves every node.

use crate::bootfiles::NodeOverlay;
use crate::image::cpio::Archive;

use super::Registry;

/// Where the node OS finds its settings (read by `init` and the agent).
pub const NODE_CONF: &str = "etc/enlist/node.conf";

impl Registry {
    /// `key=value` lines: what a node needs to find and authenticate to its head.
    pub fn node_conf(&self, mac: &str) -> Result<String, String> {
        let row = self.node_or_new(mac).map_err(|e| e.to_string())?;
        let key = self.keys.node_key(mac, row.key_epoch);
        Ok(format!(
            "head={}\nname={}\nmac={}\nkey={}\n",
            self.cfg.http.public_url.trim_end_matches('/'),
            row.name,
            mac,
            key.to_hex()
        ))
    }
}

impl NodeOverlay for Registry {
    fn overlay(&self, mac: &str) -> Result<Vec<u8>, String> {
        let conf = self.node_conf(mac)?;
        let mut a = Archive::new(crate::store::now().max(0) as u32);
        a.file(NODE_CONF, 0o600, conf.as_bytes())
            .map_err(|e| e.to_string())?;
        a.finish().map_err(|e| e.to_string())
    }
}
