//! Omni-block decoder (reference `model/omniad.py`: `ToProxy2`, `Attention`, `Mlp`, `DWConv`,
//! `OmniBlock`, `OmniBlockWrapper`, `PatchExpand2D`, `DecoderStage`, `Decoder`).
//!
//! Tensors inside the decoder are channels-last `[B, H, W, C]` like the reference.
//! Deviation from the reference code: its `Attention` builds an `Mlp` inside `forward`, so that
//! MLP is random on every call and never trained. Here each block owns two learned MLPs,
//! `toProxy.ffn1` (after the learnable queries attend over the image tokens) and `toProxy.ffn2`
//! (after the image tokens attend over the learnable key/value tokens), as the paper intends.
use tch::nn;
use tch::{Kind, Tensor};

use crate::config::{Branches, DecoderConfig, GlobalAttention, OmniBlockConfig};
use crate::init::{conv2d, linear};
use crate::precision::{self, full, Conv2d};

/// Spatial size (H*W) from which [`instance_norm`] uses libtorch's group-norm kernel.
const GROUP_NORM_MIN_PIXELS: i64 = 32 * 32;

/// `InstanceNorm2d` without affine parameters or running stats (PyTorch default), on `[B, C, H, W]`.
///
/// Decoder tensors are channels-last in memory (`[B, H, W, C]` permuted). libtorch's instance norm
/// copies such input to NCHW, while its group norm with one group per channel (the same
/// normalisation: per sample and channel, biased variance, eps 1e-5) has a channels-last kernel.
/// Measured on 2 CPU cores, batch 16, forward + backward: 1.6x faster at 64x64x64, 1.1x at
/// 32x32x128, but 0.8x at 16x16x256, hence the size switch.
///
/// Below the switch the instance norm runs on `[B, C, H*W]`, not `[B, C, H, W]` (the same
/// numbers): libtorch's instance norm is a batch norm of `input.contiguous().view(1, B*C, ...)`,
/// and at B = 1 the backward of that view hands the CPU batch-norm backward a channels-last
/// gradient (the decoder permutes its output to `[B, H, W, C]`) whose size-1 batch axis has
/// stride C. `suggest_memory_format()` then calls it NCHW like the input, and the kernel's fast
/// path reads its memory as NCHW: a wrong gradient (issue 12; the reference hits the same
/// defect, see `bench/batch1_identity.py`). A 3-D gradient is never taken for NCHW or
/// channels-last, so libtorch reads it through its strides; at B >= 2 the view needs a copy to
/// NCHW anyway.
///
/// Under bfloat16 on the CPU ([`precision::norm_keeps_low`]) the input stays bfloat16: libtorch's
/// instance-norm kernel computes the statistics in float32 and rounds only its output, measured
/// 2-4x faster than casting to float32 first (the group-norm kernel is slow in bfloat16), so
/// it takes the `[B, C, H*W]` instance norm at every size.
fn instance_norm(x: &Tensor) -> Tensor {
    let keep_low = precision::norm_keeps_low(x);
    let x = &if keep_low { x.shallow_clone() } else { full(x) };
    let s = x.size();
    if !keep_low && s.len() == 4 && s[2] * s[3] >= GROUP_NORM_MIN_PIXELS {
        x.group_norm::<Tensor>(s[1], None, None, 1e-5, false)
    } else if s.len() == 4 {
        x.reshape([s[0], s[1], s[2] * s[3]])
            .instance_norm::<Tensor>(None, None, None, None, true, 0.1, 1e-5, false)
            .reshape(s.as_slice())
    } else {
        x.instance_norm::<Tensor>(None, None, None, None, true, 0.1, 1e-5, false)
    }
}

/// Two-layer MLP `fc2(SiLU(fc1(x)))` with hidden width = width (reference `Mlp(h*c)`).
#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Mlp {
    fn new(p: &nn::Path, dim: i64) -> Self {
        Self {
            fc1: linear(p / "fc1", dim, dim, true),
            fc2: linear(p / "fc2", dim, dim, true),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        precision::linear(&precision::linear(x, &self.fc1).silu(), &self.fc2)
    }
}

/// `[B, N, C]` -> `[B, heads, N, C/heads]`.
fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, n, c) = x.size3().expect("split_heads expects [B, N, C]");
    x.reshape([b, n, heads, c / heads]).permute([0, 2, 1, 3])
}

/// `[B, heads, N, d]` -> `[B, N, heads*d]`.
fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, n, d) = x.size4().expect("merge_heads expects [B, h, N, d]");
    x.permute([0, 2, 1, 3]).reshape([b, n, h * d])
}

/// Where the learned post-softmax bias of [`attend`] broadcasts.
enum PostSoftmaxBias<'a> {
    /// No bias (self-attention ablation).
    None,
    /// `pe1: [1, h, 1, Nk]`, one bias per key, shared by all queries.
    PerKey(&'a Tensor),
    /// `pe2: [1, h, Nq, 1]`, one bias per query, shared by all keys.
    PerQuery(&'a Tensor),
}

/// `(softmax(q k^T / sqrt(d)) + bias) @ v` (reference `Attention.forward`: the learned bias is
/// added AFTER the softmax). `q: [B|1, h, Nq, d]`, `k, v: [B|1, h, Nk, d]` (a batch of 1
/// broadcasts). Returns `[B, h, Nq, d]`.
///
/// The bias term is moved out of the softmax product exactly: `(P + b) v = P v + b v`, where
/// `b v` is `pe1 @ v` for a per-key bias and `pe2 * sum_k v` for a per-query bias. `P v` is
/// libtorch's fused `scaled_dot_product_attention` (flash attention on CPU), which never builds
/// the `[B, h, Nq, Nk]` score map; with 64 learnable tokens that map is the largest tensor of the
/// model (`[16, 8, 4096, 64]` at the last stage). Measured against the unfused form on 2 CPU
/// cores, batch 16, forward + backward: 4-5x faster at 4096 and 1024 tokens, equal at 256,
/// outputs and gradients within 1.2e-6 relative.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, bias: PostSoftmaxBias) -> Tensor {
    // The attention itself runs in float32 under every precision: with 8 heads its head width
    // is 3..64, where libtorch's fused CPU kernel is bound by its softmax bookkeeping, not by
    // the products; measured in bfloat16 no faster forward (8.1 vs 9.0 ms at 4096 x 64 tokens)
    // and 2.3x slower forward + backward (stage 3 global branch, EfficientNet widths).
    let (q, k, v) = (&full(q), &full(k), &full(v));
    let b = q.size()[0].max(k.size()[0]);
    let expand = |t: &Tensor| {
        let s = t.size();
        if s[0] == b {
            t.shallow_clone()
        } else {
            // Materialised (the expanded side is always the 64 learnable tokens, so this is
            // cheap): no stride-0 inputs reach the fused kernels of other backends.
            t.expand([b, s[1], s[2], s[3]], false).contiguous()
        }
    };
    let out = Tensor::scaled_dot_product_attention::<Tensor>(
        &expand(q),
        &expand(k),
        &expand(v),
        None,
        0.0,
        false,
        None,
        false,
    );
    // q k^T and P v: 2 x B x h x Nq x Nk x d MACs.
    let (sq, sk) = (q.size(), k.size());
    precision::add_macs(2 * b * sq[1] * sq[2] * sk[2] * sq[3]);
    match bias {
        PostSoftmaxBias::None => out,
        PostSoftmaxBias::PerKey(pe) => {
            // [1, h, 1, Nk] @ [B, h, Nk, d]
            precision::add_macs(v.numel() as i64);
            out + pe.matmul(v)
        }
        PostSoftmaxBias::PerQuery(pe) => out + pe * v.sum_dim_intlist(-2, true, Kind::Float),
    }
}

/// Global branch (reference `ToProxy2`, state-dict prefix `toProxy`).
#[derive(Debug)]
struct ToProxy {
    heads: i64,
    attention: GlobalAttention,
    num_tokens: i64,
    learnable_q: Option<Tensor>,
    learnable_kv: Option<Tensor>,
    q: nn::Linear,
    kv_x: nn::Linear,
    kv_y: Option<nn::Linear>,
    q_2: Option<nn::Linear>,
    pe1: Option<Tensor>,
    pe2: Option<Tensor>,
    ffn1: Mlp,
    ffn2: Option<Mlp>,
}

impl ToProxy {
    fn new(p: &nn::Path, cfg: &OmniBlockConfig) -> Self {
        let dim = cfg.dim;
        let heads = cfg.heads;
        let n = cfg.num_tokens;
        let tokens = cfg.attention == GlobalAttention::LearnableTokens;
        let z = nn::Init::Const(0.0);
        Self {
            heads,
            attention: cfg.attention,
            num_tokens: n,
            learnable_q: tokens.then(|| p.var("learnable_q", &[1, n, dim], z)),
            learnable_kv: tokens.then(|| p.var("learnable_kv", &[1, n, dim], z)),
            q: linear(p / "q", dim, dim, true),
            kv_x: linear(p / "kv_x", dim, 2 * dim, true),
            kv_y: tokens.then(|| linear(p / "kv_y", dim, 2 * dim, true)),
            q_2: tokens.then(|| linear(p / "q_2", dim, dim, true)),
            pe1: tokens.then(|| p.var("pe1", &[1, heads, 1, n], z)),
            pe2: tokens.then(|| p.var("pe2", &[1, heads, n, 1], z)),
            ffn1: Mlp::new(&(p / "ffn1"), dim),
            ffn2: tokens.then(|| Mlp::new(&(p / "ffn2"), dim)),
        }
    }

    /// `x: [B, H, W, C]` -> `[B, H, W, C]` (residuals included, as in the reference).
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, h, w, c) = x.size4().expect("ToProxy expects [B, H, W, C]");
        let heads = self.heads;
        match self.attention {
            GlobalAttention::SelfAttention => {
                let tokens = x.reshape([b, h * w, c]);
                let q = split_heads(&precision::linear(&tokens, &self.q), heads);
                let kv = precision::linear(&tokens, &self.kv_x).chunk(2, -1);
                let k = split_heads(&kv[0], heads);
                let v = split_heads(&kv[1], heads);
                let out =
                    self.ffn1
                        .forward(&merge_heads(&attend(&q, &k, &v, PostSoftmaxBias::None)));
                out.reshape([b, h, w, c]) + x
            }
            GlobalAttention::LearnableTokens => {
                let (Some(lq), Some(lkv), Some(kv_y), Some(q_2), Some(pe1), Some(pe2), Some(ffn2)) = (
                    &self.learnable_q,
                    &self.learnable_kv,
                    &self.kv_y,
                    &self.q_2,
                    &self.pe1,
                    &self.pe2,
                    &self.ffn2,
                ) else {
                    unreachable!("learnable-token parameters are built with this attention kind")
                };
                let n = self.num_tokens;
                let side = (n as f64).sqrt().round() as i64;
                // 1) learnable queries attend over the image tokens.
                let q = split_heads(&precision::linear(lq, &self.q), heads);
                let kv = precision::linear(&x.reshape([b, h * w, c]), &self.kv_x).chunk(2, -1);
                let k = split_heads(&kv[0], heads);
                let v = split_heads(&kv[1], heads);
                let out = self.ffn1.forward(&merge_heads(&attend(
                    &q,
                    &k,
                    &v,
                    PostSoftmaxBias::PerQuery(pe2),
                )));
                // [B, n, C] -> [B, C, side, side] -> nearest to (H, W) -> [B, H, W, C]
                let out = out
                    .reshape([b, side, side, c])
                    .permute([0, 3, 1, 2])
                    .upsample_nearest2d([h, w], None, None)
                    .permute([0, 2, 3, 1]);
                let mskip = out + x;
                // 2) image tokens attend over learnable key/value tokens.
                let q = split_heads(
                    &precision::linear(&mskip.reshape([b, h * w, c]), q_2),
                    heads,
                );
                let kv = precision::linear(lkv, kv_y).chunk(2, -1);
                let k = split_heads(&kv[0], heads);
                let v = split_heads(&kv[1], heads);
                let out = ffn2.forward(&merge_heads(&attend(
                    &q,
                    &k,
                    &v,
                    PostSoftmaxBias::PerKey(pe1),
                )));
                out.reshape([b, h, w, c]) + mskip + x
            }
        }
    }
}

/// Depthwise conv + InstanceNorm + SiLU, then pointwise conv + InstanceNorm + SiLU
/// (reference `DWConv`). `[B, C, H, W]` -> `[B, C, H, W]`.
#[derive(Debug)]
struct DwConv {
    dconv: Conv2d,
    pconv: Conv2d,
}

impl DwConv {
    fn new(p: &nn::Path, dim: i64, k: i64) -> Self {
        Self {
            dconv: conv2d(p / "dconv" / 0, dim, dim, k, dim),
            pconv: conv2d(p / "pconv" / 0, dim, dim, 1, 1),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = instance_norm(&self.dconv.forward(x)).silu();
        instance_norm(&self.pconv.forward(&y)).silu()
    }
}

/// Local branch: `conv33`, `conv55` and the fusing 1x1 conv `mlp.0`.
#[derive(Debug)]
struct LocalBranch {
    conv33: DwConv,
    conv55: DwConv,
    mlp: Conv2d,
}

/// One Omni-block (reference `OmniBlock`): `x + l2(SiLU(IN(l(global(x) + local(x)))))`.
#[derive(Debug)]
pub struct OmniBlock {
    global: Option<ToProxy>,
    local: Option<LocalBranch>,
    l: nn::Linear,
    l2: nn::Linear,
}

impl OmniBlock {
    /// Builds the block under `p` (e.g. `net_s.layers_up.0.blocks.0.blocks.0`).
    pub fn new(p: &nn::Path, cfg: &OmniBlockConfig) -> Self {
        let dim = cfg.dim;
        let global =
            (cfg.branches != Branches::LocalOnly).then(|| ToProxy::new(&(p / "toProxy"), cfg));
        let local = (cfg.branches != Branches::GlobalOnly).then(|| LocalBranch {
            conv33: DwConv::new(&(p / "conv33"), dim, 3),
            conv55: DwConv::new(&(p / "conv55"), dim, 5),
            mlp: conv2d(p / "mlp" / 0, 2 * dim, dim, 1, 1),
        });
        Self {
            global,
            local,
            l: linear(p / "l", dim, dim, true),
            l2: linear(p / "l2", dim, dim, true),
        }
    }

    /// Whether the block has a global branch (not `Branches::LocalOnly`).
    pub fn has_global_branch(&self) -> bool {
        self.global.is_some()
    }

    /// Whether the block has a local branch (not `Branches::GlobalOnly`).
    pub fn has_local_branch(&self) -> bool {
        self.local.is_some()
    }

    /// Global branch alone (reference `ToProxy2`, residuals included): `[B, H, W, C]` ->
    /// `[B, H, W, C]`; `None` when the block was built without it (`Branches::LocalOnly`).
    pub fn global_branch(&self, x: &Tensor) -> Option<Tensor> {
        self.global.as_ref().map(|g| g.forward(x))
    }

    /// Local branch alone (`conv33`, `conv55`, `mlp`): `[B, H, W, C]` -> `[B, H, W, C]`; `None`
    /// when the block was built without it (`Branches::GlobalOnly`).
    pub fn local_branch(&self, x: &Tensor) -> Option<Tensor> {
        self.local.as_ref().map(|lb| {
            let xc = x.permute([0, 3, 1, 2]);
            let y = Tensor::cat(&[lb.conv33.forward(&xc), lb.conv55.forward(&xc)], 1);
            instance_norm(&lb.mlp.forward(&y))
                .silu()
                .permute([0, 2, 3, 1])
        })
    }

    /// Fusion after the branches: `x + l2(SiLU(IN(l(fused))))`, all `[B, H, W, C]`, where
    /// `fused` is the sum of the branch outputs.
    pub fn fuse(&self, x: &Tensor, fused: &Tensor) -> Tensor {
        let y = instance_norm(&precision::linear(fused, &self.l).permute([0, 3, 1, 2]))
            .silu()
            .permute([0, 2, 3, 1]);
        precision::linear(&y, &self.l2) + x
    }

    /// `x: [B, H, W, C]` -> `[B, H, W, C]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let fused = match (self.global_branch(x), self.local_branch(x)) {
            (Some(g), Some(l)) => g + l,
            (Some(g), None) => g,
            (None, Some(l)) => l,
            (None, None) => unreachable!("at least one branch is built"),
        };
        self.fuse(x, &fused)
    }
}

/// Upsampling between decoder stages (reference `PatchExpand2D`): `Linear(C_in, 4*C_out, no
/// bias)`, 2x2 pixel shuffle, `LayerNorm(C_out)`. `[B, H, W, C_in]` -> `[B, 2H, 2W, C_out]`.
/// With ResNet34 `C_in = 2*C_out`, the reference's `Linear(2d, 4d)`.
#[derive(Debug)]
pub struct PatchExpand {
    expand: nn::Linear,
    norm: nn::LayerNorm,
    c_out: i64,
}

impl PatchExpand {
    /// Builds the layer under `p` (`...upsample`).
    pub fn new(p: &nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            expand: linear(p / "expand", c_in, 4 * c_out, false),
            norm: nn::layer_norm(p / "norm", vec![c_out], Default::default()),
            c_out,
        }
    }

    /// See the type docs.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, h, w, _) = x.size4().expect("PatchExpand expects [B, H, W, C]");
        let c = self.c_out;
        full(
            &precision::linear(x, &self.expand)
                .reshape([b, h, w, 2, 2, c])
                .permute([0, 1, 3, 2, 4, 5])
                .reshape([b, 2 * h, 2 * w, c]),
        )
        .apply(&self.norm)
    }
}

/// One decoder stage: optional [`PatchExpand`] then `depth` Omni-blocks.
#[derive(Debug)]
struct Stage {
    upsample: Option<PatchExpand>,
    blocks: Vec<OmniBlock>,
}

/// The student decoder (reference `Decoder`, state-dict prefix `net_s`).
///
/// Input: neck output `[B, C0, h, w]` (`C0` = 512, `h = H/32`). Output: three reconstructions in
/// teacher order, `[B, c1, H/4, W/4]`, `[B, c2, H/8, W/8]`, `[B, c3, H/16, W/16]`, taken after
/// stages 3, 2, 1 (stage 0 works at the neck's resolution and is not output).
#[derive(Debug)]
pub struct Decoder {
    stages: Vec<Stage>,
}

impl Decoder {
    /// Builds the decoder under `p` with widths `cfg.dims` and depths `cfg.depths`.
    pub fn new(p: &nn::Path, cfg: &DecoderConfig) -> Self {
        let dims = cfg.dims;
        let layers = p / "layers_up";
        let stages = (0..4)
            .map(|i| {
                let sp = &layers / i;
                let upsample =
                    (i > 0).then(|| PatchExpand::new(&(&sp / "upsample"), dims[i - 1], dims[i]));
                let blocks = (0..cfg.depths[i])
                    .map(|j| OmniBlock::new(&(&sp / "blocks" / j / "blocks" / 0), &cfg.block(i)))
                    .collect();
                Stage { upsample, blocks }
            })
            .collect();
        Self { stages }
    }

    /// See the type docs. `x: [B, C0, h, w]` (channels-first, as the neck returns it).
    pub fn forward(&self, x: &Tensor) -> Vec<Tensor> {
        let mut x = x.permute([0, 2, 3, 1]);
        let mut outs = Vec::with_capacity(3);
        for (i, stage) in self.stages.iter().enumerate() {
            if let Some(up) = &stage.upsample {
                x = up.forward(&x);
            }
            for block in &stage.blocks {
                x = block.forward(&x);
            }
            if i > 0 {
                outs.push(full(&x).permute([0, 3, 1, 2]));
            }
        }
        outs.reverse();
        outs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Instance norm written out (per sample and channel over H, W; biased variance; eps 1e-5).
    fn instance_norm_formula(x: &Tensor) -> Tensor {
        let mean = x.mean_dim([2, 3].as_slice(), true, Kind::Float);
        let var = x.var_dim([2, 3].as_slice(), false, true);
        (x - mean) / (var + 1e-5).sqrt()
    }

    /// Value and input gradient of [`instance_norm`] equal the formula's, on channels-last
    /// inputs as the decoder makes them, at every batch size and on both sides of the
    /// group-norm switch; the incoming gradient is NCHW-contiguous or, as in the decoder (the
    /// output is permuted to `[B, H, W, C]` before the next linear layer), channels-last, which
    /// at batch 1 used to reach libtorch's CPU batch-norm backward as a tensor it misreads
    /// (issue 12).
    #[test]
    fn instance_norm_matches_formula_with_gradients() {
        tch::manual_seed(0);
        for (b, side, c) in [
            (1, 32, 16),
            (2, 32, 16),
            (1, 8, 16),
            (3, 32, 8),
            (1, 16, 32),
        ] {
            let base = Tensor::randn([b, side, side, c], (Kind::Double, Device::Cpu));
            let up = Tensor::randn([b, c, side, side], (Kind::Double, Device::Cpu));
            for nhwc_grad in [false, true] {
                let grads = |f: &dyn Fn(&Tensor) -> Tensor| {
                    let x = base.to_kind(Kind::Float).detach().set_requires_grad(true);
                    // [B, H, W, C] -> [B, C, H, W] view, channels-last in memory.
                    let y = f(&x.permute([0, 3, 1, 2]));
                    let up = up.to_kind(Kind::Float);
                    let loss = if nhwc_grad {
                        // The gradient of y is `up` channels-last, as in the decoder.
                        let up_nhwc = up.permute([0, 2, 3, 1]).contiguous();
                        (y.permute([0, 2, 3, 1]) * up_nhwc).sum(Kind::Float)
                    } else {
                        (&y * up).sum(Kind::Float)
                    };
                    loss.backward();
                    (y.detach(), x.grad())
                };
                let (y, g) = grads(&|x| instance_norm(x).silu());
                let (y_ref, g_ref) = grads(&|x| instance_norm_formula(x).silu());
                let dy = (&y - &y_ref).abs().max().double_value(&[]);
                let dg = (&g - &g_ref).abs().max().double_value(&[])
                    / g_ref.abs().max().double_value(&[]);
                let what = format!("batch {b}, {side}x{side}x{c}, NHWC gradient {nhwc_grad}");
                assert!(dy < 1e-4, "{what}: value differs by {dy}");
                assert!(dg < 1e-4, "{what}: gradient differs by {dg} (relative)");
            }
        }
    }
}
