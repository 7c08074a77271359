//! MAC addresses: parsed once at the edge, then passed around as a value.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet (EUI-48) address. Parsed from `52:54:00:ab:cd:01`, `52-54-00-AB-CD-01` or
/// `525400abcd01`; always shown in lowercase colon form, which is also how it is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a MAC address (6 bytes of hex, e.g. 52:54:00:ab:cd:01)",
            self.0
        )
    }
}

impl std::error::Error for BadMac {}

impl Mac {
    /// Parse any of the usual notations: six pairs of hex digits separated by `:` or `-` (one
    /// kind throughout), or twelve hex digits; any case.
    pub fn parse(s: &str) -> Option<Mac> {
        let b = s.as_bytes();
        let pair = |i: usize| Some((hex_value(*b.get(i)?)? << 4) | hex_value(*b.get(i + 1)?)?);
        let mut bytes = [0u8; 6];
        match b.len() {
            12 => {
                for (n, byte) in bytes.iter_mut().enumerate() {
                    *byte = pair(2 * n)?;
                }
            }
            17 => {
                let sep = b[2];
                if sep != b':' && sep != b'-' {
                    return None;
                }
                for (n, byte) in bytes.iter_mut().enumerate() {
                    if n > 0 && b[3 * n - 1] != sep {
                        return None;
                    }
                    *byte = pair(3 * n)?;
                }
            }
            _ => return None,
        }
        Some(Mac(bytes))
    }

    /// `52-54-00-ab-cd-01`: the form in boot paths (a colon is awkward in URLs and TFTP names).
    pub fn hyphenated(&self) -> String {
        self.join('-')
    }

    fn join(&self, sep: char) -> String {
        let mut s = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(sep);
            }
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(':'))
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        Mac::parse(s).ok_or_else(|| BadMac(s.to_string()))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Mac {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Mac".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A MAC address, lower-case colon form (52:54:00:ab:cd:01)",
            "pattern": "^([0-9a-f]{2}:){5}[0-9a-f]{2}$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Mac;

    #[test]
    fn every_notation_parses_to_one_value() {
        let m = Mac([0x52, 0x54, 0, 0xab, 0xcd, 1]);
        for s in ["52:54:00:ab:cd:01", "52-54-00-AB-cd-01", "525400abcd01"] {
            assert_eq!(Mac::parse(s), Some(m), "{s}");
        }
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(m.hyphenated(), "52-54-00-ab-cd-01");
    }

    #[test]
    fn anything_else_is_refused() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "zz:54:00:ab:cd:01",
            "5:254:00:ab:cd:01:",
            "52:54-00:ab:cd:01",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:0",
            "５２:54:00:ab:cd:01",
        ] {
            assert_eq!(Mac::parse(s), None, "{s:?}");
        }
        assert!("x"
            .parse::<Mac>()
            .unwrap_err()
            .to_string()
            .contains("\"x\""));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let m: Mac = serde_json::from_str("\"52-54-00-00-00-01\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:00:00:01\"");
        assert!(serde_json::from_str::<Mac>("\"nope\"").is_err());
    }
}
