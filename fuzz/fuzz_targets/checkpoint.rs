//! Checkpoint weights: any bytes as a safetensors file, checked against a bound net as a
//! checkpoint's weights are when it loads. No input may panic or allocate past the bytes.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use coarse2fine::net::spec::InputShape;
use coarse2fine::net::{NetSpec, WeightMap, presets};
use libfuzzer_sys::fuzz_target;

fn spec() -> &'static NetSpec {
    static SPEC: OnceLock<NetSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        presets::preset("net-1")
            .and_then(|s| s.bind(InputShape::square(1, 8), 10).ok())
            .expect("net-1 binds at 8×8")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("weights.safetensors");
    if let Ok(w) = WeightMap::parse(bytes, path) {
        for (_, t) in w.iter() {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
        let _ = w.check_against(spec(), path);
    }
});
