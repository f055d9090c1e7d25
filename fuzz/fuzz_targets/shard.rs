//! Shard validation: a layout accepted by `ShardLayout::parse` must keep every image and
//! label read inside the buffer.
#![no_main]

use coarse2fine::data::shard::ShardLayout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(l) = ShardLayout::parse(bytes) {
        let image = l.channels * l.height * l.width;
        assert!(l.pixels_at + l.len * image <= bytes.len());
        assert_eq!(l.labels_at + 4 * l.len, bytes.len());
        assert!(l.classes.len() <= bytes.len());
    }
});
