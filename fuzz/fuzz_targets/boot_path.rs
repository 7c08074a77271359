//! Boot paths (TFTP file names, HTTP paths): parsing never panics, and what parses prints back
//! to the same path (one spelling per file).
#![no_main]

use enlist::bootpath::BootPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if let Ok(p) = BootPath::parse(path) {
        let again = p.to_string();
        assert_eq!(
            BootPath::parse(&again).as_ref(),
            Ok(&p),
            "{path:?} -> {again:?}"
        );
        // No component that climbs or stays (`b..o` is a legal file name; `..` is not).
        assert!(!again
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()));
    }
});
