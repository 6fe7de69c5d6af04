//! Helpers shared by the CLI tests: running the `omniad` binary as a user does, the tiny
//! synthetic dataset and configuration, and the checks every failure must pass (a non-zero status,
//! one `error:` line naming the problem, never a panic).
#![allow(dead_code)] // each test file uses a part of these

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Training flags of the tiny configuration (flag, value).
pub const TINY: &[(&str, Option<&str>)] = &[
    ("--image-size", Some("64")),
    ("--depths", Some("1,1,1,1")),
    ("--epochs", Some("1")),
    ("--batch-size", Some("4")),
    // every image trained on, so that step counts stay those of 8 images (the held-out
    // calibration has its own tests)
    ("--val-fraction", Some("0")),
    ("--quiet", None),
];

pub fn omniad() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_omniad"));
    c.args(["--threads", "1"]);
    // A user's log settings must not add lines to stderr.
    c.env_remove("RUST_LOG");
    c
}

pub fn run(args: &[&str]) -> Output {
    omniad()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run omniad {args:?}: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "omniad {args:?} failed ({}):\n{}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts the command failed cleanly: non-zero status (not a panic's 101), stderr exactly one
/// line starting with `error:` that contains every word of `words`. Returns that line.
pub fn fails(args: &[&str], words: &[&str]) -> String {
    check_failure(run(args), args, words)
}

/// [`fails`] on the output of a command already run with `args`.
pub fn check_failure(out: Output, args: &[&str], words: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "omniad {args:?} should have failed; stdout:\n{}",
        text(&out.stdout)
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "omniad {args:?} panicked:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "omniad {args:?} panicked:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "omniad {args:?}: stderr should be one line, got:\n{stderr}"
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "omniad {args:?}: {line}");
    assert!(
        !line.contains('\u{1b}'),
        "no terminal colours in a pipe: {line:?}"
    );
    for w in words {
        assert!(
            line.contains(w),
            "omniad {args:?}: {line:?} should contain {w:?}"
        );
    }
    line.to_string()
}

/// Writes the tiny synthetic dataset (classes woven and screw, 4 train + 2 good + 2 defective
/// test images each, 64x64) into `dir/data` and returns its root.
pub fn synth(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    let stdout = ok(&[
        "synth",
        "--out",
        p(&root),
        "--train-per-class",
        "4",
        "--test-good-per-class",
        "2",
        "--test-defect-per-class",
        "2",
        "--size",
        "64",
        "--classes",
        "woven,screw",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("synth prints JSON");
    assert_eq!(summary["total_images"], 16, "{summary}");
    assert!(root.join("woven/train/good").is_dir());
    assert!(root.join("screw/ground_truth").is_dir());
    root
}

/// `train --data-root DATA --out OUT` with the tiny flags, those also in `extra` replaced by
/// `extra`'s (clap refuses a flag given twice).
pub fn train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--data-root", p(data), "--out", p(out)];
    for (flag, value) in TINY {
        if !extra.contains(flag) {
            v.push(flag);
            v.extend(value);
        }
    }
    v.extend_from_slice(extra);
    v
}

pub fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn json_file(path: &Path) -> serde_json::Value {
    let t = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The number after `key` in `line` (e.g. `trainable 27987904 (27.99 M)` -> 27987904).
pub fn number_after(line: &str, key: &str) -> i64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
}
