//! The complete Omni-AD network: frozen teacher, neck, decoder, loss and anomaly map
//! (reference `model/omniad.py` class `OmniAD`, trainer `trainer/omniad_trainer.py`).
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::anomaly_map;
use crate::config::{ConfigError, OmniAdConfig};
use crate::decoder::Decoder;
use crate::neck::Neck;
use crate::teacher::Teacher;

/// State-dict prefix of the teacher (`net_t.*`).
pub const TEACHER_PREFIX: &str = "net_t";
/// State-dict prefix of the neck (`Neck.*`).
pub const NECK_PREFIX: &str = "Neck";
/// State-dict prefix of the decoder (`net_s.*`).
pub const DECODER_PREFIX: &str = "net_s";

/// Output of [`OmniAd::predict`].
#[derive(Debug)]
pub struct Prediction {
    /// Anomaly map after the Gaussian blur, `[B, H, W]`, f32, in `[0, 2]` (higher = more anomalous).
    pub anomaly_map: Tensor,
    /// Image scores (max of each map), `[B]`.
    pub image_scores: Tensor,
    /// Class-recognition descriptors of the teacher features, `[B, c1 + c2 + c3]`, f32, unit
    /// rows (see [`crate::recognition::descriptors`]).
    pub descriptors: Tensor,
}

/// Multiply-accumulate operations (MACs) per image, by part ([`OmniAd::macs_per_image`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacCount {
    /// Teacher forward pass.
    pub teacher: u64,
    /// Neck and decoder forward pass.
    pub student: u64,
    /// Anomaly map (the Gaussian blur's matrix products).
    pub anomaly_map: u64,
}

impl MacCount {
    /// One image of inference: teacher, neck, decoder and anomaly map.
    pub fn inference(&self) -> u64 {
        self.teacher + self.student + self.anomaly_map
    }

    /// One image of a training step: the teacher's forward pass, and the student's forward
    /// pass and backward pass, the backward counted as twice the forward (gradients of the
    /// inputs and of the weights, each one product per forward product). No anomaly map.
    pub fn train_step(&self) -> u64 {
        self.teacher + 3 * self.student
    }
}

/// Omni-AD: a frozen teacher, and a trainable student (neck + Omni-block decoder) that learns to
/// reconstruct the teacher's features of normal images.
///
/// Variables live in two stores: `teacher_vs` (frozen, `net_t.*`) and `vs` (trainable,
/// `Neck.*` and `net_s.*`), so an optimiser built on `vs` never touches the teacher.
#[derive(Debug)]
pub struct OmniAd {
    /// Architecture.
    pub cfg: OmniAdConfig,
    /// Frozen teacher variables.
    pub teacher_vs: VarStore,
    /// Trainable variables (neck + decoder).
    pub vs: VarStore,
    teacher: Teacher,
    neck: Neck,
    decoder: Decoder,
}

impl OmniAd {
    /// Builds the network with freshly initialised student weights (reference init) and an
    /// uninitialised teacher (load weights with [`crate::weights`] or a checkpoint).
    ///
    /// # Errors
    /// The configuration is invalid (see [`OmniAdConfig::validate`]).
    pub fn new(cfg: &OmniAdConfig, device: Device) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut teacher_vs = VarStore::new(device);
        let teacher = Teacher::new(&(teacher_vs.root() / TEACHER_PREFIX), cfg.teacher);
        teacher_vs.freeze();
        let vs = VarStore::new(device);
        let neck = Neck::new(&(vs.root() / NECK_PREFIX), &cfg.neck());
        let decoder = Decoder::new(&(vs.root() / DECODER_PREFIX), &cfg.decoder());
        Ok(Self {
            cfg: cfg.clone(),
            teacher_vs,
            vs,
            teacher,
            neck,
            decoder,
        })
    }

    /// The frozen teacher (its variables are in `teacher_vs`).
    pub fn teacher(&self) -> &Teacher {
        &self.teacher
    }

    /// Device of the model.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Teacher features of normalised images `x: [B, 3, H, W]` (no autograd):
    /// `[B, c1, H/4, W/4]`, `[B, c2, H/8, W/8]`, `[B, c3, H/16, W/16]`.
    pub fn teacher_features(&self, x: &Tensor) -> Vec<Tensor> {
        tch::no_grad(|| self.teacher.forward(x))
    }

    /// Student reconstruction of teacher features (neck, jitter when `train`, decoder).
    ///
    /// `train` selects BatchNorm batch statistics in the neck and adds feature jitter of scale
    /// `cfg.jitter_scale` to the neck output (reference `add_jitter`: noise `~ N(0,1) * |token| /
    /// C * scale`, per token of the `[B, h*w, C]` view). Returns the three maps in teacher order.
    ///
    /// In training the features are made contiguous (NCHW) first: the teacher returns
    /// channels-last maps and the feature cache contiguous ones, and the neck's train-mode
    /// BatchNorm backward is ill-conditioned enough (cancellation) that the two memory layouts'
    /// summation orders give `Neck.conv1.weight` gradients 2e-3 apart. Contiguous input makes a
    /// step identical with and without the cache and matches the reference's layout.
    pub fn reconstruct(&self, feats_t: &[Tensor], train: bool) -> Vec<Tensor> {
        let contiguous: Vec<Tensor>;
        let feats_t = if train {
            contiguous = feats_t.iter().map(Tensor::contiguous).collect();
            &contiguous[..]
        } else {
            feats_t
        };
        let mut z = self.neck.forward_t(feats_t, train);
        if train && self.cfg.jitter_scale > 0.0 {
            z = add_jitter(&z, self.cfg.jitter_scale);
        }
        self.decoder.forward(&z)
    }

    /// `(teacher features, reconstructions)` of `x: [B, 3, H, W]`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> (Vec<Tensor>, Vec<Tensor>) {
        let t = self.teacher_features(x);
        let s = self.reconstruct(&t, train);
        (t, s)
    }

    /// Training loss: sum over the three scales of the mean squared error (reference `L2Loss`).
    /// Returns a scalar tensor.
    pub fn loss(feats_t: &[Tensor], feats_s: &[Tensor]) -> Tensor {
        feats_t
            .iter()
            .zip(feats_s)
            .map(|(t, s)| s.mse_loss(t, tch::Reduction::Mean))
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, Device::Cpu)))
    }

    /// Eval-mode anomaly map and image score of normalised images `x: [B, 3, H, W]` (no
    /// autograd). The map has the input's spatial size.
    pub fn predict(&self, x: &Tensor) -> Prediction {
        tch::no_grad(|| {
            let size = x.size();
            let (t, s) = self.forward_t(x, false);
            let (_, map, scores) = anomaly_map::anomaly_map(&t, &s, (size[2], size[3]));
            Prediction {
                anomaly_map: map,
                image_scores: scores,
                descriptors: crate::recognition::descriptors(&t),
            }
        })
    }

    /// Number of `(trainable, frozen)` parameters.
    /// Multiply-accumulates per image of inference, counted by running one image of the
    /// configured size through the network (see [`crate::precision::count_macs`] for what is
    /// counted). A short forward pass at batch 1: milliseconds for small models, about a second
    /// at the paper configuration on a CPU.
    pub fn macs_per_image(&self) -> MacCount {
        let (h, w) = (self.cfg.image_size.0 as i64, self.cfg.image_size.1 as i64);
        let x = Tensor::zeros([1, 3, h, w], (Kind::Float, self.device()));
        tch::no_grad(|| {
            let (t, teacher) = crate::precision::count_macs(|| self.teacher_features(&x));
            let (s, student) = crate::precision::count_macs(|| self.reconstruct(&t, false));
            let (_, anomaly_map) = crate::precision::count_macs(|| {
                let _ = anomaly_map::anomaly_map(&t, &s, (h, w));
            });
            MacCount {
                teacher,
                student,
                anomaly_map,
            }
        })
    }

    pub fn num_params(&self) -> (i64, i64) {
        let count =
            |vs: &VarStore| vs.variables().values().map(Tensor::numel).sum::<usize>() as i64;
        let frozen_buffers = |vs: &VarStore| {
            vs.variables()
                .iter()
                .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
                .map(|(_, v)| v.numel())
                .sum::<usize>() as i64
        };
        // BatchNorm running statistics are buffers, not parameters (as in PyTorch's count).
        (
            count(&self.vs) - frozen_buffers(&self.vs),
            count(&self.teacher_vs) - frozen_buffers(&self.teacher_vs),
        )
    }

    /// Trainable parameters with their state-dict names (`Neck.*`, `net_s.*`; BatchNorm running
    /// statistics excluded), sorted by name.
    pub fn trainable_named(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// All named tensors with their state-dict names (`net_t.*`, `Neck.*`, `net_s.*`), sorted.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .teacher_vs
            .variables()
            .into_iter()
            .chain(self.vs.variables())
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Reference `add_jitter(feature_tokens, scale)`: `x + N(0,1) * (||x_token||_2 / C) * scale` on
/// the `[B, h*w, C]` token view of `z: [B, C, h, w]`. Returns `[B, C, h, w]`.
pub fn add_jitter(z: &Tensor, scale: f64) -> Tensor {
    let c = z.size()[1];
    let norms = z.norm_scalaropt_dim(2, [1].as_slice(), true) / (c as f64);
    let noise = Tensor::randn(z.size(), (z.kind(), z.device()));
    z + noise * norms * scale
}
