//! Beyond one process: a run's last stage continued in PyTorch (DistributedDataParallel
//! under torchrun) and imported back, and plan variants as a real Slurm array job.

use std::path::{Path, PathBuf};
use std::process::Command;

use coarse2fine::data::synthetic::write_quadrant_idx;
use coarse2fine::net::WeightMap;

use super::{assert_one_line_error, c2f, ok, run_events, s};

/// Prepared images at 8 and 16 pixels — generated quadrants, or Fashion-MNIST with
/// `real` — and a finished net-2 run 8 → 16 (no dropout, so many processes can match one
/// exactly).
fn finished_run(tmp: &Path, real: bool) -> (PathBuf, PathBuf) {
    let data = if real {
        let data = tmp.join("data");
        ok(&[
            "prepare",
            super::FASHION_MNIST,
            "--out",
            s(&data),
            "--sizes",
            "8,16",
        ]);
        data
    } else {
        quadrants(tmp, "data", 16, 7, &["--sizes", "8,16"])
    };
    let plan = tmp.join("plan.toml");
    let text = format!(
        "name = \"handoff\"\ndata = \"{}\"\nseed = 2\nbatch = 32\nlr = 0.01\neval_every = 30\n\n\
         [[stage]]\nsize = 8\nnet = \"net-2\"\niterations = 60\n\n\
         [[stage]]\nsize = 16\ngrow = [{{ op = \"upscale\" }}]\niterations = 60\n",
        s(&data)
    );
    std::fs::write(&plan, text).expect("plan");
    let run = tmp.join("run");
    ok(&["run", s(&plan), "--out", s(&run)]);
    (run, data)
}

/// Generated quadrant images (512 training, 128 test, `side` pixels, seeded) prepared
/// into `tmp/name` with the `prepare` options `args`.
fn quadrants(tmp: &Path, name: &str, side: usize, seed: u64, args: &[&str]) -> PathBuf {
    let src = tmp.join(format!("{name}-src"));
    write_quadrant_idx(&src, 512, 128, side, seed).expect("fixture");
    let data = tmp.join(name);
    let mut prepare = vec!["prepare", s(&src), "--out", s(&data)];
    prepare.extend_from_slice(args);
    ok(&prepare);
    data
}

/// `c2f export --pytorch` of a run's stage `k` (from 1) into `dir`.
fn export_stage(run: &Path, k: usize, dir: &Path) {
    let stage = run.join(format!("incremental/stage-{k}"));
    ok(&["export", s(&stage), "--pytorch", s(dir)]);
}

/// The incremental curve's events of a run's events.jsonl.
fn incremental(run: &Path) -> Vec<serde_json::Value> {
    ["train", "eval"]
        .iter()
        .flat_map(|k| run_events(run, k))
        .filter(|e| e["curve"] == "incremental")
        .collect()
}

/// `import --into` places a continuation's events after the run's last stage and keeps
/// its weights; a second import, an export of another checkpoint and a curve that runs
/// backwards are refused with one line, leaving the run as it was.
#[test]
fn import_into_a_run_continues_its_incremental_curve() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, _data) = finished_run(tmp.path(), false);
    let before = incremental(&run);
    let end = before
        .iter()
        .map(|e| e["iter"].as_u64().expect("iter"))
        .max();
    let export = tmp.path().join("export");
    export_stage(&run, 2, &export);
    let curve = tmp.path().join("curve.jsonl");
    let line = |ev: &str, it: u64, extra: &str| {
        format!(
            "{{\"event\":\"{ev}\",\"iter\":{it},\"images\":{},{extra},\"train_s\":{it}.0,\"eval_s\":1.0,\"wall_s\":{}.0}}\n",
            it * 32,
            it + 1
        )
    };
    let eval = "\"top1\":0.5,\"top5\":1.0,\"loss\":0.7";
    let good = line("eval", 0, eval)
        + &line("train", 10, "\"loss\":0.6,\"lr\":0.01")
        + &line("eval", 10, eval);
    std::fs::write(&curve, &good).expect("curve");

    let stage1 = tmp.path().join("stage1-export");
    export_stage(&run, 1, &stage1);
    let into = |dir: &Path, curve: &Path| {
        let weights = dir.join("model.safetensors");
        c2f(&[
            "import",
            s(dir),
            "--weights",
            s(&weights),
            "--curve",
            s(curve),
            "--into",
            s(&run),
        ])
    };
    assert_one_line_error(
        &into(&stage1, &curve),
        &["was not exported from the run's last checkpoint"],
        "import of stage 1's export",
    );
    let backwards = tmp.path().join("backwards.jsonl");
    std::fs::write(&backwards, line("eval", 10, eval) + &line("eval", 0, eval)).expect("curve");
    assert_one_line_error(
        &into(&export, &backwards),
        &["line 2", "backwards"],
        "backwards curve",
    );
    assert!(!run.join("incremental/handoff").exists());
    assert_eq!(incremental(&run), before);

    let out = into(&export, &curve);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("10 iterations, 3 events"), "{out}");
    let after = incremental(&run);
    let mut added: Vec<_> = after.iter().filter(|e| e["stage"] == 3).collect();
    added.sort_by_key(|e| (e["iter"].as_u64(), e["event"] == "eval"));
    assert_eq!(after.len(), before.len() + 3);
    let end = end.expect("iterations");
    assert_eq!(added[0]["iter"].as_u64(), Some(end));
    assert_eq!(added[2]["iter"].as_u64(), Some(end + 10));
    assert_eq!(added[2]["top1"].as_f64(), Some(0.5));
    // The clock runs on from the last stage's end: 10 s of training after it.
    let last_train = |e: &serde_json::Value| e["train_s"].as_f64().expect("train_s");
    let done = std::fs::read_to_string(run.join("incremental/stage-2/done.json")).expect("done");
    let stage_end = last_train(&serde_json::from_str(&done).expect("json"));
    assert!((last_train(added[2]) - (stage_end + 10.0)).abs() < 1e-9);
    // Running the finished plan again keeps the hand-off on the curve.
    ok(&["run", s(&tmp.path().join("plan.toml")), "--out", s(&run)]);
    assert_eq!(incremental(&run), after);
    assert_eq!(
        WeightMap::load(&run.join("incremental/handoff/checkpoint/weights.safetensors"))
            .expect("imported"),
        WeightMap::load(&export.join("model.safetensors")).expect("exported")
    );
    assert_one_line_error(
        &into(&export, &curve),
        &["already holds a hand-off"],
        "second import",
    );
    let rep = tmp.path().join("report");
    ok(&["report", s(&run), "--out", s(&rep)]);
    let csv = std::fs::read_to_string(rep.join("curves.csv")).expect("csv");
    assert!(
        csv.contains(&format!(",{},", end + 10)),
        "hand-off missing from curves.csv"
    );
}

/// Runs `cmd`, which must succeed; its standard output.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The hand-off to PyTorch's distributed training: two processes under torchrun (gloo,
/// CPU) end where one process with the same global batch ends, to float tolerance, and
/// the imported net evaluates in c2f to the accuracy PyTorch reported (Fashion-MNIST at
/// 16×16). Needs torch, safetensors and torchrun, so it is opt-in.
#[test]
#[ignore = "needs PyTorch: pip install torch safetensors, then cargo test -- --ignored torchrun"]
fn torchrun_ddp_handoff_matches_one_process_and_imports_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (run, data) = finished_run(tmp.path(), true);
    let export = tmp.path().join("export");
    export_stage(&run, 2, &export);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pytorch/ddp_continue.py");
    let common = |out: &Path| {
        vec![
            s(&script).to_string(),
            s(&export).to_string(),
            "--iterations".into(),
            "30".into(),
            "--lr".into(),
            "0.01".into(),
            "--eval-every".into(),
            "15".into(),
            "--log-every".into(),
            "5".into(),
            "--device".into(),
            "cpu".into(),
            "--out".into(),
            s(out).to_string(),
        ]
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    stdout_of(
        Command::new("python3")
            .args(common(&one))
            .env("OMP_NUM_THREADS", "1"),
    );
    stdout_of(
        Command::new("torchrun")
            .args(["--standalone", "--nproc_per_node", "2"])
            .args(common(&two))
            .env("OMP_NUM_THREADS", "1"),
    );

    let w1 = WeightMap::load(&one.join("weights.safetensors")).expect("one process");
    let w2 = WeightMap::load(&two.join("weights.safetensors")).expect("two processes");
    let mut worst = 0f32;
    for (name, t) in w1.iter() {
        let u = w2.get(name).expect("same tensors");
        assert_eq!(t.shape, u.shape);
        worst = t
            .data
            .iter()
            .zip(&u.data)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    eprintln!("two processes against one after 30 steps: max |Δw| = {worst:.3e}");
    assert!(worst <= 1e-5, "max |Δw| = {worst}");
    assert_ne!(
        w1,
        WeightMap::load(&export.join("model.safetensors")).expect("export")
    );

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(two.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["processes"], 2);
    let theirs = summary["final"]["top1"].as_f64().expect("top1");
    ok(&[
        "import",
        s(&export),
        "--weights",
        s(&two.join("weights.safetensors")),
        "--curve",
        s(&two.join("curve.jsonl")),
        "--into",
        s(&run),
    ]);
    let eval = ok(&[
        "eval",
        s(&run.join("incremental/handoff")),
        "--data",
        s(&data),
    ]);
    let ours = eval
        .split("top-1 ")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|t| t.trim().parse::<f64>().ok())
        .expect("c2f eval prints top-1");
    eprintln!(
        "PyTorch's final top-1 {:.2}%, c2f's on the imported net {ours:.2}%",
        100.0 * theirs
    );
    // Within one test image: a tie between two classes may break either way.
    assert!(
        (ours - 100.0 * theirs).abs() <= 0.0101,
        "c2f {ours}% vs PyTorch {theirs}"
    );
    assert!(
        incremental(&run)
            .iter()
            .any(|e| e["stage"] == 3 && e["event"] == "eval")
    );
}

/// A single-node Slurm cluster living in one folder: munged, slurmctld and slurmd,
/// configured there and stopped when dropped. Needs root (the daemons run as root).
struct Slurm {
    dir: PathBuf,
    daemons: Vec<std::process::Child>,
}

impl Slurm {
    fn start(dir: &Path) -> Slurm {
        let uid =
            String::from_utf8_lossy(&Command::new("id").arg("-u").output().expect("id").stdout)
                .trim()
                .to_string();
        assert_eq!(
            uid, "0",
            "the Slurm test starts slurmd and munged, which needs root"
        );
        for d in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(d)).expect("slurm folders");
        }
        let key = dir.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("urandom"),
            &mut bytes,
        )
        .expect("random key");
        std::fs::write(&key, &bytes).expect("munge key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400))
            .expect("chmod");
        let mut cluster = Slurm {
            dir: dir.to_path_buf(),
            daemons: Vec::new(),
        };
        let sock = dir.join("munge.sock");
        cluster.spawn(
            "munged",
            &[
                "-F".into(),
                "-f".into(),
                format!("--key-file={}", s(&key)),
                format!("--socket={}", s(&sock)),
                format!("--pid-file={}", s(&dir.join("munged.pid"))),
                format!("--log-file={}", s(&dir.join("munged.log"))),
                format!("--seed-file={}", s(&dir.join("munged.seed"))),
            ],
        );
        wait_for(20, "munged's socket", || sock.exists().then_some(()));
        std::fs::write(dir.join("slurm.conf"), slurm_conf(dir)).expect("slurm.conf");
        let conf = s(&dir.join("slurm.conf")).to_string();
        cluster.spawn("slurmctld", &["-D".into(), "-f".into(), conf.clone()]);
        cluster.spawn("slurmd", &["-D".into(), "-f".into(), conf]);
        wait_for(60, "the node to be idle", || {
            let out = cluster
                .cmd("sinfo")
                .args(["-h", "-o", "%T"])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "idle").then_some(())
        });
        cluster
    }

    fn spawn(&mut self, daemon: &str, args: &[String]) {
        let log = std::fs::File::create(self.dir.join(format!("{daemon}.out"))).expect("log");
        let child = self
            .cmd(daemon)
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{daemon} does not start ({e}): apt-get install slurm-wlm munge")
            });
        self.daemons.push(child);
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.dir.join("slurm.conf"));
        c
    }

    /// Runs a Slurm command, which must succeed; its standard output.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        stdout_of(self.cmd(program).args(args))
    }

    /// Submits examples/cluster/slurm-array.sh for `plan` into `out` from the folder
    /// `work` with the c2f under test first on the PATH, one CPU a task; the job's id.
    fn submit(&self, work: &Path, options: &[&str], plan: &Path, out: &Path) -> String {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster/slurm-array.sh");
        let bin = Path::new(env!("CARGO_BIN_EXE_c2f"))
            .parent()
            .expect("bin folder");
        let path = format!("{}:{}", s(bin), std::env::var("PATH").unwrap_or_default());
        let job = stdout_of(
            self.cmd("sbatch")
                .env("PATH", path)
                .args(["--parsable", "--cpus-per-task=1", "--mem=300M"])
                .arg(format!("--chdir={}", s(work)))
                .args(options)
                .args([s(&script), s(plan), s(out)]),
        );
        job.trim().to_string()
    }

    /// Waits until all `n` tasks of `job` have completed; any that fails or is cancelled
    /// fails the test (logs in `work`).
    fn wait_completed(&self, job: &str, n: usize, work: &Path) {
        wait_for(600, "the array job to finish", || {
            let states = self.tasks(job, "JobState");
            for (task, state) in &states {
                assert!(
                    [
                        "PENDING",
                        "RUNNING",
                        "COMPLETING",
                        "COMPLETED",
                        "CONFIGURING"
                    ]
                    .contains(&state.as_str()),
                    "task {task} of job {job} is {state}; logs in {}",
                    s(work)
                );
            }
            (states.len() == n && states.iter().all(|(_, st)| st == "COMPLETED")).then_some(())
        });
    }

    /// `field=value` of each array task of `job` (`scontrol show job -o`).
    fn tasks(&self, job: &str, field: &str) -> Vec<(String, String)> {
        self.ok("scontrol", &["show", "job", "-o", job])
            .lines()
            .filter_map(|l| {
                let get = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                };
                Some((get("ArrayTaskId")?, get(field)?))
            })
            .collect()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Jobs still running (a failed test) are cancelled, not left behind.
        let _ = self.cmd("scancel").args(["--user", "root"]).output();
        std::thread::sleep(std::time::Duration::from_secs(1));
        for d in self.daemons.iter_mut().rev() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// slurm.conf for one node (this machine, its CPUs, 2 GB) on free local ports, every file
/// in `dir`, no accounting, no cgroups.
fn slurm_conf(dir: &Path) -> String {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let host = String::from_utf8_lossy(
        &Command::new("hostname")
            .arg("-s")
            .output()
            .expect("hostname")
            .stdout,
    )
    .trim()
    .to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let d = s(dir);
    format!(
        "ClusterName=c2ftest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
         SlurmctldPort={}\nSlurmdPort={}\nAuthType=auth/munge\nCredType=cred/munge\n\
         AuthInfo=socket={d}/munge.sock\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
         SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
         SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\nSchedulerType=sched/backfill\nMinJobAge=3600\n\
         SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nReturnToService=2\nMpiDefault=none\n\
         NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN\n\
         PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
        port(),
        port()
    )
}

/// Polls `f` every 100 ms until it gives a value, for at most `seconds`.
fn wait_for<T>(seconds: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A plan of three variants, each long enough for a requeue to land inside a stage.
fn three_variant_plan(tmp: &Path) -> PathBuf {
    let data = quadrants(tmp, "data", 16, 5, &["--sizes", "8,16"]);
    let plan = tmp.join("plan.toml");
    let text = format!(
        "name = \"slurm\"\ndata = \"{}\"\nseed = 4\nbatch = 32\nlr = 0.01\neval_every = 100\n\n\
         [[stage]]\nsize = 8\nnet = \"alexnet-s5\"\niterations = 800\n\n\
         [[stage]]\nsize = 16\ngrow = [{{ op = \"upscale\" }}]\niterations = 100\n\n\
         [[variant]]\nname = \"keep\"\n\n\
         [[variant]]\nname = \"reset\"\nstage.2.momentum_state = \"reset\"\n\n\
         [[variant]]\nname = \"lr2\"\nlr = 0.02\n",
        s(&data)
    );
    std::fs::write(&plan, text).expect("plan");
    plan
}

/// The iteration of a checkpoint's meta.json, if it is there.
fn checkpoint_iteration(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("checkpoint/meta.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["iteration"].as_u64()
}

/// examples/cluster/slurm-array.sh on a real (single-node) Slurm: three variants as an
/// array job, one task requeued while it trains (`scontrol requeue`), which resumes from
/// its checkpoint; then a frontier (budgets × seeds), its sweep first and the rest as a
/// second array that depends on it. Every run ends exactly where it ends when the plan
/// runs one by one, and the merged reports have every curve.
#[test]
#[ignore = "needs root and Slurm: apt-get install slurm-wlm munge, then cargo test -- --ignored slurm"]
fn slurm_array_jobs_run_variants_and_frontiers_and_a_requeued_task_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cluster = Slurm::start(&tmp.path().join("slurm"));
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("work");
    variants_with_a_requeue(&cluster, tmp.path(), &work);
    frontier_sweep_first(&cluster, tmp.path(), &work);
}

fn variants_with_a_requeue(cluster: &Slurm, tmp: &Path, work: &Path) {
    let plan = three_variant_plan(tmp);
    let out = tmp.join("array");
    let job = cluster.submit(work, &["--array=0-2"], &plan, &out);
    let first = format!("{job}_0");
    let stage1 = out.join("00-keep/incremental/stage-1");
    let at = wait_for(120, "task 0's first checkpoint", || {
        checkpoint_iteration(&stage1).filter(|&i| i > 0)
    });
    cluster.ok("scontrol", &["requeue", &first]);
    // A requeued job waits two minutes before it may start again; let it start now.
    wait_for(60, "task 0 to be pending again", || {
        let state = cluster.tasks(&first, "JobState");
        (state.first()?.1 == "PENDING").then_some(())
    });
    cluster.ok(
        "scontrol",
        &["update", &format!("JobId={first}"), "StartTime=now"],
    );
    cluster.wait_completed(&job, 3, work);
    assert_eq!(cluster.tasks(&first, "Restarts")[0].1, "1");
    let log = std::fs::read_to_string(work.join(format!("c2f-{job}_0.log"))).expect("task 0's log");
    assert!(
        log.contains("DUE TO JOB REQUEUE"),
        "the first attempt's log was lost:\n{log}"
    );
    let resumed: u64 = log
        .split("resuming at iteration ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("task 0 did not resume:\n{log}"));
    eprintln!(
        "task 0 requeued after its checkpoint at iteration {at}; resumed at iteration {resumed}"
    );
    assert!(resumed > 0, "task 0 restarted from scratch:\n{log}");
    let runs = same_as_one_by_one(&plan, &out, &tmp.join("alone"));
    assert_eq!(runs, ["00-keep", "01-reset", "02-lr2"]);
    report_has(
        &out,
        &tmp.join("report"),
        &["keep", "reset", "lr2"].map(|v| format!("slurm/{v}")),
    );
}

/// A frontier plan's sweep runs (indices 0–1) as one array, its budgets × seeds (2–5) as
/// a second one that starts when the first has succeeded (`--dependency=afterok`).
fn frontier_sweep_first(cluster: &Slurm, tmp: &Path, work: &Path) {
    let plan = frontier_plan(tmp);
    let listed = ok(&["run", s(&plan), "--list"]);
    assert!(
        listed.contains("[1] frontier sweep") && listed.contains("[5] frontier b2 s2"),
        "{listed}"
    );
    let out = tmp.join("frontier");
    let sweep = cluster.submit(work, &["--array=0-1"], &plan, &out);
    let after = format!("--dependency=afterok:{sweep}");
    let rest = cluster.submit(work, &["--array=2-5", &after], &plan, &out);
    cluster.wait_completed(&sweep, 2, work);
    cluster.wait_completed(&rest, 4, work);
    let runs = same_as_one_by_one(&plan, &out, &tmp.join("frontier-alone"));
    assert_eq!(runs.len(), 6, "{runs:?}");
    let md = report_has(&out, &tmp.join("frontier-report"), &[]);
    let first = md.lines().next().unwrap_or_default();
    // The verdict over the budgets, from both seeds' runs.
    assert!(
        first.starts_with("# frontier: ") && first.ends_with("(2 seeds)"),
        "{first}"
    );
}

/// Runs `plan` one run after another into `alone` (one thread, as the array tasks) and
/// checks that every run folder of `out` has the same evaluations and final weights;
/// the run folders' names.
fn same_as_one_by_one(plan: &Path, out: &Path, alone: &Path) -> Vec<String> {
    stdout_of(Command::new(env!("CARGO_BIN_EXE_c2f")).args([
        "--threads",
        "1",
        "--quiet",
        "run",
        s(plan),
        "--out",
        s(alone),
    ]));
    let mut runs: Vec<String> = std::fs::read_dir(alone)
        .expect("runs")
        .filter_map(|e| e.ok().filter(|e| e.path().is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    for v in &runs {
        assert_eq!(
            super::run_evals(&out.join(v)),
            super::run_evals(&alone.join(v)),
            "{v}: the array task's curves differ from the one-by-one run's"
        );
        for part in ["incremental/stage-2", "baseline"] {
            let weights = |r: &Path| {
                let last = r.join(v).join(part).join("checkpoint/weights.safetensors");
                last.is_file()
                    .then(|| WeightMap::load(&last).expect("weights"))
            };
            assert_eq!(weights(out), weights(alone), "{v} {part}: weights differ");
        }
    }
    runs
}

/// Reports `out` into `dir` and checks that every label's incremental and baseline
/// curves are in it; the report's Markdown.
fn report_has(out: &Path, dir: &Path, labels: &[String]) -> String {
    ok(&["report", s(out), "--out", s(dir)]);
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report");
    for l in labels {
        for curve in ["incremental", "baseline"] {
            let label = format!("{l} ({curve})");
            assert!(md.contains(&label), "{label} missing from the report");
        }
    }
    md
}

/// A frontier of net-1 4 → 8 on quadrants with a validation split: budgets 1 and 2,
/// seeds 1 and 2, the baseline's rate swept over two values (6 runs).
fn frontier_plan(tmp: &Path) -> PathBuf {
    let data = quadrants(
        tmp,
        "frontier-data",
        8,
        3,
        &["--sizes", "4,8", "--val-images", "64"],
    );
    let plan = tmp.join("frontier.toml");
    let text = format!(
        "name = \"frontier\"\ndata = \"{}\"\nbatch = 16\nlr = 0.02\nlr_policy = \"cosine\"\n\
         epochs = 1\neval_every = 4\nseed = 1\n\n\
         [[stage]]\nsize = 4\nnet = \"net-1\"\nshare = 0.5\n\n\
         [[stage]]\nsize = 8\ngrow = [{{ op = \"upscale\", mode = \"resize\" }}]\nshare = 0.5\n\n\
         [frontier]\nbudgets = [1, 2]\nseeds = [1, 2]\nbaseline_lrs = [0.01, 0.05]\n",
        s(&data)
    );
    std::fs::write(&plan, text).expect("plan");
    plan
}

/// A GPU backend this build lacks names the cargo feature that builds it in; an unknown
/// backend lists the known ones; neither writes anything.
#[cfg(not(any(feature = "libtorch", feature = "cuda")))]
#[test]
fn gpu_backends_not_built_in_name_their_feature() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("run");
    let train = |backend: &str| {
        c2f(&[
            "train",
            "--data",
            "nowhere",
            "--size",
            "8",
            "--net",
            "net-2",
            "--iterations",
            "1",
            "--backend",
            backend,
            "--out",
            s(&out),
        ])
    };
    for (backend, needles) in [
        (
            "libtorch-cuda",
            &["libtorch-cuda:0", "--features libtorch"][..],
        ),
        (
            "libtorch-cuda:2",
            &["libtorch-cuda:2", "--features libtorch"],
        ),
        ("cuda:1", &["cuda:1", "--features cuda"]),
        ("tpu", &["\"tpu\"", "libtorch-cuda:N"]),
        ("libtorch-cuda:x", &["\"libtorch-cuda:x\""]),
    ] {
        assert_one_line_error(&train(backend), needles, &format!("--backend {backend}"));
    }
    assert!(!out.exists());
}

/// Built with the libtorch backend (scripts/test-libtorch.sh): `c2f train` runs end to end
/// on libtorch's CPU kernels and ends where the native engine ends, and a GPU that is not
/// there is a one-line error that writes nothing.
#[cfg(feature = "libtorch")]
#[test]
fn libtorch_backend_trains_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = quadrants(tmp.path(), "data", 8, 3, &["--sizes", "8"]);
    let train = |backend: &str, out: &Path| {
        c2f(&[
            "train",
            "--data",
            s(&data),
            "--size",
            "8",
            "--net",
            "net-2",
            "--iterations",
            "30",
            "--batch",
            "16",
            "--backend",
            backend,
            "--out",
            s(out),
        ])
    };
    let (torch, native) = (tmp.path().join("libtorch"), tmp.path().join("native"));
    for (backend, out) in [("libtorch", &torch), ("cpu", &native)] {
        let o = train(backend, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let w = |r: &Path| WeightMap::load(&r.join("checkpoint/weights.safetensors")).expect("weights");
    let (a, b) = (w(&torch), w(&native));
    for (name, t) in a.iter() {
        let u = b.get(name).expect("same tensors");
        let scale = u.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = t
            .data
            .iter()
            .zip(&u.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst / scale < 1e-3,
            "{name}: libtorch and native differ by {}",
            worst / scale
        );
    }
    let gone = tmp.path().join("gpu");
    assert_one_line_error(
        &train("libtorch-cuda:99", &gone),
        &["libtorch-cuda:99"],
        "a GPU that is not there",
    );
    assert!(!gone.exists());
}
