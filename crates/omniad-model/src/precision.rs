//! Numeric precision of the network's matrix products and convolutions: float32, or mixed
//! precision in bfloat16 / float16 the way PyTorch's autocast does it.
//!
//! The precision is a per-thread setting, entered with [`Precision::run`]. Under
//! [`Precision::F32`] (the default) every op runs in float32 exactly as before. Under `Bf16` or
//! `F16`, per op (measured choices, see the README's precision table):
//!
//! - low precision: the decoder's linear layers and the convolutions of its local branch; their
//!   weights are cast at the call (training keeps float32 master weights, so the casts are
//!   differentiable and the gradients arrive in float32);
//! - InstanceNorm (decoder): on the CPU in bfloat16, the kernel computing its statistics in
//!   float32 (measured 2-4x faster than a float32 norm after a cast); on CUDA in float32;
//! - float32: the teacher (its features are the training targets and one side of the anomaly
//!   map; see `Teacher::try_forward`), the whole neck (its train-mode BatchNorm gradients nearly
//!   cancel, see `Neck::forward_t`), the attention (`scaled_dot_product_attention`: no faster in bfloat16 at
//!   these head widths, 2.3x slower backward), LayerNorm, the residual stream (a low-precision
//!   branch added to a float32 residual promotes to float32), the teacher and decoder feature
//!   maps handed out of the network, the loss, the anomaly map and its Gaussian blur, the
//!   class-recognition descriptors, the optimiser state and the master weights.
//!
//! Source: autocast's op lists (PyTorch `torch.amp`, "CPU Ops that can autocast to bfloat16" and
//! the float32 list), applied to the ops of Omni-AD.
use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

/// Precision of the matrix products and convolutions (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in float32 (the default; bit-identical to a build without this module).
    #[default]
    F32,
    /// Matrix products and convolutions in bfloat16 (8-bit mantissa, float32 range), norms,
    /// statistics and outputs in float32. CPU (AVX512-BF16 / AMX) and CUDA.
    Bf16,
    /// Matrix products and convolutions in float16; CUDA only (CPU float16 kernels are slow
    /// reference implementations, refused by [`Precision::check_device`]).
    F16,
}

impl Precision {
    /// All values, in the order the CLI lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// The tensor kind of the matrix products under this precision.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }

    /// Refuses combinations that would run but slowly or not at all: float16 on the CPU.
    ///
    /// # Errors
    /// A message naming the precision and the device, and what to use instead.
    pub fn check_device(self, device: Device) -> Result<(), String> {
        if self == Precision::F16 && device == Device::Cpu {
            return Err(
                "precision f16 needs a CUDA device (--device cuda); on the CPU use bf16".into(),
            );
        }
        Ok(())
    }

    /// Runs `f` with this precision as the thread's current one, restoring the previous one
    /// afterwards (also when `f` panics). Nested calls see the innermost precision.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        struct Restore(Precision);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }

    /// The calling thread's current precision ([`Precision::F32`] outside [`Precision::run`]).
    pub fn current() -> Precision {
        CURRENT.with(Cell::get)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            _ => Err(format!(
                "unknown precision {s:?}: expected one of f32, bf16, f16"
            )),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Precision> = const { Cell::new(Precision::F32) };
    /// Multiply-accumulates counted by [`count_macs`] (`None` = not counting).
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` and returns its result with the number of multiply-accumulate operations (MACs) of
/// the matrix products and convolutions it ran on this thread: every convolution (`C_out x
/// C_in/groups x k x k` per output pixel), linear layer (`in x out` per token), attention
/// (`2 x N_q x N_k x d` per head) and the anomaly map's blur matrix products. Elementwise ops,
/// norms, pooling and upsampling are not counted (they are a few per element, memory-bound).
/// One FLOP-counting convention (fvcore's, which the paper's FLOP figures use) counts one MAC as
/// one "FLOP"; the roofline counts two (a multiply and an add).
///
/// Counting happens in the ops themselves, so the count follows the architecture that actually
/// runs (teacher, depths, ablations, input size). Nested calls count into the innermost.
pub fn count_macs<T>(f: impl FnOnce() -> T) -> (T, u64) {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            MACS.with(|c| c.set(self.0));
        }
    }
    let restore = Restore(MACS.with(|c| c.replace(Some(0))));
    let out = f();
    let n = MACS.with(Cell::get).unwrap_or(0);
    drop(restore);
    (out, n)
}

/// Adds `n` MACs to the running [`count_macs`] count, if any.
pub(crate) fn add_macs(n: i64) {
    MACS.with(|c| {
        if let Some(m) = c.get() {
            c.set(Some(m + n.max(0) as u64));
        }
    });
}

/// MACs of a convolution with weight `w: [C_out, C_in/groups, kh, kw]` producing `out`.
pub(crate) fn add_conv_macs(w: &Tensor, out: &Tensor) {
    let ws = w.size();
    add_macs(out.numel() as i64 * ws[1..].iter().product::<i64>());
}

/// `x` in the current compute kind (no copy when it already is, or under float32).
pub(crate) fn low(x: &Tensor) -> Tensor {
    let k = Precision::current().kind();
    if k == Kind::Float || x.kind() == k {
        x.shallow_clone()
    } else {
        x.to_kind(k)
    }
}

/// `x` in float32 (no copy when it already is): inputs of norms, statistics and outputs.
pub(crate) fn full(x: &Tensor) -> Tensor {
    if x.kind() == Kind::Float {
        x.shallow_clone()
    } else {
        x.to_kind(Kind::Float)
    }
}

/// Whether an InstanceNorm takes `x` as it is rather than in float32: bfloat16 input on the CPU,
/// where libtorch's kernel accumulates the statistics in float32 (as CPU autocast leaves norms
/// in the input's precision); float16, and any CUDA input, is normalised in float32 (CUDA
/// autocast's float32 list).
pub(crate) fn norm_keeps_low(x: &Tensor) -> bool {
    x.kind() == Kind::BFloat16 && x.device() == Device::Cpu
}

/// `x @ W^T + b` of a [`nn::Linear`] in the current precision. Under float32 this is exactly
/// `x.apply(l)`.
pub(crate) fn linear(x: &Tensor, l: &nn::Linear) -> Tensor {
    let y = if Precision::current() == Precision::F32 {
        x.apply(l)
    } else {
        // Contiguous first: libtorch's bfloat16 linear on a permuted input takes a slow path,
        // measured 40x slower than copy + linear on [8, 8, 8, 512] (2 CPU cores, AMX).
        low(x)
            .contiguous()
            .linear(&low(&l.ws), l.bs.as_ref().map(low))
    };
    add_macs(y.numel() as i64 * l.ws.size()[1]);
    y
}

/// A 2-D convolution whose geometry is kept beside the weights, so that it can run in the
/// current precision ([`Conv2d::forward`]); tch's own `Conv2D` keeps its configuration private.
#[derive(Debug)]
pub(crate) struct Conv2d {
    pub(crate) conv: nn::Conv2D,
    pub(crate) stride: i64,
    pub(crate) padding: i64,
    pub(crate) groups: i64,
}

impl Conv2d {
    /// `[B, C_in, H, W] -> [B, C_out, H', W']`; exactly `x.apply(&self.conv)` under float32.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let y = if Precision::current() == Precision::F32 {
            x.apply(&self.conv)
        } else {
            low(x).conv2d(
                &low(&self.conv.ws),
                self.conv.bs.as_ref().map(low),
                [self.stride, self.stride],
                [self.padding, self.padding],
                [1, 1],
                self.groups,
            )
        };
        add_conv_macs(&self.conv.ws, &y);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_sets_and_restores_even_on_panic() {
        assert_eq!(Precision::current(), Precision::F32);
        let inner = Precision::Bf16.run(|| {
            assert_eq!(Precision::current(), Precision::Bf16);
            Precision::F16.run(Precision::current)
        });
        assert_eq!(inner, Precision::F16);
        assert_eq!(Precision::current(), Precision::F32);
        let r = std::panic::catch_unwind(|| Precision::Bf16.run(|| panic!("boom")));
        assert!(r.is_err());
        assert_eq!(Precision::current(), Precision::F32);
    }

    #[test]
    fn macs_are_counted_per_op() {
        let vs = nn::VarStore::new(Device::Cpu);
        let l = nn::linear(vs.root() / "l", 32, 16, Default::default());
        let c = Conv2d {
            conv: nn::conv2d(
                vs.root() / "c",
                8,
                6,
                3,
                nn::ConvConfig {
                    stride: 2,
                    padding: 1,
                    groups: 2,
                    ..Default::default()
                },
            ),
            stride: 2,
            padding: 1,
            groups: 2,
        };
        let x = Tensor::zeros([5, 7, 32], (Kind::Float, Device::Cpu));
        let xi = Tensor::zeros([3, 8, 10, 9], (Kind::Float, Device::Cpu));
        let (_, n) = count_macs(|| linear(&x, &l));
        assert_eq!(n, 5 * 7 * 32 * 16);
        // output 3 x 6 x 5 x 5, each 8/2 * 3 * 3 MACs
        let (_, n) = count_macs(|| Precision::Bf16.run(|| c.forward(&xi)));
        assert_eq!(n, 3 * 6 * 5 * 5 * 4 * 9);
        let ((_, inner), outer) = count_macs(|| {
            let _ = linear(&x, &l);
            count_macs(|| linear(&x, &l))
        });
        assert_eq!((inner, outer), (5 * 7 * 32 * 16, 5 * 7 * 32 * 16));
        // Not counting outside count_macs.
        add_macs(10);
        assert_eq!(count_macs(|| ()).1, 0);
    }

    #[test]
    fn parse_and_display_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert_eq!("BFloat16".parse::<Precision>().unwrap(), Precision::Bf16);
        let e = "f8".parse::<Precision>().unwrap_err();
        assert!(e.contains("f8") && e.contains("bf16"), "{e}");
        assert!(Precision::F16.check_device(Device::Cpu).is_err());
        assert!(Precision::Bf16.check_device(Device::Cpu).is_ok());
    }

    #[test]
    fn linear_and_conv_follow_the_precision_and_stay_close() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let l = nn::linear(vs.root() / "l", 32, 16, Default::default());
        let c = Conv2d {
            conv: nn::conv2d(
                vs.root() / "c",
                8,
                8,
                3,
                nn::ConvConfig {
                    padding: 1,
                    groups: 2,
                    ..Default::default()
                },
            ),
            stride: 1,
            padding: 1,
            groups: 2,
        };
        let x = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
        let xi = Tensor::randn([2, 8, 5, 5], (Kind::Float, Device::Cpu));
        let (y32, z32) = (linear(&x, &l), c.forward(&xi));
        assert_eq!(y32.kind(), Kind::Float);
        assert!(y32.equal(&x.apply(&l)) && z32.equal(&xi.apply(&c.conv)));
        let (yb, zb) = Precision::Bf16.run(|| (linear(&x, &l), c.forward(&xi)));
        assert_eq!((yb.kind(), zb.kind()), (Kind::BFloat16, Kind::BFloat16));
        let rel = |a: &Tensor, b: &Tensor| {
            (full(a) - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
        };
        // bfloat16 keeps 8 mantissa bits: relative rounding 2^-8 per operand.
        assert!(rel(&yb, &y32) < 2e-2, "{}", rel(&yb, &y32));
        assert!(rel(&zb, &z32) < 2e-2, "{}", rel(&zb, &z32));
        assert!(rel(&yb, &y32) > 0.0, "bf16 must actually round");
    }
}
