//! What a report is made of, read from a run folder: `metrics.json`, `model.json` (thresholds),
//! `train_log.jsonl`, `results.json` and the saved maps.
use std::path::{Path, PathBuf};

use omniad_metrics::EvalResults;
use omniad_model::checkpoint::{self, CheckpointMeta};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::ReportError;

/// One line of `train_log.jsonl` with a training loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossPoint {
    /// Epoch (1-based).
    pub epoch: u64,
    /// Optimiser step (1-based).
    pub step: u64,
    /// Loss of that step.
    pub loss: f64,
}

/// Reads and parses a JSON file.
pub(crate) fn read_json(path: &Path, hint: &str) -> Result<Value, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::Missing {
        path: path.to_path_buf(),
        reason: e.to_string(),
        hint: hint.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReportError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// Reads the checkpoint description `model.json` (for the thresholds and the configuration).
pub(crate) fn read_model(path: &Path) -> Result<CheckpointMeta, ReportError> {
    if !path.is_file() {
        return Err(ReportError::Missing {
            path: path.to_path_buf(),
            reason: "not found".into(),
            hint: "is this a run folder of `omniad train`?".into(),
        });
    }
    Ok(checkpoint::read_meta(path)?)
}

/// The training losses of `train_log.jsonl`, one per step; lines without a `loss` (evaluation
/// lines) are skipped. `Ok(None)` when the file does not exist.
///
/// # Errors
/// An unreadable file, or a line that is not JSON or has a non-numeric `loss`, `epoch` or
/// `step` (naming the file and line).
pub fn read_train_log(path: &Path) -> Result<Option<Vec<LossPoint>>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReportError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| ReportError::Invalid {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Some(loss) = v.get("loss") else {
            continue;
        };
        let num = |key: &str, x: Option<&Value>| -> Result<f64, ReportError> {
            x.and_then(Value::as_f64)
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    bad(format!(
                        "field `{key}` is {}, expected a finite number",
                        x.map(|x| x.to_string()).unwrap_or_else(|| "missing".into())
                    ))
                })
        };
        out.push(LossPoint {
            loss: num("loss", Some(loss))?,
            epoch: num("epoch", v.get("epoch"))? as u64,
            step: num("step", v.get("step"))? as u64,
        });
    }
    Ok(Some(out))
}

/// Reads `results.json`.
pub(crate) fn read_results(path: &Path) -> Result<EvalResults, ReportError> {
    if !path.is_file() {
        return Err(ReportError::Missing {
            path: path.to_path_buf(),
            reason: "not found".into(),
            hint: "run `omniad eval --run RUN` first (it writes the per-image results)".into(),
        });
    }
    Ok(EvalResults::read(path)?)
}

/// The anomaly maps and masks of one class, as `omniad eval --save-maps` writes them.
#[derive(Debug, Clone)]
pub struct ClassMaps {
    /// Anomaly maps, `[n, h, w]` flattened.
    pub maps: Vec<f32>,
    /// Ground-truth masks (0/1), `[n, h, w]` flattened.
    pub masks: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
}

impl ClassMaps {
    /// The anomaly map of image `k`.
    pub fn map(&self, k: usize) -> &[f32] {
        &self.maps[k * self.h * self.w..(k + 1) * self.h * self.w]
    }

    /// The ground-truth mask of image `k`.
    pub fn mask(&self, k: usize) -> &[u8] {
        &self.masks[k * self.h * self.w..(k + 1) * self.h * self.w]
    }
}

/// Reads `path` (tensors `anomaly_maps` F32 `[n, h, w]`, `masks` U8 `[n, h, w]`) and checks it
/// against what `results.json` says: `n` images of `size`.
///
/// # Errors
/// Unreadable file, a missing tensor, another dtype or shape (naming the file and tensor).
pub fn read_class_maps(
    path: &Path,
    n: usize,
    size: (usize, usize),
) -> Result<ClassMaps, ReportError> {
    let invalid = |reason: String| ReportError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| invalid(format!("not a safetensors file: {e}")))?;
    let (h, w) = size;
    let want = vec![n, h, w];
    let tensor = |name: &str, dtype: Dtype| -> Result<Vec<u8>, ReportError> {
        let t = st
            .tensor(name)
            .map_err(|_| invalid(format!("no tensor `{name}`")))?;
        if t.dtype() != dtype {
            return Err(invalid(format!(
                "tensor `{name}` is {:?}, expected {dtype:?}",
                t.dtype()
            )));
        }
        if t.shape() != want.as_slice() {
            return Err(invalid(format!(
                "tensor `{name}` has shape {:?}, expected {want:?} ({n} images of {h}x{w} in results.json)",
                t.shape()
            )));
        }
        Ok(t.data().to_vec())
    };
    let maps: Vec<f32> = tensor("anomaly_maps", Dtype::F32)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let masks = tensor("masks", Dtype::U8)?;
    Ok(ClassMaps {
        maps,
        masks,
        n,
        h,
        w,
    })
}

/// Where the maps of `class` are, if `results.json` says maps were saved.
pub(crate) fn maps_path(run: &Path, results: &EvalResults, class: &str) -> Option<PathBuf> {
    results.maps_dir.as_ref().map(|d| {
        let dir = if d.is_absolute() {
            d.clone()
        } else {
            run.join(d)
        };
        dir.join(format!("{class}.safetensors"))
    })
}
