//! Readers of the native on-disk layouts, one file per layout family, and of ADer-style
//! `meta.json` files:
//!
//! - [`dirs`]: folder layouts — MVTec-AD, MPDD, BTAD, MVTec LOCO and the generic `folder`;
//! - [`visa`]: VisA's `split_csv/1cls.csv`;
//! - [`realiad`]: Real-IAD's `realiad_jsons/<class>.json`;
//! - [`meta_json`]: an ADer `meta.json` for any of them.
//!
//! Each reader returns a [`Listing`]; `open.rs` picks the reader and assembles the
//! [`Dataset`](crate::Dataset). The readers import only the types of `dataset.rs`.
use std::path::{Path, PathBuf};

use crate::dataset::{DatasetKind, OpenOptions, Sample};
use crate::error::{join_names, DataError};
use crate::fsutil::{is_hidden, list_dir};

pub(crate) mod dirs;
pub(crate) mod meta_json;
pub(crate) mod realiad;
pub(crate) mod visa;

pub(crate) use dirs::read_dirs;
pub(crate) use meta_json::read_meta_json;
pub(crate) use realiad::{read_realiad, realiad_json_dir};
pub(crate) use visa::read_visa;

pub(crate) use crate::dataset::GOOD;

/// What a layout reader found: the selected classes and their samples, class-major and sorted
/// by image path within a class.
#[derive(Debug)]
pub(crate) struct Listing {
    /// Selected classes: sorted by name, or in `--classes` order when filtered.
    pub classes: Vec<String>,
    /// Training samples.
    pub train: Vec<Sample>,
    /// Normal samples the layout holds out for validation (MVTec LOCO `validation/good`).
    pub validation: Vec<Sample>,
    /// Test samples.
    pub test: Vec<Sample>,
}

/// True when the native markers of `kind` are present under `root`
/// (used to decide whether a `root/meta.json` should be read instead).
pub(crate) fn native_marker_present(
    kind: DatasetKind,
    root: &Path,
    opts: &OpenOptions,
) -> Result<bool, DataError> {
    Ok(match kind {
        DatasetKind::Visa => visa::visa_csv_path(root, opts).is_file(),
        DatasetKind::RealIad => realiad_json_dir(root, opts.realiad_json_dir.as_deref()).is_some(),
        _ => {
            root.join("train").is_dir()
                || class_dirs(root)?
                    .iter()
                    .any(|(_, p)| p.join("train").is_dir())
        }
    })
}

/// Picks the classes to read: `available` (sorted) filtered by `requested`.
pub(crate) fn select_classes(
    root: &Path,
    available: Vec<String>,
    requested: Option<&[String]>,
) -> Result<Vec<String>, DataError> {
    let Some(req) = requested else {
        return Ok(available);
    };
    let mut out = Vec::with_capacity(req.len());
    for c in req {
        if !available.contains(c) {
            return Err(DataError::UnknownClass {
                class: c.clone(),
                root: root.to_path_buf(),
                available: join_names(&available),
            });
        }
        out.push(c.clone());
    }
    Ok(out)
}

/// Class folders of `root`: the non-hidden sub-folders, sorted.
pub(crate) fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    Ok(list_dir(root)?
        .into_iter()
        .filter(|e| e.is_dir && !is_hidden(&e.name))
        .map(|e| (e.name, e.path))
        .collect())
}

/// Appends one class's samples read from a listing file (`source`), each split sorted by image
/// path; a split without samples is [`DataError::EmptyClass`].
pub(crate) fn add_class(
    class: &str,
    mut tr: Vec<Sample>,
    mut te: Vec<Sample>,
    source: &Path,
    train: &mut Vec<Sample>,
    test: &mut Vec<Sample>,
) -> Result<(), DataError> {
    for (split, v) in [("train", &tr), ("test", &te)] {
        if v.is_empty() {
            return Err(DataError::EmptyClass {
                class: class.to_string(),
                split: split.to_string(),
                path: source.to_path_buf(),
            });
        }
    }
    tr.sort_by(|a, b| a.image.cmp(&b.image));
    te.sort_by(|a, b| a.image.cmp(&b.image));
    train.extend(tr);
    test.extend(te);
    Ok(())
}
