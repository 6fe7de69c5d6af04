//! Training, evaluation and prediction pipelines of omniad: what the `omniad` binary runs.
//!
//! - [`train`]: `omniad train` (AdamW, step schedule, resume, Ctrl-C); [`feature_cache`]: the
//!   teacher-feature cache and its memory budget; [`runs`]: run folders, atomic checkpoints, the
//!   run lock and crash recovery.
//! - [`eval`]: `omniad eval` (metrics per class, operating points, class recognition, saved
//!   maps) and `omniad calibrate`.
//! - [`predict`]: `omniad predict` (scores, decisions, heatmap overlays, masks).
//! - [`demo`]: `omniad demo` (synthetic data, training, evaluation in one go).
//! - [`alloc`]: allocator settings that make libtorch's CPU tensors cheaper to allocate.
pub mod alloc;
pub mod calibrate;
pub mod config;
pub mod demo;
pub mod device;
pub mod eval;
pub mod feature_cache;
pub mod input;
pub mod optim;
pub mod overlay;
pub mod predict;
pub mod runs;
pub mod teacher;
pub mod train;

pub use config::{FeatureCache, TrainConfig};
pub use train::{train, TrainOptions, TrainOutcome};
