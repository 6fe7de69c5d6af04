//! RD4AD-style fusion neck of Omni-AD (reference `model/omniad.py`, class `Neck`, with timm's
//! `Bottleneck` blocks).
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::config::NeckConfig;
use crate::init::conv2d_fan_out;

fn bn(p: nn::Path, c: i64) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, Default::default())
}

/// timm `Bottleneck` (expansion 4, stride on the 3x3 conv, ReLU after the residual sum).
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv3: nn::Conv2D,
    bn3: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
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
        let y = self.bn1.forward_t(&x.apply(&self.conv1), train).relu();
        let y = self.bn2.forward_t(&y.apply(&self.conv2), train).relu();
        let y = self.bn3.forward_t(&y.apply(&self.conv3), train);
        let shortcut = match &self.downsample {
            Some((conv, norm)) => norm.forward_t(&x.apply(conv), train),
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
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv21: nn::Conv2D,
    bn21: nn::BatchNorm,
    conv31: nn::Conv2D,
    bn31: nn::BatchNorm,
    convf: nn::Conv2D,
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
        let fpn0 = self
            .bn1
            .forward_t(&feats[0].apply(&self.conv1), train)
            .relu();
        let fpn1 = self
            .bn21
            .forward_t(&feats[1].apply(&self.conv21), train)
            .relu()
            + fpn0;
        let s = self.bn2.forward_t(&fpn1.apply(&self.conv2), train).relu()
            + self
                .bn31
                .forward_t(&feats[2].apply(&self.conv31), train)
                .relu();
        let mut s = self.bnf.forward_t(&s.apply(&self.convf), train).relu();
        for block in &self.bn_layer {
            s = block.forward_t(&s, train);
        }
        s
    }
}
