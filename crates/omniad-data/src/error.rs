//! Error type of the data crate.
//!
//! Every variant that concerns a file names it, so that a user can find and
//! fix the offending input; the `Display` text is meant to be shown as is.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Errors returned by dataset opening, image/mask decoding and the batch loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An I/O error while reading `path` (permission denied, vanished file, ...).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder that must exist does not.
    #[error("{}: {what} does not exist", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What was expected there (e.g. "image file", "dataset root").
        what: String,
    },
    /// The file has zero bytes.
    #[error("{}: file is empty (0 bytes)", path.display())]
    EmptyFile {
        /// The empty file.
        path: PathBuf,
    },
    /// A folder was found where a file was expected.
    #[error("{}: is a directory, expected {what}", path.display())]
    IsDirectory {
        /// The folder.
        path: PathBuf,
        /// What was expected (e.g. "an image file").
        what: String,
    },
    /// The file is not in a supported image format (PNG, JPEG, BMP, TIFF).
    #[error("{}: unsupported image format: {message}", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Details (detected format or extension).
        message: String,
    },
    /// The file claims a supported format but cannot be decoded (corrupt or truncated).
    #[error("{}: cannot decode image (corrupt or truncated file?): {message}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The header announces an image above the configured size limit; it was not decoded.
    #[error(
        "{}: image is {width}x{height} pixels, above the limit of {max_width}x{max_height} \
         (refused before decoding, as more likely a mistake than a product image; \
         `omniad serve --max-image-side N` sets the service's limit)",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width announced by the header, pixels.
        width: u32,
        /// Height announced by the header, pixels.
        height: u32,
        /// Width limit, pixels.
        max_width: u32,
        /// Height limit, pixels.
        max_height: u32,
    },
    /// A mask's size differs from its image's (or from another mask of the same image).
    #[error(
        "{}: mask is {mask_width}x{mask_height} pixels but its image is \
         {image_width}x{image_height} (W x H); masks must have the image's native size",
        mask.display()
    )]
    MaskSizeMismatch {
        /// The mask file.
        mask: PathBuf,
        /// Mask width, pixels.
        mask_width: u32,
        /// Mask height, pixels.
        mask_height: u32,
        /// Expected (image) width, pixels.
        image_width: u32,
        /// Expected (image) height, pixels.
        image_height: u32,
    },
    /// An anomalous test image has no ground-truth mask although the layout promises masks.
    #[error(
        "{}: anomalous test image has no ground-truth mask (looked for {expected}); \
         add the mask, or remove the image from the test split",
        image.display()
    )]
    MissingMask {
        /// The anomalous image.
        image: PathBuf,
        /// Where the mask was looked for.
        expected: String,
    },
    /// A mask file whose image does not exist.
    #[error("{}: mask has no matching image (expected {expected})", mask.display())]
    OrphanMask {
        /// The mask file.
        mask: PathBuf,
        /// Where its image was expected.
        expected: String,
    },
    /// A class has no images in one of its splits.
    #[error("class '{class}' has no {split} images (looked in {})", path.display())]
    EmptyClass {
        /// Class name.
        class: String,
        /// "train" or "test".
        split: String,
        /// Where the images were looked for.
        path: PathBuf,
    },
    /// A class requested with `--classes` is not in the dataset.
    #[error("unknown class '{class}' (from --classes); classes in {}: {available}", root.display())]
    UnknownClass {
        /// The requested name.
        class: String,
        /// The dataset root.
        root: PathBuf,
        /// Comma-separated available class names.
        available: String,
    },
    /// A split folder (train/test/...) is missing in a class.
    #[error("{}: missing split folder ({what})", path.display())]
    MissingSplit {
        /// The missing folder.
        path: PathBuf,
        /// Which split ("train/good", "test", ...).
        what: String,
    },
    /// The dataset root exists but matches none of the known layouts.
    #[error("{}: not a known dataset layout; tried: {tried}{hint}", root.display())]
    UnknownLayout {
        /// The dataset root.
        root: PathBuf,
        /// The layouts that were tried and what each needs.
        tried: String,
        /// What the folder looks like instead, when recognisable (e.g. an anomalib `Folder`
        /// dataset), and how to arrange it; empty otherwise.
        hint: String,
    },
    /// The root does not look like the layout that was asked for, or contains something
    /// the layout does not allow (a stray file, an unknown extension, ...).
    #[error("{}: {kind} layout: {message}", path.display())]
    Layout {
        /// The offending path.
        path: PathBuf,
        /// The dataset kind being read.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A metadata file (CSV, JSON) is malformed.
    #[error("{}: invalid {what}: {message}", path.display())]
    Parse {
        /// The metadata file.
        path: PathBuf,
        /// Which file kind ("CSV", "JSON", ...).
        what: String,
        /// The parser's message, with line/record when known.
        message: String,
    },
    /// A dataset kind name that is not one of the known ones.
    #[error("unknown dataset kind '{0}'; expected one of: mvtec, visa, realiad, loco, btad, mpdd, folder")]
    UnknownKind(String),
    /// An argument out of range (batch size 0, index past the end, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Several samples failed a check ([`crate::check_headers`]); the first ones are kept.
    #[error("{count} of {checked} samples have a problem{}", list_first(first, *count))]
    Several {
        /// Number of samples with a problem.
        count: usize,
        /// Number of samples checked.
        checked: usize,
        /// The problems of the first samples, in sample order (each names its file).
        first: Vec<DataError>,
    },
    /// The loader's background worker stopped before delivering every batch.
    #[error("the batch loader's worker stopped unexpectedly after {delivered} of {total} batches")]
    LoaderStopped {
        /// Batches delivered before the stop.
        delivered: usize,
        /// Batches expected.
        total: usize,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            return DataError::NotFound {
                path: path.to_path_buf(),
                what: "file".to_string(),
            };
        }
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn layout(
        path: &Path,
        kind: impl std::fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        DataError::Layout {
            path: path.to_path_buf(),
            kind: kind.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn parse(path: &Path, what: &str, message: impl Into<String>) -> Self {
        DataError::Parse {
            path: path.to_path_buf(),
            what: what.to_string(),
            message: message.into(),
        }
    }
}

/// `"; first N: e1; e2 (and M more)"` for [`DataError::Several`].
fn list_first(first: &[DataError], count: usize) -> String {
    let mut out = format!("; the first {}: ", first.len());
    for (i, e) in first.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "{e}");
    }
    if count > first.len() {
        let _ = write!(out, " (and {} more)", count - first.len());
    }
    out
}

/// Joins names as "a, b, c" (used in messages listing alternatives).
pub(crate) fn join_names<I, S>(names: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::new();
    for (i, n) in names.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", n.as_ref());
    }
    out
}
