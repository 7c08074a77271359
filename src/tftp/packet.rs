//! TFTP packets (RFC 1350) and option negotiation (RFC 2347/2348/2349/7440). Pure code.

use std::time::Duration;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// Error codes (RFC 1350, 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    UnknownTid = 5,
    OptionRefused = 8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Rrq {
        file: String,
        mode: String,
        options: Vec<(String, String)>,
    },
    Wrq {
        file: String,
    },
    Data {
        block: u16,
        len: usize,
    },
    Ack {
        block: u16,
    },
    Error {
        code: u16,
        message: String,
    },
    Oack,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet shorter than 4 bytes")]
    TooShort,
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("request field is not NUL-terminated")]
    Unterminated,
    #[error("request field is not valid UTF-8")]
    NotUtf8,
}

fn strings(mut b: &[u8]) -> Result<Vec<String>, PacketError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or(PacketError::Unterminated)?;
        out.push(
            std::str::from_utf8(&b[..end])
                .map_err(|_| PacketError::NotUtf8)?
                .to_string(),
        );
        b = &b[end + 1..];
    }
    Ok(out)
}

pub fn parse(b: &[u8]) -> Result<Packet, PacketError> {
    if b.len() < 4 {
        return Err(PacketError::TooShort);
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    match op {
        OP_RRQ | OP_WRQ => {
            let mut fields = strings(&b[2..])?.into_iter();
            let file = fields.next().ok_or(PacketError::Unterminated)?;
            let mode = fields.next().ok_or(PacketError::Unterminated)?;
            if op == OP_WRQ {
                return Ok(Packet::Wrq { file });
            }
            let rest: Vec<String> = fields.collect();
            let options = rest
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
                .collect();
            Ok(Packet::Rrq {
                file,
                mode: mode.to_ascii_lowercase(),
                options,
            })
        }
        OP_DATA => Ok(Packet::Data {
            block: u16::from_be_bytes([b[2], b[3]]),
            len: b.len() - 4,
        }),
        OP_ACK => Ok(Packet::Ack {
            block: u16::from_be_bytes([b[2], b[3]]),
        }),
        OP_ERROR => {
            let code = u16::from_be_bytes([b[2], b[3]]);
            let message = b[4..]
                .split(|&c| c == 0)
                .next()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            Ok(Packet::Error { code, message })
        }
        OP_OACK => Ok(Packet::Oack),
        n => Err(PacketError::UnknownOpcode(n)),
    }
}

pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    v.extend_from_slice(&OP_ERROR.to_be_bytes());
    v.extend_from_slice(&(code as u16).to_be_bytes());
    v.extend_from_slice(message.as_bytes());
    v.push(0);
    v
}

/// Write a DATA header for `block` into the first 4 bytes of `buf`.
pub fn data_header(buf: &mut [u8], block: u16) {
    buf[0..2].copy_from_slice(&OP_DATA.to_be_bytes());
    buf[2..4].copy_from_slice(&block.to_be_bytes());
}

pub fn oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut v = OP_OACK.to_be_bytes().to_vec();
    for (k, val) in options {
        v.extend_from_slice(k.as_bytes());
        v.push(0);
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

/// What the server grants for a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to acknowledge in an OACK, in request order; empty means no OACK.
    pub ack: Vec<(&'static str, String)>,
}

pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Largest retransmission timeout granted; a larger request is left out of the OACK.
    pub max_timeout: Duration,
}

/// Smallest block size granted. RFC 2348 allows 8, but a 7 MB initrd in 8-byte blocks is
/// 900,000 round trips: a client asking for less than the RFC 1350 default gets the default.
pub const MIN_BLKSIZE: u32 = 512;

pub const DEFAULT_BLKSIZE: usize = 512;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Apply the client's options. Unknown or malformed options are ignored (RFC 2347: the server
/// simply leaves them out of the OACK).
pub fn negotiate(options: &[(String, String)], file_size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: DEFAULT_TIMEOUT,
        ack: Vec::new(),
    };
    for (k, v) in options {
        match k.as_str() {
            "blksize" => {
                if let Ok(req) = v.parse::<u32>() {
                    if (MIN_BLKSIZE..=65464).contains(&req) {
                        let granted = req.min(limits.max_blksize as u32);
                        n.blksize = granted as usize;
                        n.ack.push(("blksize", granted.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(req) = v.parse::<u32>() {
                    if (1..=65535).contains(&req) {
                        let granted = req.min(limits.max_windowsize as u32) as u16;
                        n.windowsize = granted;
                        n.ack.push(("windowsize", granted.to_string()));
                    }
                }
            }
            "timeout" => {
                if let Ok(secs) = v.parse::<u64>() {
                    if (1..=255).contains(&secs) && Duration::from_secs(secs) <= limits.max_timeout
                    {
                        n.timeout = Duration::from_secs(secs);
                        n.ack.push(("timeout", secs.to_string()));
                    }
                }
            }
            "tsize" => n.ack.push(("tsize", file_size.to_string())),
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(file: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut v = OP_RRQ.to_be_bytes().to_vec();
        for s in [file, "octet"]
            .into_iter()
            .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
        {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_rrq_with_options() {
        let p = parse(&rrq(
            "undionly.kpxe",
            &[("tsize", "0"), ("BLKSIZE", "1432")],
        ))
        .unwrap();
        assert_eq!(
            p,
            Packet::Rrq {
                file: "undionly.kpxe".into(),
                mode: "octet".into(),
                options: vec![
                    ("tsize".into(), "0".into()),
                    ("blksize".into(), "1432".into())
                ],
            }
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse(&[0, 1]), Err(PacketError::TooShort));
        assert_eq!(parse(&[0, 9, 0, 0]), Err(PacketError::UnknownOpcode(9)));
        assert_eq!(parse(&[0, 1, b'a', b'b']), Err(PacketError::Unterminated));
        assert_eq!(parse(&[0, 1, 0xff, 0, b'o', 0]), Err(PacketError::NotUtf8));
        assert_eq!(
            parse(&[0, 5, 0, 8]),
            Ok(Packet::Error {
                code: 8,
                message: String::new()
            })
        );
    }

    #[test]
    fn negotiation_clamps_to_limits() {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 16,
            max_timeout: Duration::from_secs(5),
        };
        let opts = vec![
            ("blksize".to_string(), "65464".to_string()),
            ("windowsize".to_string(), "64".to_string()),
            ("tsize".to_string(), "0".to_string()),
            ("multicast".to_string(), "".to_string()),
        ];
        let n = negotiate(&opts, 7_000_000, &limits);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 16);
        assert_eq!(
            n.ack,
            vec![
                ("blksize", "1468".into()),
                ("windowsize", "16".into()),
                ("tsize", "7000000".into())
            ]
        );
        let plain = negotiate(&[], 10, &limits);
        assert!(plain.ack.is_empty());
        assert_eq!(plain.blksize, 512);
    }

    #[test]
    fn out_of_range_options_are_left_out() {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 16,
            max_timeout: Duration::from_secs(5),
        };
        let opts = vec![
            ("blksize".to_string(), "4".to_string()),
            ("timeout".to_string(), "0".to_string()),
        ];
        assert!(negotiate(&opts, 1, &limits).ack.is_empty());
        // Hostile but legal: tiny blocks, a 255 s timeout, a huge window.
        let opts = vec![
            ("blksize".to_string(), "8".to_string()),
            ("timeout".to_string(), "255".to_string()),
            ("windowsize".to_string(), "65535".to_string()),
        ];
        let n = negotiate(&opts, 7_000_000, &limits);
        assert_eq!(
            (n.blksize, n.timeout, n.windowsize),
            (512, DEFAULT_TIMEOUT, 16)
        );
        assert_eq!(n.ack, vec![("windowsize", "16".into())]);
    }
}
