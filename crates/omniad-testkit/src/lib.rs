//! Test helpers shared by the omniad crates (a dev-dependency only).
//!
//! The reference fixtures live in `shared/fixtures` beside the repository (made by running the
//! reference Omni-AD / ADer code; each folder has a `meta.json` or README, and
//! `crates/omniad-model/tests/data/parity/README.md` lists the repository's own). This crate is
//! the one place that knows where they are:
//!
//! - `OMNIAD_FIXTURES`: the shared fixtures folder (default `../shared/fixtures` from the
//!   repository root).
//! - `OMNIAD_PARITY_DIR`: one or more model-parity folders separated by `:` (replaces the search
//!   below for [`parity_dirs`]).
use std::path::{Path, PathBuf};

/// The headless browser of the browser tests: `OMNIAD_CHROMIUM`, else Debian's
/// `/usr/bin/chromium` (or `chromium-browser`); `None` when none is installed (the tests then
/// say so and pass; `.ci/run` installs it).
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OMNIAD_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The repository root (two levels above this crate's manifest).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The shared fixtures folder: `OMNIAD_FIXTURES`, else `shared/fixtures` beside the repository.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("OMNIAD_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("../shared/fixtures"),
    }
}

/// `fixtures_root()/sub`, checked to hold `must_have`.
///
/// # Panics
/// When `must_have` is missing, with a message saying how to point the tests at the fixtures
/// (a missing fixture fails the test: it is never skipped).
pub fn fixture_dir(sub: &str, must_have: &str) -> PathBuf {
    let dir = fixtures_root().join(sub);
    let want = dir.join(must_have);
    assert!(
        want.exists(),
        "fixture {} is missing: set OMNIAD_FIXTURES to the shared fixtures folder",
        want.display()
    );
    dir
}

/// A file below the shared fixtures folder, checked to exist (panics otherwise, as
/// [`fixture_dir`]).
pub fn fixture_file(rel: &str) -> PathBuf {
    let path = fixtures_root().join(rel);
    assert!(
        path.is_file(),
        "missing fixture {} (set OMNIAD_FIXTURES to the shared fixtures folder)",
        path.display()
    );
    path
}

/// Tags `<tag>` of the model-parity fixtures in `dir`: files `<tag>_meta.json` whose JSON has a
/// `depths_decoder` key and that have a `<tag>_expected.safetensors` beside them (the teacher
/// fixture's `efficientnet_lite0_meta.json` is not one). Sorted.
pub fn parity_tags(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut tags: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let tag = name.to_str()?.strip_suffix("_meta.json")?.to_string();
            let text = std::fs::read_to_string(e.path()).ok()?;
            (text.contains("\"depths_decoder\"")
                && dir.join(format!("{tag}_expected.safetensors")).is_file())
            .then_some(tag)
        })
        .collect();
    tags.sort();
    tags
}

/// Every folder holding model-parity fixtures: `OMNIAD_PARITY_DIR` (`:`-separated) when set,
/// else each sub-folder of [`fixtures_root`] with at least one parity fixture (`parity`,
/// `parity-batches`, any later one) plus the repository's own
/// `crates/omniad-model/tests/data/parity`. Sorted, without duplicates.
pub fn parity_dirs() -> Vec<PathBuf> {
    if let Some(list) = std::env::var_os("OMNIAD_PARITY_DIR") {
        return std::env::split_paths(&list).collect();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !parity_tags(p).is_empty())
        .collect();
    let own = repo_root().join("crates/omniad-model/tests/data/parity");
    if !parity_tags(&own).is_empty() {
        dirs.push(own);
    }
    dirs.sort();
    dirs.dedup();
    dirs
}
