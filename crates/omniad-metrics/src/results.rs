//! Per-image evaluation results (`results.json` of a run folder): what `omniad eval` scored,
//! image by image, for reports and later analysis.
//!
//! ```text
//! { "format": "omniad-eval-results", "version": 1, "map_size": [128, 128],
//!   "maps_dir": "maps",
//!   "images": [ { "class": "screw", "image": "/data/screw/test/crack/000.png",
//!                 "masks": ["/data/screw/ground_truth/crack/000_mask.png"],
//!                 "defect": "crack", "anomalous": true, "score": 0.41 }, ... ] }
//! ```
//! `maps_dir` (relative to the run folder) is set when the anomaly maps were saved; then the
//! `k`-th image of a class in `images` is entry `k` of `<maps_dir>/<class>.safetensors`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::MetricsError;

/// Value of [`EvalResults::format`].
pub const RESULTS_FORMAT: &str = "omniad-eval-results";
/// Current [`EvalResults::version`].
pub const RESULTS_VERSION: u32 = 1;

/// One evaluated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageResult {
    /// Class (category) name.
    pub class: String,
    /// The image file, as the dataset listed it.
    pub image: PathBuf,
    /// Its ground-truth mask files (empty for normal images or without masks).
    #[serde(default)]
    pub masks: Vec<PathBuf>,
    /// Defect type (`good` for normal images).
    pub defect: String,
    /// Ground-truth label: `true` = anomalous.
    pub anomalous: bool,
    /// Image score (max of the anomaly map).
    pub score: f32,
}

/// Every image of one evaluation, in evaluation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// Always [`RESULTS_FORMAT`].
    pub format: String,
    /// Format version ([`RESULTS_VERSION`]).
    pub version: u32,
    /// `(height, width)` of the anomaly maps (the model's input size).
    pub map_size: (usize, usize),
    /// Folder of the saved maps, relative to the run folder, if they were saved.
    pub maps_dir: Option<PathBuf>,
    /// The images.
    pub images: Vec<ImageResult>,
}

impl EvalResults {
    /// Empty results for maps of `map_size`.
    pub fn new(map_size: (usize, usize), maps_dir: Option<PathBuf>) -> Self {
        EvalResults {
            format: RESULTS_FORMAT.into(),
            version: RESULTS_VERSION,
            map_size,
            maps_dir,
            images: Vec::new(),
        }
    }

    /// Class names in first-seen order.
    pub fn classes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.images {
            if !out.contains(&r.class.as_str()) {
                out.push(&r.class);
            }
        }
        out
    }

    /// The images of `class`, in order (their index is their entry in the class's maps file).
    pub fn of_class<'a>(&'a self, class: &'a str) -> impl Iterator<Item = &'a ImageResult> + 'a {
        self.images.iter().filter(move |r| r.class == class)
    }

    /// Reads and checks a `results.json`.
    ///
    /// # Errors
    /// Unreadable file, invalid JSON, another format or version, a non-finite score (each
    /// naming the file and, where it applies, the field and image).
    pub fn read(path: &Path) -> Result<Self, MetricsError> {
        let bytes = std::fs::read(path).map_err(|e| MetricsError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let bad = |msg: String| MetricsError::InFile {
            path: path.to_path_buf(),
            source: Box::new(MetricsError::InvalidInput(msg)),
        };
        let r: EvalResults =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not valid results: {e}")))?;
        if r.format != RESULTS_FORMAT {
            return Err(bad(format!(
                "field `format` is {:?}, expected {RESULTS_FORMAT:?}",
                r.format
            )));
        }
        if r.version != RESULTS_VERSION {
            return Err(bad(format!(
                "field `version` is {}, this omniad reads version {RESULTS_VERSION}",
                r.version
            )));
        }
        if let Some((i, img)) = r
            .images
            .iter()
            .enumerate()
            .find(|(_, x)| !x.score.is_finite())
        {
            return Err(bad(format!(
                "images[{i}] ({}): score {} is not finite",
                img.image.display(),
                img.score
            )));
        }
        Ok(r)
    }

    /// The results as pretty JSON.
    ///
    /// # Errors
    /// serde_json's error (it has no map with non-string keys, so none is expected).
    pub fn to_json_string(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = EvalResults::new((8, 8), Some("maps".into()));
        for (c, s, a) in [("a", 0.5f32, true), ("b", 0.1, false), ("a", 0.2, false)] {
            r.images.push(ImageResult {
                class: c.into(),
                image: format!("{c}/{s}.png").into(),
                masks: vec![],
                defect: if a { "crack".into() } else { "good".into() },
                anomalous: a,
                score: s,
            });
        }
        let p = dir.path().join("results.json");
        std::fs::write(&p, r.to_json_string().unwrap()).unwrap();
        let back = EvalResults::read(&p).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.classes(), vec!["a", "b"]);
        assert_eq!(back.of_class("a").count(), 2);
        std::fs::write(
            &p,
            r.to_json_string()
                .unwrap()
                .replace("\"version\": 1", "\"version\": 7"),
        )
        .unwrap();
        let e = EvalResults::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("results.json") && e.contains("version") && e.contains('7'),
            "{e}"
        );
        std::fs::write(&p, "{").unwrap();
        let e = EvalResults::read(&p).unwrap_err().to_string();
        assert!(e.contains("results.json") && e.contains("not valid"), "{e}");
        let e = EvalResults::read(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json"), "{e}");
    }
}
