//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while scoring anomaly maps.
///
/// Image indices are 0-based positions in the order the images were given (the
/// `N` axis of the safetensors tensors, or the push order of
/// [`crate::Accumulator`]).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// An image score is NaN or infinite.
    #[error("image score of image {index} is not finite ({value})")]
    NonFiniteScore {
        /// Index of the image.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// An anomaly map holds a NaN or infinite value.
    #[error("anomaly map of image {index} is not finite at pixel (y={y}, x={x}): {value}")]
    NonFiniteMap {
        /// Index of the image.
        index: usize,
        /// Row of the first offending pixel.
        y: usize,
        /// Column of the first offending pixel.
        x: usize,
        /// The offending value.
        value: f32,
    },
    /// Two inputs that must agree in shape do not.
    #[error("shape mismatch: {a} has shape {a_shape:?} but {b} has shape {b_shape:?}")]
    ShapeMismatch {
        /// Name of the first input (e.g. `anomaly_maps`).
        a: String,
        /// Its shape.
        a_shape: Vec<usize>,
        /// Name of the second input (e.g. `masks`).
        b: String,
        /// Its shape.
        b_shape: Vec<usize>,
    },
    /// A label or mask value is neither 0 nor 1.
    #[error("{what} of image {index} has value {value}; expected 0 (normal) or 1 (anomalous)")]
    NotBinary {
        /// `"label"` or `"mask"`.
        what: &'static str,
        /// Index of the image.
        index: usize,
        /// The offending value.
        value: i64,
    },
    /// A class id or sample id is out of range.
    #[error("{what} of image {index} is {value}: {reason}")]
    BadId {
        /// `"class id"` or `"sample id"`.
        what: &'static str,
        /// Index of the image.
        index: usize,
        /// The offending value.
        value: i64,
        /// Why it is rejected.
        reason: String,
    },
    /// The options are outside their documented ranges.
    #[error("invalid metric options: {0}")]
    InvalidOptions(String),
    /// Some other malformed input (missing tensor, wrong dtype, bad metadata, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An error that happened while handling a given file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What went wrong in it.
        source: Box<MetricsError>,
    },
}

impl MetricsError {
    /// Wraps `self` so that its message starts with `path`.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            e @ (MetricsError::Io { .. } | MetricsError::InFile { .. }) => e,
            e => MetricsError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}
