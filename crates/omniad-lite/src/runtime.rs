//! Running an exported model with tract (`tract-onnx`, a pure-Rust ONNX runtime): no libtorch.
//!
//! The graph's batch axis is dynamic; tract optimises the model once per batch size seen
//! (pinned to that size, which lets it fold every shape), and keeps the plans.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

/// Anomaly maps, scores and descriptors of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `[B * H * W]` blurred anomaly maps, row-major, image after image.
    pub maps: Vec<f32>,
    /// `[B]` image scores (max of each map).
    pub scores: Vec<f32>,
    /// `[B][D]` class-recognition descriptors.
    pub descriptors: Vec<Vec<f32>>,
}

/// An ONNX model exported by `omniad export`, loaded in tract.
pub struct OnnxModel {
    proto: InferenceModel,
    size: (usize, usize),
    fixed_batch: Option<usize>,
    plans: Mutex<HashMap<usize, Arc<TypedRunnableModel>>>,
}

impl OnnxModel {
    /// Loads the ONNX file `path`, whose input is `[batch, 3, size.0, size.1]` (`fixed_batch`:
    /// the file's fixed batch size, `None` when dynamic).
    ///
    /// # Errors
    /// An unreadable file or one tract cannot parse (the message names the file).
    pub fn load(path: &Path, size: (u32, u32), fixed_batch: Option<usize>) -> Result<Self> {
        let proto = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| anyhow!("{}: cannot load the ONNX model: {e:#}", path.display()))?;
        Ok(Self {
            proto,
            size: (size.0 as usize, size.1 as usize),
            fixed_batch,
            plans: Mutex::new(HashMap::new()),
        })
    }

    fn plan(&self, batch: usize) -> Result<Arc<TypedRunnableModel>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| anyhow!("the ONNX plan cache is poisoned"))?;
        if let Some(p) = plans.get(&batch) {
            return Ok(p.clone());
        }
        let (h, w) = self.size;
        let plan = self
            .proto
            .clone()
            .with_input_fact(0, f32::fact([batch, 3, h, w]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("tract cannot prepare the model for batch {batch}: {e:#}"))?;
        plans.insert(batch, plan.clone());
        Ok(plan)
    }

    /// Runs the graph on `batch` preprocessed images, `input: [batch * 3 * H * W]` (the
    /// concatenated outputs of `omniad_data::preprocess_rgb`).
    ///
    /// # Errors
    /// A batch size the file does not accept, an input of the wrong length, a tract failure.
    pub fn run(&self, input: &[f32], batch: usize) -> Result<Output> {
        let (h, w) = self.size;
        if batch == 0 || input.len() != batch * 3 * h * w {
            bail!(
                "{} input values for {batch} images of 3x{h}x{w}",
                input.len()
            );
        }
        if let Some(b) = self.fixed_batch {
            if b != batch {
                bail!("the model was exported for batches of {b}, got {batch} images");
            }
        }
        let plan = self.plan(batch)?;
        let x = tract_ndarray::Array4::from_shape_vec((batch, 3, h, w), input.to_vec())
            .context("input shape")?;
        let out = plan
            .run(tvec!(Tensor::from(x).into()))
            .map_err(|e| anyhow!("tract inference failed: {e:#}"))?;
        if out.len() != 3 {
            bail!("the model has {} outputs, expected 3", out.len());
        }
        let view = |i: usize| -> Result<Vec<f32>> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| anyhow!("output {i}: {e}"))?
                .iter()
                .copied()
                .collect())
        };
        let maps = view(0)?;
        let scores = view(1)?;
        let flat = view(2)?;
        if maps.len() != batch * h * w || scores.len() != batch || flat.len() % batch != 0 {
            bail!("the model's outputs do not have the expected shapes");
        }
        let d = flat.len() / batch;
        let descriptors = flat.chunks(d.max(1)).map(<[f32]>::to_vec).collect();
        Ok(Output {
            maps,
            scores,
            descriptors,
        })
    }
}
