//! End-to-end tests of the `c2f` binary on tiny generated fixtures and on Fashion-MNIST.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coarse2fine::data::synthetic::write_quadrant_idx;
use coarse2fine::net::WeightMap;

mod faults;
mod hostile;
mod payoff;
mod reliability;
mod scale_out;

/// Where Debian's dataset-fashion-mnist package puts the data.
const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn c2f(args: &[&str]) -> Output {
    c2f_env(args, &[])
}

/// Runs `c2f` (2 threads, quiet) with extra environment variables.
fn c2f_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(["--threads", "2", "--quiet"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("c2f runs")
}

fn ok(args: &[&str]) -> String {
    let out = c2f(args);
    assert!(
        out.status.success(),
        "c2f {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with a single-line error containing every `needle`.
fn fails(args: &[&str], needles: &[&str]) {
    assert_one_line_error(&c2f(args), needles, &format!("c2f {args:?}"));
}

/// Checks a failed run (`what` names it): non-zero exit, one line on stderr, every
/// needle in it.
fn assert_one_line_error(out: &Output, needles: &[&str], what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} should fail; stderr:\n{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "error of {what} should be one line, got:\n{err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "error of {what} should mention {n:?}: {err}"
        );
    }
}

/// Runs c2f with exactly `args` (no added flags), which must succeed.
fn ok_as_given(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(args)
        .output()
        .expect("c2f runs");
    assert!(
        out.status.success(),
        "c2f {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// No staging leftovers in `dir`.
fn assert_clean(dir: &Path) {
    let junk: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy().contains("c2f-tmp") || p.to_string_lossy().contains("c2f-old")
        })
        .collect();
    assert!(junk.is_empty(), "left behind: {junk:?}");
}

#[test]
fn prepare_train_eval_resume_on_synthetic_idx() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 512, 128, 8, 3).expect("fixture");
    let data = tmp.path().join("data");
    let out = ok(&[
        "prepare",
        s(&src),
        "--out",
        s(&data),
        "--sizes",
        "4,8",
        "--classes",
        "tl,tr,bl,br",
    ]);
    assert!(out.contains("512 train, 128 test"), "{out}");
    assert!(data.join("4x4").join("train-00000.c2fs").is_file());

    let run = tmp.path().join("run");
    let out = ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "net-1",
        "--iterations",
        "40",
        "--batch",
        "16",
        "--lr",
        "0.02",
        "--out",
        s(&run),
    ]);
    assert!(out.contains("test top-1"), "{out}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|v: &serde_json::Value| v["event"] == "eval")
        .collect();
    assert_eq!(evals.len(), 11, "eval at 0 and every 4 iterations");
    for key in [
        "wall_s", "train_s", "eval_s", "top1", "top5", "images", "epoch",
    ] {
        assert!(evals[10].get(key).is_some(), "eval event lacks {key}");
    }

    let json = ok(&["eval", s(&run), "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("eval json");
    assert_eq!(v["images"], 128);
    assert!(
        v["top1"].as_f64().expect("top1") > 0.9,
        "quadrants are easy: {v}"
    );

    // Continue the same run further with --resume.
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--resume",
        "--iterations",
        "60",
        "--batch",
        "16",
        "--lr",
        "0.02",
        "--out",
        s(&run),
    ]);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/meta.json")).expect("meta"),
    )
    .expect("json");
    assert_eq!(meta["iteration"], 60);

    // Starting a new run into a used folder is refused and leaves it as it was.
    fails(
        &[
            "train",
            "--data",
            s(&data),
            "--size",
            "8",
            "--net",
            "net-2",
            "--iterations",
            "5",
            "--out",
            s(&run),
        ],
        &["run", "not empty", "--resume"],
    );
    assert!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .count()
            > 0
    );
    assert_clean(tmp.path());
}

#[test]
fn nets_lists_presets_and_shows_layers() {
    let out = ok(&["nets"]);
    for name in [
        "net-1",
        "net-2",
        "net-3",
        "net-4",
        "alexnet-s5",
        "alexnet-s4",
        "alexnet-s3",
        "alexnet",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let out = ok(&[
        "nets",
        "--show",
        "net-2",
        "--size",
        "8",
        "--channels",
        "1",
        "--classes",
        "10",
    ]);
    // conv1 6×2×2 on 1×8×8 → 6×7×7 (30 params), fc6 294→256, fc8 256→10.
    assert!(out.contains("6×7×7"), "{out}");
    assert!(
        out.contains(&format!("{}", 30 + 294 * 256 + 256 + 2570)),
        "{out}"
    );
}

/// Real data: Fashion-MNIST from Debian's `dataset-fashion-mnist` package (CI installs it).
#[test]
fn fashion_mnist_prepare_and_short_training() {
    let src = Path::new(FASHION_MNIST);
    assert!(
        src.join("train-images-idx3-ubyte.gz").is_file(),
        "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("fmnist");
    let out = ok(&[
        "prepare",
        FASHION_MNIST,
        "--out",
        s(&data),
        "--sizes",
        "8,16,32",
        "--pad-pow2",
        "--val-images",
        "5000",
    ]);
    assert!(
        out.contains("55000 train, 5000 validation, 10000 test"),
        "{out}"
    );

    // Every shipped plan is valid against the real data (spec files resolve from the
    // repository root, as in the README).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut plans: Vec<PathBuf> = std::fs::read_dir(root.join("plans"))
        .expect("plans/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    plans.sort();
    assert!(plans.len() >= 5, "{plans:?}");
    for plan in &plans {
        let st = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .current_dir(&root)
            .args(["run", s(plan), "--check", "--data", s(&data)])
            .output()
            .expect("c2f runs");
        let text = String::from_utf8_lossy(&st.stdout);
        assert!(
            st.status.success() && text.contains("valid"),
            "{}: {text}{}",
            plan.display(),
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("dataset.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["padded_to"], 32);
    assert_eq!(manifest["classes"][9], "Ankle boot");

    let run = tmp.path().join("run");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "net-2",
        "--iterations",
        "300",
        "--batch",
        "64",
        "--eval-every",
        "300",
        "--out",
        s(&run),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(ok(&["eval", s(&run), "--json"]).trim()).expect("json");
    assert_eq!(v["images"], 10000);
    let top1 = v["top1"].as_f64().expect("top1");
    // 300 steps of 64 images (a third of an epoch) at 8×8; chance is 10%.
    eprintln!("net-2 at 8×8 after 300 steps: top-1 {top1}");
    assert!(top1 > 0.65, "net-2 at 8×8 after 300 steps: top-1 {top1}");

    // The ONNX export computes the same logits on real images (onnxruntime).
    onnx_matches_c2f(&run, &data, tmp.path());
}

/// Runs the independent NumPy check (scripts/crosscheck_growth.py) on two checkpoints.
fn numpy_crosscheck(small: &Path, grown: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/crosscheck_growth.py");
    Command::new("python3")
        .arg(&script)
        .arg(small)
        .arg(grown)
        .output()
        .expect("python3 runs")
}

/// [`numpy_crosscheck`] must find that the grown net computes the small one's function.
fn numpy_crosscheck_passes(small: &Path, grown: &Path) {
    let py = numpy_crosscheck(small, grown);
    assert!(
        py.status.success(),
        "NumPy cross-check failed (needs `python3 -m pip install numpy`):\n{}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("readable")).expect("json")
}

#[test]
fn grow_verify_crosscheck_and_continue_training() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 256, 64, 16, 5).expect("fixture");
    let data = tmp.path().join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8,16"]);
    let small = tmp.path().join("small");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "net-4",
        "--iterations",
        "20",
        "--batch",
        "16",
        "--out",
        s(&small),
    ]);

    // Exact operators, composed in command-line order.
    let grown = tmp.path().join("grown");
    let out = ok(&[
        "grow",
        s(&small),
        "--widen",
        "conv1=+2",
        "--init",
        "flip-v",
        "--upscale",
        "--deepen",
        "after=conv2",
        "--out",
        s(&grown),
    ]);
    let steps: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("top-1 agreement"))
        .collect();
    assert!(
        steps[0].starts_with("widen conv1") && steps[1].starts_with("upscale exact"),
        "{out}"
    );
    assert!(steps[2].starts_with("deepen after conv2"), "{out}");
    let meta = json_of(&grown.join("meta.json"));
    assert_eq!(meta["size"], 16);
    let records = meta["growth"].as_array().expect("growth records");
    assert_eq!(records.len(), 3);
    for r in records {
        assert_eq!(r["exact"], true);
        assert!(r["data"]["rel"].as_f64().expect("rel") <= 1e-5, "{r}");
        assert!(r["random"]["rel"].as_f64().expect("rel") <= 1e-5, "{r}");
    }
    let spec = json_of(&grown.join("spec.json"));
    assert_eq!(spec["input"]["height"], 16);
    assert_eq!(spec["layers"][0]["filters"], 8);

    // `c2f verify` on the whole test split.
    let v: serde_json::Value =
        serde_json::from_str(ok(&["verify", s(&small), s(&grown), "--json"]).trim()).expect("json");
    assert_eq!(v["data"]["images"], 64);
    assert!(v["data"]["rel"].as_f64().expect("rel") <= 1e-5, "{v}");
    assert_eq!(v["data"]["top1_agreement"], 1.0);

    // An independent NumPy implementation agrees that g(upsample(x)) = f(x).
    numpy_crosscheck_passes(&small, &grown);

    // Momentum buffers: carried by default (moved with the weights), zeros with --momentum reset.
    let carried = WeightMap::load(&grown.join("optimizer.safetensors")).expect("optimizer");
    assert!(
        carried
            .iter()
            .any(|(_, t)| t.data.iter().any(|&v| v != 0.0)),
        "trained momentum is carried"
    );
    let reset = tmp.path().join("reset");
    ok(&[
        "grow",
        s(&small),
        "--upscale",
        "--momentum",
        "reset",
        "--out",
        s(&reset),
    ]);
    let zeros = WeightMap::load(&reset.join("optimizer.safetensors")).expect("optimizer");
    assert!(zeros.iter().all(|(_, t)| t.data.iter().all(|&v| v == 0.0)));

    // Paper mode is reported, not asserted, and the NumPy check sees the difference too.
    let paper = tmp.path().join("paper");
    ok(&[
        "grow",
        s(&small),
        "--upscale",
        "paper",
        "--sigma",
        "0.05",
        "--out",
        s(&paper),
    ]);
    let rel = json_of(&paper.join("meta.json"))["growth"][0]["random"]["rel"]
        .as_f64()
        .expect("rel");
    assert!(rel > 1e-5, "paper mode adds noise: {rel}");
    let py = numpy_crosscheck(&small, &paper);
    assert!(
        !py.status.success(),
        "the cross-check must notice a non-preserving growth"
    );

    // Training continues from the grown checkpoint, at the new size, with carried momentum.
    let cont = tmp.path().join("continued");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "16",
        "--init-from",
        s(&grown),
        "--iterations",
        "10",
        "--batch",
        "16",
        "--out",
        s(&cont),
    ]);
    let meta = json_of(&cont.join("checkpoint/meta.json"));
    assert_eq!(
        meta["growth"].as_array().map(Vec::len),
        Some(3),
        "growth history is kept"
    );

    // Refusals: the classifier, a dead configuration, an unknown layer, a used output folder.
    fails(
        &[
            "grow",
            s(&small),
            "--widen",
            "fc8=+2",
            "--out",
            s(&tmp.path().join("x")),
        ],
        &["fc8", "classifier"],
    );
    fails(
        &[
            "grow",
            s(&small),
            "--widen",
            "conv1=+1",
            "--init",
            "zeros",
            "--out",
            s(&tmp.path().join("x")),
        ],
        &["never learn"],
    );
    fails(
        &[
            "grow",
            s(&small),
            "--deepen",
            "after=conv7",
            "--out",
            s(&tmp.path().join("x")),
        ],
        &["conv7", "conv1"],
    );
    fails(
        &["grow", s(&small), "--upscale", "--out", s(&grown)],
        &["already exists"],
    );
    assert!(!tmp.path().join("x").exists());
    assert_clean(tmp.path());
}

/// Ctrl-C (SIGINT) saves a checkpoint of the current step; `--resume` then finishes with
/// exactly the weights of an uninterrupted run.
#[cfg(unix)]
#[test]
fn interrupt_saves_and_resume_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 512, 64, 8, 9).expect("fixture");
    let data = tmp.path().join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8"]);
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "2",
            "--quiet",
            "train",
            "--data",
            s(&data),
            "--size",
            "8",
            "--net",
            "alexnet-s5",
            "--iterations",
            "1200",
            "--batch",
            "16",
            "--eval-every",
            "1200",
            "--checkpoint-every",
            "1200",
            "--out",
            s(out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = tmp.path().join("interrupted");
    let child = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(args(&run))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("c2f starts");
    // Wait for some training progress, then press Ctrl-C.
    let metrics = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics)
        .map(|m| m.matches("\"train\"").count())
        .unwrap_or(0)
        < 2
    {
        assert!(started.elapsed().as_secs() < 120, "no training progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let out = child.wait_with_output().expect("c2f exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at iteration"), "{err}");
    let at = json_of(&run.join("checkpoint/meta.json"))["iteration"]
        .as_u64()
        .expect("iteration");
    assert!(at > 0 && at < 1200, "interrupted at {at}");

    let mut resume = args(&run);
    resume.insert(resume.len() - 2, "--resume".into());
    ok_as_given(&resume);
    let full = tmp.path().join("uninterrupted");
    ok_as_given(&args(&full));
    let a = WeightMap::load(&run.join("checkpoint/weights.safetensors")).expect("weights");
    let b = WeightMap::load(&full.join("checkpoint/weights.safetensors")).expect("weights");
    assert!(
        a == b,
        "resumed weights differ from an uninterrupted run (interrupted at {at})"
    );
    assert_eq!(
        json_of(&run.join("checkpoint/meta.json"))["iteration"],
        1200
    );
    assert_clean(&run);
}

/// A plan of two stages (8×8 → 16×16 with growth) and a baseline on the same number of
/// images, on a synthetic fixture.
fn write_run_fixture(tmp: &Path) -> (PathBuf, PathBuf) {
    let src = tmp.join("src");
    write_quadrant_idx(&src, 512, 64, 16, 5).expect("fixture");
    let data = tmp.join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8,16"]);
    let plan = tmp.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"name = "kill-test"
data = "{}"
seed = 3
batch = 16
lr = 0.01
eval_every = 50

[[stage]]
size = 8
net = "alexnet-s5"
iterations = 100

[[stage]]
size = 16
grow = [{{ op = "upscale" }}, {{ op = "deepen", after = "fc6" }}]
iterations = 400
warmup = 20

[baseline]
budget = "images"
"#,
            s(&data)
        ),
    )
    .expect("plan");
    (data, plan)
}

/// The final evaluations (without clocks) and weights of a run folder.
fn run_result(run: &Path) -> (Vec<serde_json::Value>, Vec<WeightMap>) {
    let evals = run_evals(run);
    let weights = ["incremental/stage-2", "baseline"]
        .iter()
        .map(|p| {
            WeightMap::load(&run.join(p).join("checkpoint/weights.safetensors")).expect("weights")
        })
        .collect();
    (evals, weights)
}

/// `kill -9` in the middle of a stage, then the same command again: the run completes, the
/// finished stage is not redone, and the results equal an uninterrupted run's.
#[cfg(unix)]
#[test]
fn run_killed_mid_stage_resumes_and_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_data, plan) = write_run_fixture(tmp.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "1",
            "--quiet",
            "run",
            s(&plan),
            "--out",
            s(out),
            "--checkpoint-every",
            "20",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(args(&run))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("c2f starts");
    // Wait until stage 2 has saved a checkpoint past its first, then kill without warning.
    let meta = run.join("incremental/stage-2/checkpoint/meta.json");
    let started = std::time::Instant::now();
    loop {
        let at = std::fs::read_to_string(&meta)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|m| m["iteration"].as_u64())
            .unwrap_or(0);
        if at >= 40 {
            break;
        }
        assert!(started.elapsed().as_secs() < 300, "no stage-2 checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        !run.join("incremental/stage-2/done.json").exists(),
        "the run finished stage 2 before it was killed; the test needs a longer stage"
    );
    let stage1 = run.join("incremental/stage-1/done.json");
    let stage1_before = std::fs::read(&stage1).expect("stage 1 done");
    let stage1_time = std::fs::metadata(&stage1)
        .and_then(|m| m.modified())
        .expect("mtime");

    let out = Command::new(env!("CARGO_BIN_EXE_c2f"))
        .args(args(&run).iter().filter(|a| a.as_str() != "--quiet"))
        .output()
        .expect("re-run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("already done") && err.contains("resuming at iteration"),
        "{err}"
    );
    assert_eq!(std::fs::read(&stage1).expect("stage 1 done"), stage1_before);
    assert_eq!(
        std::fs::metadata(&stage1)
            .and_then(|m| m.modified())
            .expect("mtime"),
        stage1_time,
        "stage 1 was redone"
    );

    let full = tmp.path().join("uninterrupted");
    ok_as_given(&args(&full));
    let (ea, wa) = run_result(&run);
    let (eb, wb) = run_result(&full);
    assert_eq!(ea, eb, "evaluations differ from an uninterrupted run");
    assert!(wa == wb, "final weights differ from an uninterrupted run");
    assert!(ea.iter().any(|e| e["curve"] == "baseline"));

    // The report reads both and writes every output.
    let rep = tmp.path().join("report");
    let text = ok(&["report", s(&run), s(&full), "--out", s(&rep)]);
    assert!(text.contains("wrote"), "{text}");
    for f in [
        "report.md",
        "report.html",
        "curves.csv",
        "summary.json",
        "accuracy_vs_time.png",
        "accuracy_vs_time.svg",
        "loss_vs_time.png",
        "accuracy_vs_images.svg",
    ] {
        let len = std::fs::metadata(rep.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 100, "{f}: {len} bytes");
    }
    let png = image::open(rep.join("accuracy_vs_time.png")).expect("a PNG");
    assert!(png.width() >= 800);
    let md = std::fs::read_to_string(rep.join("report.md")).expect("md");
    // Both runs' curves, and the growth's exact check in the dip table.
    assert!(md.matches("kill-test (incremental)").count() >= 2, "{md}");
    assert!(md.contains("16: upscale exact, deepen after fc6"), "{md}");
    #[cfg(feature = "tensorboard")]
    tensorboard_files_parse(&[&run], tmp.path(), ea.len());
    let csv = std::fs::read_to_string(rep.join("curves.csv")).expect("csv");
    assert_eq!(
        csv.lines().filter(|l| l.contains(",eval,")).count(),
        2 * ea.len(),
        "every evaluation of both runs is in the CSV"
    );
    assert_clean(&run);
}

/// A bad plan is rejected before anything is trained or written.
#[test]
fn invalid_plans_fail_before_training() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_data, plan) = write_run_fixture(tmp.path());
    let good = std::fs::read_to_string(&plan).expect("plan");
    let out = tmp.path().join("out");
    let bad = |name: &str, text: String, needles: &[&str]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        fails(&["run", s(&p), "--out", s(&out)], needles);
        assert!(!out.exists(), "{name}: the run folder was created");
    };
    bad(
        "unknown-key.toml",
        good.replace("warmup = 20", "warm_up = 20"),
        &["unknown-key.toml", "line 17", "warm_up"],
    );
    bad(
        "sizes.toml",
        good.replace("size = 16", "size = 8"),
        &["stage 2", "size 8 does not follow"],
    );
    bad(
        "growth.toml",
        good.replace("after = \"fc6\"", "after = \"fc9\""),
        &["stage 2: grow[2]", "fc9"],
    );
    fails(
        &["run", s(&plan), "--out", s(&out), "--index", "1"],
        &["--index 1", "indices 0 to 0"],
    );
    assert!(!out.exists());
}

/// The array-job form: each index of a plan as its own process, all at once, into one
/// folder, then one report over all of them.
#[test]
fn plan_variants_run_as_parallel_array_tasks_and_merge() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_data, plan) = write_run_fixture(tmp.path());
    let text = std::fs::read_to_string(&plan)
        .expect("plan")
        .replace("iterations = 400", "iterations = 60")
        + "\n[[variant]]\nname = \"keep\"\n\n[[variant]]\nname = \"reset\"\nbaseline.enabled = false\nstage.2.momentum_state = \"reset\"\n";
    let plan = tmp.path().join("variants.toml");
    std::fs::write(&plan, text).expect("plan");
    let out = tmp.path().join("array");
    let task = |i: usize, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_c2f"))
            .args([
                "--threads",
                "1",
                "--quiet",
                "run",
                s(&plan),
                "--out",
                s(out),
            ])
            .args(["--index", &i.to_string()])
            .spawn()
            .expect("c2f starts")
    };
    let tasks: Vec<_> = (0..2).map(|i| task(i, &out)).collect();
    for mut t in tasks {
        assert!(t.wait().expect("task ends").success());
    }
    assert!(out.join("00-keep/events.jsonl").is_file());
    assert!(out.join("01-reset/events.jsonl").is_file());
    assert!(!out.join("01-reset/baseline").exists());
    // Each task's result is the one it gives alone.
    let alone = tmp.path().join("alone");
    assert!(task(1, &alone).wait().expect("task ends").success());
    assert_eq!(
        run_evals(&out.join("01-reset")),
        run_evals(&alone.join("01-reset"))
    );

    let rep = tmp.path().join("report");
    ok(&["report", s(&out), "--out", s(&rep)]);
    let md = std::fs::read_to_string(rep.join("report.md")).expect("md");
    for curve in [
        "kill-test/keep (incremental)",
        "kill-test/keep (baseline)",
        "kill-test/reset (incremental)",
    ] {
        assert!(md.contains(curve), "{curve} missing from the report:\n{md}");
    }
}

/// The events of one kind (`eval`, `train`, `growth`) of a run folder's events.jsonl.
fn run_events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|e| e["event"] == kind)
        .collect()
}

/// The evaluations of a run folder without clocks.
fn run_evals(run: &Path) -> Vec<serde_json::Value> {
    run_events(run, "eval")
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "curve": e["curve"], "stage": e["stage"], "iter": e["iter"],
                "images": e["images"], "top1": e["top1"], "loss": e["loss"],
            })
        })
        .collect()
}

/// Exports `checkpoint` to ONNX, dumps c2f's logits for 256 images of `data`, and checks
/// them with onnxruntime (scripts/check_onnx.py, tolerance 1e-4).
fn onnx_matches_c2f(checkpoint: &Path, data: &Path, tmp: &Path) {
    let model = tmp.join("model.onnx");
    let dump = tmp.join("dump.safetensors");
    let _ = std::fs::remove_file(&model);
    ok(&["export", s(checkpoint), "--onnx", s(&model)]);
    ok(&["eval", s(checkpoint), "--data", s(data), "--dump", s(&dump)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_onnx.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([s(&model), s(&dump)])
        .output()
        .expect("python3 runs (scripts/test.sh installs onnxruntime)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        checkpoint.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("256 images"), "{text}");
    eprintln!("{}", text.trim());
}

/// ONNX export of nets with every layer kind: LRN, dropout, padded max-pools, and the
/// dilated convolutions and pools of a grown net, plus an inserted identity layer.
#[test]
fn onnx_export_matches_c2f_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, data) = trained_alexnet_s5(tmp.path());
    onnx_matches_c2f(&run, &data, tmp.path());
    let grown = tmp.path().join("grown");
    ok(&[
        "grow",
        s(&run),
        "--deepen",
        "after=conv2",
        "--widen",
        "conv1=+3",
        "--init",
        "flip-h",
        "--out",
        s(&grown),
    ]);
    onnx_matches_c2f(&grown, &data, tmp.path());

    // The upscaled net takes 16×16 images: a fixture at that size.
    let src16 = tmp.path().join("src16");
    write_quadrant_idx(&src16, 64, 300, 16, 6).expect("fixture");
    let data16 = tmp.path().join("data16");
    ok(&["prepare", s(&src16), "--out", s(&data16), "--sizes", "16"]);
    let up = tmp.path().join("up");
    ok(&["grow", s(&run), "--upscale", "--out", s(&up)]);
    onnx_matches_c2f(&up, &data16, tmp.path());
}

/// A net of batch norms, an average pool and a global average pool (the `bn-cnn` preset)
/// end to end: training moves the running statistics; exact growth through every one of
/// those layers keeps the function (c2f's own check, and the NumPy cross-check);
/// progressive resizing keeps every weight; both ONNX exports match c2f's logits.
#[test]
fn batch_norm_net_trains_grows_and_exports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 256, 300, 16, 5).expect("fixture");
    let data = tmp.path().join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8,16"]);
    let small = tmp.path().join("small");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "bn-cnn",
        "--iterations",
        "20",
        "--batch",
        "16",
        "--out",
        s(&small),
    ]);
    let w = WeightMap::load(&small.join("checkpoint/weights.safetensors")).expect("weights");
    let var = w.get("bn2.running_var").expect("running variance");
    assert!(
        var.data.iter().all(|&v| v > 0.0 && v != 1.0),
        "{:?}",
        var.data
    );

    let grown = tmp.path().join("grown");
    ok(&[
        "grow",
        s(&small),
        "--widen",
        "conv2=+4",
        "--init",
        "net2wider",
        "--upscale",
        "--out",
        s(&grown),
    ]);
    let meta = json_of(&grown.join("meta.json"));
    for r in meta["growth"].as_array().expect("growth records") {
        assert_eq!(r["exact"], true, "{r}");
        assert!(r["data"]["rel"].as_f64().expect("rel") <= 1e-5, "{r}");
    }
    let spec = json_of(&grown.join("spec.json"));
    let layers = spec["layers"].as_array().expect("layers");
    assert!(
        layers.iter().all(|l| l["type"] != "global_avg_pool"),
        "{spec}"
    );
    numpy_crosscheck_passes(&small, &grown);

    // Progressive resizing: the same layers and weights, read at 16×16.
    let resized = tmp.path().join("resized");
    ok(&[
        "grow",
        s(&small),
        "--upscale",
        "resize",
        "--out",
        s(&resized),
    ]);
    let rw = WeightMap::load(&resized.join("weights.safetensors")).expect("weights");
    for (name, t) in w.iter() {
        assert_eq!(rw.get(name), Some(t), "{name}");
    }

    let data8 = tmp.path().join("data8");
    ok(&["prepare", s(&src), "--out", s(&data8), "--sizes", "8"]);
    onnx_matches_c2f(&small, &data8, tmp.path());
    let data16 = tmp.path().join("data16");
    ok(&["prepare", s(&src), "--out", s(&data16), "--sizes", "16"]);
    onnx_matches_c2f(&grown, &data16, tmp.path());
}

/// A residual net (the `resnet-8` preset: identity and projection shortcuts) end to end:
/// it trains, `nets --show` lists each block's layers, exact growth through the blocks
/// keeps the function (c2f's check and the NumPy cross-check), a zero-initialised residual
/// block deepens it exactly, widening into a block is refused in one line, a resize with
/// recalibration changes only running statistics, and the ONNX exports match c2f's logits.
#[test]
fn residual_net_trains_grows_and_exports() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 256, 300, 16, 5).expect("fixture");
    let data = tmp.path().join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8,16"]);
    let show = ok(&[
        "nets",
        "--show",
        "resnet-8",
        "--size",
        "8",
        "--classes",
        "4",
    ]);
    for row in [
        "4.4      s1b1_conv2",
        "6.s1     s2b1_proj conv 32×1×1 s2",
        "64×2×2",
    ] {
        assert!(show.contains(row), "{row}: {show}");
    }
    let small = tmp.path().join("small");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        "resnet-8",
        "--iterations",
        "12",
        "--batch",
        "16",
        "--out",
        s(&small),
    ]);
    let grown = tmp.path().join("grown");
    ok(&[
        "grow",
        s(&small),
        "--upscale",
        "--deepen",
        "after=s3b1_bn2",
        "--block",
        "residual",
        "--out",
        s(&grown),
    ]);
    let meta = json_of(&grown.join("meta.json"));
    let records = meta["growth"].as_array().expect("growth records");
    assert_eq!(records.len(), 2, "{meta}");
    for r in records {
        assert_eq!(r["exact"], true, "{r}");
        assert!(r["data"]["rel"].as_f64().expect("rel") <= 1e-5, "{r}");
    }
    let spec = json_of(&grown.join("spec.json"));
    let blocks = spec["layers"].as_array().expect("layers");
    assert_eq!(
        blocks.iter().filter(|l| l["type"] == "residual").count(),
        4,
        "{spec}"
    );
    numpy_crosscheck_passes(&small, &grown);

    // Widening inside a block's body keeps the function; what the block's sum reads
    // cannot widen.
    let wide = tmp.path().join("wide");
    ok(&[
        "grow",
        s(&small),
        "--widen",
        "s1b1_conv1=+2",
        "--init",
        "net2wider",
        "--out",
        s(&wide),
    ]);
    let meta = json_of(&wide.join("meta.json"));
    let r = meta["growth"]
        .as_array()
        .and_then(|g| g.last())
        .expect("record");
    assert!(r["data"]["rel"].as_f64().expect("rel") <= 1e-5, "{r}");
    let refused = tmp.path().join("refused");
    for (layer, needle) in [
        ("conv1", "residual block (layer 4) reads its output"),
        (
            "s1b1_conv2",
            "last layer with weights of the residual block at layer 4",
        ),
        (
            "s2b1_proj",
            "in the shortcut of the residual block at layer 6",
        ),
    ] {
        let widen = format!("{layer}=+2");
        fails(
            &["grow", s(&small), "--widen", &widen, "--out", s(&refused)],
            &[needle],
        );
    }
    assert!(!refused.exists());

    // Progressive resizing keeps every weight; recalibration then changes only the batch
    // norms' running statistics.
    let resized = tmp.path().join("resized");
    let out = ok(&[
        "grow",
        s(&small),
        "--upscale",
        "resize",
        "--recalibrate",
        "64",
        "--out",
        s(&resized),
    ]);
    assert!(
        out.contains("recalibrated 9 batch norms on 64 training images at 16×16"),
        "{out}"
    );
    let before = WeightMap::load(&small.join("checkpoint/weights.safetensors")).expect("weights");
    let after = WeightMap::load(&resized.join("weights.safetensors")).expect("weights");
    for (name, t) in before.iter() {
        let moved = after.get(name) != Some(t);
        assert_eq!(moved, name.contains(".running_"), "{name}");
    }

    let data8 = tmp.path().join("data8");
    ok(&["prepare", s(&src), "--out", s(&data8), "--sizes", "8"]);
    onnx_matches_c2f(&small, &data8, tmp.path());
    let data16 = tmp.path().join("data16");
    ok(&["prepare", s(&src), "--out", s(&data16), "--sizes", "16"]);
    onnx_matches_c2f(&grown, &data16, tmp.path());
}

/// `c2f report --tensorboard` writes event files that TensorBoard's own loader reads, with
/// every evaluation of the run (`evals` in all, over its curves).
#[cfg(feature = "tensorboard")]
fn tensorboard_files_parse(runs: &[&Path], tmp: &Path, evals: usize) {
    let tb = tmp.join("tb");
    let rep = tmp.join("tb-report");
    let mut args = vec!["report"];
    args.extend(runs.iter().map(|r| s(r)));
    args.extend(["--out", s(&rep), "--tensorboard", s(&tb)]);
    ok(&args);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_tensorboard.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&tb)
        .output()
        .expect("python3 runs (scripts/test.sh installs tensorboard)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let points: usize = text
        .lines()
        .filter_map(|l| {
            l.split("; ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert_eq!(points, evals, "{text}");
}

/// A small trained net with LRN and dropout, and its data, for the export tests.
fn trained_alexnet_s5(tmp: &Path) -> (PathBuf, PathBuf) {
    trained_8x8(tmp, "alexnet-s5")
}

/// `net` trained for 20 steps on an 8×8 fixture in `tmp`: the run and the data folder.
fn trained_8x8(tmp: &Path, net: &str) -> (PathBuf, PathBuf) {
    let src = tmp.join("src");
    write_quadrant_idx(&src, 256, 300, 8, 4).expect("fixture");
    let data = tmp.join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8"]);
    let run = tmp.join("run");
    ok(&[
        "train",
        "--data",
        s(&data),
        "--size",
        "8",
        "--net",
        net,
        "--iterations",
        "20",
        "--batch",
        "16",
        "--out",
        s(&run),
    ]);
    (run, data)
}

/// `export --pytorch` then `import` gives back the same weights and accuracy; the module
/// file is valid Python. (With PyTorch installed, `pytorch_round_trip_matches_logits`
/// also runs it.)
#[test]
fn pytorch_export_and_import_round_trip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, data) = trained_alexnet_s5(tmp.path());
    let dir = tmp.path().join("torch");
    ok(&["export", s(&run), "--pytorch", s(&dir)]);
    let module = std::fs::read_to_string(dir.join("model.py")).expect("model.py");
    for needle in [
        "self.conv1 = nn.Conv2d(1, ",
        "F.local_response_norm",
        "self.fc8 = nn.Linear(",
        "def load(",
    ] {
        assert!(module.contains(needle), "{needle} missing:\n{module}");
    }
    let compiled = Command::new("python3")
        .args(["-m", "py_compile", s(&dir.join("model.py"))])
        .status()
        .expect("python3");
    assert!(compiled.success(), "model.py does not compile");
    fails(
        &["export", s(&run), "--pytorch", s(&dir)],
        &["already exists"],
    );

    let back = tmp.path().join("back");
    ok(&["import", s(&dir), "--out", s(&back)]);
    let a = WeightMap::load(&run.join("checkpoint/weights.safetensors")).expect("weights");
    let b = WeightMap::load(&back.join("weights.safetensors")).expect("weights");
    assert!(a == b, "imported weights differ");
    let acc = |p: &Path| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(ok(&["eval", s(p), "--data", s(&data), "--json"]).trim())
                .expect("json");
        v["top1"].clone()
    };
    assert_eq!(acc(&run), acc(&back));

    // A state_dict with a wrong shape or a missing tensor is refused, naming it.
    let mut bad = a.clone();
    bad.remove("fc8.bias");
    let bad_path = tmp.path().join("bad.safetensors");
    bad.save(&bad_path, None).expect("save");
    fails(
        &[
            "import",
            s(&dir),
            "--weights",
            s(&bad_path),
            "--out",
            s(&tmp.path().join("x")),
        ],
        &["bad.safetensors", "fc8.bias"],
    );
    assert!(!tmp.path().join("x").exists());
}

/// Both ways through PyTorch: the exported module gives c2f's logits, and a state_dict
/// changed in PyTorch, imported, gives PyTorch's logits in c2f. Needs torch and
/// safetensors (`pip install torch safetensors`, several GB with CUDA), so it is opt-in.
#[test]
#[ignore = "needs PyTorch: pip install torch safetensors, then cargo test -- --ignored pytorch"]
fn pytorch_round_trip_matches_logits() {
    // AlexNet's layers, batch norms with average pools, and residual blocks.
    for net in ["alexnet-s5", "bn-cnn", "resnet-8"] {
        pytorch_round_trip(net);
    }
}

fn pytorch_round_trip(net: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, data) = trained_8x8(tmp.path(), net);
    let dir = tmp.path().join("torch");
    ok(&["export", s(&run), "--pytorch", s(&dir)]);
    let dump = tmp.path().join("dump.safetensors");
    ok(&["eval", s(&run), "--data", s(&data), "--dump", s(&dump)]);
    let tuned = tmp.path().join("tuned.safetensors");
    let tuned_dump = tmp.path().join("tuned-dump.safetensors");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_pytorch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([s(&dir), s(&dump), s(&tuned), s(&tuned_dump)])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let back = tmp.path().join("back");
    ok(&["import", s(&dir), "--weights", s(&tuned), "--out", s(&back)]);
    let mine = tmp.path().join("mine.safetensors");
    ok(&["eval", s(&back), "--data", s(&data), "--dump", s(&mine)]);
    let theirs = WeightMap::load(&tuned_dump).expect("torch logits");
    let ours = WeightMap::load(&mine).expect("c2f logits");
    let (t, o) = (
        theirs.get("logits").expect("logits"),
        ours.get("logits").expect("logits"),
    );
    assert_eq!(t.shape, o.shape);
    let max = t
        .data
        .iter()
        .zip(&o.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{net}: after one SGD step in PyTorch and c2f import: max |c2f − torch| = {max:.3e}");
    assert!(max <= 1e-4, "{net}: max |c2f − torch| after import = {max}");
}

/// `c2f bench` measures every requested net and the loader and writes its tables; the
/// figures themselves are checked by docs/performance.md's benchmark, not here.
#[test]
fn bench_measures_nets_and_loader() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 64, 16, 8, 3).expect("fixture");
    let data = tmp.path().join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8"]);
    let json = tmp.path().join("bench.json");
    let md = tmp.path().join("bench.md");
    let out = ok(&[
        "bench",
        "--nets",
        "net-1,tiny16",
        "--thread-counts",
        "1",
        "--batch",
        "8",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--data",
        s(&data),
        "--reference",
        "flex",
        "--pairs",
        "2",
        "--epoch-data",
        s(&data),
        "--epoch-net",
        "net-1",
        "--epoch-size",
        "8",
        "--json",
        s(&json),
        "--md",
        s(&md),
    ]);
    assert!(
        out.contains("| net-1 | 8×8 | 1 |") && out.contains("| tiny16 | 16×16 | 1 |"),
        "{out}"
    );
    assert!(out.contains("train c2f/flex |"), "reference column: {out}");
    assert!(out.contains("Data loader at 8×8"), "{out}");
    assert!(
        out.contains("| net-1 | fc8 fc classes |"),
        "per-layer table: {out}"
    );
    assert_eq!(std::fs::read_to_string(&md).expect("md"), out);
    let v = json_of(&json);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(
            r["ours"]["train_step_s"].as_f64().expect("time") > 0.0,
            "{r}"
        );
        assert!(r["flops"].as_u64().expect("flops") > 0, "{r}");
        assert!(r["pytorch"].is_null());
        assert!(
            r["reference"]["train_step_s"]
                .as_f64()
                .expect("reference time")
                > 0.0,
            "{r}"
        );
    }
    assert!(v["loader"]["images_per_s"].as_f64().expect("loader") > 0.0);
    for r in rows {
        let pairs = r["pairs"].as_array().expect("pairs");
        assert_eq!(pairs.len(), 2, "one measurement per pair: {r}");
        // The row's figure is the median of its pairs, so it lies between them.
        let t: Vec<f64> = pairs
            .iter()
            .map(|p| p["ours"]["train_step_s"].as_f64().expect("pair time"))
            .collect();
        let median = r["ours"]["train_step_s"].as_f64().expect("time");
        assert!(t[0].min(t[1]) <= median && median <= t[0].max(t[1]), "{r}");
    }
    // The machine the figures belong to, and the instruction sets in use.
    let m = &v["machine"];
    for key in [
        "cpu_model",
        "allowed_cpus",
        "caches",
        "c2f_products",
        "c2f_loops",
    ] {
        assert!(!m[key].as_str().expect(key).is_empty(), "{key}: {m}");
    }
    assert!(out.starts_with("Machine: "), "{out}");
    // The end-to-end row: one epoch of `c2f train` per pair and thread count.
    let epoch = v["epoch"].as_array().expect("epoch rows");
    assert_eq!(epoch.len(), 1, "{v}");
    assert_eq!(epoch[0]["images"].as_u64(), Some(64), "{v}");
    assert!(epoch[0]["c2f_loop_s"]["median"].as_f64().expect("loop") > 0.0);
    assert!(
        out.contains("One epoch of net-1 at 8×8 (64 images, batch 8)"),
        "{out}"
    );
    fails(&["bench", "--nets", "net-9"], &["net-9", "tiny16", "net-1"]);
    fails(&["bench", "--pairs", "0"], &["--pairs"]);
}

/// Quadrant images prepared at 8×8, for the short training runs below.
fn quadrants8(tmp: &Path) -> PathBuf {
    let src = tmp.join("src");
    write_quadrant_idx(&src, 256, 64, 8, 3).expect("fixture");
    let data = tmp.join("data");
    ok(&["prepare", s(&src), "--out", s(&data), "--sizes", "8"]);
    data
}

/// Runs `c2f train` on `data` at 8×8, batch 16, into `out` with `extra` (the net or
/// `--resume`, the budget, the settings under test); with `must_fail`, checks instead
/// that it fails with one line holding `must_fail`.
fn train8(data: &Path, out: &Path, extra: &[&str], must_fail: Option<&str>) {
    let mut a = vec!["train", "--data", s(data), "--size", "8", "--batch", "16"];
    a.extend_from_slice(extra);
    a.extend_from_slice(&["--out", s(out)]);
    match must_fail {
        Some(needle) => fails(&a, &[needle]),
        None => {
            ok(&a);
        }
    }
}

fn weights_of(run: &Path) -> WeightMap {
    WeightMap::load(&run.join("checkpoint/weights.safetensors")).expect("weights")
}

/// `--augment crop:2,flip` changes what is trained on; the same seed gives the same
/// weights; a run stopped and resumed ends with the uninterrupted run's weights (each
/// image's crop and flip are drawn from its place in the data stream); a resume may not
/// change the augmentation; a bad spec is a one-line error.
#[test]
fn augmented_training_is_seeded_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = quadrants8(tmp.path());
    let dir = |n: &str| tmp.path().join(n);
    let fresh = ["--net", "net-2", "--iterations", "40", "--augment"];
    train8(
        &data,
        &dir("a"),
        &[&fresh[..], &["crop:2,flip"]].concat(),
        None,
    );
    train8(
        &data,
        &dir("b"),
        &[&fresh[..], &["crop:2,flip"]].concat(),
        None,
    );
    train8(
        &data,
        &dir("plain"),
        &[&fresh[..], &["none"]].concat(),
        None,
    );
    let first = [
        "--net",
        "net-2",
        "--iterations",
        "15",
        "--augment",
        "crop:2,flip",
    ];
    train8(&data, &dir("resumed"), &first, None);
    let resume = ["--resume", "--iterations", "40", "--augment"];
    train8(
        &data,
        &dir("resumed"),
        &[&resume[..], &["crop:2,flip"]].concat(),
        None,
    );
    assert_eq!(weights_of(&dir("a")), weights_of(&dir("b")));
    assert_ne!(weights_of(&dir("a")), weights_of(&dir("plain")));
    assert_eq!(weights_of(&dir("a")), weights_of(&dir("resumed")));
    let changed = Some("augment crop:2,flip → flip");
    let more = ["--resume", "--iterations", "50", "--augment", "flip"];
    train8(&data, &dir("resumed"), &more, changed);
    let bad = [
        "--net",
        "net-2",
        "--iterations",
        "5",
        "--augment",
        "crop:99",
    ];
    train8(
        &data,
        &dir("bad"),
        &bad,
        Some("augment \"crop:99\": crop padding \"99\" must be 1 to 64"),
    );
    assert!(!dir("bad").exists());
}

/// A plan's `augment` applies to every part unless a stage or the baseline sets its own
/// (`none` included), `--list` says which, and a bad one is a one-line error.
#[test]
fn plan_augmentation_is_per_part() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (_data, plan) = write_run_fixture(tmp.path());
    let text = std::fs::read_to_string(&plan)
        .expect("plan")
        .replace("seed = 3\n", "seed = 3\naugment = \"flip\"\n")
        .replace("warmup = 20\n", "warmup = 20\naugment = \"crop:2,flip\"\n")
        .replace(
            "budget = \"images\"\n",
            "budget = \"images\"\naugment = \"none\"\n",
        );
    std::fs::write(&plan, &text).expect("plan");
    let listed = ok(&["run", s(&plan), "--list"]);
    let line = |start: &str| {
        listed
            .lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no {start} line in\n{listed}"))
            .to_string()
    };
    assert!(line("stage 1:").ends_with(", augmented flip"), "{listed}");
    assert!(
        line("stage 2:").ends_with(", augmented crop:2,flip"),
        "{listed}"
    );
    assert!(!line("baseline").contains("augmented"), "{listed}");
    std::fs::write(
        &plan,
        text.replace("augment = \"flip\"", "augment = \"spin\""),
    )
    .expect("plan");
    fails(
        &["run", s(&plan), "--list"],
        &["augment \"spin\"", "crop:PAD or flip"],
    );
}

/// `--label-smoothing 0.1` trains to other weights than plain cross-entropy, reproducibly;
/// a value outside [0, 1) and a crop as large as the image are one-line errors.
#[test]
fn label_smoothing_changes_training_and_bad_values_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = quadrants8(tmp.path());
    let dir = |n: &str| tmp.path().join(n);
    let base = ["--net", "net-2", "--iterations", "20"];
    let smooth = [&base[..], &["--label-smoothing", "0.1"]].concat();
    train8(&data, &dir("a"), &smooth, None);
    train8(&data, &dir("b"), &smooth, None);
    train8(&data, &dir("plain"), &base, None);
    assert_eq!(weights_of(&dir("a")), weights_of(&dir("b")));
    assert_ne!(weights_of(&dir("a")), weights_of(&dir("plain")));
    for (extra, needle) in [
        (
            &["--label-smoothing", "1"][..],
            "label smoothing 1 must be at least 0 and below 1",
        ),
        (&["--label-smoothing=-0.1"], "label smoothing -0.1"),
        (&["--augment", "crop:8"], "below the image side 8"),
    ] {
        train8(
            &data,
            &dir("bad"),
            &[&base[..], extra].concat(),
            Some(needle),
        );
    }
    assert!(!dir("bad").exists());
}
