//! libtorch-free inference of models exported by `omniad export --format onnx`.
//!
//! - [`sidecar`]: the JSON written next to the ONNX file (input size and normalisation, resize
//!   rule, classes, thresholds, score normalisation, recognition bank, versions, checksums).
//! - [`runtime`]: the ONNX graph run by tract (`tract-onnx`, pure Rust).
//! - [`judge`]: class recognition and the decision rule of `omniad predict`, and its JSON record.
//! - [`Session`]: the three together, with the preprocessing of training and `omniad predict`
//!   ([`omniad_data::preprocess_rgb`]: Pillow-exact antialiased bilinear resize, then the
//!   teacher's normalisation).
//!
//! The `omniad-lite` binary (`src/main.rs`) prints the same JSON lines as `omniad predict`.
pub mod judge;
pub mod predict;
pub mod runtime;
pub mod sidecar;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

pub use judge::{Judgement, Recognised, Record};
pub use runtime::{OnnxModel, Output};
pub use sidecar::{sidecar_path, Sidecar};

/// Lower-case hex SHA-256 of a file.
///
/// # Errors
/// The file cannot be read (named).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// An exported model and its sidecar, ready to score images.
pub struct Session {
    model: OnnxModel,
    sidecar: Sidecar,
    path: PathBuf,
}

/// Scores of one batch scored by [`Session::score`].
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Image scores in input order.
    pub scores: Vec<f64>,
    /// Class recognition of each image, when the model has a bank.
    pub recognitions: Option<Vec<Recognised>>,
    /// The graph's raw outputs (maps `[B, H, W]` at the input size, descriptors).
    pub output: Output,
}

impl Session {
    /// Loads `model` (ONNX) and its sidecar ([`sidecar_path`]), checking that the model file
    /// has the checksum the sidecar records.
    ///
    /// # Errors
    /// A missing model file, a missing or invalid sidecar, a model file that does not match it (altered or another
    /// export), a model tract cannot load.
    pub fn load(model: &Path) -> Result<Self> {
        if !model.is_file() {
            bail!("{}: no such ONNX file", model.display());
        }
        let sc_path = sidecar_path(model);
        let sidecar = Sidecar::read(&sc_path)?;
        let found = sha256_file(model)?;
        if found != sidecar.model_sha256 {
            bail!(
                "{}: checksum mismatch with its sidecar {} (file altered, or from another export): expected sha256 {}, found {found}",
                model.display(),
                sc_path.display(),
                sidecar.model_sha256
            );
        }
        let onnx = OnnxModel::load(model, sidecar.input.size, sidecar.input.batch)?;
        Ok(Self {
            model: onnx,
            sidecar,
            path: model.to_path_buf(),
        })
    }

    /// The sidecar.
    pub fn sidecar(&self) -> &Sidecar {
        &self.sidecar
    }

    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Scores `images` (any sizes) in one run of the graph: each is preprocessed exactly as
    /// `omniad predict` does ([`omniad_data::preprocess_rgb`], in parallel).
    ///
    /// # Errors
    /// No image, a tract failure, descriptors that do not fit the bank.
    pub fn score(&self, images: &[RgbImage]) -> Result<Scored> {
        if images.is_empty() {
            bail!("no image to score");
        }
        let pp = self.sidecar.preprocess();
        let inputs: Vec<Vec<f32>> = images
            .par_iter()
            .map(|img| omniad_data::preprocess_rgb(img, &pp))
            .collect();
        let flat: Vec<f32> = inputs.concat();
        let output = self.model.run(&flat, images.len())?;
        let recognitions = match &self.sidecar.recognition {
            Some(r) => Some(
                output
                    .descriptors
                    .iter()
                    .map(|d| judge::recognise(r, d))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        Ok(Scored {
            scores: output.scores.iter().map(|&s| f64::from(s)).collect(),
            recognitions,
            output,
        })
    }

    /// The decision rule for image `j` of `scored` ([`judge::judge`]).
    ///
    /// # Errors
    /// `j` out of range; as [`judge::judge`].
    pub fn judge(
        &self,
        scored: &Scored,
        j: usize,
        given: Option<&str>,
        threshold: Option<f64>,
    ) -> Result<Judgement> {
        if j >= scored.scores.len() {
            bail!("image {j} of a batch of {}", scored.scores.len());
        }
        let recognised = match (&self.sidecar.recognition, &scored.recognitions) {
            (Some(r), Some(rs)) => rs.get(j).map(|x| (r.classes[x.class].as_str(), x)),
            _ => None,
        };
        judge::judge(&self.sidecar, recognised, given, threshold)
    }
}
