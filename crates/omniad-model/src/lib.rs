//! Omni-AD network (ICME 2025, arXiv 2503.21125) on tch/libtorch.
pub fn version() -> &'static str { tch::utils::has_cuda().then_some("cuda").unwrap_or("cpu") }
