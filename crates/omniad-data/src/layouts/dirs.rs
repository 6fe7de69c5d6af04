//! Folder layouts: MVTec-AD, MPDD, BTAD, MVTec LOCO and the generic `folder` layout.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{class_dirs, select_classes, Listing, GOOD};
use crate::dataset::{DatasetKind, Label, OpenOptions, Sample, Split};
use crate::decode::has_image_extension;
use crate::error::DataError;
use crate::fsutil::{join_rel, list_dir, list_images, stem};

/// How masks are stored under `ground_truth/<defect>/`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MaskStyle {
    /// One file per image: `<stem>_mask.<ext>` or `<stem>.<ext>`.
    File,
    /// A folder per image, `<stem>/`, holding one or more mask files (MVTec LOCO).
    Folder,
}

struct DirSpec {
    /// Required training folder (relative to the class folder).
    train: &'static str,
    /// Folders of normal images held out for validation, used when present (LOCO
    /// `validation/good`).
    validation: &'static [&'static str],
    /// Name of the normal folder under `test/` (`good`, BTAD `ok`).
    normal: &'static str,
    mask_style: MaskStyle,
    /// Masks are part of the layout (false: the generic folder layout).
    masks_required: bool,
}

fn dir_spec(kind: DatasetKind) -> DirSpec {
    match kind {
        DatasetKind::Btad => DirSpec {
            train: "train/ok",
            validation: &[],
            normal: "ok",
            mask_style: MaskStyle::File,
            masks_required: true,
        },
        DatasetKind::Loco => DirSpec {
            train: "train/good",
            validation: &["validation/good"],
            normal: GOOD,
            mask_style: MaskStyle::Folder,
            masks_required: true,
        },
        DatasetKind::Folder => DirSpec {
            train: "train/good",
            validation: &[],
            normal: GOOD,
            mask_style: MaskStyle::File,
            masks_required: false,
        },
        _ => DirSpec {
            train: "train/good",
            validation: &[],
            normal: GOOD,
            mask_style: MaskStyle::File,
            masks_required: true,
        },
    }
}

/// Reads MVTec-AD, MPDD, BTAD, LOCO and the generic folder layout.
pub(crate) fn read_dirs(
    kind: DatasetKind,
    root: &Path,
    requested: Option<&[String]>,
    opts: &OpenOptions,
) -> Result<Listing, DataError> {
    let spec = dir_spec(kind);
    // The folder layout may hold a single class directly at the root.
    let single = kind == DatasetKind::Folder && root.join("train").is_dir();
    let available: Vec<(String, PathBuf)> = if single {
        let name = root
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "folder".to_string());
        vec![(name, root.to_path_buf())]
    } else {
        class_dirs(root)?
    };
    if available.is_empty() {
        return Err(DataError::layout(
            root,
            kind,
            format!(
                "no class folders found (expected <class>/{} under the root)",
                spec.train
            ),
        ));
    }
    let names: Vec<String> = available.iter().map(|(n, _)| n.clone()).collect();
    let classes = select_classes(root, names, requested)?;
    let mut train = Vec::new();
    let mut validation = Vec::new();
    let mut test = Vec::new();
    for class in &classes {
        let Some((_, dir)) = available.iter().find(|(n, _)| n == class) else {
            continue; // unreachable: select_classes checked membership
        };
        let gt = match (&opts.mask_dir, single) {
            (Some(m), true) => m.clone(),
            (Some(m), false) => m.join(class),
            (None, _) => dir.join("ground_truth"),
        };
        let (tr, va, te) = read_dir_class(kind, &spec, class, dir, &gt, opts)?;
        train.extend(tr);
        validation.extend(va);
        test.extend(te);
    }
    Ok(Listing {
        classes,
        train,
        validation,
        test,
    })
}

/// One class's `(train, validation, test)` samples.
type ClassSplits = (Vec<Sample>, Vec<Sample>, Vec<Sample>);

/// Reads one class folder; returns (train, validation, test).
fn read_dir_class(
    kind: DatasetKind,
    spec: &DirSpec,
    class: &str,
    dir: &Path,
    gt: &Path,
    opts: &OpenOptions,
) -> Result<ClassSplits, DataError> {
    if list_dir(dir)?.is_empty() {
        return Err(DataError::EmptyClass {
            class: class.to_string(),
            split: "train or test".to_string(),
            path: dir.to_path_buf(),
        });
    }
    // Train.
    let train_dir = join_rel(dir, spec.train);
    if !train_dir.is_dir() {
        return Err(DataError::MissingSplit {
            path: train_dir,
            what: format!("training images ({}) of class '{class}'", spec.train),
        });
    }
    let mut train = Vec::new();
    for image in list_images(&train_dir, kind.name())? {
        train.push(Sample::normal(class, Split::Train, image));
    }
    let mut validation = Vec::new();
    for vd in spec
        .validation
        .iter()
        .map(|d| join_rel(dir, d))
        .filter(|p| p.is_dir())
    {
        for image in list_images(&vd, kind.name())? {
            validation.push(Sample::normal(class, Split::Train, image));
        }
    }
    if train.is_empty() {
        return Err(DataError::EmptyClass {
            class: class.to_string(),
            split: "train".to_string(),
            path: train_dir,
        });
    }
    // Test.
    let test_dir = dir.join("test");
    if !test_dir.is_dir() {
        return Err(DataError::MissingSplit {
            path: test_dir,
            what: format!("test images (test/<defect>) of class '{class}'"),
        });
    }
    let mut test = Vec::new();
    // defect -> (stem -> index in `test`)
    let mut by_defect: BTreeMap<String, HashMap<String, usize>> = BTreeMap::new();
    for e in list_dir(&test_dir)? {
        if !e.is_dir {
            return Err(DataError::layout(
                &e.path,
                kind,
                "unexpected file directly under test/; images belong in test/<defect>/",
            ));
        }
        let normal = e.name == spec.normal;
        let stems = by_defect.entry(e.name.clone()).or_default();
        for image in list_images(&e.path, kind.name())? {
            let s = stem(&image);
            if let Some(&prev) = stems.get(&s) {
                return Err(DataError::layout(
                    &image,
                    kind,
                    format!(
                        "two test images share the stem '{s}' ({} too); masks are paired by stem",
                        test_sample_path(&test, prev).display()
                    ),
                ));
            }
            stems.insert(s, test.len());
            let label = if normal {
                Label::Normal
            } else {
                Label::Anomaly
            };
            test.push(Sample::labelled(
                class,
                Split::Test,
                image,
                label,
                &e.name,
                Vec::new(),
            ));
        }
    }
    if test.is_empty() {
        return Err(DataError::EmptyClass {
            class: class.to_string(),
            split: "test".to_string(),
            path: test_dir,
        });
    }
    // Masks.
    let gt_present = gt.is_dir();
    if gt_present {
        attach_masks(kind, spec.mask_style, gt, &test_dir, &by_defect, &mut test)?;
    }
    let masks_promised = gt_present || spec.masks_required;
    let missing: Vec<usize> = (0..test.len())
        .filter(|&i| test[i].label == Label::Anomaly && test[i].masks.is_empty())
        .collect();
    if let Some(&first) = missing.first() {
        if masks_promised && !opts.allow_missing_masks {
            let s = &test[first];
            let expected = match spec.mask_style {
                MaskStyle::File => format!(
                    "{}/{}_mask.<png|bmp|...> or {}.<ext>",
                    gt.join(&s.defect).display(),
                    stem(&s.image),
                    stem(&s.image)
                ),
                MaskStyle::Folder => format!(
                    "{}/*.png",
                    gt.join(&s.defect).join(stem(&s.image)).display()
                ),
            };
            return Err(DataError::MissingMask {
                image: s.image.clone(),
                expected,
            });
        }
        if masks_promised {
            tracing::warn!(
                class,
                count = missing.len(),
                "anomalous test images without a mask accepted (allow_missing_masks)"
            );
        }
    }
    Ok((train, validation, test))
}

fn test_sample_path(test: &[Sample], i: usize) -> &Path {
    &test[i].image
}

/// Pairs the masks under `gt/<defect>/` with the test images by stem.
fn attach_masks(
    kind: DatasetKind,
    style: MaskStyle,
    gt: &Path,
    test_dir: &Path,
    by_defect: &BTreeMap<String, HashMap<String, usize>>,
    test: &mut [Sample],
) -> Result<(), DataError> {
    for d in list_dir(gt)? {
        if !d.is_dir {
            return Err(DataError::layout(
                &d.path,
                kind,
                "unexpected file directly under ground_truth/; masks belong in ground_truth/<defect>/",
            ));
        }
        let stems = by_defect.get(&d.name);
        for m in list_dir(&d.path)? {
            // The stem the mask refers to, and the mask files themselves.
            let (key, files) = match style {
                MaskStyle::File => {
                    if m.is_dir {
                        return Err(DataError::IsDirectory {
                            path: m.path,
                            what: "a mask image file".to_string(),
                        });
                    }
                    if !has_image_extension(&m.path) {
                        return Err(DataError::layout(
                            &m.path,
                            kind,
                            "unexpected file: not a supported mask image",
                        ));
                    }
                    let s = stem(&m.path);
                    let key = match stems {
                        Some(st) if st.contains_key(&s) => s,
                        _ => s.strip_suffix("_mask").map(str::to_string).unwrap_or(s),
                    };
                    (key, vec![m.path.clone()])
                }
                MaskStyle::Folder => {
                    if !m.is_dir {
                        return Err(DataError::layout(
                            &m.path,
                            kind,
                            "unexpected file: LOCO masks live in ground_truth/<type>/<image stem>/*.png",
                        ));
                    }
                    let files = list_images(&m.path, kind.name())?;
                    if files.is_empty() {
                        return Err(DataError::layout(
                            &m.path,
                            kind,
                            "mask folder holds no mask image",
                        ));
                    }
                    (m.name.clone(), files)
                }
            };
            let Some(&idx) = stems.and_then(|st| st.get(&key)) else {
                return Err(DataError::OrphanMask {
                    mask: m.path.clone(),
                    expected: format!("{}/{key}.<ext>", test_dir.join(&d.name).display()),
                });
            };
            test[idx].masks.extend(files);
        }
    }
    Ok(())
}
