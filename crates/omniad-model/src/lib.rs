//! Omni-AD network (ICME 2025, arXiv 2503.21125) on tch/libtorch.
//!
//! - [`teacher`]: frozen ImageNet backbones (ResNet family, EfficientNet-Lite0) giving three
//!   feature maps at strides 4, 8, 16.
//! - [`weights`]: strict loading of `.safetensors` and PyTorch `.pth`/`.pt` state dicts.
pub mod teacher;
pub mod weights;
