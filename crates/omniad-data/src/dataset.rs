//! Dataset model: kinds, labels, splits, samples and the opened [`Dataset`]. Reading a layout
//! from disk is `open.rs` (detection, [`open_dataset`](crate::open_dataset)) and `layouts/`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::DataError;

/// The on-disk dataset layouts omniad reads natively.
///
/// Names (`FromStr`/`Display`/serde): `mvtec`, `visa`, `realiad`, `loco`, `btad`, `mpdd`, `folder`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// MVTec-AD: `<class>/train/good`, `<class>/test/<defect>`,
    /// `<class>/ground_truth/<defect>/<stem>_mask.png`.
    Mvtec,
    /// VisA: `split_csv/1cls.csv` (object,split,label,image,mask), `.JPG` images, 0/1 masks.
    Visa,
    /// Real-IAD: per-class JSON (`realiad_jsons/realiad_jsons/<class>.json`) + `realiad_<res>/<class>/...`, 5 views per sample.
    RealIad,
    /// MVTec LOCO: `train/good` + `validation/good` for training, `test/{good,logical_anomalies,structural_anomalies}`,
    /// masks `ground_truth/<type>/<stem>/*.png` (several per image, united).
    Loco,
    /// BTAD: `train/ok`, `test/{ok,ko}`, `ground_truth/ko` (`.bmp` and `.png` mixed).
    Btad,
    /// MPDD: same layout as MVTec-AD.
    Mpdd,
    /// Generic folder: `train/good`, `test/good`, `test/<defect>`, optional
    /// `ground_truth/<defect>/<stem>_mask.png`; either at the root (one class named
    /// after the folder) or under `<class>/`.
    Folder,
}

impl DatasetKind {
    /// All kinds.
    pub const ALL: [DatasetKind; 7] = [
        DatasetKind::Visa,
        DatasetKind::RealIad,
        DatasetKind::Loco,
        DatasetKind::Btad,
        DatasetKind::Mpdd,
        DatasetKind::Mvtec,
        DatasetKind::Folder,
    ];

    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mvtec => "mvtec",
            DatasetKind::Visa => "visa",
            DatasetKind::RealIad => "realiad",
            DatasetKind::Loco => "loco",
            DatasetKind::Btad => "btad",
            DatasetKind::Mpdd => "mpdd",
            DatasetKind::Folder => "folder",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DataError;

    /// Parses a kind name, case-insensitively (`real-iad` and `real_iad` are accepted for `realiad`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "mvtec" | "mvtec-ad" | "mvtec_ad" => DatasetKind::Mvtec,
            "visa" => DatasetKind::Visa,
            "realiad" | "real-iad" | "real_iad" => DatasetKind::RealIad,
            "loco" | "mvtec_loco" | "mvtec-loco" => DatasetKind::Loco,
            "btad" => DatasetKind::Btad,
            "mpdd" => DatasetKind::Mpdd,
            "folder" => DatasetKind::Folder,
            _ => return Err(DataError::UnknownKind(s.to_string())),
        })
    }
}

/// Ground-truth label of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Defect-free.
    Normal,
    /// Defective.
    Anomaly,
}

impl Label {
    /// 0 for normal, 1 for anomaly (the convention of I-AUROC computations).
    pub fn as_u8(self) -> u8 {
        match self {
            Label::Normal => 0,
            Label::Anomaly => 1,
        }
    }
}

/// Dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images (normal only in unsupervised AD).
    Train,
    /// Test images (normal and anomalous).
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// One image of a dataset, with its ground truth. Paths are absolute or relative
/// to the working directory as `root` was given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Class (category) name, e.g. `bottle`.
    pub class: String,
    /// Split the image belongs to.
    pub split: Split,
    /// The image file.
    pub image: PathBuf,
    /// Ground-truth mask files; empty = no mask (normal, or a layout without
    /// masks); several = their union (MVTec LOCO).
    pub masks: Vec<PathBuf>,
    /// Image label.
    pub label: Label,
    /// Defect type (folder name, Real-IAD code, ...); `"good"` for normal images.
    pub defect: String,
    /// Real-IAD: the id shared by the five camera views of one physical sample
    /// (`<class>/<folder of the image>`), for per-sample metrics (max over views).
    pub sample_id: Option<String>,
}

/// Defect name of every normal image.
pub(crate) const GOOD: &str = "good";

impl Sample {
    /// A normal image of `class`: label [`Label::Normal`], defect `good`, no mask.
    pub fn normal(class: &str, split: Split, image: PathBuf) -> Self {
        Self::labelled(class, split, image, Label::Normal, "", Vec::new())
    }

    /// An image of `class` with `label`. `defect` names the kind of anomaly (a normal image's
    /// defect is always `good`); `masks` are its ground-truth mask files (their union).
    pub fn labelled(
        class: &str,
        split: Split,
        image: PathBuf,
        label: Label,
        defect: &str,
        masks: Vec<PathBuf>,
    ) -> Self {
        Self {
            class: class.to_string(),
            split,
            image,
            masks,
            label,
            defect: match label {
                Label::Normal => GOOD.to_string(),
                Label::Anomaly => defect.to_string(),
            },
            sample_id: None,
        }
    }

    /// The same sample with the id of the physical sample it views (Real-IAD).
    pub fn with_sample_id(mut self, sample_id: Option<String>) -> Self {
        self.sample_id = sample_id;
        self
    }
}

/// Where the sample list of a [`Dataset`] came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LayoutSource {
    /// The native folders / CSV / JSON files of the dataset.
    Native,
    /// An ADer-style `meta.json` (the path given).
    MetaJson(PathBuf),
}

/// An opened dataset: the sample lists of the selected classes. No image is
/// decoded when opening; only file names (and existence) are checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dataset {
    /// Layout the dataset was read as.
    pub kind: DatasetKind,
    /// The dataset root as given.
    pub root: PathBuf,
    /// Selected classes: sorted by name, or in `--classes` order when filtered.
    pub classes: Vec<String>,
    /// Training samples, class-major (in `classes` order), then by path.
    pub train: Vec<Sample>,
    /// Normal images the layout itself holds out for validation (MVTec LOCO
    /// `validation/good`; empty for the other layouts), class-major. `omniad train` calibrates
    /// its thresholds on them instead of holding out a share of `train`. Their
    /// [`Sample::split`] is [`Split::Train`].
    #[serde(default)]
    pub validation: Vec<Sample>,
    /// Test samples, class-major (in `classes` order), then by path.
    pub test: Vec<Sample>,
    /// True when every anomalous test image has a ground-truth mask, so pixel
    /// metrics (P-AUROC, AUPRO) can be computed; false = image-level evaluation only
    /// (a `tracing` warning says so once, when the dataset is opened).
    pub has_masks: bool,
    /// Native layout or ADer-style `meta.json`.
    pub source: LayoutSource,
}

impl Dataset {
    /// The samples of `split`.
    pub fn samples(&self, split: Split) -> &[Sample] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Indices into [`Dataset::samples`]`(split)` of the samples of `class`, in order.
    pub fn class_indices(&self, split: Split, class: &str) -> Vec<usize> {
        self.samples(split)
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class == class)
            .map(|(i, _)| i)
            .collect()
    }
}

/// Options of [`open_dataset`]. `Default` gives the native layouts' defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenOptions {
    /// Real-IAD: folder holding `<class>.json` (default: the first of
    /// `root/realiad_jsons/realiad_jsons` and `root/realiad_jsons` that holds JSON
    /// files; when `root` is an image folder `realiad_<res>`, the same under its parent).
    pub realiad_json_dir: Option<PathBuf>,
    /// Real-IAD: folder holding `<class>/OK|NG/...` (default: the single
    /// `root/realiad_<res>` folder holding the classes, else `root`).
    pub realiad_image_dir: Option<PathBuf>,
    /// VisA: split CSV (default `root/split_csv/1cls.csv`).
    pub visa_split_csv: Option<PathBuf>,
    /// Folder layout: mask folder replacing `ground_truth` (`<mask_dir>/<defect>/<stem>_mask.png`;
    /// with several classes, `<mask_dir>/<class>/<defect>/...`).
    pub mask_dir: Option<PathBuf>,
    /// Read this ADer-style `meta.json` instead of the native layout
    /// (by default `root/meta.json` is used only when the native layout is absent).
    pub meta_json: Option<PathBuf>,
    /// Accept anomalous test images without a mask (they get an empty mask and the
    /// dataset reports `has_masks = false`) instead of failing.
    pub allow_missing_masks: bool,
}
