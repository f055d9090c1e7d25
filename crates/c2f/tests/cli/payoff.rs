//! The payoff machinery end to end on a tiny net: a plan run at two budgets (one seed),
//! the baseline's learning rate chosen by a sweep on the validation split, an automatic
//! stage, schedules that anneal over the budget, and the report's frontier and verdict.

use std::path::Path;

use coarse2fine::data::synthetic::write_quadrant_idx;

use super::{json_of, ok, ok_as_given, run_evals, s};

fn fixture(tmp: &Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    write_quadrant_idx(&src, 512, 128, 8, 3).expect("fixture");
    let data = tmp.join("data");
    ok(&[
        "prepare",
        s(&src),
        "--out",
        s(&data),
        "--sizes",
        "4,8",
        "--val-images",
        "64",
    ]);
    data
}

fn plan(tmp: &Path, data: &Path) -> std::path::PathBuf {
    let p = tmp.join("payoff.toml");
    std::fs::write(
        &p,
        format!(
            r#"name = "tiny"
data = "{}"
batch = 16
lr = 0.02
lr_policy = "cosine"
epochs = 1
eval_every = 4
seed = 1

[[stage]]
size = 4
net = "net-1"
share = 0.5
auto = true

[[stage]]
size = 8
grow = [{{ op = "upscale", mode = "resize" }}]
share = 0.5

[baseline]
budget = "images"

[frontier]
budgets = [1, 2]
seeds = [1]
baseline_lrs = [0.01, 0.05]
"#,
            s(data)
        ),
    )
    .expect("plan");
    p
}

#[test]
fn a_frontier_runs_as_one_command_or_as_array_tasks_and_reports_its_payoff() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = fixture(tmp.path());
    let plan = plan(tmp.path(), &data);
    let listed = ok(&["run", s(&plan), "--list"]);
    assert!(
        listed.contains("[0] tiny sweep lr0.01") && listed.contains("[3] tiny b2 s1"),
        "{listed}"
    );

    let whole = tmp.path().join("whole");
    ok(&["run", s(&plan), "--out", s(&whole)]);
    let names: Vec<String> = std::fs::read_dir(&whole)
        .expect("runs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let run = whole.join("02-tiny-b1-s1");
    let sweep = json_of(&run.join("baseline/sweep.json"));
    assert_eq!(sweep["tried"].as_array().map(Vec::len), Some(2));
    assert!([0.01, 0.05].contains(&sweep["chosen"].as_f64().expect("lr")));
    let meta = json_of(&run.join("baseline/checkpoint/meta.json"));
    assert_eq!(meta["hyper"]["base_lr"], sweep["chosen"]);
    assert_eq!(meta["hyper"]["lr_policy"]["policy"], "cosine");
    // Every evaluation also measured the validation split, which decisions read.
    let events = std::fs::read_to_string(run.join("events.jsonl")).expect("events");
    assert!(
        events
            .lines()
            .filter(|l| l.contains("\"eval\""))
            .all(|l| l.contains("val_top1"))
    );
    // The cosine schedule ends near zero: the last step's rate is a sliver of the base.
    let last_lr = events
        .lines()
        .rfind(|l| l.contains("\"train\"") && l.contains("baseline"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["lr"].as_f64())
        .expect("a train event");
    assert!(
        last_lr < 0.01 * sweep["chosen"].as_f64().expect("lr"),
        "{last_lr}"
    );

    // The automatic stage left once its validation accuracy stopped paying (the quadrant
    // task is learnt in a few steps) and passed its unused steps on: the curve's images
    // are the plan's.
    let stage1 = json_of(&run.join("incremental/stage-1/done.json"));
    let stage2 = json_of(&run.join("incremental/stage-2/done.json"));
    let log = std::fs::read_to_string(run.join("incremental/stage-1/metrics.jsonl")).expect("log");
    assert!(
        log.contains("\"decision\"") && log.contains("points per step"),
        "{log}"
    );
    let (n1, n2) = (
        stage1["iterations"].as_u64().expect("n"),
        stage2["iterations"].as_u64().expect("n"),
    );
    assert!(n1 < 14, "stage 1 left before its 14 iterations: {n1}");
    assert_eq!(n1 + n2, 28, "the curve keeps the plan's 28 iterations");
    // The same runs as array tasks, one index at a time (sweeps first), end the same.
    let tasks = tmp.path().join("tasks");
    for i in 0..4 {
        let args: Vec<String> = [
            "--threads",
            "2",
            "--quiet",
            "run",
            s(&plan),
            "--out",
            s(&tasks),
            "--index",
            &i.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        ok_as_given(&args);
    }
    for name in ["02-tiny-b1-s1", "03-tiny-b2-s1"] {
        assert_eq!(
            run_evals(&whole.join(name)),
            run_evals(&tasks.join(name)),
            "{name}"
        );
    }

    let rep = tmp.path().join("report");
    let out = ok(&["report", s(&whole), "--out", s(&rep)]);
    let md = std::fs::read_to_string(rep.join("report.md")).expect("md");
    let first = md.lines().next().unwrap_or_default();
    // Either verdict: "sooner" is measured in training seconds, which the machine's load
    // moves on a run this small.
    assert!(
        (first.contains(": paid off") || first.contains(": did not pay off"))
            && first.contains("(1 seed)"),
        "the first line says whether it paid off: {first}"
    );
    assert!(out.contains(first.trim_start_matches("# ")), "{out}");
    assert!(
        md.contains("## Frontiers") && md.contains("learning rate"),
        "{md}"
    );
    let summary = json_of(&rep.join("summary.json"));
    assert_eq!(summary["frontiers"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        summary["payoffs"][0]["speedups"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(rep.join("frontier.png").is_file() && rep.join("frontier.svg").is_file());
    // The automatic stage's decision, with its reason, is in the report too.
    assert!(
        md.contains("## Automatic growth decisions") && md.contains("points per step"),
        "{md}"
    );
    assert_eq!(
        summary["decisions"][0]["stage"].as_u64(),
        Some(1),
        "{summary}"
    );
}

#[test]
fn a_frontier_without_its_sweep_says_what_to_run_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = fixture(tmp.path());
    let plan = plan(tmp.path(), &data);
    let out = tmp.path().join("out");
    super::fails(
        &["run", s(&plan), "--out", s(&out), "--index", "2"],
        &["sweep has not finished", "indices 0 to 1"],
    );
}
