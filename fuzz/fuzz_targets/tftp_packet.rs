//! TFTP packet parsing and option negotiation: no panic, and what is granted is within limits.
#![no_main]

use std::time::Duration;

use enlist::tftp::packet::{negotiate, parse, Limits, Packet, MIN_BLKSIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rrq { options, .. }) = parse(data) {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            max_timeout: Duration::from_secs(5),
        };
        let n = negotiate(&options, 7_000_000, &limits);
        assert!(n.blksize == 512 || (MIN_BLKSIZE as usize..=1468).contains(&n.blksize));
        assert!((1..=64).contains(&n.windowsize));
        assert!(n.timeout <= Duration::from_secs(5));
    }
});
