//! The Omni-AD inference graph written as ONNX nodes, layer by layer from the model definition
//! in `omniad-model` (teacher, neck, decoder, anomaly map, image score, recognition
//! descriptors). Every formula names the Rust function it reproduces; that code is the ground
//! truth (`OmniAd::predict`).
//!
//! Tensors inside the decoder are channels-last `[B, h, w, C]` like `omniad_model::decoder`;
//! the batch axis is the only dynamic one (reshapes use `-1` for it), every other size follows
//! from the export's image size.
use std::collections::BTreeMap;

use omniad_model::anomaly_map::{gaussian_kernel, SIGMA, TRUNCATE};
use omniad_model::config::{Branches, GlobalAttention, OmniAdConfig};
use omniad_model::model::{DECODER_PREFIX, NECK_PREFIX, TEACHER_PREFIX};
use omniad_model::TeacherArch;
use tch::{Kind, Tensor};

use crate::graph::{Attr, Graph};
use crate::ExportError;

type Result<T> = std::result::Result<T, ExportError>;

/// EfficientNet-Lite0 stages kept by the teacher: `(kernel, first stride, expand ratio, out
/// channels, repeats)`, as `omniad_model::teacher::efficientnet` (checked against the weight
/// shapes while emitting).
const EFFNET_STAGES: [(i64, i64, i64, i64, usize); 5] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
];
/// EfficientNet-Lite0 blocks whose outputs are the teacher features.
const EFFNET_FEATURE_BLOCKS: [usize; 3] = [2, 4, 10];
/// BatchNorm epsilon of the EfficientNet-Lite weights.
const EFFNET_BN_EPS: f64 = 1e-3;
/// BatchNorm epsilon of the ResNets and of the neck (PyTorch default).
const TORCH_BN_EPS: f64 = 1e-5;

/// Names of the graph values produced by [`emit`].
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `[B, H, W]` blurred anomaly map.
    pub anomaly_map: String,
    /// `[B]` image scores.
    pub image_score: String,
    /// `[B, c1 + c2 + c3]` recognition descriptors.
    pub descriptors: String,
}

/// A value in the graph with its static per-image shape `[C, h, w]` (NCHW tensors).
#[derive(Debug, Clone)]
struct Fm {
    name: String,
    c: i64,
    h: i64,
    w: i64,
}

struct Emitter {
    g: Graph,
    weights: BTreeMap<String, Tensor>,
}

fn f32_data(t: &Tensor) -> Result<(Vec<i64>, Vec<f32>)> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let dims = t.size();
    let v = Vec::<f32>::try_from(t.flatten(0, -1))
        .map_err(|e| ExportError::Internal(format!("reading a weight: {e}")))?;
    Ok((dims, v))
}

/// TensorFlow `'SAME'` padding of one axis `(before, after)` (as `teacher::layers::same_padding`).
fn same_padding(i: i64, k: i64, s: i64) -> (i64, i64) {
    let out = (i + s - 1) / s;
    let total = ((out - 1) * s + k - i).max(0);
    (total / 2, total - total / 2)
}

/// Output size of a convolution or pooling along one axis.
fn conv_out(i: i64, k: i64, s: i64, pad_total: i64) -> i64 {
    (i + pad_total - k) / s + 1
}

impl Emitter {
    fn weight(&self, name: &str) -> Result<Tensor> {
        self.weights
            .get(name)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| ExportError::Unsupported(format!("the model has no tensor {name}")))
    }

    fn has(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    fn konst(&mut self, hint: &str, t: &Tensor) -> Result<String> {
        let (dims, v) = f32_data(t)?;
        Ok(self.g.f32s(hint, &dims, &v))
    }

    /// `(scale, shift)` of an eval BatchNorm under `prefix` (as `FrozenBatchNorm2d::affine`).
    fn bn_affine(&self, prefix: &str, eps: f64) -> Result<(Tensor, Tensor)> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = self.weight(&format!("{prefix}.bias"))?;
        let mean = self.weight(&format!("{prefix}.running_mean"))?;
        let var = self.weight(&format!("{prefix}.running_var"))?;
        let scale = w / (var + eps).sqrt();
        let shift = b - mean * &scale;
        Ok((scale, shift))
    }

    /// `Conv` with weight `w: [C_out, C_in/groups, k, k]`, optional bias, ONNX pads
    /// `[top, left, bottom, right]`.
    #[allow(clippy::too_many_arguments)]
    fn conv_raw(
        &mut self,
        x: &Fm,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: i64,
        pads: [i64; 4],
        groups: i64,
    ) -> Result<Fm> {
        let size = w.size();
        let (c_out, c_in_g, k) = (size[0], size[1], size[2]);
        if c_in_g * groups != x.c {
            return Err(ExportError::Unsupported(format!(
                "a convolution expects {} input channels, its input has {}",
                c_in_g * groups,
                x.c
            )));
        }
        let wn = self.konst("W", w)?;
        let mut inputs = vec![x.name.as_str(), wn.as_str()];
        let bn;
        if let Some(b) = b {
            bn = self.konst("B", b)?;
            inputs.push(bn.as_str());
        }
        let name = self.g.node(
            "Conv",
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(pads.to_vec())),
                ("group", Attr::Int(groups)),
                ("dilations", Attr::Ints(vec![1, 1])),
            ],
        );
        Ok(Fm {
            name,
            c: c_out,
            h: conv_out(x.h, k, stride, pads[0] + pads[2]),
            w: conv_out(x.w, k, stride, pads[1] + pads[3]),
        })
    }

    /// Convolution `conv` (bias-free unless `conv_bias`) followed by the eval BatchNorm `bn`,
    /// folded into one `Conv`: weight `w * scale`, bias `(b - mean) * scale + beta`.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        x: &Fm,
        conv: &str,
        bn: &str,
        eps: f64,
        stride: i64,
        padding: Padding,
        groups: i64,
        conv_bias: bool,
    ) -> Result<Fm> {
        let w = self.weight(&format!("{conv}.weight"))?;
        let k = w.size()[2];
        let (scale, shift) = self.bn_affine(bn, eps)?;
        let wf = &w * scale.reshape([-1, 1, 1, 1]);
        let bias = if conv_bias {
            self.weight(&format!("{conv}.bias"))? * &scale + shift
        } else {
            shift
        };
        let pads = match padding {
            Padding::Sym(p) => [p, p, p, p],
            Padding::TfSame => {
                let (t, b) = same_padding(x.h, k, stride);
                let (l, r) = same_padding(x.w, k, stride);
                [t, l, b, r]
            }
        };
        self.conv_raw(x, &wf, Some(&bias), stride, pads, groups)
    }

    fn unary(&mut self, op: &str, x: &Fm) -> Fm {
        Fm {
            name: self.g.node(op, &[&x.name], &[]),
            ..x.clone()
        }
    }

    fn relu6(&mut self, x: &Fm) -> Fm {
        let lo = self.g.scalar("zero", 0.0);
        let hi = self.g.scalar("six", 6.0);
        Fm {
            name: self.g.node("Clip", &[&x.name, &lo, &hi], &[]),
            ..x.clone()
        }
    }

    fn add(&mut self, a: &Fm, b: &Fm) -> Fm {
        Fm {
            name: self.g.node("Add", &[&a.name, &b.name], &[]),
            ..a.clone()
        }
    }

    /// `x * sigmoid(x)` (ONNX has no SiLU operator).
    fn silu(&mut self, x: &str) -> String {
        let s = self.g.node("Sigmoid", &[x], &[]);
        self.g.node("Mul", &[x, &s], &[])
    }

    // ----- teacher -------------------------------------------------------------------------

    fn efficientnet(&mut self, x: &Fm) -> Result<Vec<Fm>> {
        let p = format!("{TEACHER_PREFIX}.");
        let stem = self.conv_bn(
            x,
            &format!("{p}_conv_stem"),
            &format!("{p}_bn0"),
            EFFNET_BN_EPS,
            2,
            Padding::TfSame,
            1,
            false,
        )?;
        let mut y = self.relu6(&stem);
        let mut feats = Vec::new();
        let mut idx = 0usize;
        let mut in_c = y.c;
        for (kernel, stride, expand, out_c, repeats) in EFFNET_STAGES {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                let b = format!("{p}_blocks.{idx}.");
                let input = y.clone();
                let mut h = y.clone();
                if expand != 1 {
                    let e = self.conv_bn(
                        &h,
                        &format!("{b}_expand_conv"),
                        &format!("{b}_bn0"),
                        EFFNET_BN_EPS,
                        1,
                        Padding::TfSame,
                        1,
                        false,
                    )?;
                    h = self.relu6(&e);
                }
                let hidden = h.c;
                let d = self.conv_bn(
                    &h,
                    &format!("{b}_depthwise_conv"),
                    &format!("{b}_bn1"),
                    EFFNET_BN_EPS,
                    s,
                    Padding::TfSame,
                    hidden,
                    false,
                )?;
                if self.weight(&format!("{b}_depthwise_conv.weight"))?.size()[2] != kernel {
                    return Err(ExportError::Unsupported(format!(
                        "EfficientNet-Lite0 block {idx}: unexpected depthwise kernel size"
                    )));
                }
                let d = self.relu6(&d);
                let mut o = self.conv_bn(
                    &d,
                    &format!("{b}_project_conv"),
                    &format!("{b}_bn2"),
                    EFFNET_BN_EPS,
                    1,
                    Padding::TfSame,
                    1,
                    false,
                )?;
                if o.c != out_c {
                    return Err(ExportError::Unsupported(format!(
                        "EfficientNet-Lite0 block {idx}: {} output channels, expected {out_c}",
                        o.c
                    )));
                }
                if s == 1 && in_c == out_c {
                    o = self.add(&o, &input);
                }
                in_c = out_c;
                y = o;
                if EFFNET_FEATURE_BLOCKS.contains(&idx) {
                    feats.push(y.clone());
                }
                idx += 1;
            }
        }
        Ok(feats)
    }

    fn resnet(&mut self, x: &Fm) -> Result<Vec<Fm>> {
        let p = format!("{TEACHER_PREFIX}.");
        let y = self.conv_bn(
            x,
            &format!("{p}conv1"),
            &format!("{p}bn1"),
            TORCH_BN_EPS,
            2,
            Padding::Sym(3),
            1,
            false,
        )?;
        let y = self.unary("Relu", &y);
        let mut y = Fm {
            name: self.g.node(
                "MaxPool",
                &[&y.name],
                &[
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ],
            ),
            c: y.c,
            h: conv_out(y.h, 3, 2, 2),
            w: conv_out(y.w, 3, 2, 2),
        };
        let mut feats = Vec::new();
        for layer in 1..=3 {
            let mut b = 0;
            while self.has(&format!("{p}layer{layer}.{b}.conv1.weight")) {
                let stride = if b == 0 && layer > 1 { 2 } else { 1 };
                let bp = format!("{p}layer{layer}.{b}.");
                y = self.residual_block(&y, &bp, stride)?;
                b += 1;
            }
            if b == 0 {
                return Err(ExportError::Unsupported(format!(
                    "the ResNet teacher has no layer{layer}"
                )));
            }
            feats.push(y.clone());
        }
        Ok(feats)
    }

    /// A torchvision residual block in eval mode (the ResNet teachers' `BasicBlock` /
    /// `Bottleneck`, and the neck's `bn_layer` Bottlenecks): the conv + folded-BN chain under
    /// `bp` (a prefix ending in `.`; a `conv3` makes it a Bottleneck, whose 3x3 conv has the
    /// stride), ReLUs between, plus the input or its `downsample` conv + BN, then ReLU.
    fn residual_block(&mut self, x: &Fm, bp: &str, stride: i64) -> Result<Fm> {
        let cb = |e: &mut Self, x: &Fm, n: &str, s: i64, pad: i64| {
            e.conv_bn(
                x,
                &format!("{bp}conv{n}"),
                &format!("{bp}bn{n}"),
                TORCH_BN_EPS,
                s,
                Padding::Sym(pad),
                1,
                false,
            )
        };
        let out = if self.has(&format!("{bp}conv3.weight")) {
            let a = cb(self, x, "1", 1, 0)?;
            let a = self.unary("Relu", &a);
            let a = cb(self, &a, "2", stride, 1)?;
            let a = self.unary("Relu", &a);
            cb(self, &a, "3", 1, 0)?
        } else {
            let a = cb(self, x, "1", stride, 1)?;
            let a = self.unary("Relu", &a);
            cb(self, &a, "2", 1, 1)?
        };
        let shortcut = if self.has(&format!("{bp}downsample.0.weight")) {
            self.conv_bn(
                x,
                &format!("{bp}downsample.0"),
                &format!("{bp}downsample.1"),
                TORCH_BN_EPS,
                stride,
                Padding::Sym(0),
                1,
                false,
            )?
        } else {
            x.clone()
        };
        let sum = self.add(&out, &shortcut);
        Ok(self.unary("Relu", &sum))
    }

    // ----- neck ----------------------------------------------------------------------------

    /// `omniad_model::neck::Neck::forward_t` in eval mode.
    fn neck(&mut self, f: &[Fm]) -> Result<Fm> {
        let n = NECK_PREFIX;
        let cbr = |e: &mut Self, x: &Fm, conv: &str, bn: &str, s: i64, pad: i64, bias: bool| {
            let y = e.conv_bn(
                x,
                &format!("{n}.{conv}"),
                &format!("{n}.{bn}"),
                TORCH_BN_EPS,
                s,
                Padding::Sym(pad),
                1,
                bias,
            )?;
            Ok::<Fm, ExportError>(e.unary("Relu", &y))
        };
        let fpn0 = cbr(self, &f[0], "conv1", "bn1", 2, 1, false)?;
        let a = cbr(self, &f[1], "conv21", "bn21", 1, 0, true)?;
        let fpn1 = self.add(&a, &fpn0);
        let a = cbr(self, &fpn1, "conv2", "bn2", 2, 1, false)?;
        let b = cbr(self, &f[2], "conv31", "bn31", 1, 0, true)?;
        let s = self.add(&a, &b);
        let mut s = cbr(self, &s, "convf", "bnf", 1, 0, true)?;
        for i in 0..3 {
            let stride = if i == 0 { 2 } else { 1 };
            s = self.residual_block(&s, &format!("{n}.bn_layer.{i}."), stride)?;
        }
        Ok(s)
    }

    // ----- decoder (channels-last [B, h, w, C]) ---------------------------------------------

    /// `x @ W^T (+ b)` for the `nn::Linear` under `prefix` over the last axis.
    fn linear(&mut self, x: &str, prefix: &str, bias: bool) -> Result<String> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let wt = self.konst("Wt", &w.tr().contiguous())?;
        let y = self.g.node("MatMul", &[x, &wt], &[]);
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&format!("{prefix}.bias"))?;
        let bn = self.konst("b", &b)?;
        Ok(self.g.node("Add", &[&y, &bn], &[]))
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.g.i64s("shape", shape);
        self.g.node("Reshape", &[x, &s], &[])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.g
            .node("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }

    /// `InstanceNorm2d` without affine parameters, eps 1e-5, on NCHW `x` with `c` channels
    /// (`decoder::instance_norm`).
    fn instance_norm(&mut self, x: &str, c: i64) -> String {
        let ones = self.g.f32s("ones", &[c], &vec![1.0; c as usize]);
        let zeros = self.g.f32s("zeros", &[c], &vec![0.0; c as usize]);
        self.g.node(
            "InstanceNormalization",
            &[x, &ones, &zeros],
            &[("epsilon", Attr::Float(1e-5))],
        )
    }

    /// `fc2(SiLU(fc1(x)))` (`decoder::Mlp`).
    fn mlp(&mut self, x: &str, prefix: &str) -> Result<String> {
        let y = self.linear(x, &format!("{prefix}.fc1"), true)?;
        let y = self.silu(&y);
        self.linear(&y, &format!("{prefix}.fc2"), true)
    }

    /// `[B, N, C]` -> `[B, heads, N, C/heads]`.
    fn split_heads(&mut self, x: &str, n: i64, c: i64, heads: i64) -> String {
        let r = self.reshape(x, &[-1, n, heads, c / heads]);
        self.transpose(&r, &[0, 2, 1, 3])
    }

    /// `[B, heads, N, d]` -> `[B, N, heads*d]`.
    fn merge_heads(&mut self, x: &str, n: i64, c: i64) -> String {
        let t = self.transpose(x, &[0, 2, 1, 3]);
        self.reshape(&t, &[-1, n, c])
    }

    /// `(softmax(q k^T / sqrt(d)) + bias) @ v` (`decoder::attend`: the bias is added AFTER the
    /// softmax); `kt` is `k^T: [.., d, Nk]`.
    fn attend(&mut self, q: &str, kt: &str, v: &str, d: i64, bias: Option<&str>) -> String {
        let s = self.g.node("MatMul", &[q, kt], &[]);
        let scale = self.g.scalar("scale", 1.0 / (d as f32).sqrt());
        let s = self.g.node("Mul", &[&s, &scale], &[]);
        let mut p = self.g.node("Softmax", &[&s], &[("axis", Attr::Int(-1))]);
        if let Some(b) = bias {
            p = self.g.node("Add", &[&p, b], &[]);
        }
        self.g.node("MatMul", &[&p, v], &[])
    }

    /// Global branch (`decoder::ToProxy::forward`), residuals included.
    fn global_branch(
        &mut self,
        x: &str,
        p: &str,
        cfg: &OmniAdConfig,
        h: i64,
        w: i64,
        c: i64,
    ) -> Result<String> {
        let heads = cfg.heads;
        let d = c / heads;
        let hw = h * w;
        let tokens = self.reshape(x, &[-1, hw, c]);
        match cfg.attention {
            GlobalAttention::SelfAttention => {
                let q = self.linear(&tokens, &format!("{p}.q"), true)?;
                let q = self.split_heads(&q, hw, c, heads);
                let (k, v) = self.kv(&tokens, &format!("{p}.kv_x"), hw, c, heads)?;
                let kt = self.transpose(&k, &[0, 1, 3, 2]);
                let o = self.attend(&q, &kt, &v, d, None);
                let o = self.merge_heads(&o, hw, c);
                let o = self.mlp(&o, &format!("{p}.ffn1"))?;
                let o = self.reshape(&o, &[-1, h, w, c]);
                Ok(self.g.node("Add", &[&o, x], &[]))
            }
            GlobalAttention::LearnableTokens => {
                let n = cfg.num_tokens;
                let side = (n as f64).sqrt().round() as i64;
                // constants: the learnable tokens through their projections, split in heads
                let lin = |e: &Self, t: &Tensor, name: &str| -> Result<Tensor> {
                    let w = e.weight(&format!("{p}.{name}.weight"))?;
                    let b = e.weight(&format!("{p}.{name}.bias"))?;
                    Ok(t.linear(&w, Some(&b)))
                };
                let heads_of = |t: &Tensor| t.reshape([1, n, heads, d]).permute([0, 2, 1, 3]);
                let lq = self.weight(&format!("{p}.learnable_q"))?;
                let lkv = self.weight(&format!("{p}.learnable_kv"))?;
                let q1 = heads_of(&lin(self, &lq, "q")?);
                let kv2 = lin(self, &lkv, "kv_y")?.chunk(2, -1);
                let k2t = heads_of(&kv2[0]).transpose(2, 3);
                let v2 = heads_of(&kv2[1]);
                let q1 = self.konst("learnable_q_heads", &q1)?;
                let k2t = self.konst("learnable_k_heads_t", &k2t)?;
                let v2 = self.konst("learnable_v_heads", &v2)?;
                let pe1 = self.weight(&format!("{p}.pe1"))?;
                let pe2 = self.weight(&format!("{p}.pe2"))?;
                let pe1 = self.konst("pe1", &pe1)?;
                let pe2 = self.konst("pe2", &pe2)?;
                // 1) learnable queries attend over the image tokens (per-query bias pe2)
                let (k, v) = self.kv(&tokens, &format!("{p}.kv_x"), hw, c, heads)?;
                let kt = self.transpose(&k, &[0, 1, 3, 2]);
                let o = self.attend(&q1, &kt, &v, d, Some(&pe2));
                let o = self.merge_heads(&o, n, c);
                let o = self.mlp(&o, &format!("{p}.ffn1"))?;
                let o = self.reshape(&o, &[-1, side, side, c]);
                // nearest upsampling [side, side] -> [h, w] (torch `upsample_nearest2d`)
                let ih = self.g.i64s("nearest_h", &nearest_indices(side, h));
                let iw = self.g.i64s("nearest_w", &nearest_indices(side, w));
                let o = self.g.node("Gather", &[&o, &ih], &[("axis", Attr::Int(1))]);
                let o = self.g.node("Gather", &[&o, &iw], &[("axis", Attr::Int(2))]);
                let mskip = self.g.node("Add", &[&o, x], &[]);
                // 2) image tokens attend over the learnable key/value tokens (per-key bias pe1)
                let mt = self.reshape(&mskip, &[-1, hw, c]);
                let q = self.linear(&mt, &format!("{p}.q_2"), true)?;
                let q = self.split_heads(&q, hw, c, heads);
                let o = self.attend(&q, &k2t, &v2, d, Some(&pe1));
                let o = self.merge_heads(&o, hw, c);
                let o = self.mlp(&o, &format!("{p}.ffn2"))?;
                let o = self.reshape(&o, &[-1, h, w, c]);
                let o = self.g.node("Add", &[&o, &mskip], &[]);
                Ok(self.g.node("Add", &[&o, x], &[]))
            }
        }
    }

    /// `kv = tokens @ kv^T + b`, chunked in `k`, `v` and split in heads: `[B, heads, N, d]`.
    fn kv(
        &mut self,
        tokens: &str,
        prefix: &str,
        n: i64,
        c: i64,
        heads: i64,
    ) -> Result<(String, String)> {
        let w = self.weight(&format!("{prefix}.weight"))?;
        let b = self.weight(&format!("{prefix}.bias"))?;
        let chunks_w = w.chunk(2, 0);
        let chunks_b = b.chunk(2, 0);
        let mut out = Vec::new();
        for (cw, cb) in chunks_w.iter().zip(&chunks_b) {
            let wt = self.konst("Wt", &cw.tr().contiguous())?;
            let bn = self.konst("b", cb)?;
            let y = self.g.node("MatMul", &[tokens, &wt], &[]);
            let y = self.g.node("Add", &[&y, &bn], &[]);
            out.push(self.split_heads(&y, n, c, heads));
        }
        let v = out.pop().unwrap_or_default();
        let k = out.pop().unwrap_or_default();
        Ok((k, v))
    }

    /// `decoder::DwConv::forward` on NCHW `x`.
    fn dwconv(&mut self, x: &Fm, p: &str) -> Result<String> {
        let w = self.weight(&format!("{p}.dconv.0.weight"))?;
        let b = self.weight(&format!("{p}.dconv.0.bias"))?;
        let k = w.size()[2];
        let y = self.conv_raw(x, &w, Some(&b), 1, [k / 2; 4], x.c)?;
        let y = self.instance_norm(&y.name, x.c);
        let y = self.silu(&y);
        let w = self.weight(&format!("{p}.pconv.0.weight"))?;
        let b = self.weight(&format!("{p}.pconv.0.bias"))?;
        let y = self.conv_raw(
            &Fm {
                name: y,
                ..x.clone()
            },
            &w,
            Some(&b),
            1,
            [0; 4],
            1,
        )?;
        let y = self.instance_norm(&y.name, x.c);
        Ok(self.silu(&y))
    }

    /// `decoder::OmniBlock::forward` on channels-last `x`.
    fn omni_block(
        &mut self,
        x: &str,
        p: &str,
        cfg: &OmniAdConfig,
        h: i64,
        w: i64,
        c: i64,
    ) -> Result<String> {
        let global = match cfg.branches {
            Branches::LocalOnly => None,
            _ => Some(self.global_branch(x, &format!("{p}.toProxy"), cfg, h, w, c)?),
        };
        let local = match cfg.branches {
            Branches::GlobalOnly => None,
            _ => {
                let xc = Fm {
                    name: self.transpose(x, &[0, 3, 1, 2]),
                    c,
                    h,
                    w,
                };
                let a = self.dwconv(&xc, &format!("{p}.conv33"))?;
                let b = self.dwconv(&xc, &format!("{p}.conv55"))?;
                let cat = self.g.node("Concat", &[&a, &b], &[("axis", Attr::Int(1))]);
                let mw = self.weight(&format!("{p}.mlp.0.weight"))?;
                let mb = self.weight(&format!("{p}.mlp.0.bias"))?;
                let y = self.conv_raw(
                    &Fm {
                        name: cat,
                        c: 2 * c,
                        h,
                        w,
                    },
                    &mw,
                    Some(&mb),
                    1,
                    [0; 4],
                    1,
                )?;
                let y = self.instance_norm(&y.name, c);
                let y = self.silu(&y);
                Some(self.transpose(&y, &[0, 2, 3, 1]))
            }
        };
        let fused = match (global, local) {
            (Some(g), Some(l)) => self.g.node("Add", &[&g, &l], &[]),
            (Some(g), None) => g,
            (None, Some(l)) => l,
            (None, None) => {
                return Err(ExportError::Unsupported("a block without branches".into()))
            }
        };
        let y = self.linear(&fused, &format!("{p}.l"), true)?;
        let y = self.transpose(&y, &[0, 3, 1, 2]);
        let y = self.instance_norm(&y, c);
        let y = self.silu(&y);
        let y = self.transpose(&y, &[0, 2, 3, 1]);
        let y = self.linear(&y, &format!("{p}.l2"), true)?;
        Ok(self.g.node("Add", &[&y, x], &[]))
    }

    /// `decoder::PatchExpand::forward`: `[B, h, w, C_in]` -> `[B, 2h, 2w, C_out]`.
    fn patch_expand(&mut self, x: &str, p: &str, h: i64, w: i64, c_out: i64) -> Result<String> {
        let y = self.linear(x, &format!("{p}.expand"), false)?;
        let y = self.reshape(&y, &[-1, h, w, 2, 2, c_out]);
        let y = self.transpose(&y, &[0, 1, 3, 2, 4, 5]);
        let y = self.reshape(&y, &[-1, 2 * h, 2 * w, c_out]);
        let s = self.weight(&format!("{p}.norm.weight"))?;
        let b = self.weight(&format!("{p}.norm.bias"))?;
        let s = self.konst("ln_scale", &s)?;
        let b = self.konst("ln_bias", &b)?;
        Ok(self.g.node(
            "LayerNormalization",
            &[&y, &s, &b],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-5))],
        ))
    }

    /// `decoder::Decoder::forward`: the three reconstructions in teacher order (NCHW).
    fn decoder(&mut self, z: &Fm, cfg: &OmniAdConfig) -> Result<Vec<Fm>> {
        let dims = cfg.stage_dims();
        let mut x = self.transpose(&z.name, &[0, 2, 3, 1]);
        let (mut h, mut w, mut c) = (z.h, z.w, z.c);
        let mut outs = Vec::new();
        for (i, depth) in cfg.depths.iter().enumerate() {
            let sp = format!("{DECODER_PREFIX}.layers_up.{i}");
            if i > 0 {
                x = self.patch_expand(&x, &format!("{sp}.upsample"), h, w, dims[i])?;
                h *= 2;
                w *= 2;
                c = dims[i];
            }
            for j in 0..*depth {
                x = self.omni_block(&x, &format!("{sp}.blocks.{j}.blocks.0"), cfg, h, w, c)?;
            }
            if i > 0 {
                outs.push(Fm {
                    name: self.transpose(&x, &[0, 3, 1, 2]),
                    c,
                    h,
                    w,
                });
            }
        }
        outs.reverse();
        Ok(outs)
    }

    // ----- anomaly map, score, descriptors --------------------------------------------------

    /// `t / max(||t||_2 over channels, eps)` on NCHW `t`.
    fn unit_channels(&mut self, t: &str, eps: f32) -> String {
        let n = self.g.node(
            "ReduceL2",
            &[t],
            &[("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))],
        );
        let e = self.g.scalar("eps", eps);
        let n = self.g.node("Max", &[&n, &e], &[]);
        self.g.node("Div", &[t, &n], &[])
    }

    /// `anomaly_map::anomaly_map`: per scale `1 - cos` (`Tensor::cosine_similarity`, eps 1e-8),
    /// bilinear `align_corners = true` upsampling to `(H, W)` as two matrix products, mean over
    /// the scales, scipy-`reflect` Gaussian blur (sigma 4, truncate 4) as two matrix products
    /// (the blur matrices of `anomaly_map::gaussian_blur`), image score = max.
    fn anomaly_map(&mut self, t: &[Fm], s: &[Fm], out_h: i64, out_w: i64) -> (String, String) {
        let mut sum: Option<String> = None;
        for (ft, fs) in t.iter().zip(s) {
            let a = self.unit_channels(&ft.name, 1e-8);
            let b = self.unit_channels(&fs.name, 1e-8);
            let prod = self.g.node("Mul", &[&a, &b], &[]);
            let axes = self.g.i64s("axes", &[1]);
            let cos = self
                .g
                .node("ReduceSum", &[&prod, &axes], &[("keepdims", Attr::Int(0))]);
            let one = self.g.scalar("one", 1.0);
            let d = self.g.node("Sub", &[&one, &cos], &[]); // [B, h, w]
            let uh = self.g.f32s(
                "upsample_h",
                &[out_h, ft.h],
                &align_corners_matrix(ft.h, out_h),
            );
            let uwt = transpose_matrix(&align_corners_matrix(ft.w, out_w), out_w, ft.w);
            let uwt = self.g.f32s("upsample_w_t", &[ft.w, out_w], &uwt);
            let m = self.g.node("MatMul", &[&uh, &d], &[]);
            let m = self.g.node("MatMul", &[&m, &uwt], &[]);
            sum = Some(match sum {
                None => m,
                Some(acc) => self.g.node("Add", &[&acc, &m], &[]),
            });
        }
        let sum = sum.unwrap_or_default();
        let k = self.g.scalar("num_scales", t.len() as f32);
        let raw = self.g.node("Div", &[&sum, &k], &[]);
        let kernel = gaussian_kernel(SIGMA, TRUNCATE);
        let gh = self
            .g
            .f32s("blur_h", &[out_h, out_h], &blur_matrix(&kernel, out_h));
        let gwt = transpose_matrix(&blur_matrix(&kernel, out_w), out_w, out_w);
        let gwt = self.g.f32s("blur_w_t", &[out_w, out_w], &gwt);
        let m = self.g.node("MatMul", &[&gh, &raw], &[]);
        let map = self.g.node("MatMul", &[&m, &gwt], &[]);
        let score = self.g.node(
            "ReduceMax",
            &[&map],
            &[("axes", Attr::Ints(vec![1, 2])), ("keepdims", Attr::Int(0))],
        );
        (map, score)
    }

    /// `recognition::descriptors`: per feature the global average, L2-normalised (eps 1e-12),
    /// concatenated, divided by `sqrt(3)`.
    fn descriptors(&mut self, t: &[Fm]) -> String {
        let parts: Vec<String> = t
            .iter()
            .map(|f| {
                let g = self.g.node("GlobalAveragePool", &[&f.name], &[]);
                let g = self.g.node("Flatten", &[&g], &[("axis", Attr::Int(1))]);
                self.unit_channels(&g, 1e-12)
            })
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let cat = self.g.node("Concat", &refs, &[("axis", Attr::Int(1))]);
        let k = self.g.scalar("sqrt_parts", (parts.len() as f32).sqrt());
        self.g.node("Div", &[&cat, &k], &[])
    }
}

/// How a teacher convolution pads.
#[derive(Debug, Clone, Copy)]
enum Padding {
    /// The same zero padding on every side.
    Sym(i64),
    /// TensorFlow `'SAME'` (EfficientNet-Lite).
    TfSame,
}

/// Source rows of torch's `upsample_nearest2d` from `n_in` to `n_out`:
/// `min(floor(i * (n_in / n_out)), n_in - 1)` with the scale in f32.
pub fn nearest_indices(n_in: i64, n_out: i64) -> Vec<i64> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| ((i as f32 * scale).floor() as i64).min(n_in - 1))
        .collect()
}

/// `[n_out, n_in]` row-major matrix of torch's bilinear interpolation with
/// `align_corners = true` along one axis: source position `i * (n_in - 1) / (n_out - 1)`.
pub fn align_corners_matrix(n_in: i64, n_out: i64) -> Vec<f32> {
    let mut m = vec![0f32; (n_out * n_in) as usize];
    let scale = if n_out > 1 {
        (n_in - 1) as f32 / (n_out - 1) as f32
    } else {
        0.0
    };
    for i in 0..n_out {
        let src = scale * i as f32;
        let i0 = (src.floor() as i64).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let frac = src - i0 as f32;
        m[(i * n_in + i0) as usize] += 1.0 - frac;
        m[(i * n_in + i1) as usize] += frac;
    }
    m
}

/// Transpose of a row-major `[rows, cols]` matrix.
fn transpose_matrix(m: &[f32], rows: i64, cols: i64) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[(c * rows + r) as usize] = m[(r * cols + c) as usize];
        }
    }
    t
}

/// scipy `mode='reflect'` (half-sample symmetric) source index, as `anomaly_map::reflect_index`.
fn reflect_index(i: i64, n: i64) -> i64 {
    let period = 2 * n;
    let m = i.rem_euclid(period);
    if m < n {
        m
    } else {
        period - 1 - m
    }
}

/// `[n, n]` row-major matrix of the 1-D filter `kernel` with scipy `reflect` borders, as
/// `anomaly_map::blur_matrix`.
pub fn blur_matrix(kernel: &[f32], n: i64) -> Vec<f32> {
    let r = (kernel.len() as i64 - 1) / 2;
    let mut m = vec![0f32; (n * n) as usize];
    for i in 0..n {
        for (t, &k) in kernel.iter().enumerate() {
            let j = reflect_index(i + t as i64 - r, n);
            m[(i * n + j) as usize] += k;
        }
    }
    m
}

/// Emits the whole inference graph of a model with configuration `cfg` and tensors `weights`
/// (state-dict names: `net_t.*`, `Neck.*`, `net_s.*`) at input size `(h, w)`, reading the
/// graph input `input: [B, 3, h, w]` (normalised images) into `g`.
///
/// # Errors
/// [`ExportError::Unsupported`] when a tensor the graph needs is missing or mis-shaped.
pub fn emit(
    g: Graph,
    input: &str,
    weights: BTreeMap<String, Tensor>,
    cfg: &OmniAdConfig,
    (h, w): (i64, i64),
) -> Result<(Graph, Outputs)> {
    let mut e = Emitter { g, weights };
    let x = Fm {
        name: input.to_string(),
        c: 3,
        h,
        w,
    };
    let t = match cfg.teacher {
        TeacherArch::EfficientNetLite0 => e.efficientnet(&x)?,
        _ => e.resnet(&x)?,
    };
    let z = e.neck(&t)?;
    let s = e.decoder(&z, cfg)?;
    if s.len() != 3 || t.len() != 3 {
        return Err(ExportError::Internal(
            "expected three feature scales".into(),
        ));
    }
    for (a, b) in t.iter().zip(&s) {
        if (a.c, a.h, a.w) != (b.c, b.h, b.w) {
            return Err(ExportError::Unsupported(format!(
                "teacher feature {}x{}x{} and its reconstruction {}x{}x{} differ",
                a.c, a.h, a.w, b.c, b.h, b.w
            )));
        }
    }
    let (map, score) = e.anomaly_map(&t, &s, h, w);
    let desc = e.descriptors(&t);
    Ok((
        e.g,
        Outputs {
            anomaly_map: map,
            image_score: score,
            descriptors: desc,
        },
    ))
}
