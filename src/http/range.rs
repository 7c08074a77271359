//! HTTP `Range` headers (RFC 9110 14.1.2), for boot files: one range or the whole file. Pure.

/// What to send of a file of `len` bytes for a `Range` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// The whole file (no usable range asked for: absent, another unit, several ranges).
    Whole,
    /// Bytes `[start, end)`.
    Part { start: u64, end: u64 },
    /// A range that cannot be served (416).
    Unsatisfiable,
}

/// Interpret one `Range` header value against a length. Multipart ranges are never needed for
/// boot files: a request for several gets the whole file, as RFC 9110 allows.
pub fn parse(value: &str, len: u64) -> Ranged {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ranged::Unsatisfiable;
    };
    let number = |s: &str| {
        // Digits only: no sign, no spaces inside; u64 overflow is unsatisfiable.
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => match number(suffix) {
            Some(n) => (len.saturating_sub(n), len),
            None => return Ranged::Unsatisfiable,
        },
        (a, "") => match number(a) {
            Some(a) => (a, len),
            None => return Ranged::Unsatisfiable,
        },
        (a, b) => match (number(a), number(b)) {
            (Some(a), Some(b)) if a <= b => (a, b.saturating_add(1).min(len)),
            _ => return Ranged::Unsatisfiable,
        },
    };
    if start >= end || start >= len {
        return Ranged::Unsatisfiable;
    }
    Ranged::Part { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let part = |start, end| Ranged::Part { start, end };
        assert_eq!(parse("bytes=0-99", 1000), part(0, 100));
        assert_eq!(parse("bytes=900-", 1000), part(900, 1000));
        assert_eq!(parse("bytes=-100", 1000), part(900, 1000));
        assert_eq!(parse("bytes=990-5000", 1000), part(990, 1000));
        assert_eq!(parse("bytes=0-1,5-6", 1000), Ranged::Whole);
        assert_eq!(parse("items=0-1", 1000), Ranged::Whole);
        for bad in [
            "bytes=1000-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-0",
            "bytes=18446744073709551616-",
            "bytes=+5-6",
            "bytes=-",
            "bytes=5",
        ] {
            assert_eq!(parse(bad, 1000), Ranged::Unsatisfiable, "{bad}");
        }
        assert_eq!(
            parse("bytes=0-", 0),
            Ranged::Unsatisfiable,
            "nothing in an empty file"
        );
    }
}
