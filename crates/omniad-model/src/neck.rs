//! RD4AD-style fusion neck of Omni-AD (reference `model/omniad.py`, class `Neck`, with timm's
//! `Bottleneck` blocks).
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::config::NeckConfig;
use crate::init::conv2d_fan_out;
use crate::precision::{full, Conv2d, Precision};

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// timm `Bottleneck` (expansion 4, stride on the 3x3 conv, ReLU after the residual sum).
#[derive(Debug)]
struct Bottleneck {
    conv1: Conv2d,
    bn1: nn::BatchNorm,
    conv2: Conv2d,
    bn2: nn::BatchNorm,
    conv3: Conv2d,
    bn3: nn::BatchNorm,
    downsample: Option<(Conv2d, nn::BatchNorm)>,
}

impl Bottleneck {
    fn new(p: &nn::Path, c_in: i64, planes: i64, stride: i64) -> Self {
        let c_out = planes * 4;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            (
                conv2d_fan_out(p / "downsample" / 0, c_in, c_out, 1, stride, 0, false),
                bn(p / "downsample" / 1, c_out),
            )
        });
        Self {
            conv1: conv2d_fan_out(p / "conv1", c_in, planes, 1, 1, 0, false),
            bn1: bn(p / "bn1", planes),
            conv2: conv2d_fan_out(p / "conv2", planes, planes, 3, stride, 1, false),
            bn2: bn(p / "bn2", planes),
            conv3: conv2d_fan_out(p / "conv3", planes, c_out, 1, 1, 0, false),
            bn3: bn(p / "bn3", c_out),
            downsample,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let y = self
            .bn1
            .forward_t(&full(&self.conv1.forward(x)), train)
            .relu();
        let y = self
            .bn2
            .forward_t(&full(&self.conv2.forward(&y)), train)
            .relu();
        let y = self.bn3.forward_t(&full(&self.conv3.forward(&y)), train);
        let shortcut = match &self.downsample {
            Some((conv, norm)) => norm.forward_t(&full(&conv.forward(x)), train),
            None => x.shallow_clone(),
        };
        (y + shortcut).relu()
    }
}

/// Fuses the teacher's three feature maps into one compact map.
///
/// Input: `[B, c1, H/4, W/4]`, `[B, c2, H/8, W/8]`, `[B, c3, H/16, W/16]` (teacher channels
/// `c1..c3`, e.g. 64/128/256 for ResNet34). Output: `[B, width, H/32, W/32]` (`width` = 512).
///
/// `fpn0 = relu(bn1(conv1 3x3/2 (f1)))`, `fpn1 = relu(bn21(conv21 1x1 (f2))) + fpn0`,
/// `s = relu(bn2(conv2 3x3/2 (fpn1))) + relu(bn31(conv31 1x1 (f3)))`, `s = relu(bnf(convf(s)))`,
/// then 3 Bottleneck blocks (`bn_layer`, planes `width/4`, the first with stride 2).
/// State-dict names are the reference's (`Neck.conv1.weight`, `Neck.bn_layer.0.downsample.0.weight`, ...).
#[derive(Debug)]
pub struct Neck {
    conv1: Conv2d,
    bn1: nn::BatchNorm,
    conv2: Conv2d,
    bn2: nn::BatchNorm,
    conv21: Conv2d,
    bn21: nn::BatchNorm,
    conv31: Conv2d,
    bn31: nn::BatchNorm,
    convf: Conv2d,
    bnf: nn::BatchNorm,
    bn_layer: Vec<Bottleneck>,
}

impl Neck {
    /// Builds the neck under `p` for teacher channels `cfg.channels = [c1, c2, c3]` and output
    /// `cfg.width` (a multiple of 4).
    pub fn new(p: &nn::Path, cfg: &NeckConfig) -> Self {
        let [c1, c2, c3] = cfg.channels;
        let width = cfg.width;
        let planes = width / 4;
        let bl = p / "bn_layer";
        let bn_layer = vec![
            Bottleneck::new(&(&bl / 0), c3, planes, 2),
            Bottleneck::new(&(&bl / 1), width, planes, 1),
            Bottleneck::new(&(&bl / 2), width, planes, 1),
        ];
        Self {
            conv1: conv2d_fan_out(p / "conv1", c1, c2, 3, 2, 1, false),
            bn1: bn(p / "bn1", c2),
            conv2: conv2d_fan_out(p / "conv2", c2, c3, 3, 2, 1, false),
            bn2: bn(p / "bn2", c3),
            conv21: conv2d_fan_out(p / "conv21", c2, c2, 1, 1, 0, true),
            bn21: bn(p / "bn21", c2),
            conv31: conv2d_fan_out(p / "conv31", c3, c3, 1, 1, 0, true),
            bn31: bn(p / "bn31", c3),
            convf: conv2d_fan_out(p / "convf", c3, c3, 1, 1, 0, true),
            bnf: bn(p / "bnf", c3),
            bn_layer,
        }
    }

    /// Runs the neck; `train` selects BatchNorm batch statistics (and updates running stats).
    ///
    /// `feats` must hold the three teacher maps in order (shapes above).
    pub fn forward_t(&self, feats: &[Tensor], train: bool) -> Tensor {
        // Always float32 (crate::precision): the gradients through its train-mode BatchNorms
        // cancel almost completely (even float32 summation order moves them by 1e-2), and
        // bfloat16 convolutions here turned them 65% away from float32 on a 4-image batch;
        // the neck is 1-2% of the compute.
        Precision::F32.run(|| self.forward_f32(feats, train))
    }

    fn forward_f32(&self, feats: &[Tensor], train: bool) -> Tensor {
        let fpn0 = self
            .bn1
            .forward_t(&full(&self.conv1.forward(&feats[0])), train)
            .relu();
        let fpn1 = self
            .bn21
            .forward_t(&full(&self.conv21.forward(&feats[1])), train)
            .relu()
            + fpn0;
        let s = self
            .bn2
            .forward_t(&full(&self.conv2.forward(&fpn1)), train)
            .relu()
            + self
                .bn31
                .forward_t(&full(&self.conv31.forward(&feats[2])), train)
                .relu();
        let mut s = self
            .bnf
            .forward_t(&full(&self.convf.forward(&s)), train)
            .relu();
        for block in &self.bn_layer {
            s = block.forward_t(&s, train);
        }
        s
    }
}
