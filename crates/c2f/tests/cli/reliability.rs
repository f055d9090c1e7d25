//! The bad-input catalogue of docs/reliability.md, one test per row: every bad input gives
//! a one-line error naming the file or key and the problem, a non-zero exit, and leaves
//! what was already on disk as it was. Inputs that are odd but usable (CMYK, 16-bit,
//! grey images in a colour set, non-UTF-8 file names) are converted and counted instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use coarse2fine::data::idx::encode_idx;
use coarse2fine::data::shard::Shard;
use coarse2fine::data::synthetic::write_quadrant_idx;
use coarse2fine::net::WeightMap;

use super::{assert_clean, assert_one_line_error, c2f, c2f_env, fails, ok, s};

/// A synthetic IDX source prepared at 4×4 and 8×8, in its own temporary folder.
pub(super) struct Fx {
    pub(super) tmp: tempfile::TempDir,
    pub(super) src: PathBuf,
    pub(super) data: PathBuf,
}

impl Fx {
    pub(super) fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        write_quadrant_idx(&src, 64, 16, 8, 3).expect("fixture");
        let data = tmp.path().join("data");
        ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "4,8"]);
        Self { tmp, src, data }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Trains net-1 at 8×8 for 10 iterations into `name`, checkpointing every 5.
    pub(super) fn trained(&self, name: &str) -> PathBuf {
        let run = self.path(name);
        ok(&train_args(&self.data, &run, &["--iterations", "10"]));
        run
    }
}

pub(super) fn train_args<'a>(data: &'a Path, run: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "--data",
        s(data),
        "--size",
        "8",
        "--net",
        "net-1",
        "--batch",
        "16",
        "--lr",
        "0.02",
        "--checkpoint-every",
        "5",
        "--out",
        s(run),
    ];
    v.extend_from_slice(extra);
    v
}

/// Every file under `root` with its bytes.
pub(super) fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("readable"));
            }
        }
    }
    out
}

/// Prepare of `src` into a new folder must fail with `needles` and create nothing.
pub(super) fn prepare_fails(fx: &Fx, src: &Path, extra: &[&str], needles: &[&str]) {
    let out = fx.path("prepared-bad");
    let mut args = vec!["prepare", s(src), "--out", s(&out)];
    args.extend_from_slice(extra);
    fails(&args, needles);
    assert!(!out.exists(), "a failed prepare created its output");
    assert_clean(fx.tmp.path());
}

/// A two-class folder tree with `n` plain 12×12 RGB PNGs per class, plus whatever `add`
/// puts into `cats/`.
pub(super) fn image_tree(root: &Path, n: usize, add: impl FnOnce(&Path)) -> PathBuf {
    for class in ["cats", "dogs"] {
        let d = root.join(class);
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..n {
            image::RgbImage::from_pixel(12, 12, image::Rgb([40 * i as u8, 90, 200]))
                .save(d.join(format!("{i}.png")))
                .expect("png");
        }
    }
    add(&root.join("cats"));
    root.to_path_buf()
}

/// Prepares `tree` at size 4, holding out `val` of each class, and returns stdout and
/// stderr.
pub(super) fn prepare_tree(tree: &Path, out: &Path, val: &str) -> (String, String) {
    let args = vec![
        "prepare",
        s(tree),
        "--out",
        s(out),
        "--sizes",
        "4",
        "--val-fraction",
        val,
    ];
    let o = c2f(&args);
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "prepare failed:\n{so}\n{se}");
    (so, se)
}

pub(super) fn manifest(data: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data.join("dataset.json")).expect("manifest"))
        .expect("json")
}

/// All images of a prepared folder at one size (both splits), as (planar pixels, label).
fn shard_images(data: &Path, size: usize) -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    let dir = data.join(format!("{size}x{size}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("size folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".c2fs"))
        })
        .collect();
    files.sort();
    for f in files {
        let sh = Shard::open(&f).expect("shard");
        for i in 0..sh.len {
            out.push((sh.pixels(i).to_vec(), sh.label(i)));
        }
    }
    out
}

// ---------------------------------------------------------------- IDX sources

#[test]
fn bad_missing_source() {
    let fx = Fx::new();
    prepare_fails(&fx, &fx.path("nope"), &[], &["nope", "does not exist"]);
}

#[test]
fn bad_idx_wrong_magic() {
    let fx = Fx::new();
    let f = fx.src.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&f).expect("read");
    bytes[0] = 0x1f;
    std::fs::write(&f, bytes).expect("write");
    prepare_fails(&fx, &fx.src, &[], &["train-images-idx3-ubyte", "magic"]);
}

#[test]
fn bad_idx_truncated() {
    let fx = Fx::new();
    let f = fx.src.join("t10k-labels-idx1-ubyte");
    std::fs::write(&f, &encode_idx(&[16], &[0; 16])[..14]).expect("write");
    prepare_fails(&fx, &fx.src, &[], &["t10k-labels-idx1-ubyte", "truncated"]);
}

#[test]
fn bad_idx_count_mismatch() {
    let fx = Fx::new();
    let f = fx.src.join("train-labels-idx1-ubyte");
    std::fs::write(&f, encode_idx(&[63], &[0; 63])).expect("write");
    prepare_fails(
        &fx,
        &fx.src,
        &[],
        &["train-labels-idx1-ubyte", "63 labels", "64 images"],
    );
}

#[test]
fn bad_idx_header_larger_than_memory() {
    let fx = Fx::new();
    // A 16-byte header promising 60 000 images of 50 000 × 50 000 pixels (150 TB).
    let mut header = vec![0, 0, 8, 3];
    for d in [60_000u32, 50_000, 50_000] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(fx.src.join("train-images-idx3-ubyte"), header).expect("write");
    prepare_fails(
        &fx,
        &fx.src,
        &[],
        &["train-images-idx3-ubyte", "needs at least", "refusing"],
    );
}

#[test]
fn bad_idx_gzip_corrupt() {
    let fx = Fx::new();
    std::fs::remove_file(fx.src.join("train-images-idx3-ubyte")).expect("rm");
    std::fs::write(
        fx.src.join("train-images-idx3-ubyte.gz"),
        b"\x1f\x8b\x08\x00 not really gzip",
    )
    .expect("write");
    prepare_fails(
        &fx,
        &fx.src,
        &[],
        &["train-images-idx3-ubyte.gz", "not a valid gzip file"],
    );
}

// ------------------------------------------------------------ class-folder sources

#[test]
fn bad_image_corrupt_skipped_or_strict() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |cats| {
        std::fs::write(cats.join("broken.jpg"), b"\xff\xd8\xff not a jpeg").expect("write");
    });
    let out = fx.path("out");
    let (_, err) = prepare_tree(&tree, &out, "0.25");
    assert!(
        err.contains("warning: skipped 1 unreadable image") && err.contains("broken.jpg"),
        "{err}"
    );
    assert_eq!(manifest(&out)["skipped"], 1);
    let total: u64 = ["train", "test"]
        .iter()
        .map(|k| manifest(&out)["splits"][k].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 8, "the eight good images are kept");
    prepare_fails(
        &fx,
        &tree,
        &["--strict", "--sizes", "4"],
        &["broken.jpg", "cannot decode"],
    );
}

#[test]
fn bad_image_zero_byte_skipped() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |cats| {
        std::fs::write(cats.join("empty.png"), b"").expect("write");
    });
    let (_, err) = prepare_tree(&tree, &fx.path("out"), "0.25");
    assert!(
        err.contains("skipped 1") && err.contains("empty.png"),
        "{err}"
    );
    prepare_fails(&fx, &tree, &["--strict", "--sizes", "4"], &["empty.png"]);
}

/// A valid PNG whose header claims `w × h` pixels (the data is for 1×1).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("png");
    // IHDR data starts at byte 16 (8 signature, 4 length, 4 type); its CRC follows.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    bytes
}

#[test]
fn bad_image_huge_dimensions_skipped() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |cats| {
        std::fs::write(cats.join("huge.png"), png_claiming(200_000, 200_000)).expect("write");
    });
    let (_, err) = prepare_tree(&tree, &fx.path("out"), "0.25");
    assert!(
        err.contains("skipped 1") && err.contains("huge.png"),
        "{err}"
    );
    prepare_fails(
        &fx,
        &tree,
        &["--strict", "--sizes", "4"],
        &["huge.png", "limit"],
    );
}

#[test]
fn odd_image_cmyk_converted() {
    let fx = Fx::new();
    // Pure red, 6×5, saved by Pillow as a CMYK JPEG (Adobe, inverted):
    // Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save("cmyk.jpg", quality=95)
    let cmyk =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli/fixtures/cmyk.jpg"))
            .expect("fixture");
    let tree = fx.path("tree");
    for class in ["a", "b"] {
        let d = tree.join(class);
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..2 {
            std::fs::write(d.join(format!("{i}.jpg")), &cmyk).expect("write");
        }
    }
    let out = fx.path("out");
    let (_, err) = prepare_tree(&tree, &out, "0.5");
    assert!(!err.contains("skipped"), "{err}");
    for (px, _) in shard_images(&out, 4) {
        let (r, g, b) = (px[0], px[16], px[32]);
        assert!(r > 200 && g < 60 && b < 60, "CMYK red became {r},{g},{b}");
    }
}

#[test]
fn odd_image_16bit_converted() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 2, |cats| {
        image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(8, 8, image::Rgb([65535, 32896, 0]))
            .save(cats.join("deep.png"))
            .expect("16-bit png");
    });
    let out = fx.path("out");
    let (_, err) = prepare_tree(&tree, &out, "0.5");
    assert!(!err.contains("skipped"), "{err}");
    let imgs = shard_images(&out, 4);
    assert!(
        imgs.iter()
            .any(|(px, _)| px[0] == 255 && px[16] == 128 && px[32] == 0),
        "the 16-bit image is scaled to 8 bits"
    );
}

#[test]
fn odd_image_grey_in_rgb_set_converted() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 2, |cats| {
        image::GrayImage::from_pixel(8, 8, image::Luma([77]))
            .save(cats.join("grey.png"))
            .expect("grey png");
    });
    let out = fx.path("out");
    let (_, err) = prepare_tree(&tree, &out, "0.5");
    assert!(!err.contains("skipped"), "{err}");
    assert_eq!(manifest(&out)["channels"], 3);
    assert!(
        shard_images(&out, 4)
            .iter()
            .any(|(px, _)| px.iter().all(|&v| v == 77)),
        "the grey image is replicated to three equal channels"
    );
}

#[test]
fn bad_empty_class_folder() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 2, |_| {});
    std::fs::create_dir_all(tree.join("zebras")).expect("mkdir");
    prepare_fails(&fx, &tree, &[], &["zebras", "empty class folder"]);
}

#[test]
fn bad_no_readable_images() {
    let fx = Fx::new();
    let tree = fx.path("tree");
    for class in ["a", "b"] {
        std::fs::create_dir_all(tree.join(class)).expect("mkdir");
        std::fs::write(tree.join(class).join("x.png"), b"nope").expect("write");
    }
    prepare_fails(&fx, &tree, &[], &["tree", "no readable images"]);
}

#[cfg(unix)]
#[test]
fn odd_non_utf8_file_name_accepted() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 2, |cats| {
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(cats.join(name))
            .expect("png");
    });
    let out = fx.path("out");
    prepare_tree(&tree, &out, "0.5");
    assert_eq!(shard_images(&out, 4).len(), 5);
}

#[cfg(unix)]
#[test]
fn bad_non_utf8_class_folder_name() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 2, |_| {});
    let class = tree.join(std::ffi::OsStr::from_bytes(b"ch\xe2teau"));
    std::fs::create_dir_all(&class).expect("mkdir");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(class.join("0.png"))
        .expect("png");
    prepare_fails(&fx, &tree, &[], &["ch", "not valid UTF-8"]);
}

// ------------------------------------------------------------ prepared data

/// Training on `fx.data` after `damage` must fail with `needles`.
fn train_fails(fx: &Fx, needles: &[&str]) {
    let run = fx.path("run-bad");
    fails(&train_args(&fx.data, &run, &["--iterations", "2"]), needles);
    assert!(!run.exists(), "a failed validation created the run folder");
    assert_clean(fx.tmp.path());
}

#[test]
fn bad_shard_wrong_version() {
    let fx = Fx::new();
    let f = fx.data.join("8x8/train-00000.c2fs");
    let mut b = std::fs::read(&f).expect("read");
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&f, b).expect("write");
    train_fails(&fx, &["train-00000.c2fs", "version 7"]);
}

#[test]
fn bad_shard_truncated() {
    let fx = Fx::new();
    let f = fx.data.join("8x8/test-00000.c2fs");
    let b = std::fs::read(&f).expect("read");
    std::fs::write(&f, &b[..b.len() - 3]).expect("write");
    train_fails(&fx, &["test-00000.c2fs", "truncated"]);
}

#[test]
fn bad_dataset_json_corrupt() {
    let fx = Fx::new();
    let f = fx.data.join("dataset.json");
    let text = std::fs::read_to_string(&f).expect("read");
    std::fs::write(&f, &text[..text.len() / 2]).expect("write");
    train_fails(&fx, &["dataset.json", "EOF"]);
}

#[test]
fn bad_not_a_prepared_folder() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    fails(
        &train_args(&fx.src, &run, &["--iterations", "2"]),
        &["dataset.json", "c2f prepare"],
    );
    assert!(!run.exists());
}

#[test]
fn bad_size_not_prepared() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let mut args = train_args(&fx.data, &run, &["--iterations", "2"]);
    args[4] = "16";
    fails(&args, &["size 16", "[4, 8]"]);
    assert!(!run.exists());
}

// ------------------------------------------------------------ weights and checkpoints

/// Rewrites the checksum that meta.json records for `file`, so that a damaged file gets
/// past the checksum and reaches the structural checks (as a hand-edited one would).
pub(super) fn reseal(ckpt: &Path, file: &str) {
    let meta = ckpt.join("meta.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).expect("meta")).expect("json");
    let crc = crc32c::crc32c(&std::fs::read(ckpt.join(file)).expect("file"));
    m["checksums"][file] = serde_json::json!(format!("{crc:08x}"));
    std::fs::write(&meta, serde_json::to_string_pretty(&m).expect("json")).expect("write");
}

/// `c2f eval` of a run whose checkpoint was damaged must fail with `needles`; resuming
/// must fail the same way and leave the run folder byte for byte as it was.
fn checkpoint_fails(fx: &Fx, run: &Path, needles: &[&str]) {
    fails(&["eval", s(run)], needles);
    let before = snapshot(run);
    fails(
        &train_args(&fx.data, run, &["--iterations", "20", "--resume"]),
        needles,
    );
    assert_eq!(
        snapshot(run),
        before,
        "a failed resume changed the run folder"
    );
}

fn edit_weights(run: &Path, edit: impl FnOnce(&mut WeightMap)) {
    let ckpt = run.join("checkpoint");
    let f = ckpt.join("weights.safetensors");
    let mut w = WeightMap::load(&f).expect("weights");
    edit(&mut w);
    w.save(&f, None).expect("save");
    reseal(&ckpt, "weights.safetensors");
}

#[test]
fn bad_safetensors_missing_tensor() {
    let fx = Fx::new();
    let run = fx.trained("run");
    edit_weights(&run, |w| {
        w.remove("fc8.bias").expect("present");
    });
    checkpoint_fails(
        &fx,
        &run,
        &["weights.safetensors", "missing tensor \"fc8.bias\""],
    );
}

#[test]
fn bad_safetensors_wrong_shape() {
    let fx = Fx::new();
    let run = fx.trained("run");
    edit_weights(&run, |w| {
        let t = w.get_mut("fc8.bias").expect("present");
        t.shape = vec![t.data.len() - 1];
        t.data.pop();
    });
    checkpoint_fails(&fx, &run, &["weights.safetensors", "fc8.bias", "shape"]);
}

#[test]
fn bad_safetensors_wrong_dtype() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let ckpt = run.join("checkpoint");
    let f = ckpt.join("weights.safetensors");
    let w = WeightMap::load(&f).expect("weights");
    // The same tensors stored as f64.
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .iter()
        .map(|(n, t)| {
            let b = t
                .data
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect();
            (n.clone(), t.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, shape, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F64, shape.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    std::fs::write(&f, safetensors::serialize(views, None).expect("serialise")).expect("write");
    reseal(&ckpt, "weights.safetensors");
    checkpoint_fails(&fx, &run, &["weights.safetensors", "dtype F64", "F32"]);
}

#[test]
fn bad_safetensors_truncated() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let ckpt = run.join("checkpoint");
    let f = ckpt.join("optimizer.safetensors");
    let b = std::fs::read(&f).expect("read");
    std::fs::write(&f, &b[..b.len() / 2]).expect("write");
    reseal(&ckpt, "optimizer.safetensors");
    checkpoint_fails(
        &fx,
        &run,
        &["optimizer.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn bad_checkpoint_checksum_mismatch() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let f = run.join("checkpoint/weights.safetensors");
    let mut b = std::fs::read(&f).expect("read");
    // Flip one bit of the last weight: still a well-formed file, but not the one saved.
    let last = b.len() - 1;
    b[last] ^= 0x01;
    std::fs::write(&f, b).expect("write");
    checkpoint_fails(&fx, &run, &["weights.safetensors", "checksum mismatch"]);
}

#[test]
fn bad_checkpoint_meta_truncated() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let f = run.join("checkpoint/meta.json");
    let text = std::fs::read_to_string(&f).expect("read");
    std::fs::write(&f, &text[..text.len() / 3]).expect("write");
    checkpoint_fails(&fx, &run, &["meta.json", "EOF"]);
}

// ------------------------------------------------------------ specs, growth, plans

#[test]
fn bad_spec_unknown_layer() {
    let fx = Fx::new();
    let spec = fx.path("net.toml");
    std::fs::write(
        &spec,
        "name = \"t\"\n[[layers]]\ntype = \"conv\"\nname = \"c1\"\nfilters = 2\nkernel = 3\n\n[[layers]]\ntype = \"avg_poo\"\nkernel = 2\n\n[[layers]]\ntype = \"fc\"\nname = \"fc\"\noutputs = \"classes\"\n",
    )
    .expect("write");
    let run = fx.path("run-bad");
    let mut args = train_args(&fx.data, &run, &["--iterations", "2"]);
    args[6] = s(&spec);
    fails(&args, &["net.toml", "avg_poo"]);
    assert!(!run.exists());
}

#[test]
fn bad_unknown_preset() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let mut args = train_args(&fx.data, &run, &["--iterations", "2"]);
    args[6] = "net-9";
    fails(&args, &["net-9", "net-2"]);
    assert!(!run.exists());
}

#[test]
fn bad_net_does_not_fit_input() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let mut args = train_args(&fx.data, &run, &["--iterations", "2"]);
    args[4] = "4";
    args[6] = "net-4";
    fails(&args, &["net-4", "max-pool 3/2", "4×4"]);
    assert!(!run.exists());
}

#[test]
fn bad_growth_does_not_fit_spec() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let before = snapshot(&run);
    let grown = fx.path("grown");
    fails(
        &["grow", s(&run), "--out", s(&grown), "--widen", "conv9=+4"],
        &["conv9"],
    );
    assert!(!grown.exists());
    assert_eq!(snapshot(&run), before);
}

/// The plan fixture with `edit` applied must be refused before anything is written.
fn plan_fails(fx: &Fx, edit: impl FnOnce(String) -> String, needles: &[&str]) {
    let good = format!(
        "name = \"p\"\ndata = \"{}\"\nbatch = 16\n\n[[stage]]\nsize = 4\nnet = \"net-1\"\niterations = 5\n\n[[stage]]\nsize = 8\ngrow = [{{ op = \"upscale\" }}]\niterations = 5\n",
        s(&fx.data)
    );
    let plan = fx.path("plan.toml");
    std::fs::write(&plan, edit(good)).expect("write");
    let out = fx.path("out");
    fails(&["run", s(&plan), "--out", s(&out)], needles);
    assert!(!out.exists(), "a refused plan created its run folder");
}

#[test]
fn bad_plan_unknown_key() {
    let fx = Fx::new();
    plan_fails(
        &fx,
        |p| p.replace("batch = 16", "bach = 16"),
        &["plan.toml", "line 3", "bach"],
    );
}

#[test]
fn bad_plan_bad_type() {
    let fx = Fx::new();
    plan_fails(
        &fx,
        |p| p.replace("batch = 16", "batch = \"sixteen\""),
        &["plan.toml", "line 3", "invalid type"],
    );
}

#[test]
fn bad_plan_sizes_do_not_chain() {
    let fx = Fx::new();
    plan_fails(
        &fx,
        |p| p.replace("size = 8", "size = 4"),
        &["stage 2", "size 4 does not follow"],
    );
}

#[test]
fn bad_lr_policy() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    fails(
        &train_args(
            &fx.data,
            &run,
            &["--iterations", "2", "--lr-policy", "step:x"],
        ),
        &["step:x"],
    );
    assert!(!run.exists());
}

// ------------------------------------------------------------ where output goes

#[test]
fn bad_output_not_writable() {
    let fx = Fx::new();
    // A path through a regular file cannot be created by anyone, root included.
    let blocker = fx.path("a-file");
    std::fs::write(&blocker, "x").expect("write");
    let run = blocker.join("run");
    fails(
        &train_args(&fx.data, &run, &["--iterations", "2"]),
        &["a-file", "is a file"],
    );
    fails(
        &[
            "prepare",
            s(&fx.src),
            "--out",
            s(&blocker.join("data")),
            "--sizes",
            "4,8",
        ],
        &["a-file", "is a file"],
    );
    assert_eq!(std::fs::read(&blocker).expect("read"), b"x");
}

/// The file-size limit (`ulimit -f`) makes writes past it fail like a full disk; SIGXFSZ
/// is ignored so the write returns an error instead of killing the process.
#[cfg(unix)]
#[test]
fn bad_disk_full_during_checkpoint() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let before = snapshot(&run.join("checkpoint"));
    let weights = std::fs::metadata(run.join("checkpoint/weights.safetensors"))
        .expect("weights")
        .len();
    let limit_blocks = (weights / 2 / 512).max(1);
    let args = train_args(&fx.data, &run, &["--iterations", "20", "--resume"]);
    let script =
        format!("trap '' XFSZ; ulimit -f {limit_blocks}; exec \"$0\" --threads 2 --quiet \"$@\"");
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_c2f"))
        .args(&args)
        .output()
        .expect("bash runs");
    assert_one_line_error(
        &out,
        &["checkpoint", "File too large"],
        "resume under ulimit -f",
    );
    assert_eq!(
        snapshot(&run.join("checkpoint")),
        before,
        "the previous checkpoint must survive a failed write"
    );
    assert_clean(&run);
    // With room again, the same command completes from the surviving checkpoint.
    ok(&args);
}

// ------------------------------------------------------------ training itself

#[test]
fn bad_nan_loss_keeps_last_checkpoint() {
    let fx = Fx::new();
    let run = fx.path("run");
    // A learning rate of 1e30 makes the weights huge after one step and the loss
    // non-finite at the next; a checkpoint is saved after every step.
    let out = c2f(&[
        "train",
        "--data",
        s(&fx.data),
        "--size",
        "8",
        "--net",
        "net-1",
        "--batch",
        "16",
        "--lr",
        "1e30",
        "--iterations",
        "50",
        "--checkpoint-every",
        "1",
        "--out",
        s(&run),
    ]);
    assert_one_line_error(
        &out,
        &["loss became", "at iteration", "checkpoint", "is kept"],
        "train with --lr 1e30",
    );
    let ckpt = coarse2fine::checkpoint::Checkpoint::load(&run.join("checkpoint"))
        .expect("the last good checkpoint loads");
    assert!(ckpt.meta.iteration >= 1 && ckpt.meta.iteration < 50);
    assert!(
        ckpt.weights
            .iter()
            .all(|(_, t)| t.data.iter().all(|v| v.is_finite())),
        "the kept checkpoint holds finite weights"
    );
}

#[test]
fn bad_memory_limit_refused() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let out = c2f_env(
        &train_args(&fx.data, &run, &["--iterations", "2"]),
        &[("C2F_MEMORY_LIMIT", "64K")],
    );
    assert_one_line_error(
        &out,
        &[
            "training net-1 at 8×8 with batch 16",
            "needs at least",
            "C2F_MEMORY_LIMIT is 64.0 KiB",
            "refusing",
        ],
        "train with C2F_MEMORY_LIMIT=64K",
    );
    assert!(!run.exists());
    // The same check guards every stage of a plan.
    let plan = fx.path("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "name = \"p\"\ndata = \"{}\"\nbatch = 4096\n[[stage]]\nsize = 8\nnet = \"net-1\"\niterations = 1\n",
            s(&fx.data)
        ),
    )
    .expect("write");
    let out = c2f_env(
        &["run", s(&plan), "--out", s(&run)],
        &[("C2F_MEMORY_LIMIT", "1M")],
    );
    assert_one_line_error(
        &out,
        &["plan.toml", "stage 1", "batch 4096", "refusing"],
        "run with C2F_MEMORY_LIMIT=1M",
    );
    assert!(!run.exists());
    // A limit that is not a size is an error of its own.
    let out = c2f_env(
        &train_args(&fx.data, &run, &["--iterations", "2"]),
        &[("C2F_MEMORY_LIMIT", "lots")],
    );
    assert_one_line_error(
        &out,
        &["C2F_MEMORY_LIMIT=\"lots\"", "not a size"],
        "train with C2F_MEMORY_LIMIT=lots",
    );
}

// ------------------------------------------------------------ crashes and reruns

/// A two-stage plan (net-1 at 4×4, upscaled to 8×8) with a baseline, small enough to run
/// in about a second.
pub(super) fn small_plan(fx: &Fx) -> PathBuf {
    let plan = fx.path("small-plan.toml");
    std::fs::write(
        &plan,
        format!(
            "name = \"small\"\ndata = \"{}\"\nseed = 9\nbatch = 16\nlr = 0.02\neval_every = 20\n\n[[stage]]\nsize = 4\nnet = \"net-1\"\niterations = 60\n\n[[stage]]\nsize = 8\ngrow = [{{ op = \"upscale\" }}]\niterations = 60\n\n[baseline]\nbudget = \"images\"\n",
            s(&fx.data)
        ),
    )
    .expect("plan");
    plan
}

pub(super) fn run_args(plan: &Path, out: &Path, threads: &str) -> Vec<String> {
    [
        "--threads",
        threads,
        "--quiet",
        "run",
        s(plan),
        "--out",
        s(out),
        "--checkpoint-every",
        "5",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// Every checkpoint folder present under `run` (not staging leftovers) loads and passes
/// its checksums.
pub(super) fn assert_checkpoints_readable(run: &Path, when: &str) {
    let mut stack = vec![run.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !p.is_dir() || name.starts_with('.') {
                continue;
            }
            if name == "checkpoint" || name == "grown" {
                if let Err(err) = coarse2fine::checkpoint::Checkpoint::load(&p) {
                    panic!("{when}: {} is unreadable: {err}", p.display());
                }
            } else {
                stack.push(p);
            }
        }
    }
}

/// A small deterministic generator for the kill times (no test depends on its quality).
pub(super) fn splitmix(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}

/// 20 runs killed with SIGKILL at random moments spread over a whole run: after each kill
/// every checkpoint on disk loads, and the same command completes the run with exactly
/// the results of an uninterrupted one.
#[cfg(unix)]
#[test]
fn sigkill_at_random_points_loses_nothing() {
    let fx = Fx::new();
    let plan = small_plan(&fx);
    let reference = fx.path("reference");
    let t0 = std::time::Instant::now();
    super::ok_as_given(&run_args(&plan, &reference, "1"));
    let full = t0.elapsed().as_secs_f64();
    let expected = super::run_result(&reference);

    let mut rng = 0x5EED_u64;
    let trials = 20;
    let (mut landed, mut attempts) = (0, 0);
    while landed < trials {
        attempts += 1;
        assert!(attempts <= 3 * trials, "too few kills landed inside a run");
        let run = fx.path(&format!("killed-{attempts}"));
        // Stratified: kill k lands somewhere in the k-th twentieth of a full run. A run
        // that finished before its kill tested nothing; it is tried again earlier.
        let mut at = full * (landed as f64 + splitmix(&mut rng)) / trials as f64;
        if attempts > landed + 1 {
            at *= 0.5f64.powi(attempts - landed - 1);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .args(run_args(&plan, &run, "1"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("c2f starts");
        std::thread::sleep(std::time::Duration::from_secs_f64(at));
        child.kill().expect("SIGKILL");
        if child.wait().expect("reaped").success() {
            continue;
        }
        landed += 1;
        let when = format!("kill {landed}, after {at:.3}s of a {full:.3}s run");
        assert_checkpoints_readable(&run, &when);
        // The same command again (killed-N in its arguments names the trial on failure).
        super::ok_as_given(&run_args(&plan, &run, "1"));
        assert_checkpoints_readable(&run, &when);
        assert!(
            super::run_result(&run) == expected,
            "{when}: the resumed run's results differ from an uninterrupted run's"
        );
        assert_clean(&run);
    }
}

/// The same seed and thread count give bit-identical metrics, curves and weights.
#[test]
fn reruns_are_bit_identical() {
    let fx = Fx::new();
    let plan = small_plan(&fx);
    let (a, b) = (fx.path("a"), fx.path("b"));
    super::ok_as_given(&run_args(&plan, &a, "2"));
    super::ok_as_given(&run_args(&plan, &b, "2"));
    assert!(super::run_result(&a) == super::run_result(&b));
    // Every training loss and learning rate too, not just the evaluations.
    let losses = |run: &Path| -> Vec<(u64, f64, f64)> {
        super::run_events(run, "train")
            .into_iter()
            .map(|e| {
                (
                    e["iter"].as_u64().expect("iter"),
                    e["loss"].as_f64().expect("loss"),
                    e["lr"].as_f64().expect("lr"),
                )
            })
            .collect()
    };
    let la = losses(&a);
    assert!(la.len() >= 20, "{} train events", la.len());
    assert_eq!(la, losses(&b));
    for part in ["incremental/stage-1", "incremental/stage-2", "baseline"] {
        for f in ["weights.safetensors", "optimizer.safetensors"] {
            let p = |r: &Path| r.join(part).join("checkpoint").join(f);
            assert!(
                std::fs::read(p(&a)).expect("a") == std::fs::read(p(&b)).expect("b"),
                "{part}/{f} differs between identical runs"
            );
        }
    }
}
