//! The node's settings, written by the head into the per-node part of the initrd.

use enlist_api::{Mac, NodeKey};

pub const DEFAULT_PATH: &str = "/etc/enlist/node.conf";

pub struct Conf {
    pub head: String,
    pub name: String,
    pub mac: Mac,
    pub key: NodeKey,
    /// The image and version the PC booted (its jobs runtime is built beside it); absent in
    /// settings from heads before the jobs.
    pub image: Option<(String, String)>,
}

pub fn load(path: &str) -> Result<Conf, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{path}: {e} (was this PC booted by an enlist head?)"))?;
    parse(&text).map_err(|e| format!("{path}: {e}"))
}

pub fn parse(text: &str) -> Result<Conf, String> {
    let get = |k: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(key, _)| key.trim() == k)
            .map(|(_, v)| v.trim().to_string())
            .ok_or_else(|| format!("no {k}= line"))
    };
    let mac = Mac::parse(&get("mac")?).ok_or("mac= is not a MAC address")?;
    let key = NodeKey::from_hex(&get("key")?).map_err(|e| e.to_string())?;
    let image = match (get("image"), get("version")) {
        (Ok(i), Ok(v)) if !i.is_empty() && !v.is_empty() => Some((i, v)),
        _ => None,
    };
    Ok(Conf {
        head: get("head")?.trim_end_matches('/').to_string(),
        name: get("name")?,
        mac,
        key,
        image,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_heads_format() {
        let key = "ab".repeat(32);
        let c = super::parse(&format!(
            "head=http://10.77.0.1:8080/\nname=n1\nmac=52-54-00-00-00-01\nkey={key}\n"
        ))
        .unwrap();
        assert_eq!(c.head, "http://10.77.0.1:8080");
        assert_eq!(c.mac.to_string(), "52:54:00:00:00:01");
        assert!(super::parse("head=x\nname=n\nmac=zz\nkey=00").is_err());
    }
}
