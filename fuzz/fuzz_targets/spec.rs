//! Network specs: parse TOML or JSON text, then bind to a few input shapes and summarise.
#![no_main]

use std::path::Path;

use coarse2fine::net::NetSpec;
use coarse2fine::net::spec::InputShape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&first, rest)) = bytes.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let name = if first & 1 == 0 {
        "net.toml"
    } else {
        "net.json"
    };
    let Ok(spec) = NetSpec::parse(Path::new(name), text) else {
        return;
    };
    for (c, side, classes) in [(1, 8, 10), (3, 32, 1000), (1, 1, 1)] {
        if let Ok(bound) = spec.bind(InputShape::square(c, side), classes) {
            let _ = bound.summary();
        }
    }
});
