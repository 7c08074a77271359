//! HTTP Range parsing: no panic, and a part is always inside the file.
#![no_main]

use enlist::http::range::{parse, Ranged};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (value, len) = input;
    if let Ranged::Part { start, end } = parse(value, len) {
        assert!(
            start < end && end <= len,
            "{value:?} of {len}: {start}..{end}"
        );
    }
});
