//! Run folders: where `omniad train` writes and `omniad eval`/`predict` read.
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use omniad_io::write_atomic;
use omniad_model::checkpoint::{self, Thresholds};
use omniad_model::recognition::{ClassBank, RecognitionMeta};
use omniad_model::OmniAd;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::optim::AdamW;

/// File names inside a run folder.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The run folder.
    pub dir: PathBuf,
    /// Effective training configuration (`config.toml`).
    pub config: PathBuf,
    /// Checkpoint description (`model.json`); weights in `model.safetensors`.
    pub model_json: PathBuf,
    /// Optimiser state (`train_state.safetensors`).
    pub opt_state: PathBuf,
    /// Resume position (`train_state.json`).
    pub state_json: PathBuf,
    /// Per-step log (`train_log.jsonl`).
    pub log: PathBuf,
    /// Evaluation results (`metrics.json`).
    pub metrics_json: PathBuf,
    /// Evaluation results as CSV (`metrics.csv`).
    pub metrics_csv: PathBuf,
    /// Per-image evaluation results (`results.json`, see `omniad_metrics::results`).
    pub results: PathBuf,
}

impl RunPaths {
    /// Paths for the run folder `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            config: dir.join("config.toml"),
            model_json: dir.join("model.json"),
            opt_state: dir.join("train_state.safetensors"),
            state_json: dir.join("train_state.json"),
            log: dir.join("train_log.jsonl"),
            metrics_json: dir.join("metrics.json"),
            metrics_csv: dir.join("metrics.csv"),
            results: dir.join("results.json"),
        }
    }
}

/// Resume position stored next to the optimiser state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already done.
    pub batch_in_epoch: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Sum of losses of the batches done in the current epoch.
    pub epoch_loss_sum: f64,
}

/// An exclusive OS lock on a run folder (`RUN/.lock`, holding the owner's pid), held by a
/// training for its whole duration so that a second writer is refused. The operating system
/// releases it when the process ends, however it ends, so a stale lock never blocks.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl Drop for RunLock {
    /// Removes `.lock` when training ends normally (a killed process leaves it, unlocked).
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Locks the run folder `dir` (which must exist).
///
/// # Errors
/// Another process holds the lock (the message names its pid), or the lock file cannot be
/// created.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(".lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "{}: this run folder is in use by another omniad process (pid {}); wait for it to finish or choose another --out",
                dir.display(),
                holder.trim()
            );
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)
        .and_then(|_| file.write_all(std::process::id().to_string().as_bytes()))
        .and_then(|_| file.flush())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(RunLock { _file: file, path })
}

/// Creates the run folder, locks it ([`RunLock`], for as long as the returned guard lives),
/// cleans up after an interrupted process ([`recover_run_dir`]) and checks it is writable. A new run refuses a folder that already holds a checkpoint (so
/// nothing is overwritten by mistake); a resumed run requires one.
///
/// # Errors
/// Messages naming the folder.
pub fn prepare_run_dir(paths: &RunPaths, resume: bool) -> Result<RunLock> {
    if resume && !paths.dir.is_dir() {
        bail!(
            "{}: run folder not found, nothing to resume",
            paths.dir.display()
        );
    }
    fs::create_dir_all(&paths.dir)
        .with_context(|| format!("cannot create run folder {}", paths.dir.display()))?;
    let lock = lock_run_dir(&paths.dir)?;
    recover_run_dir(paths)?;
    if resume {
        if !paths.state_json.is_file() || !paths.model_json.is_file() {
            bail!(
                "{}: nothing to resume (no {} / {})",
                paths.dir.display(),
                file_name(&paths.model_json),
                file_name(&paths.state_json)
            );
        }
    } else if paths.model_json.exists() {
        bail!(
            "{}: this run folder already holds a checkpoint; use --resume to continue it or choose another --out",
            paths.dir.display()
        );
    }
    let probe = paths
        .dir
        .join(format!(".write-test-{}", std::process::id()));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .with_context(|| format!("run folder {} is not writable", paths.dir.display()))?;
    Ok(lock)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The staging folder inside a run folder where a checkpoint is assembled before it is committed.
pub const STAGING_DIR: &str = ".checkpoint-next";
/// The marker whose presence in [`STAGING_DIR`] makes a save committed.
const COMMITTED: &str = "COMMITTED";
/// The files of one checkpoint, in the order they are moved into the run folder when a save is
/// committed (the description `model.json`, which eval and predict read first, comes last).
const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "train_state.safetensors",
    "train_state.json",
    "model.json",
];

/// Saves the checkpoint (`model.safetensors` + `model.json`), the optimiser state and the resume
/// position as one atomic commit. Thresholds already calibrated in an existing `model.json` are
/// kept.
///
/// The four files are written (each fsynced) into the staging folder [`STAGING_DIR`]; then the
/// marker `COMMITTED` is written atomically, the commit point; then the files are renamed into the
/// run folder and the staging folder removed. A crash before the marker leaves the previous
/// checkpoint untouched (the staging folder is discarded at the next start); a crash after it is
/// completed by [`recover_run_dir`] at the next start. Either way the run folder holds the files of
/// one save, never a mix.
///
/// # Errors
/// Write failures naming the file and the operating system's reason (e.g. "No space left on
/// device"); the staging folder is removed and the previous checkpoint stays as it was.
pub fn save_all(paths: &RunPaths, snap: &Snapshot<'_>) -> Result<()> {
    let staging = paths.dir.join(STAGING_DIR);
    if let Err(e) = stage_checkpoint(paths, &staging, snap) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e.context(format!(
            "saving the checkpoint of step {} failed; {} still holds the previous checkpoint",
            snap.state.steps,
            paths.dir.display()
        )));
    }
    fault_point("save:committed");
    complete_commit(paths, &staging)
}

/// What one checkpoint saves: the model, the optimiser, the position, the fingerprint of the
/// training images and the provenance recorded in `model.json`.
#[derive(Debug)]
pub struct Snapshot<'a> {
    /// The model (all weights, teacher included).
    pub model: &'a OmniAd,
    /// The optimiser (moments and step).
    pub opt: &'a AdamW,
    /// The resume position.
    pub state: &'a TrainState,
    /// The training images the run uses.
    pub data: &'a DataFingerprint,
    /// `model.json`'s `provenance` object.
    pub provenance: serde_json::Value,
    /// The end-of-training class recognition and thresholds (see
    /// [`crate::calibrate::fit_decisions`]); `None` for the saves during training, which keep
    /// the thresholds an existing `model.json` holds.
    pub finalised: Option<Finalised<'a>>,
}

/// What the save at the end of training adds to the checkpoint.
#[derive(Debug)]
pub struct Finalised<'a> {
    /// The class-recognition bank and its description.
    pub bank: (&'a ClassBank, RecognitionMeta),
    /// Thresholds fitted on held-out images (`None`: none could be fitted; those an existing
    /// `model.json` holds are kept then).
    pub thresholds: Option<Thresholds>,
}

/// Writes every file of one save and the commit marker into `staging`.
fn stage_checkpoint(paths: &RunPaths, staging: &Path, snap: &Snapshot<'_>) -> Result<()> {
    let Snapshot {
        model,
        opt,
        state,
        data,
        provenance,
        finalised,
    } = snap;
    if staging.exists() {
        fs::remove_dir_all(staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    fs::create_dir(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    fault_point("save:start");
    match finalised {
        Some(f) => {
            // no held-out images (e.g. an older run extended with more epochs): keep what
            // model.json holds
            let thresholds = f.thresholds.clone().or_else(|| {
                checkpoint::read_meta(&paths.model_json)
                    .ok()
                    .and_then(|m| m.thresholds)
            });
            checkpoint::save_full(
                model,
                staging,
                "model",
                thresholds,
                provenance.clone(),
                Some((f.bank.0, f.bank.1.clone())),
            )?;
        }
        None => {
            let thresholds = checkpoint::read_meta(&paths.model_json)
                .ok()
                .and_then(|m| m.thresholds);
            checkpoint::save(model, staging, "model", thresholds, provenance.clone())?;
        }
    }
    fault_point("save:model");
    let opt_path = staging.join(file_name(&paths.opt_state));
    let bytes = checkpoint::safetensors_bytes(&opt.state_tensors(), &opt_path)?;
    write_atomic(&opt_path, &bytes)?;
    fault_point("save:optimiser");
    let sha = checkpoint::sha256_file(&opt_path)?;
    let json = serde_json::json!({"state": state, "opt_state_sha256": sha, "data": data});
    write_atomic(
        &staging.join(file_name(&paths.state_json)),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    fault_point("save:state");
    write_atomic(
        &staging.join(COMMITTED),
        format!("{}\n", state.steps).as_bytes(),
    )?;
    Ok(())
}

/// Moves the files of a committed save from `staging` into the run folder (those already moved
/// by an interrupted attempt are skipped) and removes `staging`.
fn complete_commit(paths: &RunPaths, staging: &Path) -> Result<()> {
    for name in CHECKPOINT_FILES {
        let from = staging.join(name);
        if from.exists() {
            let to = paths.dir.join(name);
            fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
            fault_point(&format!("commit:{name}"));
        }
    }
    omniad_io::sync_dir(&paths.dir);
    fs::remove_dir_all(staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    omniad_io::sync_dir(&paths.dir);
    Ok(())
}

/// What [`recover_run_dir`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was left by an interrupted process.
    Clean,
    /// A save interrupted before its commit point was discarded (the previous checkpoint is the
    /// current one); the number of leftover temporary files removed besides.
    DiscardedIncompleteSave { temp_files: usize },
    /// A save interrupted after its commit point was completed; leftover temporary files removed.
    CompletedCommittedSave { temp_files: usize },
    /// Only leftover temporary files (`.NAME.*.tmp`, a disk feature cache) were removed.
    RemovedTempFiles(usize),
}

/// Cleans what an interrupted save left in a run folder (call it while holding the
/// [`RunLock`]): completes a committed save, discards an incomplete one, removes temporary files.
///
/// # Errors
/// A file that cannot be moved or removed (named).
pub fn recover_run_dir(paths: &RunPaths) -> Result<Recovery> {
    let staging = paths.dir.join(STAGING_DIR);
    let staged = if staging.is_dir() {
        if staging.join(COMMITTED).is_file() {
            complete_commit(paths, &staging)?;
            Some(true)
        } else {
            fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot remove {}", staging.display()))?;
            Some(false)
        }
    } else {
        None
    };
    let mut temp_files = 0;
    let entries =
        fs::read_dir(&paths.dir).with_context(|| format!("cannot read {}", paths.dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read {}", paths.dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if omniad_io::is_leftover_temp(&name) || name == crate::feature_cache::DISK_CACHE_FILE {
            fs::remove_file(e.path())
                .with_context(|| format!("cannot remove {}", e.path().display()))?;
            temp_files += 1;
        }
    }
    let r = match staged {
        Some(true) => Recovery::CompletedCommittedSave { temp_files },
        Some(false) => Recovery::DiscardedIncompleteSave { temp_files },
        None if temp_files > 0 => Recovery::RemovedTempFiles(temp_files),
        None => Recovery::Clean,
    };
    if r != Recovery::Clean {
        tracing::warn!(
            "{}: cleaned up after an interrupted process: {r:?}",
            paths.dir.display()
        );
    }
    Ok(r)
}

/// Fault injection for the crash-safety tests: with `OMNIAD_FAULT=POINT` (or `POINT:N`) in the
/// environment, the process kills itself with SIGKILL, as `kill -9` would, the first (N-th) time it
/// reaches `POINT` (`save:start`, `save:model`, `save:optimiser`, `save:state`,
/// `save:committed`, `commit:<file>`). Without the variable this is one cached lookup.
fn fault_point(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let v = std::env::var("OMNIAD_FAULT").ok()?;
        Some(match v.rsplit_once(':') {
            Some((p, n)) if n.parse::<u64>().is_ok() => (p.to_string(), n.parse().unwrap_or(1)),
            _ => (v, 1),
        })
    });
    if let Some((p, n)) = target {
        if p == point && SEEN.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // SAFETY: raise() only sends a signal to this process.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}

/// What [`load_resume`] returns: the model, the optimiser state tensors, the position and the
/// fingerprint of the training images the run started with (`None` for runs saved before it
/// was recorded).
pub type Resumed = (
    OmniAd,
    Vec<(String, Tensor)>,
    TrainState,
    Option<DataFingerprint>,
);

/// What identifies the training images of a run: their number and the SHA-256 of the sorted
/// list of `(path, size in bytes)`. A resumed run must see the same images: another order of
/// batches or another image count would silently train a different model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Number of training images.
    pub images: usize,
    /// Hex SHA-256 of `path\tsize\n` lines in dataset order.
    pub sha256: String,
}

impl DataFingerprint {
    /// Fingerprint of `samples` (their files are only `stat`ed, not read).
    ///
    /// # Errors
    /// A file that cannot be `stat`ed (named).
    pub fn of(samples: &[omniad_data::Sample]) -> Result<Self> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for s in samples {
            let size = fs::metadata(&s.image)
                .with_context(|| format!("cannot read {}", s.image.display()))?
                .len();
            h.update(format!("{}\t{size}\n", s.image.display()).as_bytes());
        }
        Ok(Self {
            images: samples.len(),
            sha256: format!("{:x}", h.finalize()),
        })
    }
}

/// Loads what [`save_all`] wrote: the model, the optimiser state tensors and the position.
///
/// # Errors
/// Missing, altered (checksum) or inconsistent files, naming the file.
pub fn load_resume(paths: &RunPaths, device: Device) -> Result<Resumed> {
    let (model, _) = checkpoint::load(&paths.model_json, device)?;
    let text = fs::read_to_string(&paths.state_json)
        .with_context(|| format!("cannot read {}", paths.state_json.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", paths.state_json.display()))?;
    let state: TrainState = serde_json::from_value(v["state"].clone())
        .with_context(|| format!("{}: invalid train state", paths.state_json.display()))?;
    let want = v["opt_state_sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let found = checkpoint::sha256_file(&paths.opt_state)?;
    if want != found {
        bail!(
            "{}: checksum mismatch (expected {want}, found {found}): the optimiser state is truncated or altered",
            paths.opt_state.display()
        );
    }
    let opt = Tensor::read_safetensors(&paths.opt_state)
        .with_context(|| format!("{}: unreadable optimiser state", paths.opt_state.display()))?;
    let data = match v.get("data") {
        None | Some(serde_json::Value::Null) => None,
        Some(d) => Some(serde_json::from_value(d.clone()).with_context(|| {
            format!("{}: invalid data fingerprint", paths.state_json.display())
        })?),
    };
    Ok((model, opt, state, data))
}

/// Append-only JSON-lines log.
#[derive(Debug)]
pub struct JsonlLog {
    file: File,
    path: PathBuf,
}

impl JsonlLog {
    /// Opens `path` for appending. When `keep_steps` is given (the step a training starts from:
    /// the checkpoint's for a resumed run, 0 for a new one), lines of later steps (written after
    /// the last checkpoint by an interrupted process) are dropped first, so the log reads as one
    /// uninterrupted run.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn open(path: &Path, keep_steps: Option<u64>) -> Result<Self> {
        if let (Some(keep), true) = (keep_steps, path.is_file()) {
            let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
            let mut kept = String::new();
            for line in BufReader::new(f).lines() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                let step = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["step"].as_u64());
                if step.is_none_or(|s| s <= keep) {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            write_atomic(path, kept.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one JSON object as a line.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Checks that a run folder holds a loadable checkpoint and returns its description path. A save
/// interrupted by a crash is completed or discarded first ([`recover_run_dir`]) when no training
/// holds the folder.
///
/// # Errors
/// The folder or its checkpoint is missing.
pub fn checkpoint_of(run: &Path) -> Result<PathBuf> {
    if !run.is_dir() {
        bail!("{}: run folder not found", run.display());
    }
    let paths = RunPaths::new(run);
    if run.join(STAGING_DIR).is_dir() {
        // A save was interrupted: finish or discard it when no training holds the folder (one
        // that does is committing right now and finishes it itself).
        if let Ok(_lock) = lock_run_dir(run) {
            recover_run_dir(&paths)?;
        }
    }
    let p = paths.model_json;
    if !p.is_file() {
        bail!(
            "{}: no checkpoint in this run folder (expected {})",
            run.display(),
            p.display()
        );
    }
    checkpoint::read_meta(&p)?;
    Ok(p)
}
