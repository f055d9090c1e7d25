//! `c2f import`: any `coarse2fine.json` text with any safetensors bytes. The first two
//! bytes give the length of the JSON part; an accepted pair is a checkpoint whose weights
//! match its net.
#![no_main]

use std::path::Path;

use coarse2fine::export::checkpoint_from;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
        return;
    };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (info, weights) = rest.split_at(n);
    let Ok(text) = std::str::from_utf8(info) else {
        return;
    };
    let (info_path, weights_path) = (Path::new("coarse2fine.json"), Path::new("model.safetensors"));
    if let Ok(c) = checkpoint_from(text, info_path, weights, weights_path) {
        assert!(c.weights.check_against(&c.spec, weights_path).is_ok());
    }
});
