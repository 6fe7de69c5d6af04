//! Parameter initialisation matching the reference (PyTorch defaults, timm `trunc_normal_`,
//! `kaiming_normal_(mode='fan_out')`), so training from scratch starts where the reference does.
use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init};

use crate::precision::Conv2d;

/// PyTorch's default `nn.Conv2d`/`nn.Linear` weight init, `kaiming_uniform_(a=sqrt(5))`:
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn torch_default(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `kaiming_normal_(mode='fan_out', nonlinearity='relu')` (reference `Neck.__init__`).
pub(crate) const KAIMING_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// timm `trunc_normal_(std=.02)` for decoder Linear weights; the truncation at +-2 (absolute) is
/// 100 standard deviations away and never matters.
pub(crate) const TRUNC_NORMAL_002: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A stride-1 "same" conv (padding `k/2`) with bias and PyTorch's default init for weight and
/// bias (the decoder's `dconv`, `pconv` and `mlp` convs).
pub(crate) fn conv2d(p: nn::Path, c_in: i64, c_out: i64, k: i64, groups: i64) -> Conv2d {
    let fan_in = c_in / groups * k * k;
    let conv = nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            padding: k / 2,
            groups,
            ws_init: torch_default(fan_in),
            bs_init: torch_default(fan_in),
            ..Default::default()
        },
    );
    Conv2d {
        conv,
        stride: 1,
        padding: k / 2,
        groups,
    }
}

/// A conv with `kaiming_normal_(fan_out)` weight and PyTorch-default bias (reference neck).
pub(crate) fn conv2d_fan_out(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
    bias: bool,
) -> Conv2d {
    let conv = nn::conv2d(
        p,
        c_in,
        c_out,
        k,
        nn::ConvConfig {
            stride,
            padding,
            bias,
            ws_init: KAIMING_FAN_OUT,
            bs_init: torch_default(c_in * k * k),
            ..Default::default()
        },
    );
    Conv2d {
        conv,
        stride,
        padding,
        groups: 1,
    }
}

/// A decoder Linear: `trunc_normal_(std=.02)` weight, zero bias (reference `Decoder._init_weights`).
pub(crate) fn linear(p: nn::Path, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        c_in,
        c_out,
        nn::LinearConfig {
            ws_init: TRUNC_NORMAL_002,
            bs_init: Some(Init::Const(0.0)),
            bias,
        },
    )
}
