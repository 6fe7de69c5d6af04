//! Frozen building blocks shared by the teacher backbones: convolution without bias and
//! BatchNorm that always uses its running statistics, run as one convolution with the BatchNorm
//! folded into its weight and bias ([`FrozenConv2d::forward_bn`]).
//!
//! Every tensor is registered in the [`tch::nn::VarStore`] with `trainable = false`
//! ([`tch::nn::Path::add`]), so the teacher never shows up in
//! [`tch::nn::VarStore::trainable_variables`] and an optimizer built from that list leaves it
//! untouched (the Omni-AD teacher is frozen, paper Sec. 3.1).
use tch::{nn, TchError, Tensor};

use crate::precision::add_conv_macs;

/// A bias-free 2-D convolution whose weight `[C_out, C_in / groups, k, k]` is stored under
/// `<path>.weight`, initialised Kaiming-normal (fan-in, ReLU gain) until weights are loaded.
#[derive(Debug)]
pub(crate) struct FrozenConv2d {
    pub(crate) weight: Tensor,
    pub(crate) stride: i64,
    pub(crate) padding: i64,
    pub(crate) groups: i64,
    pub(crate) kernel: i64,
}

impl FrozenConv2d {
    /// Creates `<p>.weight` with shape `[out_c, in_c / groups, kernel, kernel]`.
    pub(crate) fn new(
        p: &nn::Path,
        in_c: i64,
        out_c: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        groups: i64,
    ) -> Self {
        let fan_in = (in_c / groups) * kernel * kernel;
        let std = (2.0 / fan_in as f64).sqrt();
        let init = Tensor::randn(
            [out_c, in_c / groups, kernel, kernel],
            (p.kind(), p.device()),
        ) * std;
        let weight = p.add("weight", init, false);
        FrozenConv2d {
            weight,
            stride,
            padding,
            groups,
            kernel,
        }
    }

    /// `[B, C_in, H, W] -> [B, C_out, H', W']` with symmetric zero padding `self.padding`.
    #[cfg(test)]
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.conv(x, &self.weight, None, false)
    }

    /// This convolution followed by the frozen BatchNorm `bn`, computed as ONE convolution with
    /// the BatchNorm folded in: weight `w * scale[c_out]`, bias `shift` (see
    /// [`FrozenBatchNorm2d::affine`]). Same result as `bn(conv(x))` up to float32 rounding
    /// (measured <= 2e-6 relative on the teacher fixtures), one pass over the output instead of
    /// two. `same`: TensorFlow `'SAME'` padding as in [`FrozenConv2d::forward_same`].
    pub(crate) fn forward_bn(
        &self,
        x: &Tensor,
        bn: &FrozenBatchNorm2d,
        same: bool,
    ) -> Result<Tensor, TchError> {
        let (scale, shift) = bn.affine()?;
        let weight = self.weight.f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?;
        self.conv(x, &weight, Some(&shift), same)
    }

    /// Convolution with TensorFlow `'SAME'` padding (as in the EfficientNet-Lite reference
    /// implementation): along each axis the total padding is
    /// `max((ceil(i / s) - 1) * s + k - i, 0)`, the smaller half on top/left. Symmetric cases use
    /// the convolution's own padding; asymmetric ones an explicit zero pad first.
    #[cfg(test)]
    pub(crate) fn forward_same(&self, x: &Tensor) -> Result<Tensor, TchError> {
        self.conv(x, &self.weight, None, true)
    }

    /// `conv2d(x, weight, bias)` with this layer's stride, groups and padding (symmetric
    /// `self.padding`, or TensorFlow `'SAME'` when `same`).
    fn conv(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        same: bool,
    ) -> Result<Tensor, TchError> {
        let conv = |x: &Tensor, pad: i64| {
            x.f_conv2d(
                weight,
                bias,
                [self.stride, self.stride],
                [pad, pad],
                [1, 1],
                self.groups,
            )
        };
        let y = if !same {
            conv(x, self.padding)?
        } else {
            let size = x.size();
            let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
            let (top, bottom) = same_padding(h, self.kernel, self.stride);
            let (left, right) = same_padding(w, self.kernel, self.stride);
            if top == bottom && left == right && top == left {
                conv(x, top)?
            } else {
                conv(&x.f_constant_pad_nd([left, right, top, bottom])?, 0)?
            }
        };
        add_conv_macs(weight, &y);
        Ok(y)
    }

    /// Number of weight elements.
    pub(crate) fn numel(&self) -> i64 {
        self.weight.size().iter().product()
    }
}

/// TensorFlow `'SAME'` padding for one axis of length `i`: `(before, after)` with
/// `before + after = max((ceil(i / s) - 1) * s + k - i, 0)` and `before = total / 2`.
pub(crate) fn same_padding(i: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (i + s - 1) / s;
    let total = ((out - 1) * s + k - i).max(0);
    (total / 2, total - total / 2)
}

/// BatchNorm over `[B, C, H, W]` that always normalises with its running statistics
/// (`eval()` mode), with affine `weight`/`bias` and buffers `running_mean`/`running_var`, all `[C]`,
/// stored under the original PyTorch names.
#[derive(Debug)]
pub(crate) struct FrozenBatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
}

impl FrozenBatchNorm2d {
    /// Creates the four `[c]` tensors (identity transform until weights are loaded).
    pub(crate) fn new(p: &nn::Path, c: i64, eps: f64) -> Self {
        let opts = (p.kind(), p.device());
        FrozenBatchNorm2d {
            weight: p.add("weight", Tensor::ones([c], opts), false),
            bias: p.add("bias", Tensor::zeros([c], opts), false),
            running_mean: p.add("running_mean", Tensor::zeros([c], opts), false),
            running_var: p.add("running_var", Tensor::ones([c], opts), false),
            eps,
        }
    }

    /// `(x - running_mean) / sqrt(running_var + eps) * weight + bias`, per channel.
    #[cfg(test)]
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            0.0,
            self.eps,
            true,
        )
    }

    /// The BatchNorm as a per-channel affine map `y = x * scale + shift`, both `[C]`:
    /// `scale = weight / sqrt(running_var + eps)`, `shift = bias - running_mean * scale`.
    /// Computed from the current values at every call (cheap: `[C]`), so loading new weights
    /// needs no invalidation.
    pub(crate) fn affine(&self) -> Result<(Tensor, Tensor), TchError> {
        let scale = self
            .weight
            .f_div(&self.running_var.f_add_scalar(self.eps)?.f_sqrt()?)?;
        let shift = self.bias.f_sub(&self.running_mean.f_mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Number of learnable elements (weight and bias; the running statistics are buffers).
    pub(crate) fn numel(&self) -> i64 {
        2 * self.weight.size()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::{same_padding, FrozenBatchNorm2d, FrozenConv2d};
    use tch::{nn, Device, Kind, Tensor};

    #[test]
    fn folded_batch_norm_equals_conv_then_batch_norm() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        for (i, (k, s, groups, same)) in [(3, 2, 1, true), (5, 1, 8, true), (1, 1, 1, false)]
            .into_iter()
            .enumerate()
        {
            let conv = FrozenConv2d::new(&p.sub(format!("c{i}")), 8, 8, k, s, k / 2, groups);
            let mut bn = FrozenBatchNorm2d::new(&p.sub(format!("b{i}")), 8, 1e-3);
            tch::no_grad(|| {
                bn.weight
                    .copy_(&(Tensor::rand([8], (Kind::Float, Device::Cpu)) + 0.5));
                bn.bias
                    .copy_(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
                bn.running_mean
                    .copy_(&Tensor::randn([8], (Kind::Float, Device::Cpu)));
                bn.running_var
                    .copy_(&(Tensor::rand([8], (Kind::Float, Device::Cpu)) + 0.1));
            });
            let x = Tensor::randn([2, 8, 17, 16], (Kind::Float, Device::Cpu));
            let plain = if same {
                conv.forward_same(&x).unwrap()
            } else {
                conv.forward(&x).unwrap()
            };
            let reference = bn.forward(&plain).unwrap();
            let folded = conv.forward_bn(&x, &bn, same).unwrap();
            assert_eq!(folded.size(), reference.size());
            let err = (&folded - &reference).abs().max().double_value(&[])
                / reference.abs().max().double_value(&[]);
            assert!(err < 1e-5, "case {i}: relative error {err:.2e}");
            assert!(reference.abs().max().double_value(&[]) > 0.1);
        }
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        // k3 s2 on an even size: 1 pixel, all at the bottom/right.
        assert_eq!(same_padding(256, 3, 2), (0, 1));
        // k5 s2 on an even size: 3 pixels, 1 before and 2 after.
        assert_eq!(same_padding(64, 5, 2), (1, 2));
        // k3 s2 on an odd size: symmetric.
        assert_eq!(same_padding(255, 3, 2), (1, 1));
        // Stride 1 keeps the size: k - 1 pixels.
        assert_eq!(same_padding(17, 5, 1), (2, 2));
        assert_eq!(same_padding(17, 3, 1), (1, 1));
    }
}
