//! Layout detection ([`DatasetKind::detect`]) and [`open_dataset`]: pick the reader in `layouts/`
//! for a kind (or an ADer-style `meta.json`) and assemble the [`Dataset`].

use std::path::Path;

use crate::dataset::{Dataset, DatasetKind, Label, LayoutSource, OpenOptions};
use crate::error::DataError;
use crate::fsutil::list_dir;
use crate::layouts;

impl DatasetKind {
    /// Guesses the layout of `root` from its folders (no image is read).
    ///
    /// Checks, in order: VisA (`split_csv/1cls.csv`), Real-IAD (a folder of per-class
    /// JSON files), LOCO (`<class>/validation` + `<class>/test/logical_anomalies`),
    /// BTAD (`<class>/train/ok`), MPDD / MVTec (`<class>/train/good` +
    /// `<class>/ground_truth`; MPDD when every class is an MPDD class), folder
    /// (`train/good` or `<class>/train/good` without ground truth), and finally an
    /// ADer-style `meta.json` (read as `mvtec`).
    ///
    /// # Errors
    /// [`DataError::NotFound`] when `root` does not exist, [`DataError::Layout`] when
    /// it is not a folder, [`DataError::UnknownLayout`] (listing the layouts tried)
    /// when nothing matches, [`DataError::Io`] on unreadable folders.
    pub fn detect(root: &Path) -> Result<DatasetKind, DataError> {
        check_root(root)?;
        if root.join("split_csv").join("1cls.csv").is_file() {
            return Ok(DatasetKind::Visa);
        }
        if layouts::realiad_json_dir(root, None).is_some() {
            return Ok(DatasetKind::RealIad);
        }
        if root.join("train").join("good").is_dir() {
            return Ok(DatasetKind::Folder);
        }
        let classes: Vec<_> = list_dir(root)?.into_iter().filter(|e| e.is_dir).collect();
        let any = |f: &dyn Fn(&Path) -> bool| classes.iter().any(|c| f(&c.path));
        if any(&|c| {
            c.join("validation").is_dir() && c.join("test").join("logical_anomalies").is_dir()
        }) {
            return Ok(DatasetKind::Loco);
        }
        if any(&|c| c.join("train").join("ok").is_dir()) {
            return Ok(DatasetKind::Btad);
        }
        let mvtec_like: Vec<_> = classes
            .iter()
            .filter(|c| c.path.join("train").join("good").is_dir())
            .collect();
        if mvtec_like
            .iter()
            .any(|c| c.path.join("ground_truth").is_dir())
        {
            let all_mpdd = mvtec_like
                .iter()
                .all(|c| MPDD_CLASSES.contains(&c.name.as_str()));
            return Ok(if all_mpdd {
                DatasetKind::Mpdd
            } else {
                DatasetKind::Mvtec
            });
        }
        if !mvtec_like.is_empty() {
            return Ok(DatasetKind::Folder);
        }
        if root.join("meta.json").is_file() {
            return Ok(DatasetKind::Mvtec);
        }
        Err(DataError::UnknownLayout {
            root: root.to_path_buf(),
            tried: TRIED_LAYOUTS.to_string(),
            hint: flat_folder_hint(root)?,
        })
    }
}

/// A hint for a root that holds images directly or folders of images without `train/` (an
/// anomalib `Folder` dataset such as `good/` + `crack/` + `mask/`, or a plain image folder):
/// how to arrange it as omniad's `folder` layout. Empty when the root looks like neither.
fn flat_folder_hint(root: &Path) -> Result<String, DataError> {
    let entries = list_dir(root)?;
    let has_images = |dir: &Path| -> Result<bool, DataError> {
        Ok(list_dir(dir)?
            .iter()
            .any(|e| !e.is_dir && crate::decode::has_image_extension(&e.path)))
    };
    let image_dirs: Vec<&str> = entries
        .iter()
        .filter(|e| e.is_dir)
        .filter(|e| has_images(&e.path).unwrap_or(false))
        .map(|e| e.name.as_str())
        .collect();
    let direct = entries
        .iter()
        .any(|e| !e.is_dir && crate::decode::has_image_extension(&e.path));
    if image_dirs.is_empty() && !direct {
        return Ok(String::new());
    }
    let found = if direct {
        "images directly in the folder".to_string()
    } else {
        format!("folders of images ({})", image_dirs.join(", "))
    };
    Ok(format!(
        ". It holds {found}, like an anomalib Folder dataset: omniad's `folder` layout wants \
         train/good (normal images to train on), test/good, test/<defect> and optionally \
         ground_truth/<defect>/<stem>_mask.png, under this folder or under one folder per class \
         (see the README, \"Your own images\")"
    ))
}

/// The six MPDD classes (used only to tell MPDD from MVTec-AD during detection).
const MPDD_CLASSES: &[&str] = &[
    "bracket_black",
    "bracket_brown",
    "bracket_white",
    "connector",
    "metal_plate",
    "tubes",
];

const TRIED_LAYOUTS: &str = "visa (split_csv/1cls.csv), \
    realiad (realiad_jsons/realiad_jsons/<class>.json or realiad_jsons/<class>.json), \
    loco (<class>/validation/good and <class>/test/logical_anomalies), \
    btad (<class>/train/ok), \
    mvtec/mpdd (<class>/train/good and <class>/ground_truth), \
    folder (train/good or <class>/train/good), \
    ADer-style meta.json";

fn check_root(root: &Path) -> Result<(), DataError> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DataError::layout(
            root,
            "dataset",
            "dataset root is a file, expected a folder",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::NotFound {
            path: root.to_path_buf(),
            what: "dataset root".to_string(),
        }),
        Err(e) => Err(DataError::io(root, e)),
    }
}

/// Opens a dataset: discovers classes, applies the `classes` filter and lists
/// the samples of each split in deterministic order.
///
/// Images and masks are paired by file stem, never by position. Nothing is
/// decoded; mask/image size agreement is checked later, by
/// [`load_mask`](crate::load_mask), from the file headers.
///
/// # Errors
/// * [`DataError::NotFound`] — root or a file named by metadata missing;
/// * [`DataError::UnknownClass`] — a name in `classes` is not in the dataset;
/// * [`DataError::EmptyClass`] — a class without train or test images;
/// * [`DataError::MissingSplit`] — e.g. `<class>/test` absent;
/// * [`DataError::MissingMask`] / [`DataError::OrphanMask`] — unpaired masks;
/// * [`DataError::IsDirectory`], [`DataError::Layout`] — stray folders/files;
/// * [`DataError::Parse`] — malformed CSV/JSON;
/// * [`DataError::InvalidArgument`] — an empty or duplicated `classes` list.
pub fn open_dataset(
    kind: DatasetKind,
    root: &Path,
    classes: Option<&[String]>,
    options: &OpenOptions,
) -> Result<Dataset, DataError> {
    check_root(root)?;
    if let Some(list) = classes {
        if list.is_empty() {
            return Err(DataError::InvalidArgument(
                "the --classes list is empty".to_string(),
            ));
        }
        for (i, c) in list.iter().enumerate() {
            if list[..i].contains(c) {
                return Err(DataError::InvalidArgument(format!(
                    "class '{c}' is listed twice in --classes"
                )));
            }
        }
    }
    let meta_json = match &options.meta_json {
        Some(p) => Some(p.clone()),
        None if !layouts::native_marker_present(kind, root, options)?
            && root.join("meta.json").is_file() =>
        {
            Some(root.join("meta.json"))
        }
        None => None,
    };
    let (listing, source) = match &meta_json {
        Some(p) => (
            layouts::read_meta_json(root, p, classes, options)?,
            LayoutSource::MetaJson(p.clone()),
        ),
        None => (
            match kind {
                DatasetKind::Visa => layouts::read_visa(root, classes, options)?,
                DatasetKind::RealIad => layouts::read_realiad(root, classes, options)?,
                _ => layouts::read_dirs(kind, root, classes, options)?,
            },
            LayoutSource::Native,
        ),
    };
    let has_masks = listing
        .test
        .iter()
        .all(|s| s.label == Label::Normal || !s.masks.is_empty());
    if !has_masks {
        tracing::warn!(
            root = %root.display(),
            "dataset has no ground-truth masks for every anomalous test image: \
             image-level evaluation only (no pixel metrics)"
        );
    }
    Ok(Dataset {
        kind,
        root: root.to_path_buf(),
        classes: listing.classes,
        train: listing.train,
        validation: listing.validation,
        test: listing.test,
        has_masks,
        source,
    })
}
