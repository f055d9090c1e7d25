//! The rows of docs/reliability.md found by a hostile first use: output folders that must
//! never be replaced, single-output layers, recovery after a diverged loss, two writers of
//! one folder, resumes with other settings, checkpoints read from elsewhere, unchecked
//! numbers, odd class folders, corrupt imports, plans and edited shards, and what a user
//! reached for (per-class accuracy, predict, report fixes). Each test fails on the build
//! before these fixes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use coarse2fine::data::idx::encode_idx;
use coarse2fine::net::WeightMap;

use super::reliability::{Fx, image_tree, manifest, prepare_fails, snapshot, train_args};
use super::{assert_clean, assert_one_line_error, c2f, fails, ok, s};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

/// A folder of the user's, with one file in it.
fn users_folder(fx: &Fx, name: &str) -> PathBuf {
    let d = fx.path(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    write(&d.join("thesis.tex"), "years of work");
    d
}

// ------------------------------------------------------------ output folders (data loss)

#[test]
fn bad_prepare_out_is_the_source() {
    let fx = Fx::new();
    let before = snapshot(&fx.src);
    let args = ["prepare", s(&fx.src), "--out", s(&fx.src), "--force"];
    fails(&args, &["src", "which this command reads"]);
    assert_eq!(snapshot(&fx.src), before, "the source was touched");
}

#[test]
fn bad_prepare_out_contains_the_source() {
    let fx = Fx::new();
    let before = snapshot(fx.tmp.path());
    let args = ["prepare", s(&fx.src), "--out", s(fx.tmp.path()), "--force"];
    fails(&args, &["contains", "src", "reads"]);
    assert_eq!(snapshot(fx.tmp.path()), before);
}

#[test]
fn bad_prepare_force_over_a_folder_it_did_not_make() {
    let fx = Fx::new();
    let mine = users_folder(&fx, "mine");
    let args = ["prepare", s(&fx.src), "--out", s(&mine), "--force"];
    fails(&args, &["mine", "not a prepared data folder made by c2f"]);
    assert!(mine.join("thesis.tex").is_file());
    // A prepared folder with a file of the user's added is not replaced either.
    write(&fx.data.join("notes.txt"), "mine");
    let args = ["prepare", s(&fx.src), "--out", s(&fx.data), "--force"];
    fails(&args, &["notes.txt", "which c2f did not write"]);
    assert!(fx.data.join("notes.txt").is_file());
}

#[test]
fn bad_prepare_out_is_a_file() {
    let fx = Fx::new();
    let file = fx.path("report.pdf");
    write(&file, "%PDF");
    let before = snapshot(fx.tmp.path());
    let args = ["prepare", s(&fx.src), "--out", s(&file), "--force"];
    fails(&args, &["report.pdf", "is a file"]);
    assert_eq!(
        snapshot(fx.tmp.path()),
        before,
        "an error must leave the disk as it was"
    );
    assert_clean(fx.tmp.path());
}

#[test]
fn bad_train_force_over_a_folder_it_did_not_make() {
    let fx = Fx::new();
    let mine = users_folder(&fx, "mine");
    fails(
        &train_args(&fx.data, &mine, &["--iterations", "2", "--force"]),
        &["mine", "not a training run folder made by c2f"],
    );
    assert!(mine.join("thesis.tex").is_file());
}

#[test]
fn bad_train_out_contains_its_data() {
    let fx = Fx::new();
    let before = snapshot(fx.tmp.path());
    fails(
        &train_args(&fx.data, fx.tmp.path(), &["--iterations", "2", "--force"]),
        &["contains", "data", "reads"],
    );
    assert_eq!(snapshot(fx.tmp.path()), before);
}

#[test]
fn bad_run_out_contains_its_data() {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let before = snapshot(&fx.data);
    fails(
        &["run", s(&plan), "--out", s(fx.tmp.path())],
        &["contains", "data"],
    );
    assert_eq!(snapshot(&fx.data), before);
}

#[test]
fn bad_export_over_a_file_it_did_not_write() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let thesis = fx.path("thesis.tex");
    write(&thesis, "years of work");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["export", s(&run), "--onnx", s(&thesis)];
        args.extend_from_slice(extra);
        fails(&args, &["thesis.tex", "not an ONNX model written by c2f"]);
    }
    assert_eq!(
        std::fs::read_to_string(&thesis).expect("kept"),
        "years of work"
    );
    // Its own export is replaced with --force, and only then.
    let onnx = fx.path("net.onnx");
    ok(&["export", s(&run), "--onnx", s(&onnx)]);
    fails(
        &["export", s(&run), "--onnx", s(&onnx)],
        &["net.onnx", "--force"],
    );
    ok(&["export", s(&run), "--onnx", s(&onnx), "--force"]);
    let mine = users_folder(&fx, "torch");
    let args = ["export", s(&run), "--pytorch", s(&mine), "--force"];
    fails(&args, &["torch", "not a PyTorch export folder made by c2f"]);
    assert!(mine.join("thesis.tex").is_file());
}

#[test]
fn bad_report_into_a_folder_it_did_not_make() {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    let mine = users_folder(&fx, "docs");
    write(&mine.join("report.md"), "my own report");
    fails(
        &["report", s(&run), "--out", s(&mine)],
        &["docs", "not a report folder made by c2f"],
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("report.md")).expect("kept"),
        "my own report"
    );
    // A report folder of c2f's (inside the run, as the demo writes it) is updated.
    let rep = run.join("report");
    ok(&["report", s(&run), "--out", s(&rep)]);
    ok(&["report", s(&run), "--out", s(&rep)]);
}

// ------------------------------------------------------------ single outputs, one class

#[test]
fn odd_single_output_layers_train() {
    let fx = Fx::new();
    let spec = fx.path("thin.toml");
    write(
        &spec,
        "name = \"thin\"\n[[layers]]\ntype = \"conv\"\nname = \"c1\"\nfilters = 1\nkernel = 3\npadding = 1\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"fc\"\nname = \"f1\"\noutputs = 1\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"fc\"\nname = \"f2\"\noutputs = \"classes\"\n",
    );
    let run = fx.path("run");
    let mut args = train_args(&fx.data, &run, &["--iterations", "6"]);
    args[6] = s(&spec);
    let out = c2f(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_one_class_data_set() {
    let fx = Fx::new();
    let labels = |n| encode_idx(&[n], &vec![0u8; n]);
    std::fs::write(fx.src.join("train-labels-idx1-ubyte"), labels(64)).expect("write");
    std::fs::write(fx.src.join("t10k-labels-idx1-ubyte"), labels(16)).expect("write");
    prepare_fails(
        &fx,
        &fx.src,
        &["--classes", "only", "--sizes", "4"],
        &["1 class", "at least 2"],
    );
}

// ------------------------------------------------------------ divergence and recovery

/// A rate schedule that is fine for 20 iterations and then explodes: `step` multiplies the
/// rate by 10⁸ at iteration 20.
const EXPLODING: [&str; 4] = ["--lr", "0.02", "--lr-policy", "step:1e8:20"];

#[test]
fn nan_then_resume_with_a_lower_rate_finishes() {
    let fx = Fx::new();
    let run = fx.path("run");
    let mut args = train_args(&fx.data, &run, &["--iterations", "60"]);
    args.retain(|a| *a != "--lr" && *a != "0.02");
    args.extend_from_slice(&EXPLODING);
    let out = c2f(&args);
    assert_one_line_error(
        &out,
        &["loss became", "is kept", "--resume", "--lr"],
        "train with an exploding rate",
    );
    let kept = coarse2fine::checkpoint::Checkpoint::load(&run.join("checkpoint")).expect("loads");
    assert!(kept.meta.iteration >= 20, "{}", kept.meta.iteration);
    // The documented way on: the same command with --resume and a lower, fixed rate.
    let mut on = train_args(&fx.data, &run, &["--iterations", "60", "--resume"]);
    on.retain(|a| *a != "--lr" && *a != "0.02");
    on.extend_from_slice(&["--lr", "0.002", "--lr-policy", "fixed"]);
    ok(&on);
    let meta = super::json_of(&run.join("checkpoint/meta.json"));
    assert_eq!(meta["iteration"], 60);
    assert_eq!(meta["hyper"]["base_lr"].as_f64(), Some(0.002));
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).expect("log");
    let settings: Vec<&str> = log.lines().filter(|l| l.contains("\"settings\"")).collect();
    assert_eq!(settings.len(), 1, "{log}");
    assert!(settings[0].contains("lr 0.02 → 0.002") && settings[0].contains("lr policy"));
}

#[test]
fn nan_in_a_run_then_retry_lr_finishes() {
    let fx = Fx::new();
    let plan = fx.path("plan.toml");
    write(
        &plan,
        &format!(
            "name = \"boom\"\ndata = \"{}\"\nbatch = 16\nlr = 0.02\neval_every = 10\n[[stage]]\nsize = 8\nnet = \"net-1\"\niterations = 60\nlr_policy = \"step:1e8:20\"\n",
            s(&fx.data)
        ),
    );
    let run = fx.path("run");
    let args = ["run", s(&plan), "--out", s(&run)];
    assert_one_line_error(
        &c2f(&args),
        &["loss became", "--retry-lr"],
        "run that diverges",
    );
    let stage = run.join("incremental/stage-1");
    assert!(!stage.join("done.json").exists());
    // Without a new rate the same thing happens again, from the kept checkpoint.
    assert_one_line_error(&c2f(&args), &["loss became"], "rerun without --retry-lr");
    ok(&[
        "run",
        s(&plan),
        "--out",
        s(&run),
        "--retry-lr",
        "0.002",
        "--retry-lr-policy",
        "fixed",
    ]);
    assert!(stage.join("done.json").is_file());
    let log = std::fs::read_to_string(stage.join("metrics.jsonl")).expect("log");
    assert!(
        log.contains("\"settings\"") && log.contains("lr 0.02 → 0.002"),
        "{log}"
    );
    assert!(log.contains("lr policy step:100000000:20 → fixed"), "{log}");
    // Nothing is left to retry once the run is finished.
    fails(
        &["run", s(&plan), "--out", s(&run), "--retry-lr", "0.001"],
        &["--retry-lr", "finished"],
    );
}

// ------------------------------------------------------------ two processes, one folder

/// Holds `out`'s lock as another c2f process would, with a made-up process id.
fn hold_lock(out: &Path, pid: &str) -> std::fs::File {
    let name = out
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let lock = out.with_file_name(format!(".{name}.c2f-lock"));
    std::fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    let f = std::fs::File::create(&lock).expect("lock file");
    f.try_lock().expect("free");
    std::fs::write(&lock, pid).expect("pid");
    f
}

#[test]
fn bad_two_writers_of_one_folder() {
    let fx = Fx::new();
    // A real second process: a long training run holds its folder.
    let run = fx.path("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(["--threads", "1", "--quiet"])
        .args(train_args(&fx.data, &run, &["--iterations", "100000"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("c2f starts");
    let lock = fx.path(".run.c2f-lock");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |t| t.trim().is_empty()) {
        assert!(
            t0.elapsed().as_secs() < 60,
            "the first run never locked its folder"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pid = first.id().to_string();
    for extra in [&["--force"][..], &["--resume"][..]] {
        let mut args = train_args(&fx.data, &run, &["--iterations", "10"]);
        args.extend_from_slice(extra);
        fails(
            &args,
            &["run", "another c2f process", &format!("pid {pid}")],
        );
    }
    first.kill().expect("kill");
    first.wait().expect("reaped");
    // prepare and run are refused the same way (the lock held here, as a process would).
    let out = fx.path("prepared");
    let _held = hold_lock(&out, "4242");
    fails(
        &["prepare", s(&fx.src), "--out", s(&out)],
        &["prepared", "pid 4242"],
    );
    assert!(!out.exists());
    let plan = super::reliability::small_plan(&fx);
    let rdir = fx.path("planrun");
    let _held2 = hold_lock(&rdir, "4343");
    fails(
        &["run", s(&plan), "--out", s(&rdir)],
        &["planrun", "pid 4343"],
    );
}

// ------------------------------------------------------------ resuming with other settings

#[test]
fn bad_resume_with_another_net_size_or_batch() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let before = snapshot(&run);
    let mut args = train_args(&fx.data, &run, &["--iterations", "20", "--resume"]);
    args[6] = "net-2";
    fails(&args, &["cannot resume", "net net-1 → net-2"]);
    let mut args = train_args(&fx.data, &run, &["--iterations", "20", "--resume"]);
    args[4] = "4";
    fails(&args, &["cannot resume", "size 8 → 4"]);
    let mut args = train_args(&fx.data, &run, &["--iterations", "20", "--resume"]);
    args[8] = "32";
    fails(&args, &["cannot resume", "batch 16 → 32"]);
    let args = train_args(
        &fx.data,
        &run,
        &["--iterations", "20", "--resume", "--seed", "5"],
    );
    fails(&args, &["cannot resume", "seed 0 → 5"]);
    assert_eq!(snapshot(&run), before);
}

#[test]
fn bad_resume_with_other_data() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let other = fx.path("other");
    ok(&["prepare", s(&fx.src), "--out", s(&other), "--sizes", "8"]);
    fails(
        &train_args(&other, &run, &["--iterations", "20", "--resume"]),
        &["cannot resume", "data", "other"],
    );
}

// ------------------------------------------------------------ checkpoints read from elsewhere

#[test]
fn odd_eval_from_another_directory() {
    let fx = Fx::new();
    // Trained with paths relative to the fixture folder.
    let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .current_dir(fx.tmp.path())
        .args([
            "--quiet", "train", "--data", "data", "--size", "8", "--net", "net-1",
        ])
        .args(["--iterations", "4", "--batch", "16", "--out", "run"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elsewhere = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .current_dir(elsewhere.path())
        .args(["eval", s(&fx.path("run")), "--json"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Moved together with its data, it finds the data beside it.
    let moved = elsewhere.path().join("moved");
    std::fs::create_dir(&moved).expect("mkdir");
    std::fs::rename(fx.path("run"), moved.join("run")).expect("move");
    std::fs::rename(&fx.data, moved.join("data")).expect("move");
    ok(&["eval", s(&moved.join("run"))]);
    // Apart from it, the error names every path tried.
    std::fs::rename(moved.join("data"), elsewhere.path().join("gone")).expect("move");
    fails(
        &["eval", s(&moved.join("run"))],
        &["not at", "nor at", "--data"],
    );
}

// ------------------------------------------------------------ numbers

#[test]
fn bad_numbers_are_refused_with_their_names() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--momentum", "1"], &["momentum 1"]),
        (&["--momentum", "-0.5"], &["momentum -0.5"]),
        (&["--weight-decay", "-1e-4"], &["weight decay -0.0001"]),
        (
            &["--lr-policy", "inv:-0.1:0.75"],
            &["inv:-0.1:0.75", "gamma"],
        ),
        (&["--lr-policy", "inv:0.1:-1"], &["inv:0.1:-1"]),
        (&["--lr-policy", "step:-0.1:10"], &["step:-0.1:10"]),
        (&["--epochs", "0"], &["epochs 0"]),
        (&["--iterations", "0"], &["0 iterations"]),
    ];
    for (extra, needles) in cases {
        let mut args = train_args(&fx.data, &run, &[]);
        if !matches!(extra[0], "--epochs" | "--iterations") {
            args.extend_from_slice(&["--iterations", "3"]);
        }
        args.extend_from_slice(extra);
        fails(&args, needles);
    }
    assert!(!run.exists());
}

#[test]
fn bad_negative_learning_rate_given_as_a_flag() {
    let fx = Fx::new();
    let run = fx.path("run-bad");
    let mut args = train_args(&fx.data, &run, &["--iterations", "3"]);
    args.retain(|a| *a != "--lr" && *a != "0.02");
    args.extend_from_slice(&["--lr", "-1"]);
    fails(&args, &["learning rate -1", "positive"]);
}

#[test]
fn bad_thread_counts() {
    for (n, needle) in [("100000", "--threads 100000"), ("0", "--threads 0")] {
        let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .args(["--threads", n, "nets"])
            .output()
            .expect("runs");
        assert_one_line_error(&out, &[needle, "give 1 to"], &format!("--threads {n}"));
    }
}

#[test]
fn bad_eval_batch_zero() {
    let fx = Fx::new();
    let run = fx.trained("run");
    fails(&["eval", s(&run), "--batch", "0"], &["--batch 0"]);
}

#[test]
fn bad_out_is_a_file() {
    let fx = Fx::new();
    let file = fx.path("notes.txt");
    write(&file, "x");
    fails(
        &train_args(&fx.data, &file, &["--iterations", "2"]),
        &["notes.txt", "is a file"],
    );
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "x");
}

#[test]
fn bad_idx_trailing_bytes_are_counted() {
    let fx = Fx::new();
    let f = fx.src.join("train-labels-idx1-ubyte");
    let mut b = std::fs::read(&f).expect("read");
    b.extend_from_slice(&[7; 70]);
    std::fs::write(&f, b).expect("write");
    prepare_fails(
        &fx,
        &fx.src,
        &[],
        &["train-labels-idx1-ubyte", "70 trailing bytes"],
    );
}

#[test]
fn bad_val_fraction_zero() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |_| {});
    prepare_fails(
        &fx,
        &tree,
        &["--sizes", "4", "--val-fraction", "0"],
        &[
            "--val-fraction 0",
            "no val/ or test/ folder",
            "between 0 and 1",
        ],
    );
}

// ------------------------------------------------------------ class folders

#[test]
fn bad_image_smaller_than_the_size_is_not_upscaled() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |cats| {
        image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]))
            .save(cats.join("dot.png"))
            .expect("png");
    });
    let out = fx.path("p");
    let err = prepare_skipping(&tree, &out, "4,8");
    assert!(
        err.contains("dot.png") && err.contains("never upscales"),
        "{err}"
    );
    assert_eq!(manifest(&out)["skipped"], 1);
    prepare_fails(
        &fx,
        &tree,
        &["--sizes", "4,8", "--strict"],
        &["dot.png", "1×1"],
    );
}

/// Prepares class folder `tree` into `out` at `sizes`, which must succeed with skipped
/// files; returns the warnings.
fn prepare_skipping(tree: &Path, out: &Path, sizes: &str) -> String {
    let o = c2f(&[
        "prepare",
        s(tree),
        "--out",
        s(out),
        "--sizes",
        sizes,
        "--val-fraction",
        "0.5",
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

#[cfg(unix)]
#[test]
fn bad_dangling_symlink_and_unsupported_files_in_class_folders() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 4, |cats| {
        std::os::unix::fs::symlink(cats.join("gone.png"), cats.join("link.png")).expect("link");
        write(&cats.join("readme.txt"), "not an image");
        write(&cats.join(".DS_Store"), "hidden, ignored");
    });
    let out = fx.path("p");
    let err = prepare_skipping(&tree, &out, "4");
    assert!(err.contains("skipped 2"), "{err}");
    assert_eq!(manifest(&out)["skipped"], 2);
    prepare_fails(
        &fx,
        &tree,
        &["--sizes", "4", "--strict"],
        &["link.png", "symbolic link to nothing"],
    );
    std::fs::remove_file(tree.join("cats/link.png")).expect("rm");
    prepare_fails(
        &fx,
        &tree,
        &["--sizes", "4", "--strict"],
        &["readme.txt", "not a .jpg"],
    );
}

// ------------------------------------------------------------ imports

fn exported(fx: &Fx) -> PathBuf {
    let run = fx.trained("run");
    let torch = fx.path("torch");
    ok(&["export", s(&run), "--pytorch", s(&torch)]);
    torch
}

#[test]
fn bad_import_missing_coarse2fine_json() {
    let fx = Fx::new();
    let torch = exported(&fx);
    std::fs::remove_file(torch.join("coarse2fine.json")).expect("rm");
    let out = fx.path("imported");
    fails(
        &["import", s(&torch), "--out", s(&out)],
        &["torch", "coarse2fine.json"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_import_lying_safetensors_header() {
    let fx = Fx::new();
    let torch = exported(&fx);
    let f = torch.join("model.safetensors");
    let mut b = std::fs::read(&f).expect("read");
    // The header's length field claims far more bytes than the file has.
    b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&f, b).expect("write");
    let out = fx.path("imported");
    fails(
        &["import", s(&torch), "--out", s(&out)],
        &["model.safetensors"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_import_mismatched_shapes_or_nan() {
    let fx = Fx::new();
    let torch = exported(&fx);
    let f = torch.join("model.safetensors");
    let mut w = WeightMap::load(&f).expect("weights");
    let t = w.get_mut("fc8.weight").expect("fc8");
    t.shape = vec![t.data.len(), 1];
    w.save(&f, None).expect("save");
    let out = fx.path("imported");
    fails(
        &["import", s(&torch), "--out", s(&out)],
        &["model.safetensors", "fc8.weight"],
    );
    let mut w = WeightMap::load(&fx.path("run/checkpoint/weights.safetensors")).expect("w");
    w.get_mut("fc8.bias").expect("bias").data[0] = f32::NAN;
    w.save(&f, None).expect("save");
    fails(
        &["import", s(&torch), "--out", s(&out)],
        &["fc8.bias", "not finite"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_import_negative_batch_norm_variance() {
    let fx = Fx::new();
    let run = fx.path("bn");
    ok(&[
        "train",
        "--data",
        s(&fx.data),
        "--size",
        "8",
        "--net",
        "bn-cnn",
        "--iterations",
        "4",
        "--batch",
        "16",
        "--out",
        s(&run),
    ]);
    let torch = fx.path("torch");
    ok(&["export", s(&run), "--pytorch", s(&torch)]);
    let f = torch.join("model.safetensors");
    let mut w = WeightMap::load(&f).expect("weights");
    w.get_mut("bn2.running_var").expect("variance").data[1] = -0.5;
    w.save(&f, None).expect("save");
    let out = fx.path("imported");
    fails(
        &["import", s(&torch), "--out", s(&out)],
        &["model.safetensors", "bn2.running_var", "negative variance"],
    );
    assert!(!out.exists());
}

// ------------------------------------------------------------ plans

#[test]
fn bad_plan_with_nested_variants_or_huge_numbers() {
    let fx = Fx::new();
    let plan = fx.path("plan.toml");
    let base = format!(
        "name = \"p\"\ndata = \"{}\"\n[[stage]]\nsize = 8\nnet = \"net-1\"\niterations = ITER\n",
        s(&fx.data)
    );
    write(
        &plan,
        &(base.replace("ITER", "10") + "[[variant]]\nname = \"a\"\nvariant = [{ name = \"b\" }]\n"),
    );
    fails(
        &["run", s(&plan), "--check"],
        &["variant 0 (a)", "cannot hold [[variant]]s"],
    );
    write(&plan, &base.replace("ITER", "9223372036854775807"));
    fails(
        &["run", s(&plan), "--check"],
        &["stage 1", "iterations", "give 1 to"],
    );
    write(
        &plan,
        &(base
            .replace("ITER", "10")
            .replace("[[stage]]", "batch = 4611686018427387904\n[[stage]]")),
    );
    fails(
        &["run", s(&plan), "--check"],
        &["batch size", "between 1 and"],
    );
    write(
        &plan,
        &(base
            .replace("ITER", "10")
            .replace("[[stage]]", "momentum = 1.5\n[[stage]]")),
    );
    fails(&["run", s(&plan), "--check"], &["stage 1", "momentum 1.5"]);
}

// ------------------------------------------------------------ prepared data edited later

#[test]
fn bad_shard_edited_or_added_after_prepare() {
    let fx = Fx::new();
    let f = fx.data.join("8x8/train-00000.c2fs");
    let mut b = std::fs::read(&f).expect("read");
    let last = b.len() / 2;
    b[last] ^= 0x40; // a pixel, which no header check sees
    std::fs::write(&f, &b).expect("write");
    let run = fx.path("run-bad");
    fails(
        &train_args(&fx.data, &run, &["--iterations", "2"]),
        &["train-00000.c2fs", "checksum mismatch", "prepare it again"],
    );
    b[last] ^= 0x40;
    std::fs::write(&f, &b).expect("write");
    std::fs::copy(&f, fx.data.join("8x8/train-00001.c2fs")).expect("copy");
    fails(
        &train_args(&fx.data, &run, &["--iterations", "2"]),
        &["8x8", "has 2 train shards", "records 1"],
    );
    assert!(!run.exists());
}

// ------------------------------------------------------------ what users reached for

#[test]
fn eval_reports_per_class_accuracy_and_the_confusion_matrix() {
    let fx = Fx::new();
    let run = fx.trained("run");
    let v: serde_json::Value =
        serde_json::from_str(ok(&["eval", s(&run), "--json"]).trim()).expect("json");
    let rows = v["confusion"].as_array().expect("confusion");
    assert_eq!(rows.len(), 10);
    let total: u64 = rows
        .iter()
        .flat_map(|r| r.as_array().expect("row"))
        .map(|c| c.as_u64().expect("n"))
        .sum();
    assert_eq!(total, 16);
    let per_class = v["per_class"].as_array().expect("per class");
    let images: u64 = per_class
        .iter()
        .map(|c| c["images"].as_u64().expect("n"))
        .sum();
    assert_eq!(images, 16);
    let right: u64 = (0..10).map(|i| rows[i][i].as_u64().expect("n")).sum();
    assert!((v["top1"].as_f64().expect("top1") - right as f64 / 16.0).abs() < 1e-12);
    let text = ok(&["eval", s(&run)]);
    assert!(
        text.contains("per class") && text.contains("confusion"),
        "{text}"
    );
}

#[test]
fn predict_classifies_image_files() {
    let fx = Fx::new();
    let tree = image_tree(&fx.path("tree"), 6, |_| {});
    let data = fx.path("colour");
    ok(&[
        "prepare",
        s(&tree),
        "--out",
        s(&data),
        "--sizes",
        "8",
        "--val-fraction",
        "0.34",
    ]);
    let run = fx.path("run");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "net-1",
        "--iterations",
        "30",
        "--batch",
        "4",
        "--out",
        s(&run),
    ]);
    let img = tree.join("dogs/0.png");
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "predict",
            s(&run),
            s(&img),
            s(&tree.join("cats/1.png")),
            "--json",
            "--top",
            "2",
        ])
        .trim(),
    )
    .expect("json");
    let first = &v[0]["predictions"];
    assert_eq!(first.as_array().map(Vec::len), Some(2));
    let p: f64 = first
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["probability"].as_f64().expect("p"))
        .sum();
    assert!(
        (p - 1.0).abs() < 1e-5,
        "two classes: probabilities sum to 1, {p}"
    );
    assert!(["cats", "dogs"].contains(&first[0]["class"].as_str().expect("class")));
    // The same pixels as `prepare` makes: the prediction equals the logits of the shard image.
    let text = ok(&["predict", s(&run), s(&img)]);
    assert!(text.contains("0.png:") && text.contains('%'), "{text}");
    let tiny = fx.path("tiny.png");
    image::RgbImage::from_pixel(2, 2, image::Rgb([0, 0, 0]))
        .save(&tiny)
        .expect("png");
    fails(
        &["predict", s(&run), s(&tiny)],
        &["tiny.png", "never upscales"],
    );
    let bogus = fx.path("bogus.jpg");
    write(&bogus, "not an image");
    fails(
        &["predict", s(&run), s(&bogus)],
        &["bogus.jpg", "cannot decode"],
    );
}

#[test]
fn report_draws_a_run_given_twice_once_and_shows_plan_zoom_and_confusion() {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    let rep = fx.path("report");
    let spelled = fx.tmp.path().join(".").join("run");
    ok(&["report", s(&run), s(&spelled), "--out", s(&rep)]);
    let summary = super::json_of(&rep.join("summary.json"));
    assert_eq!(summary["format"], "coarse2fine-report");
    assert_eq!(
        summary["rows"].as_array().map(Vec::len),
        Some(2),
        "one run, two curves"
    );
    let md = std::fs::read_to_string(rep.join("report.md")).expect("md");
    assert!(
        md.contains("## Plans") && md.contains("stage 2: 8×8") && md.contains("lr 0.02"),
        "{md}"
    );
    assert!(
        md.contains("confusion.png") && md.contains("accuracy_vs_time_full.png"),
        "{md}"
    );
    for f in ["confusion.png", "accuracy_vs_time_full.svg"] {
        assert!(rep.join(f).is_file(), "{f}");
    }
    // Growth under 0.1 s is not printed as 0.0.
    let dips = summary["dips"].as_array().expect("dips");
    let grow_s = dips[0]["seconds"].as_f64().expect("s");
    assert!(grow_s < 0.1, "{grow_s}");
    assert!(!md.contains("| 0.0 |"), "{md}");
}

#[test]
fn report_of_a_run_in_progress_shows_what_is_done() {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    // As if the run had stopped during stage 2: its done-file and the run's events are not
    // written yet.
    std::fs::remove_file(run.join("events.jsonl")).expect("rm");
    std::fs::remove_file(run.join("incremental/stage-2/done.json")).expect("rm");
    std::fs::remove_dir_all(run.join("baseline")).expect("rm");
    let rep = fx.path("report");
    ok(&["report", s(&run), "--out", s(&rep)]);
    let csv = std::fs::read_to_string(rep.join("curves.csv")).expect("csv");
    assert!(
        csv.contains(",incremental,eval,2,8,"),
        "stage 2 is shown: {csv}"
    );
    assert!(!csv.contains("baseline"));
}

#[test]
fn bad_grow_negative_sigma_or_noise() {
    let fx = Fx::new();
    let small = fx.trained("small");
    let out = fx.path("grown");
    fails(
        &[
            "grow",
            s(&small),
            "--upscale",
            "--mode",
            "paper",
            "--sigma",
            "-0.1",
            "--out",
            s(&out),
        ],
        &["sigma -0.1", "0 or a positive number"],
    );
    fails(
        &[
            "grow",
            s(&small),
            "--widen",
            "fc6=+2",
            "--noise",
            "-1",
            "--out",
            s(&out),
        ],
        &["noise -1"],
    );
    assert!(!out.exists());
}

#[test]
fn bad_run_folder_of_an_older_format_is_reported_not_continued() {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    let manifest = run.join("run.json");
    let mut m = super::json_of(&manifest);
    m["version"] = serde_json::json!(1);
    write(&manifest, &serde_json::to_string_pretty(&m).expect("json"));
    fails(
        &["run", s(&plan), "--out", s(&run)],
        &["run.json", "version 1", "cannot be continued"],
    );
    // Its finished events still make a report.
    ok(&["report", s(&run), "--out", s(&fx.path("report"))]);
}

// ------------------------------------------------------------ instruction sets

/// `C2F_SIMD` caps the instruction set of the engine's own loops (unfolding, pooling, LRN,
/// ReLU masks, the SGD update). Those loops give the same bits on every instruction set,
/// so a net with all of them trains to identical weights capped or not (the products
/// follow `gemm`'s own detection, the same in both runs); an unknown value of it, of
/// `C2F_WINOGRAD` or of `C2F_DIRECT` is refused.
#[test]
fn simd_cap_changes_no_bit_and_unknown_values_are_refused() {
    let fx = Fx::new();
    let train_net = |net: &str, simd: &str, direct: &str, winograd: &str, out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .current_dir(fx.tmp.path())
            .env("C2F_SIMD", simd)
            .env("C2F_DIRECT", direct)
            .env("C2F_WINOGRAD", winograd)
            .args(["--quiet", "--threads", "2", "train", "--data", "data"])
            .args(["--size", "8", "--net", net, "--iterations", "6"])
            .args(["--batch", "16", "--seed", "1", "--out", out])
            .output()
            .expect("runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(fx.path(out).join("checkpoint/weights.safetensors")).expect("weights")
    };
    let train =
        |simd: &str, direct: &str, out: &str| train_net("alexnet-s5", simd, direct, "off", out);
    // Direct convolutions need fused multiply-adds, so the baseline runs without them:
    // it is compared with the unfolded convolutions, AVX2 with the direct ones.
    let widest = train("avx512", "off", "widest");
    assert!(
        widest == train("baseline", "off", "baseline"),
        "capping the loops to the baseline changed the weights"
    );
    let direct = train("avx512", "on", "direct");
    assert!(
        direct != widest,
        "alexnet-s5's 3×3 convolutions did not run directly"
    );
    assert!(
        direct == train("avx2", "on", "direct-avx2"),
        "capping direct convolutions to AVX2 changed the weights"
    );
    // ResNet-8's 16-channel 3×3 convolutions run as Winograd when it is on: their
    // transforms give the same bits on AVX2 and AVX-512.
    let winograd = train_net("resnet-8", "avx512", "off", "on", "winograd");
    assert!(
        winograd != train_net("resnet-8", "avx512", "off", "off", "unfolded"),
        "resnet-8's 3×3 convolutions did not run as Winograd"
    );
    assert!(
        winograd == train_net("resnet-8", "avx2", "off", "on", "winograd-avx2"),
        "capping Winograd convolutions to AVX2 changed the weights"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .env("C2F_SIMD", "avx9")
        .arg("nets")
        .output()
        .expect("runs");
    assert_one_line_error(&o, &["C2F_SIMD", "avx9", "avx2"], "an unknown C2F_SIMD");
    let o = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .env("C2F_WINOGRAD", "maybe")
        .arg("nets")
        .output()
        .expect("runs");
    assert_one_line_error(
        &o,
        &["C2F_WINOGRAD", "maybe", "on, off or auto"],
        "an unknown C2F_WINOGRAD",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .env("C2F_DIRECT", "sometimes")
        .arg("nets")
        .output()
        .expect("runs");
    assert_one_line_error(
        &o,
        &["C2F_DIRECT", "sometimes", "on, off or auto"],
        "an unknown C2F_DIRECT",
    );
}
