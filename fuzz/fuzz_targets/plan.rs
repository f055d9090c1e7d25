//! Plans: parse any text, then resolve every variant against a small prepared data set,
//! which applies each variant's growth to zero weights.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use coarse2fine::data::prepare::{PrepareConfig, prepare};
use coarse2fine::data::synthetic::write_quadrant_idx;
use coarse2fine::plan::PlanFile;
use coarse2fine::progress::Silent;
use libfuzzer_sys::fuzz_target;

fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        // Resolving refuses nets that would not fit this budget instead of allocating them.
        // SAFETY: set once, before any other thread reads the environment.
        unsafe { std::env::set_var("C2F_MEMORY_LIMIT", "512M") };
        let root = std::env::temp_dir().join(format!("c2f-fuzz-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write_quadrant_idx(&root.join("src"), 16, 8, 16, 1).expect("fixture");
        let cfg = PrepareConfig {
            sizes: vec![4, 8, 16],
            ..Default::default()
        };
        prepare(&root.join("src"), &root.join("data"), &cfg, &Silent).expect("prepare");
        root.join("data")
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let data = data();
    let Ok(plan) = PlanFile::parse(Path::new("plan.toml"), text) else {
        return;
    };
    for i in 0..plan.len().min(4) {
        let _ = plan.resolve(i, Some(data));
    }
});
