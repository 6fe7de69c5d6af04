//! Frozen building blocks shared by the teacher backbones: convolution without bias and
//! BatchNorm that always uses its running statistics.
//!
//! Every tensor is registered in the [`tch::nn::VarStore`] with `trainable = false`
//! ([`tch::nn::Path::add`]), so the teacher never shows up in
//! [`tch::nn::VarStore::trainable_variables`] and an optimizer built from that list leaves it
//! untouched (the Omni-AD teacher is frozen, paper Sec. 3.1).
use tch::{nn, TchError, Tensor};

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
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_conv2d::<Tensor>(
            &self.weight,
            None,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }

    /// Convolution with TensorFlow `'SAME'` padding (as in the EfficientNet-Lite reference
    /// implementation): along each axis the total padding is
    /// `max((ceil(i / s) - 1) * s + k - i, 0)`, the smaller half on top/left. Symmetric cases use
    /// the convolution's own padding; asymmetric ones an explicit zero pad first.
    pub(crate) fn forward_same(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let size = x.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        if top == bottom && left == right && top == left {
            return x.f_conv2d::<Tensor>(
                &self.weight,
                None,
                [self.stride, self.stride],
                [top, top],
                [1, 1],
                self.groups,
            );
        }
        let padded = x.f_constant_pad_nd([left, right, top, bottom])?;
        padded.f_conv2d::<Tensor>(
            &self.weight,
            None,
            [self.stride, self.stride],
            [0, 0],
            [1, 1],
            self.groups,
        )
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

    /// Number of learnable elements (weight and bias; the running statistics are buffers).
    pub(crate) fn numel(&self) -> i64 {
        2 * self.weight.size()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::same_padding;

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
