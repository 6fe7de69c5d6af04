//! Crash safety of `omniad train` (issue 13): `kill -9` at every phase of a checkpoint save and at
//! random moments, SIGTERM/SIGHUP, a failing write, and the run-folder lock. After each fault the
//! run is finished the way a user would (`--resume`, or a fresh start when nothing was saved) and
//! must end with the weights of an uninterrupted run, bit for bit, with no temporary file left.
//!
//! Tiny configuration (2 classes x 4 training images, 64x64, depths 1,1,1,1, batch 4: two steps
//! per epoch, a checkpoint after every epoch).
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Three epochs, a checkpoint after each, no feature cache (every step reads the images).
const RUN: &[&str] = &[
    "--epochs",
    "3",
    "--save-every",
    "1",
    "--feature-cache",
    "none",
];

/// The weights' SHA-256 recorded in `RUN/model.json`.
fn weights_sha(run: &Path) -> String {
    json_file(&run.join("model.json"))["weights_sha256"]
        .as_str()
        .expect("weights_sha256")
        .to_string()
}

/// Names in `run` that an interrupted save could leave behind.
fn leftovers(run: &Path) -> Vec<String> {
    names_in(run)
        .into_iter()
        .filter(|n| n.ends_with(".tmp") || n.starts_with(".checkpoint") || n.contains(".ser-"))
        .collect()
}

/// Finishes an interrupted run as a user would: `--resume`, or a fresh start when the run never
/// got to its first checkpoint. Returns how many commands it took (0: the kill came after the last
/// checkpoint, the run was already complete).
fn finish(data: &Path, run_dir: &Path) -> usize {
    let out = run(&["train", "--resume", "--out", p(run_dir), "--quiet"]);
    if out.status.success() {
        return 1;
    }
    let err = text(&out.stderr);
    if err.contains("the run finished all 3 epochs") {
        return 0;
    }
    assert!(
        err.contains("nothing to resume"),
        "resume of {} failed: {err}",
        run_dir.display()
    );
    ok(&train_args(data, run_dir, RUN));
    2
}

fn spawn_train(data: &Path, out: &Path, extra: &[&str], env: Option<(&str, &str)>) -> Child {
    let mut c = omniad();
    c.args(train_args(data, out, extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.spawn().expect("spawn omniad train")
}

/// Waits until `run/train_log.jsonl` has `lines` lines.
fn wait_for_steps(run: &Path, lines: usize) {
    let log = run.join("train_log.jsonl");
    let start = Instant::now();
    while fs::read_to_string(&log).map_or(true, |t| t.lines().count() < lines) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no training step within 120 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_9_at_every_save_phase_and_at_random_moments_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let straight = tmp.path().join("straight");
    let t0 = Instant::now();
    ok(&train_args(&data, &straight, RUN));
    let straight_ms = t0.elapsed().as_millis() as u64;
    let want = weights_sha(&straight);

    // Every phase of a save, at the second save (a previous checkpoint exists) and, for the
    // phases around the commit point, at the first (none exists yet).
    let phases = [
        "save:start:2",
        "save:model:2",
        "save:optimiser:2",
        "save:state:2",
        "save:committed:2",
        "commit:model.safetensors:2",
        "commit:train_state.safetensors:2",
        "commit:train_state.json:2",
        "commit:model.json:2",
        "save:state:1",
        "commit:train_state.json:1",
    ];
    let mut trials = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let run = tmp.path().join(format!("fault{i}"));
        let out = spawn_train(&data, &run, RUN, Some(("OMNIAD_FAULT", phase)))
            .wait_with_output()
            .expect("wait");
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{phase}: expected SIGKILL, got {} ({})",
            out.status,
            text(&out.stderr)
        );
        let commands = finish(&data, &run);
        assert_eq!(weights_sha(&run), want, "{phase}: resumed weights differ");
        assert!(leftovers(&run).is_empty(), "{phase}: {:?}", leftovers(&run));
        trials.push(format!("{phase} ({commands} command(s) to finish)"));
    }

    // Random moments over the length of a whole run (fixed seed: the same moments each time).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut killed_while_running = 0;
    for i in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = Duration::from_millis(x % straight_ms.max(1));
        let run = tmp.path().join(format!("random{i}"));
        let mut child = spawn_train(&data, &run, RUN, None);
        std::thread::sleep(at);
        let still_running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        if still_running {
            assert_eq!(status.signal(), Some(9), "{status}");
            killed_while_running += 1;
        }
        finish(&data, &run);
        assert_eq!(
            weights_sha(&run),
            want,
            "kill at {at:?}: resumed weights differ"
        );
        assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
        trials.push(format!("random {at:?}"));
    }
    assert!(
        killed_while_running >= 3,
        "most random kills should hit a running training ({killed_while_running} of 6)"
    );
    eprintln!(
        "{} kill -9 trials, all bit-identical to the uninterrupted run ({straight_ms} ms): {}",
        trials.len(),
        trials.join(", ")
    );
}

/// SIGTERM and SIGHUP (docker stop, a scheduler's preemption, a closed terminal) save a checkpoint
/// after the current step and exit 128 + signal; `--resume` finishes bit-identically.
#[test]
fn sigterm_and_sighup_checkpoint_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let flags = [
        "--epochs",
        "3",
        "--save-every",
        "0",
        "--feature-cache",
        "none",
    ];
    let straight = tmp.path().join("straight");
    ok(&train_args(&data, &straight, &flags));
    for (sig, code) in [("TERM", 143), ("HUP", 129)] {
        let run = tmp.path().join(sig);
        let child = spawn_train(&data, &run, &flags, None);
        wait_for_steps(&run, 1);
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(code), "{}", text(&out.stderr));
        let outcome: serde_json::Value =
            serde_json::from_str(&text(&out.stdout)).expect("outcome JSON");
        assert_eq!(outcome["interrupted"], true, "{outcome}");
        assert!(run.join("model.json").is_file(), "SIG{sig}: no checkpoint");
        ok(&["train", "--resume", "--out", p(&run), "--quiet"]);
        assert_eq!(weights_sha(&run), weights_sha(&straight), "SIG{sig}");
    }
}

/// A save that cannot be written (here: a file-size limit, as a full disk would) is reported as a
/// write failure naming the file and the reason, leaves the previous checkpoint as it was and no
/// partial file, and `--resume` afterwards continues from that checkpoint.
#[test]
fn failed_write_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let one = ["--epochs", "1", "--feature-cache", "none"];
    ok(&train_args(&data, &run, &one));
    let after_one = weights_sha(&run);
    let size = fs::metadata(run.join("model.safetensors"))
        .expect("weights")
        .len();

    // bash: ignore SIGXFSZ so that an over-limit write fails with EFBIG instead of killing.
    let limit_kib = (size / 2048).max(1);
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" --threads 1 train --resume --epochs 2 --out \"$1\" --quiet"
    );
    let out = Command::new("bash")
        .args(["-c", &script, env!("CARGO_BIN_EXE_omniad"), p(&run)])
        .env_remove("RUST_LOG")
        .output()
        .expect("bash");
    // The epoch that trained before the save failed prints its line; the error is the last line.
    let stderr = text(&out.stderr);
    let kept: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("epoch "))
        .collect();
    assert!(stderr.starts_with("epoch 2/2: loss "), "{stderr}");
    let out = std::process::Output {
        stderr: kept.join("\n").into_bytes(),
        ..out
    };
    let line = check_failure(
        out,
        &["train", "--resume", "(file size limit)"],
        &[
            "cannot write",
            "model.safetensors",
            "File too large",
            "previous checkpoint",
        ],
    );
    assert!(line.contains(p(&run)), "names the run folder: {line}");
    assert_eq!(weights_sha(&run), after_one, "previous checkpoint changed");
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
    let state = json_file(&run.join("train_state.json"));
    assert_eq!(state["state"]["epoch"], 1, "{state}");

    ok(&[
        "train",
        "--resume",
        "--epochs",
        "2",
        "--out",
        p(&run),
        "--quiet",
    ]);
    let straight = tmp.path().join("straight");
    ok(&train_args(
        &data,
        &straight,
        &["--epochs", "2", "--feature-cache", "none"],
    ));
    assert_eq!(weights_sha(&run), weights_sha(&straight));
}

/// A second `omniad train` on a run folder in use is refused, naming the holder's pid; the lock of
/// a process killed with SIGKILL does not block the next training.
#[test]
fn run_folder_lock_refuses_a_second_writer_and_not_a_dead_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run = tmp.path().join("run");
    let long = [
        "--epochs",
        "200",
        "--save-every",
        "0",
        "--feature-cache",
        "none",
    ];
    let mut child = spawn_train(&data, &run, &long, None);
    wait_for_steps(&run, 1);
    let line = fails(
        &train_args(&data, &run, &["--epochs", "1"]),
        &[
            "in use by another omniad process",
            &format!("pid {}", child.id()),
        ],
    );
    assert!(line.contains(p(&run)), "{line}");
    let log_before = fs::read_to_string(run.join("train_log.jsonl")).expect("log");
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    assert!(
        run.join(".lock").exists(),
        "a killed process leaves its lock file"
    );
    // The folder holds no checkpoint (none was saved), so a fresh start is what a user runs.
    let stdout = ok(&train_args(&data, &run, &["--epochs", "1"]));
    let outcome: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(outcome["epochs_done"], 1);
    assert!(
        !run.join(".lock").exists(),
        "lock removed when training ends"
    );
    assert!(!log_before.is_empty());
}

/// Running out of memory (here: a 3 GB address-space limit and 2048x2048 inputs, whose first
/// teacher batch alone needs more) ends with one `error:` line naming the step and libtorch's
/// reason, status 1, not a panic or an abort.
#[test]
fn out_of_memory_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tmp.path().join("run");
    let out = Command::new("bash")
        .args([
            "-c",
            "ulimit -v 3000000; exec \"$0\" --threads 1 train --data-root \"$1\" --out \"$2\" --image-size 2048 --depths 1,1,1,1 --epochs 1 --batch-size 4 --quiet",
            env!("CARGO_BIN_EXE_omniad"),
            p(&data),
            p(&run_dir),
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    check_failure(
        out,
        &["train", "--image-size", "2048", "(3 GB address space)"],
        &["libtorch failed", "allocate"],
    );
    assert!(!run_dir.join("model.json").exists());
}

/// `train --resume --out RUN --quiet EXTRA...` fails cleanly with every word of `words`.
fn resume_fails(run_dir: &Path, extra: &[&str], words: &[&str]) -> String {
    let mut args = vec!["train", "--resume", "--out", p(run_dir), "--quiet"];
    args.extend_from_slice(extra);
    fails(&args, words)
}

/// `--resume` checks what it continues: a flag that would change the configuration (each named),
/// fewer epochs, a finished run without a larger `--epochs`, a resume position that cannot exist,
/// and training images that changed since the run started are all refused with a clear error.
#[test]
fn resume_refuses_changed_flags_an_impossible_state_and_changed_data() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = synth(tmp.path());
    let run_dir = tmp.path().join("run");
    ok(&train_args(
        &data,
        &run_dir,
        &["--epochs", "2", "--feature-cache", "none"],
    ));
    let fails_with = |extra: &[&str], words: &[&str]| resume_fails(&run_dir, extra, words);
    fails_with(
        &["--lr", "0.01", "--seed", "3"],
        &["--lr, --seed", "would change it"],
    );
    fails_with(
        &["--epochs", "1"],
        &["--epochs 1 is fewer than the run's 2"],
    );
    fails_with(&[], &["finished all 2 epochs", "larger --epochs"]);

    let state_path = run_dir.join("train_state.json");
    let saved = fs::read_to_string(&state_path).expect("state");
    let mut v: serde_json::Value = serde_json::from_str(&saved).expect("JSON");
    v["state"]["batch_in_epoch"] = 99.into();
    fs::write(&state_path, v.to_string()).expect("write");
    fails_with(
        &["--epochs", "3"],
        &["impossible resume position", "batch 99 of 2"],
    );
    fs::write(&state_path, &saved).expect("restore");

    let mut removed = fs::read_dir(data.join("woven/train/good"))
        .expect("train folder")
        .map(|e| e.expect("entry").path())
        .collect::<Vec<_>>();
    removed.sort();
    fs::remove_file(&removed[0]).expect("remove an image");
    fails_with(
        &["--epochs", "3"],
        &["training images changed", "8 images then, 7 now"],
    );
    // Nothing above touched the checkpoint.
    assert_eq!(
        json_file(&run_dir.join("train_state.json"))["state"]["epoch"],
        2
    );
}
