//! Faults for every verb that writes: SIGKILL at random moments, a full disk, a read-only
//! output folder. After each, what was on disk is whole (the old version or the new one,
//! never a mix or a half), and the same command completes once the fault is gone.
//!
//! The default suite kills each verb 3 times; `cargo test -- --ignored
//! sigkill_every_verb_20_times` kills each 20 times.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use coarse2fine::checkpoint::Checkpoint;
use coarse2fine::data::prepare::{DatasetManifest, SPLITS};
use coarse2fine::data::synthetic::write_quadrant_idx;
use coarse2fine::net::WeightMap;

use super::reliability::{Fx, assert_checkpoints_readable, snapshot, splitmix, train_args};
use super::{assert_clean, assert_one_line_error, ok, ok_as_given, s};

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// One verb under SIGKILL: the command of trial `k` (each with its own output), and what
/// must hold after a kill of trial `k`: `check` on what the kill left, then `finish` to
/// complete the work and compare it with the uninterrupted trial 0.
struct Victim<'a> {
    args: &'a dyn Fn(usize) -> Vec<String>,
    check: &'a dyn Fn(usize, &str),
    finish: &'a dyn Fn(usize, &str),
}

/// Times one uninterrupted run (trial 0), then kills `kills` runs with SIGKILL at moments
/// spread over that time (a run that finished first is retried with an earlier kill).
#[cfg(unix)]
fn kill_at_random_points(v: &Victim<'_>, kills: usize, seed: u64) {
    let t0 = std::time::Instant::now();
    ok_as_given(&(v.args)(0));
    let full = t0.elapsed().as_secs_f64();
    let mut rng = seed;
    let (mut landed, mut attempts) = (0usize, 0usize);
    while landed < kills {
        attempts += 1;
        assert!(attempts <= 4 * kills, "too few kills landed inside a run");
        let mut at = full * (landed as f64 + splitmix(&mut rng)) / kills as f64;
        if attempts > landed + 1 {
            at *= 0.5f64.powi((attempts - landed - 1) as i32);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_c2f"))
            .args((v.args)(attempts))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("c2f starts");
        std::thread::sleep(std::time::Duration::from_secs_f64(at));
        child.kill().expect("SIGKILL");
        if child.wait().expect("reaped").success() {
            continue;
        }
        landed += 1;
        let when = format!("kill {landed} (trial {attempts}), {at:.3}s into a {full:.3}s run");
        (v.check)(attempts, &when);
        (v.finish)(attempts, &when);
    }
}

/// A prepared folder is absent or whole: its manifest loads and every split at every size
/// opens with matching checksums.
fn assert_prepared_whole(out: &Path, when: &str) {
    if !out.exists() {
        return;
    }
    let m = DatasetManifest::load(out).unwrap_or_else(|e| panic!("{when}: {e}"));
    for &size in &m.sizes {
        for split in SPLITS {
            if let Err(e) = m.open_split(out, size, split) {
                panic!("{when}: {e}");
            }
        }
    }
}

#[cfg(unix)]
fn kill_prepare(kills: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    write_quadrant_idx(&src, 6000, 1000, 32, 7).expect("fixture");
    let out = |k: usize| tmp.path().join(format!("out-{k}"));
    let args = |k: usize| {
        strings(&[
            "--quiet",
            "prepare",
            s(&src),
            "--out",
            s(&out(k)),
            "--sizes",
            "8,16,32",
        ])
    };
    let before = snapshot(&src);
    let check = |k: usize, when: &str| {
        assert_prepared_whole(&out(k), when);
        assert_eq!(snapshot(&src), before, "{when}: the source changed");
    };
    let finish = |k: usize, when: &str| {
        let mut again = args(k);
        if out(k).exists() {
            again.push("--force".into());
        }
        ok_as_given(&again);
        assert_eq!(snapshot(&out(k)).len(), snapshot(&out(0)).len(), "{when}");
        for (a, b) in snapshot(&out(k)).values().zip(snapshot(&out(0)).values()) {
            assert!(
                a == b,
                "{when}: the prepared files differ from an uninterrupted prepare"
            );
        }
        assert_clean(tmp.path());
    };
    kill_at_random_points(
        &Victim {
            args: &args,
            check: &check,
            finish: &finish,
        },
        kills,
        11,
    );
}

#[cfg(unix)]
fn kill_train(kills: usize) {
    let fx = Fx::new();
    let run = |k: usize| fx.path(&format!("run-{k}"));
    let args = |k: usize| {
        let r = run(k);
        let mut a = strings(&["--threads", "1", "--quiet"]);
        a.extend(strings(&train_args(&fx.data, &r, &["--iterations", "150"])));
        a
    };
    let check = |k: usize, when: &str| assert_checkpoints_readable(&run(k), when);
    let finish = |k: usize, when: &str| {
        let mut again = args(k);
        if run(k).join("checkpoint").exists() || run(k).join("checkpoint-previous").exists() {
            again.push("--resume".into());
        } else if run(k).exists() {
            again.push("--force".into());
        }
        ok_as_given(&again);
        let w = |r: PathBuf| WeightMap::load(&r.join("checkpoint/weights.safetensors")).expect("w");
        assert!(
            w(run(k)) == w(run(0)),
            "{when}: weights differ from an uninterrupted run"
        );
        assert_clean(&run(k));
    };
    kill_at_random_points(
        &Victim {
            args: &args,
            check: &check,
            finish: &finish,
        },
        kills,
        12,
    );
}

#[cfg(unix)]
fn kill_grow(kills: usize) {
    let fx = Fx::new();
    let small = fx.trained("small");
    let out = |k: usize| fx.path(&format!("grown-{k}"));
    let args = |k: usize| {
        strings(&[
            "--quiet",
            "grow",
            s(&small),
            "--upscale",
            "--widen",
            "fc6=+4",
            "--out",
            s(&out(k)),
        ])
    };
    let check = |k: usize, when: &str| {
        if out(k).exists() {
            Checkpoint::load(&out(k)).unwrap_or_else(|e| panic!("{when}: {e}"));
        }
    };
    let finish = |k: usize, when: &str| {
        if !out(k).exists() {
            ok_as_given(&args(k));
        }
        let w = |p: PathBuf| WeightMap::load(&p.join("weights.safetensors")).expect("w");
        assert!(w(out(k)) == w(out(0)), "{when}: grown weights differ");
        assert_clean(fx.tmp.path());
    };
    kill_at_random_points(
        &Victim {
            args: &args,
            check: &check,
            finish: &finish,
        },
        kills,
        13,
    );
}

#[cfg(unix)]
fn kill_export(kills: usize) {
    let fx = Fx::new();
    let run = fx.trained("run");
    let onnx = |k: usize| fx.path(&format!("net-{k}.onnx"));
    let torch = |k: usize| fx.path(&format!("torch-{k}"));
    let args = |k: usize| {
        strings(&[
            "export",
            s(&run),
            "--onnx",
            s(&onnx(k)),
            "--pytorch",
            s(&torch(k)),
            "--force",
        ])
    };
    let check = |k: usize, when: &str| {
        if onnx(k).exists() {
            assert!(
                coarse2fine::export::is_own_onnx(&onnx(k)),
                "{when}: a broken ONNX file"
            );
        }
        if torch(k).exists() {
            WeightMap::load(&torch(k).join("model.safetensors"))
                .unwrap_or_else(|e| panic!("{when}: {e}"));
            assert!(torch(k).join("coarse2fine.json").is_file(), "{when}");
        }
    };
    let finish = |k: usize, when: &str| {
        ok_as_given(&args(k));
        let read = |p: PathBuf| std::fs::read(p).expect("read");
        assert!(read(onnx(k)) == read(onnx(0)), "{when}: ONNX files differ");
        let w = |p: PathBuf| read(p.join("model.safetensors"));
        assert!(
            w(torch(k)) == w(torch(0)),
            "{when}: exported weights differ"
        );
        assert_clean(fx.tmp.path());
    };
    kill_at_random_points(
        &Victim {
            args: &args,
            check: &check,
            finish: &finish,
        },
        kills,
        14,
    );
}

#[cfg(unix)]
fn kill_report(kills: usize) {
    let fx = Fx::new();
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    let out = |k: usize| fx.path(&format!("report-{k}"));
    let args = |k: usize| strings(&["report", s(&run), "--out", s(&out(k))]);
    let check = |k: usize, when: &str| {
        let Ok(entries) = std::fs::read_dir(out(k)) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // a temporary file of the killed writer, never a report file
            }
            match p.extension().and_then(|x| x.to_str()) {
                Some("png") => {
                    image::open(&p).unwrap_or_else(|e| panic!("{when}: {name}: {e}"));
                }
                Some("json") => {
                    super::json_of(&p);
                }
                _ => assert!(
                    std::fs::metadata(&p).expect("meta").len() > 0,
                    "{when}: {name}"
                ),
            }
        }
    };
    let finish = |k: usize, when: &str| {
        ok_as_given(&args(k));
        for f in ["report.md", "summary.json", "curves.csv"] {
            let read = |d: PathBuf| std::fs::read(d.join(f)).expect("read");
            assert!(read(out(k)) == read(out(0)), "{when}: {f} differs");
        }
    };
    kill_at_random_points(
        &Victim {
            args: &args,
            check: &check,
            finish: &finish,
        },
        kills,
        15,
    );
}

/// Three kills of each verb that writes (`c2f run` has its own test with 20 kills).
#[cfg(unix)]
#[test]
fn sigkill_every_verb_3_times() {
    kill_prepare(3);
    kill_train(3);
    kill_grow(3);
    kill_export(3);
    kill_report(3);
}

/// Twenty kills of each verb that writes (slow; run with `--ignored`).
#[cfg(unix)]
#[test]
#[ignore = "slow: 20 kills of each verb; run with --ignored"]
fn sigkill_every_verb_20_times() {
    kill_prepare(20);
    kill_train(20);
    kill_grow(20);
    kill_export(20);
    kill_report(20);
}

// ------------------------------------------------------------ a full disk

/// Runs c2f with every file limited to `blocks` KiB (bash's `ulimit -f` counts 1024-byte
/// blocks; the signal is ignored so writes fail with "File too large" as on a full disk).
#[cfg(unix)]
fn with_file_limit(blocks: u64, args: &[&str]) -> std::process::Output {
    let script =
        format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" --threads 2 --quiet \"$@\"");
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_c2f"))
        .args(args)
        .output()
        .expect("bash runs")
}

/// The paths whose bytes differ between two snapshots (or exist in one only).
fn changed(
    a: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
    b: &std::collections::BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<PathBuf> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// `args` fails under the limit with one line naming `needle` and "File too large" and
/// leaves no temporary file in `watch`; where `unchanged`, nothing in `watch` changed
/// (a plan's run keeps the progress it made, whole). Without the limit it succeeds.
#[cfg(unix)]
fn fails_on_full_disk(blocks: u64, args: &[&str], needle: &str, watch: &Path, unchanged: bool) {
    let before = snapshot(watch);
    let out = with_file_limit(blocks, args);
    assert_one_line_error(
        &out,
        &[needle, "File too large"],
        &format!("{args:?} on a full disk"),
    );
    if unchanged {
        let diff = changed(&before, &snapshot(watch));
        assert!(diff.is_empty(), "{args:?}: a failed write changed {diff:?}");
    }
    assert_checkpoints_readable(watch, &format!("{args:?} on a full disk"));
    assert_clean(watch);
    ok(args);
}

#[cfg(unix)]
#[test]
fn full_disk_for_every_verb_that_writes() {
    let fx = Fx::new();
    // prepare: the 8×8 shards exceed 4 KiB.
    let prepared = fx.path("prepared");
    let args = [
        "prepare",
        s(&fx.src),
        "--out",
        s(&prepared),
        "--sizes",
        "4,8",
    ];
    fails_on_full_disk(4, &args, "prepared", fx.tmp.path(), true);
    // run: a stage's checkpoint; the run continues once there is room.
    let plan = super::reliability::small_plan(&fx);
    let run = fx.path("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    fails_on_full_disk(8, &["run", s(&plan), "--out", s(&run)], "run", &run, false);
    // The verbs that write a new file or folder next to others: nothing may be left.
    let small = fx.trained("small");
    let (grown, onnx) = (fx.path("grown"), fx.path("net.onnx"));
    let (torch, imported) = (fx.path("torch"), fx.path("imported"));
    let cases: [(&[&str], &str); 4] = [
        (
            &["grow", s(&small), "--upscale", "--out", s(&grown)],
            "grown",
        ),
        (&["export", s(&small), "--onnx", s(&onnx)], "net.onnx"),
        (&["export", s(&small), "--pytorch", s(&torch)], "torch"),
        (&["import", s(&torch), "--out", s(&imported)], "imported"),
    ];
    for (args, made) in cases {
        fails_on_full_disk(8, args, made, fx.tmp.path(), true);
    }
    // report: all or nothing, into an empty folder and over an earlier report, whether the
    // limit stops the first plot (8 KiB: only the tables fit) or only a later one (32 KiB:
    // the curves' SVGs fit, their PNGs do not).
    let rep = fx.path("report");
    std::fs::create_dir_all(&rep).expect("mkdir");
    let args = ["report", s(&run), "--out", s(&rep)];
    fails_on_full_disk(8, &args, "report", &rep, true);
    for name in ["report.md", "accuracy_vs_time.svg"] {
        std::fs::write(rep.join(name), "an earlier report\n").expect("write");
    }
    fails_on_full_disk(32, &args, "report", &rep, true);
}

// ------------------------------------------------------------ a read-only output

/// Runs c2f as an unprivileged user when the tests run as root (root ignores file
/// permissions), so that a read-only folder is read-only to it.
#[cfg(unix)]
fn as_user(args: &[&str]) -> std::process::Output {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_c2f"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_c2f"))
    };
    cmd.args(["--quiet"])
        .args(args)
        .output()
        .expect("c2f runs (setpriv is in util-linux)")
}

#[cfg(unix)]
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[cfg(unix)]
#[test]
fn bad_read_only_output_folder() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fx::new();
    let run = fx.trained("run");
    let ro = fx.path("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    // Everything readable by the unprivileged user, the output folder writable by nobody.
    let status = Command::new("chmod")
        .args(["-R", "a+rX", s(fx.tmp.path())])
        .status()
        .expect("chmod");
    assert!(status.success());
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let before = snapshot(fx.tmp.path());
    let (data, out, onnx) = (ro.join("data"), ro.join("run"), ro.join("net.onnx"));
    let cases: [Vec<&str>; 3] = [
        vec!["prepare", s(&fx.src), "--out", s(&data)],
        train_args(&fx.data, &out, &["--iterations", "2"]),
        vec!["export", s(&run), "--onnx", s(&onnx)],
    ];
    for args in &cases {
        assert_one_line_error(
            &as_user(args),
            &["ro", "Permission denied"],
            &format!("{args:?}"),
        );
    }
    assert_eq!(
        snapshot(fx.tmp.path()),
        before,
        "a refused write changed something"
    );
}
