//! ResNet teachers (He et al. 2016), torchvision "v1.5" layout (the stride of a downsampling
//! block sits on its 3x3 convolution), truncated after `layer3`.
//!
//! Variables keep the timm/torchvision state-dict names (`conv1.weight`,
//! `bn1.{weight,bias,running_mean,running_var}`, `layer{1,2,3}.N.conv1.weight`,
//! `layer{2,3}.0.downsample.{0,1}.*`, ...), so a user's `resnet*.pth`/`.safetensors` file loads
//! directly (its `layer4.*` and `fc.*` tensors are ignored). Reference: torchvision
//! `models/resnet.py` and timm `models/resnet.py` (`features_only=True, out_indices=(1, 2, 3)`,
//! as used by the Omni-AD reference code for its teacher).
use super::layers::{FrozenBatchNorm2d, FrozenConv2d};
use tch::{nn, TchError, Tensor};

/// BatchNorm epsilon of torchvision/timm ResNets.
const BN_EPS: f64 = 1e-5;

/// Residual block variant and layout of one ResNet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResNetConfig {
    /// Bottleneck (1x1 -> 3x3 -> 1x1, expansion 4) instead of BasicBlock (3x3 -> 3x3).
    pub(crate) bottleneck: bool,
    /// Blocks in `layer1`, `layer2`, `layer3`.
    pub(crate) layers: [usize; 3],
    /// Width of the bottleneck's 3x3 convolution per 64 planes (64 for ResNet-50, 128 for
    /// Wide-ResNet-50-2).
    pub(crate) base_width: i64,
}

/// Shortcut projection `downsample.0` (1x1 conv, stride s) + `downsample.1` (BatchNorm).
#[derive(Debug)]
struct Downsample {
    conv: FrozenConv2d,
    bn: FrozenBatchNorm2d,
}

#[derive(Debug)]
enum Block {
    Basic {
        conv1: FrozenConv2d,
        bn1: FrozenBatchNorm2d,
        conv2: FrozenConv2d,
        bn2: FrozenBatchNorm2d,
        downsample: Option<Downsample>,
    },
    Bottleneck {
        conv1: FrozenConv2d,
        bn1: FrozenBatchNorm2d,
        conv2: FrozenConv2d,
        bn2: FrozenBatchNorm2d,
        conv3: FrozenConv2d,
        bn3: FrozenBatchNorm2d,
        downsample: Option<Downsample>,
    },
}

impl Block {
    fn new(p: &nn::Path, cfg: &ResNetConfig, in_c: i64, planes: i64, stride: i64) -> Block {
        let expansion = if cfg.bottleneck { 4 } else { 1 };
        let out_c = planes * expansion;
        let downsample = (stride != 1 || in_c != out_c).then(|| {
            let d = p.sub("downsample");
            Downsample {
                conv: FrozenConv2d::new(&d.sub("0"), in_c, out_c, 1, stride, 0, 1),
                bn: FrozenBatchNorm2d::new(&d.sub("1"), out_c, BN_EPS),
            }
        });
        if cfg.bottleneck {
            let width = planes * cfg.base_width / 64;
            Block::Bottleneck {
                conv1: FrozenConv2d::new(&p.sub("conv1"), in_c, width, 1, 1, 0, 1),
                bn1: FrozenBatchNorm2d::new(&p.sub("bn1"), width, BN_EPS),
                conv2: FrozenConv2d::new(&p.sub("conv2"), width, width, 3, stride, 1, 1),
                bn2: FrozenBatchNorm2d::new(&p.sub("bn2"), width, BN_EPS),
                conv3: FrozenConv2d::new(&p.sub("conv3"), width, out_c, 1, 1, 0, 1),
                bn3: FrozenBatchNorm2d::new(&p.sub("bn3"), out_c, BN_EPS),
                downsample,
            }
        } else {
            Block::Basic {
                conv1: FrozenConv2d::new(&p.sub("conv1"), in_c, planes, 3, stride, 1, 1),
                bn1: FrozenBatchNorm2d::new(&p.sub("bn1"), planes, BN_EPS),
                conv2: FrozenConv2d::new(&p.sub("conv2"), planes, planes, 3, 1, 1, 1),
                bn2: FrozenBatchNorm2d::new(&p.sub("bn2"), planes, BN_EPS),
                downsample,
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let shortcut = |ds: &Option<Downsample>| -> Result<Tensor, TchError> {
            match ds {
                Some(d) => d.conv.forward_bn(x, &d.bn, false),
                None => Ok(x.shallow_clone()),
            }
        };
        let out = match self {
            Block::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
                downsample,
            } => {
                let y = conv1.forward_bn(x, bn1, false)?.f_relu()?;
                let y = conv2.forward_bn(&y, bn2, false)?;
                y.f_add(&shortcut(downsample)?)?
            }
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                downsample,
            } => {
                let y = conv1.forward_bn(x, bn1, false)?.f_relu()?;
                let y = conv2.forward_bn(&y, bn2, false)?.f_relu()?;
                let y = conv3.forward_bn(&y, bn3, false)?;
                y.f_add(&shortcut(downsample)?)?
            }
        };
        out.f_relu()
    }

    fn numel(&self) -> i64 {
        let ds = |d: &Option<Downsample>| d.as_ref().map_or(0, |d| d.conv.numel() + d.bn.numel());
        match self {
            Block::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
                downsample,
            } => conv1.numel() + bn1.numel() + conv2.numel() + bn2.numel() + ds(downsample),
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                downsample,
            } => {
                conv1.numel()
                    + bn1.numel()
                    + conv2.numel()
                    + bn2.numel()
                    + conv3.numel()
                    + bn3.numel()
                    + ds(downsample)
            }
        }
    }
}

/// ResNet stem + `layer1..layer3`; `forward` returns the outputs of the three layers.
#[derive(Debug)]
pub(crate) struct ResNet {
    conv1: FrozenConv2d,
    bn1: FrozenBatchNorm2d,
    layers: [Vec<Block>; 3],
}

impl ResNet {
    /// Creates the variables under `p` (names as in torchvision/timm).
    pub(crate) fn new(p: &nn::Path, cfg: ResNetConfig) -> ResNet {
        let conv1 = FrozenConv2d::new(&p.sub("conv1"), 3, 64, 7, 2, 3, 1);
        let bn1 = FrozenBatchNorm2d::new(&p.sub("bn1"), 64, BN_EPS);
        let expansion = if cfg.bottleneck { 4 } else { 1 };
        let mut in_c = 64;
        let mut make_layer = |index: usize, planes: i64, stride: i64| -> Vec<Block> {
            let lp = p.sub(format!("layer{}", index + 1));
            (0..cfg.layers[index])
                .map(|b| {
                    let s = if b == 0 { stride } else { 1 };
                    let block = Block::new(&lp.sub(b), &cfg, in_c, planes, s);
                    in_c = planes * expansion;
                    block
                })
                .collect()
        };
        let layer1 = make_layer(0, 64, 1);
        let layer2 = make_layer(1, 128, 2);
        let layer3 = make_layer(2, 256, 2);
        ResNet {
            conv1,
            bn1,
            layers: [layer1, layer2, layer3],
        }
    }

    /// `[B, 3, H, W]` -> outputs of `layer1` (stride 4), `layer2` (stride 8), `layer3` (stride 16).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>, TchError> {
        let y = self.conv1.forward_bn(x, &self.bn1, false)?.f_relu()?;
        let mut y = y.f_max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)?;
        let mut features = Vec::with_capacity(3);
        for layer in &self.layers {
            for block in layer {
                y = block.forward(&y)?;
            }
            features.push(y.shallow_clone());
        }
        Ok(features)
    }

    /// The stem convolution weight (to read the network's kind and device).
    pub(crate) fn stem_weight(&self) -> Tensor {
        self.conv1.weight.shallow_clone()
    }

    /// Number of learnable elements (convolution weights, BatchNorm weights and biases).
    pub(crate) fn num_params(&self) -> i64 {
        self.conv1.numel()
            + self.bn1.numel()
            + self.layers.iter().flatten().map(Block::numel).sum::<i64>()
    }
}
