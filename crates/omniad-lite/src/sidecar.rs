//! The sidecar JSON written next to an exported ONNX model (`model.onnx` ->
//! `model.onnx.json`): everything outside the graph that a consumer needs to reproduce
//! `omniad predict` — input size, resize rule and normalisation, class names, thresholds, score
//! normalisation, the class-recognition bank, the omniad version and the checksums.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Value of [`Sidecar::format`].
pub const FORMAT: &str = "omniad-onnx-sidecar";
/// Current [`Sidecar::version`].
pub const VERSION: u32 = 1;

/// The sidecar's path for a model path: the model's file name with `.json` appended
/// (`model.onnx` -> `model.onnx.json`).
pub fn sidecar_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    model.with_file_name(name)
}

/// What the graph expects as input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Graph input name (`"input"`).
    pub name: String,
    /// Always `"NCHW"`: `[batch, 3 (R, G, B), height, width]`, f32.
    pub layout: String,
    /// `(height, width)` in pixels every image is resized to.
    pub size: (u32, u32),
    /// Fixed batch size, or `None` for a dynamic batch axis (`"batch"`).
    pub batch: Option<usize>,
    /// Per-channel mean (R, G, B) subtracted from `v / 255`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) dividing after the mean.
    pub std: [f32; 3],
    /// The resize and normalisation rule, in words.
    pub resize: String,
}

/// The graph's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSpec {
    /// `[batch, H, W]` f32: blurred anomaly map in `1 - cos` units, `[0, 2]`.
    pub anomaly_map: String,
    /// `[batch]` f32: image score, the maximum of the anomaly map.
    pub image_score: String,
    /// `[batch, D]` f32: unit class-recognition descriptors.
    pub descriptors: String,
}

/// Calibrated thresholds, as the checkpoint's `model.json` stores them (same fields and
/// meaning as `omniad_model::checkpoint::Thresholds`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Image-score threshold for all classes.
    pub global: Option<f64>,
    /// Image-score threshold per class.
    #[serde(default)]
    pub per_class: BTreeMap<String, f64>,
    /// How they were chosen.
    #[serde(default)]
    pub method: String,
    /// Normalisation bounds `(lo, hi)`; `None`: the span is `2 t`.
    #[serde(default)]
    pub score_bounds: Option<(f64, f64)>,
    /// Pixel threshold per class (a class without one uses its image threshold).
    #[serde(default)]
    pub pixel_per_class: BTreeMap<String, f64>,
    /// Pixel threshold for all classes.
    #[serde(default)]
    pub pixel_global: Option<f64>,
    /// What the thresholds were fitted on, in words.
    #[serde(default)]
    pub fitted_on: String,
}

/// Class recognition: the bank of unit descriptors and the decision rule's distances
/// (see `omniad_model::recognition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recognition {
    /// Descriptor recipe (`"teacher-gap-l2-v1"`), the graph's `descriptors` output.
    pub descriptor: String,
    /// Class names; `labels` index here.
    pub classes: Vec<String>,
    /// Per class (order of `classes`): a nearest-bank distance above it is an unknown class.
    pub unknown_distance: Vec<f64>,
    /// The margin the distances were fitted with.
    pub margin: f64,
    /// Bank vectors `[N][D]`, unit rows.
    pub bank: Vec<Vec<f32>>,
    /// Class index of each bank row.
    pub labels: Vec<i64>,
}

/// The sidecar JSON of an exported model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// omniad version that exported the model.
    pub omniad_version: String,
    /// File name (same folder) of the ONNX model.
    pub model_file: String,
    /// Lower-case hex SHA-256 of the ONNX model file.
    pub model_sha256: String,
    /// Lower-case hex SHA-256 of the checkpoint's weights file the model was exported from.
    pub checkpoint_sha256: String,
    /// ONNX opset of the graph.
    pub opset: i64,
    /// The checkpoint's architecture (`OmniAdConfig` as in `model.json`).
    pub config: serde_json::Value,
    /// Graph input and preprocessing.
    pub input: InputSpec,
    /// Graph outputs.
    pub outputs: OutputSpec,
    /// Anomaly-map post-processing inside the graph, in words (for readers).
    pub anomaly_map: String,
    /// Classes the model was trained on (empty when the checkpoint records none).
    pub classes: Vec<String>,
    /// Calibrated thresholds, if any.
    pub thresholds: Option<Thresholds>,
    /// Score normalisation rule, in words.
    pub score_normalisation: String,
    /// Class recognition, when the checkpoint has it.
    pub recognition: Option<Recognition>,
}

impl Sidecar {
    /// Reads and checks a sidecar file.
    ///
    /// # Errors
    /// Unreadable file, invalid JSON, another format or a newer version, an inconsistent
    /// recognition bank or input specification; each message names the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the model's sidecar", path.display()))?;
        let s: Sidecar = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid omniad ONNX sidecar", path.display()))?;
        s.check()
            .with_context(|| format!("{}: invalid sidecar", path.display()))?;
        Ok(s)
    }

    /// Checks the invariants a consumer relies on.
    ///
    /// # Errors
    /// As described in [`Self::read`].
    pub fn check(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!("format {:?}, expected {FORMAT:?}", self.format);
        }
        if self.version > VERSION {
            bail!(
                "sidecar version {} is newer than this omniad reads ({VERSION})",
                self.version
            );
        }
        let (h, w) = self.input.size;
        if h == 0 || w == 0 || self.input.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            bail!("input size {h}x{w} or std {:?} invalid", self.input.std);
        }
        if self.input.batch == Some(0) {
            bail!("input batch 0");
        }
        if let Some(r) = &self.recognition {
            if r.classes.is_empty()
                || r.unknown_distance.len() != r.classes.len()
                || r.bank.len() != r.labels.len()
                || r.bank.is_empty()
            {
                bail!("recognition bank inconsistent (classes, distances, rows, labels)");
            }
            let d = r.bank[0].len();
            if r.bank.iter().any(|row| row.len() != d) {
                bail!("recognition bank rows of different lengths");
            }
            if r.labels
                .iter()
                .any(|&l| l < 0 || l as usize >= r.classes.len())
            {
                bail!("recognition label out of range");
            }
        }
        Ok(())
    }

    /// The preprocessing of the input images (`omniad_data::preprocess_rgb`'s parameters).
    pub fn preprocess(&self) -> omniad_data::Preprocess {
        omniad_data::Preprocess {
            size: self.input.size,
            mean: self.input.mean,
            std: self.input.std,
        }
    }
}
