//! IDX parsing: any bytes give an array whose data matches its dimensions, or an error.
#![no_main]

use coarse2fine::data::idx::parse_idx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(a) = parse_idx(bytes) {
        let n: usize = a.dims.iter().product();
        assert_eq!(n, a.data.len());
    }
});
