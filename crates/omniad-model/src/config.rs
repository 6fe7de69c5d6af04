//! Architecture configuration of the Omni-AD network, including the paper's ablations.
use serde::{Deserialize, Serialize};

use crate::teacher::TeacherArch;

/// An invalid configuration value; the message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Which branches of the Omni-block are active (paper, ablation "global / local branch").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Branches {
    /// Global (attention) and local (depthwise conv) branches, fused — the paper's default.
    #[default]
    Both,
    /// Only the global branch (`toProxy`); `conv33`, `conv55` and `mlp` are not built.
    GlobalOnly,
    /// Only the local branch (`conv33`, `conv55`, `mlp`); `toProxy` is not built.
    LocalOnly,
}

/// How the global branch attends (paper, ablation "learnable tokens vs self-attention").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GlobalAttention {
    /// `num_tokens` learnable query tokens attend over the image tokens, then the image tokens
    /// attend over `num_tokens` learnable key/value tokens (reference `ToProxy2`). Default.
    #[default]
    LearnableTokens,
    /// Plain multi-head self-attention over the image tokens (`q`, `kv_x`, `ffn1`), the
    /// quadratic-cost baseline of the ablation.
    SelfAttention,
}

/// Full architecture of an Omni-AD model.
///
/// Defaults are the paper's (ResNet34 teacher, depths `[3, 9, 9, 7]`, 64 learnable tokens,
/// 8 heads, jitter scale 20, 256x256 input) except the teacher, which defaults to the offline
/// EfficientNet-Lite0 in [`OmniAdConfig::default_offline`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OmniAdConfig {
    /// Frozen teacher backbone.
    pub teacher: TeacherArch,
    /// Number of Omni-blocks in each of the 4 decoder stages (reference `depths_decoder`).
    pub depths: [usize; 4],
    /// Output channels of the neck (the reference's 512 = 128 x Bottleneck expansion 4).
    pub neck_width: i64,
    /// Number of learnable query tokens and of learnable key/value tokens; must be a square
    /// (the query outputs are laid out on a `sqrt(n) x sqrt(n)` grid). Reference: 64.
    pub num_tokens: i64,
    /// Attention heads; must divide every stage width. Reference: 8.
    pub heads: i64,
    /// Active Omni-block branches.
    pub branches: Branches,
    /// Global-branch attention kind.
    pub attention: GlobalAttention,
    /// Feature-jitter scale on the neck output while training (reference `add_jitter`, 20);
    /// 0 disables it.
    pub jitter_scale: f64,
    /// Input size `(H, W)` in pixels; both must be multiples of 32, at least 64 and at most
    /// [`MAX_IMAGE_SIDE`]. The same type as the data crate's `Preprocess::size`.
    pub image_size: (u32, u32),
}

impl Default for OmniAdConfig {
    /// The one default: [`OmniAdConfig::default_offline`] (the paper's network with the shipped
    /// EfficientNet-Lite0 teacher, which needs no download).
    fn default() -> Self {
        Self::default_offline()
    }
}

/// Largest accepted input side in pixels (memory grows with its square; 1024 px at depths
/// `[3, 9, 9, 7]` already needs tens of GB to train).
pub const MAX_IMAGE_SIDE: u32 = 2048;
/// Largest accepted number of Omni-blocks in one decoder stage.
pub const MAX_STAGE_DEPTH: usize = 64;

/// Settings of the neck (reference `MFF_OCE`): teacher channels in, `width` channels out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeckConfig {
    /// Teacher feature channels `[c1, c2, c3]`.
    pub channels: [i64; 3],
    /// Output channels (a multiple of 4; the reference's 512).
    pub width: i64,
}

/// Settings of one Omni-block (reference `OmniBlock`/`ToProxy2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OmniBlockConfig {
    /// Token width `C` of the stage.
    pub dim: i64,
    /// Attention heads (divide `dim`).
    pub heads: i64,
    /// Learnable query and key/value tokens (a perfect square).
    pub num_tokens: i64,
    /// Active branches.
    pub branches: Branches,
    /// Global-branch attention kind.
    pub attention: GlobalAttention,
}

/// Settings of the decoder (reference `Decoder`): 4 stages of Omni-blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Stage widths `[C0, c3, c2, c1]` (see [`OmniAdConfig::stage_dims`]).
    pub dims: [i64; 4],
    /// Omni-blocks per stage.
    pub depths: [usize; 4],
    /// Block settings shared by every stage (`dim` is replaced per stage by [`Self::block`]).
    pub block: OmniBlockConfig,
}

impl DecoderConfig {
    /// The block configuration of stage `i` (0..4).
    pub fn block(&self, i: usize) -> OmniBlockConfig {
        OmniBlockConfig {
            dim: self.dims[i],
            ..self.block
        }
    }
}

impl OmniAdConfig {
    /// The paper's configuration: ResNet34 teacher, depths `[3, 9, 9, 7]`.
    pub fn paper() -> Self {
        Self {
            teacher: TeacherArch::Resnet34,
            depths: [3, 9, 9, 7],
            neck_width: 512,
            num_tokens: 64,
            heads: 8,
            branches: Branches::Both,
            attention: GlobalAttention::LearnableTokens,
            jitter_scale: 20.0,
            image_size: (256, 256),
        }
    }

    /// The paper's configuration with the shipped EfficientNet-Lite0 teacher (works offline).
    pub fn default_offline() -> Self {
        Self {
            teacher: TeacherArch::EfficientNetLite0,
            ..Self::paper()
        }
    }

    /// The neck's settings.
    pub fn neck(&self) -> NeckConfig {
        NeckConfig {
            channels: self.teacher.channels(),
            width: self.neck_width,
        }
    }

    /// The decoder's settings.
    pub fn decoder(&self) -> DecoderConfig {
        let dims = self.stage_dims();
        DecoderConfig {
            dims,
            depths: self.depths,
            block: OmniBlockConfig {
                dim: dims[0],
                heads: self.heads,
                num_tokens: self.num_tokens,
                branches: self.branches,
                attention: self.attention,
            },
        }
    }

    /// Decoder stage widths: `[neck_width, c3, c2, c1]` where `c1..c3` are the teacher's
    /// channels (ResNet34: `[512, 256, 128, 64]`, the reference's `dims_decoder`).
    pub fn stage_dims(&self) -> [i64; 4] {
        let [c1, c2, c3] = self.teacher.channels();
        [self.neck_width, c3, c2, c1]
    }

    /// Checks the invariants the network relies on.
    ///
    /// # Errors
    /// A message naming the offending field and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (h, w) = self.image_size;
        if h < 64
            || w < 64
            || h % 32 != 0
            || w % 32 != 0
            || h > MAX_IMAGE_SIDE
            || w > MAX_IMAGE_SIDE
        {
            return Err(ConfigError(format!(
                "image_size {h}x{w}: both sides must be multiples of 32, from 64 (the neck's \
                 BatchNorm needs a map of at least 2x2 at H/32) to {MAX_IMAGE_SIDE}"
            )));
        }
        if let Some(d) = self
            .depths
            .iter()
            .find(|d| **d == 0 || **d > MAX_STAGE_DEPTH)
        {
            return Err(ConfigError(format!(
                "depths {:?}: every decoder stage needs 1 to {MAX_STAGE_DEPTH} Omni-blocks, got {d}",
                self.depths
            )));
        }
        let side = (self.num_tokens as f64).sqrt().round() as i64;
        if self.num_tokens <= 0 || side * side != self.num_tokens {
            return Err(ConfigError(format!(
                "num_tokens {} must be a positive perfect square (e.g. 64 = 8x8)",
                self.num_tokens
            )));
        }
        if self.heads <= 0 {
            return Err(ConfigError(format!(
                "heads {} must be positive",
                self.heads
            )));
        }
        for d in self.stage_dims() {
            if d % self.heads != 0 {
                return Err(ConfigError(format!(
                    "heads {} must divide every decoder stage width {:?}",
                    self.heads,
                    self.stage_dims()
                )));
            }
        }
        if self.num_tokens > 4096 {
            return Err(ConfigError(format!(
                "num_tokens {} must be at most 4096",
                self.num_tokens
            )));
        }
        if self.neck_width % 4 != 0 || self.neck_width <= 0 || self.neck_width > 8192 {
            return Err(ConfigError(format!(
                "neck_width {} must be a positive multiple of 4, at most 8192",
                self.neck_width
            )));
        }
        if !(self.jitter_scale >= 0.0 && self.jitter_scale.is_finite()) {
            return Err(ConfigError(format!(
                "jitter_scale {} must be >= 0",
                self.jitter_scale
            )));
        }
        Ok(())
    }
}
