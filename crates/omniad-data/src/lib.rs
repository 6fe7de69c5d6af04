//! Dataset layouts, decoding and preprocessing for omniad.
//!
//! * [`open_dataset`] / [`DatasetKind::detect`] read the native on-disk layouts
//!   of MVTec-AD, MPDD, BTAD, MVTec LOCO, VisA (`split_csv/1cls.csv`), Real-IAD
//!   (per-class JSON, five views per sample), a generic folder layout, and
//!   ADer-style `meta.json` files. Images and masks are paired by file stem.
//! * [`load_image`] / [`preprocess_rgb`] produce the model input `[3, H, W]`
//!   exactly as the reference PyTorch pipeline does: Pillow `convert('RGB')`,
//!   `resize((W, H), BILINEAR)` (antialiased; Pillow's `ImagingResample` reimplemented
//!   bit-exactly for 8-bit data), `ToTensor`, `Normalize(mean, std)`.
//! * [`load_mask`] produces `[H, W]` 0/1 masks: binarise `> 0` at native size,
//!   unite several masks, resize the 0/255 image with the same filter, keep `>= 128`
//!   (i.e. `> 0.5` after scaling to `[0, 1]`).
//! * [`check_headers`] checks a sample list from file headers only (readable images,
//!   masks of their image's size), in seconds, before a long run relies on it.
//! * [`Loader`] decodes batches `[B, 3, H, W]` in parallel (rayon) with at most
//!   `prefetch` batches in memory, in a deterministic (optionally seeded
//!   shuffled, [`shuffled_indices`]) order.
//!
//! No tensor library is used: tensors are plain row-major `Vec<f32>` / `Vec<u8>`.
//! Errors are [`DataError`]s that name the offending file.

mod check;
mod dataset;
mod decode;
mod error;
mod fsutil;
mod layouts;
mod loader;
mod open;
mod preprocess;
mod resize;

pub use check::check_headers;
pub use dataset::{Dataset, DatasetKind, Label, LayoutSource, OpenOptions, Sample, Split};
pub use decode::{
    has_image_extension, image_size, load_rgb, load_rgb_from_bytes,
    load_rgb_from_bytes_with_limits, load_rgb_with_limits, DecodeLimits, IMAGE_EXTENSIONS,
};
pub use error::DataError;
pub use loader::{shuffled_indices, Batch, Loader, LoaderOptions};
pub use open::open_dataset;
pub use preprocess::{
    load_image, load_image_sized, load_mask, load_mask_with_limits, preprocess_rgb, Preprocess,
};
