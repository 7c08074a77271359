//! The config loader: any text is a config or an error naming a place, never a panic.
#![no_main]

use std::path::Path;

use enlist::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("fuzz.yaml")) {
        assert!(matches!(
            e,
            ConfigError::Parse { .. } | ConfigError::Invalid { .. }
        ));
        let _ = e.to_string();
    }
});
