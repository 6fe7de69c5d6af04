//! Readers of the native on-disk layouts (folder-based, VisA CSV, Real-IAD JSON)
//! and of ADer-style `meta.json` files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::dataset::{
    class_dirs, select_classes, Dataset, DatasetKind, Label, LayoutSource, OpenOptions, Sample,
    Split,
};
use crate::decode::has_image_extension;
use crate::error::DataError;
use crate::fsutil::{is_hidden, join_rel, list_dir, list_images, require_file, stem};

const GOOD: &str = "good";

/// True when the native markers of `kind` are present under `root`
/// (used to decide whether a `root/meta.json` should be read instead).
pub(crate) fn native_marker_present(
    kind: DatasetKind,
    root: &Path,
    opts: &OpenOptions,
) -> Result<bool, DataError> {
    Ok(match kind {
        DatasetKind::Visa => visa_csv_path(root, opts).is_file(),
        DatasetKind::RealIad => realiad_json_dir(root, opts.realiad_json_dir.as_deref()).is_some(),
        _ => {
            root.join("train").is_dir()
                || class_dirs(root)?
                    .iter()
                    .any(|(_, p)| p.join("train").is_dir())
        }
    })
}

// ---------------------------------------------------------------------------
// Folder-based layouts: MVTec-AD, MPDD, BTAD, MVTec LOCO, generic folder.
// ---------------------------------------------------------------------------

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
    /// Extra training folders used when present (LOCO `validation/good`).
    extra_train: &'static [&'static str],
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
            extra_train: &[],
            normal: "ok",
            mask_style: MaskStyle::File,
            masks_required: true,
        },
        DatasetKind::Loco => DirSpec {
            train: "train/good",
            extra_train: &["validation/good"],
            normal: GOOD,
            mask_style: MaskStyle::Folder,
            masks_required: true,
        },
        DatasetKind::Folder => DirSpec {
            train: "train/good",
            extra_train: &[],
            normal: GOOD,
            mask_style: MaskStyle::File,
            masks_required: false,
        },
        _ => DirSpec {
            train: "train/good",
            extra_train: &[],
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
) -> Result<Dataset, DataError> {
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
        let (tr, te) = read_dir_class(kind, &spec, class, dir, &gt, opts)?;
        train.extend(tr);
        test.extend(te);
    }
    Ok(Dataset {
        kind,
        root: root.to_path_buf(),
        classes,
        train,
        test,
        has_masks: true, // recomputed by open_dataset
        source: LayoutSource::Native,
    })
}

/// Reads one class folder; returns (train, test).
fn read_dir_class(
    kind: DatasetKind,
    spec: &DirSpec,
    class: &str,
    dir: &Path,
    gt: &Path,
    opts: &OpenOptions,
) -> Result<(Vec<Sample>, Vec<Sample>), DataError> {
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
    let mut train_dirs = vec![train_dir.clone()];
    train_dirs.extend(
        spec.extra_train
            .iter()
            .map(|d| join_rel(dir, d))
            .filter(|p| p.is_dir()),
    );
    for td in &train_dirs {
        for image in list_images(td, kind.name())? {
            train.push(Sample {
                class: class.to_string(),
                split: Split::Train,
                image,
                masks: Vec::new(),
                label: Label::Normal,
                defect: GOOD.to_string(),
                sample_id: None,
            });
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
            test.push(Sample {
                class: class.to_string(),
                split: Split::Test,
                image,
                masks: Vec::new(),
                label: if normal {
                    Label::Normal
                } else {
                    Label::Anomaly
                },
                defect: if normal {
                    GOOD.to_string()
                } else {
                    e.name.clone()
                },
                sample_id: None,
            });
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
    Ok((train, test))
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

// ---------------------------------------------------------------------------
// VisA: split_csv/1cls.csv
// ---------------------------------------------------------------------------

fn visa_csv_path(root: &Path, opts: &OpenOptions) -> PathBuf {
    opts.visa_split_csv
        .clone()
        .unwrap_or_else(|| root.join("split_csv").join("1cls.csv"))
}

/// Reads VisA from its split CSV (columns `object,split,label,image,mask`,
/// paths relative to the root, labels `normal`/`anomaly`).
pub(crate) fn read_visa(
    root: &Path,
    requested: Option<&[String]>,
    opts: &OpenOptions,
) -> Result<Dataset, DataError> {
    let csv_path = visa_csv_path(root, opts);
    require_file(&csv_path, "VisA split CSV (split_csv/1cls.csv)")?;
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&csv_path)
        .map_err(|e| DataError::parse(&csv_path, "CSV", e.to_string()))?;
    let headers = rdr
        .headers()
        .map_err(|e| DataError::parse(&csv_path, "CSV", e.to_string()))?
        .clone();
    let col = |name: &str| -> Result<usize, DataError> {
        headers
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                DataError::parse(
                    &csv_path,
                    "CSV",
                    format!(
                        "missing column '{name}' (expected columns object,split,label,image,mask)"
                    ),
                )
            })
    };
    let (c_obj, c_split, c_label, c_img, c_mask) = (
        col("object")?,
        col("split")?,
        col("label")?,
        col("image")?,
        col("mask")?,
    );
    struct Row {
        class: String,
        split: Split,
        label: Label,
        image: String,
        mask: String,
        line: u64,
    }
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| DataError::parse(&csv_path, "CSV", e.to_string()))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let get = |i: usize| rec.get(i).unwrap_or("").to_string();
        let bad = |msg: String| DataError::parse(&csv_path, "CSV", format!("line {line}: {msg}"));
        let split = match get(c_split).to_ascii_lowercase().as_str() {
            "train" => Split::Train,
            "test" => Split::Test,
            other => return Err(bad(format!("split '{other}' is neither train nor test"))),
        };
        let label = match get(c_label).to_ascii_lowercase().as_str() {
            "normal" => Label::Normal,
            "anomaly" => Label::Anomaly,
            other => {
                return Err(bad(format!(
                    "label '{other}' is neither normal nor anomaly"
                )))
            }
        };
        let class = get(c_obj);
        if class.is_empty() || get(c_img).is_empty() {
            return Err(bad("empty object or image field".to_string()));
        }
        if split == Split::Train && label == Label::Anomaly {
            return Err(bad("anomalous image in the train split (unsupervised training uses normal images only)".to_string()));
        }
        rows.push(Row {
            class,
            split,
            label,
            image: get(c_img),
            mask: get(c_mask),
            line,
        });
    }
    let available: Vec<String> = rows
        .iter()
        .map(|r| r.class.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if available.is_empty() {
        return Err(DataError::parse(&csv_path, "CSV", "no rows"));
    }
    let classes = select_classes(root, available, requested)?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for class in &classes {
        let mut tr = Vec::new();
        let mut te = Vec::new();
        for r in rows.iter().filter(|r| &r.class == class) {
            let image = join_rel(root, &r.image);
            require_file(
                &image,
                &format!(
                    "image file listed on line {} of {}",
                    r.line,
                    csv_path.display()
                ),
            )?;
            let mut masks = Vec::new();
            if !r.mask.is_empty() {
                let m = join_rel(root, &r.mask);
                require_file(
                    &m,
                    &format!(
                        "mask file listed on line {} of {}",
                        r.line,
                        csv_path.display()
                    ),
                )?;
                masks.push(m);
            }
            if r.split == Split::Test && r.label == Label::Anomaly && masks.is_empty() {
                if !opts.allow_missing_masks {
                    return Err(DataError::MissingMask {
                        image,
                        expected: format!(
                            "a mask path in the 'mask' column, line {} of {}",
                            r.line,
                            csv_path.display()
                        ),
                    });
                }
                tracing::warn!(image = %image.display(), "anomalous test image without a mask accepted (allow_missing_masks)");
            }
            let s = Sample {
                class: class.clone(),
                split: r.split,
                image,
                masks,
                label: r.label,
                defect: match r.label {
                    Label::Normal => GOOD.to_string(),
                    Label::Anomaly => "anomaly".to_string(),
                },
                sample_id: None,
            };
            match r.split {
                Split::Train => tr.push(s),
                Split::Test => te.push(s),
            }
        }
        add_class(class, tr, te, &csv_path, &mut train, &mut test)?;
    }
    Ok(Dataset {
        kind: DatasetKind::Visa,
        root: root.to_path_buf(),
        classes,
        train,
        test,
        has_masks: true, // recomputed by open_dataset
        source: LayoutSource::Native,
    })
}

/// Appends one class's samples read from a listing file (`source`), each split sorted by image
/// path; a split without samples is [`DataError::EmptyClass`].
fn add_class(
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

// ---------------------------------------------------------------------------
// Real-IAD: realiad_jsons/realiad_jsons/<class>.json
// ---------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct RiFile {
    #[serde(default)]
    meta: Option<RiMeta>,
    train: Vec<RiEntry>,
    test: Vec<RiEntry>,
}

#[derive(serde::Deserialize)]
struct RiMeta {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    normal_class: Option<String>,
}

#[derive(serde::Deserialize)]
struct RiEntry {
    anomaly_class: String,
    image_path: String,
    #[serde(default)]
    mask_path: Option<String>,
}

fn has_json(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !is_hidden(&name)
                    && name.to_ascii_lowercase().ends_with(".json")
                    && name != "meta.json"
            })
        })
        .unwrap_or(false)
}

/// The Real-IAD JSON folder: `explicit` if given, else the first candidate holding
/// JSON files: `root/realiad_jsons/realiad_jsons`, `root/realiad_jsons`, and, when
/// the root is itself an image folder named `realiad_<res>`, the same two under
/// its parent.
pub(crate) fn realiad_json_dir(root: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let mut candidates = vec![
        root.join("realiad_jsons").join("realiad_jsons"),
        root.join("realiad_jsons"),
    ];
    let is_image_dir = root
        .file_name()
        .map(|n| n.to_string_lossy().starts_with("realiad_"))
        .unwrap_or(false);
    if let (true, Some(parent)) = (is_image_dir, root.parent()) {
        candidates.push(parent.join("realiad_jsons").join("realiad_jsons"));
        candidates.push(parent.join("realiad_jsons"));
    }
    candidates.into_iter().find(|d| d.is_dir() && has_json(d))
}

/// Finds the folder holding `<class>/` image folders.
fn realiad_image_dir(root: &Path, class: &str, opts: &OpenOptions) -> Result<PathBuf, DataError> {
    if let Some(p) = &opts.realiad_image_dir {
        if !p.is_dir() {
            return Err(DataError::NotFound {
                path: p.clone(),
                what: "Real-IAD image folder (OpenOptions::realiad_image_dir)".to_string(),
            });
        }
        return Ok(p.clone());
    }
    let mut candidates: Vec<PathBuf> = list_dir(root)?
        .into_iter()
        .filter(|e| {
            e.is_dir && e.name.starts_with("realiad_") && !e.name.starts_with("realiad_jsons")
        })
        .filter(|e| e.path.join(class).is_dir())
        .map(|e| e.path)
        .collect();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 if root.join(class).is_dir() => Ok(root.to_path_buf()),
        0 => Err(DataError::layout(
            root,
            DatasetKind::RealIad,
            format!(
                "no image folder holds class '{class}' (looked for {}/realiad_<res>/{class} and {}/{class}); \
                 set OpenOptions::realiad_image_dir",
                root.display(),
                root.display()
            ),
        )),
        _ => Err(DataError::layout(
            root,
            DatasetKind::RealIad,
            format!(
                "several image folders hold class '{class}': {}; choose one with OpenOptions::realiad_image_dir",
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// Reads Real-IAD from its per-class JSON files (all five camera views kept;
/// `sample_id` = `<class>/<folder of the image>`, shared by the views of a sample).
pub(crate) fn read_realiad(
    root: &Path,
    requested: Option<&[String]>,
    opts: &OpenOptions,
) -> Result<Dataset, DataError> {
    let Some(json_dir) = realiad_json_dir(root, opts.realiad_json_dir.as_deref()) else {
        return Err(DataError::layout(
            root,
            DatasetKind::RealIad,
            "no folder of per-class JSON files found (looked for realiad_jsons/realiad_jsons and realiad_jsons \
             under the root, or under the parent of a realiad_<res> root); set OpenOptions::realiad_json_dir",
        ));
    };
    if !json_dir.is_dir() {
        return Err(DataError::NotFound {
            path: json_dir,
            what: "Real-IAD JSON folder".to_string(),
        });
    }
    let mut available = Vec::new();
    for e in list_dir(&json_dir)? {
        if !e.is_dir && e.name.to_ascii_lowercase().ends_with(".json") && e.name != "meta.json" {
            available.push(stem(&e.path));
        }
    }
    if available.is_empty() {
        return Err(DataError::layout(
            &json_dir,
            DatasetKind::RealIad,
            "no <class>.json file in the JSON folder",
        ));
    }
    let classes = select_classes(root, available, requested)?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    for class in &classes {
        let json_path = json_dir.join(format!("{class}.json"));
        let text = std::fs::read_to_string(&json_path).map_err(|e| DataError::io(&json_path, e))?;
        let file: RiFile = serde_json::from_str(&text).map_err(|e| {
            DataError::parse(&json_path, "Real-IAD JSON", format!("{e} (expected {{\"train\": [...], \"test\": [...]}} of {{anomaly_class, image_path, mask_path}})"))
        })?;
        let normal_class = file
            .meta
            .as_ref()
            .and_then(|m| m.normal_class.clone())
            .unwrap_or_else(|| "OK".to_string());
        let prefix = file
            .meta
            .as_ref()
            .and_then(|m| m.prefix.clone())
            .unwrap_or_default();
        let img_root = realiad_image_dir(root, class, opts)?;
        // Bases tried for the first entry; the one that works is used for all entries.
        let mut bases = vec![img_root.join(class), img_root.clone()];
        if !prefix.is_empty() {
            bases.push(join_rel(&img_root, &prefix).join(class));
            bases.push(join_rel(&img_root, &prefix));
        }
        let first = file.train.first().or(file.test.first());
        let base = first
            .and_then(|e| bases.iter().find(|b| join_rel(b, &e.image_path).is_file()))
            .cloned()
            .unwrap_or_else(|| bases[0].clone());
        let mut tr = Vec::new();
        let mut te = Vec::new();
        for (split, entries) in [(Split::Train, &file.train), (Split::Test, &file.test)] {
            for e in entries {
                let image = join_rel(&base, &e.image_path);
                require_file(
                    &image,
                    &format!("image file listed in {}", json_path.display()),
                )?;
                let normal = e.anomaly_class == normal_class;
                if split == Split::Train && !normal {
                    return Err(DataError::parse(
                        &json_path,
                        "Real-IAD JSON",
                        format!("anomalous image {} in the train list", e.image_path),
                    ));
                }
                let mut masks = Vec::new();
                if let Some(m) = e.mask_path.as_deref().filter(|m| !m.is_empty()) {
                    let mp = join_rel(&base, m);
                    require_file(&mp, &format!("mask file listed in {}", json_path.display()))?;
                    masks.push(mp);
                }
                if !normal && masks.is_empty() {
                    if !opts.allow_missing_masks {
                        return Err(DataError::MissingMask {
                            image,
                            expected: format!("a mask_path in {}", json_path.display()),
                        });
                    }
                    tracing::warn!(image = %image.display(), "anomalous test image without a mask accepted (allow_missing_masks)");
                }
                let sample_id = image
                    .parent()
                    .and_then(|p| p.strip_prefix(&img_root).ok())
                    .map(|p| {
                        p.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join("/")
                    })
                    .map(|id| {
                        if id.starts_with(&format!("{class}/")) {
                            id
                        } else {
                            format!("{class}/{id}")
                        }
                    });
                let s = Sample {
                    class: class.clone(),
                    split,
                    image,
                    masks,
                    label: if normal {
                        Label::Normal
                    } else {
                        Label::Anomaly
                    },
                    defect: if normal {
                        GOOD.to_string()
                    } else {
                        e.anomaly_class.clone()
                    },
                    sample_id,
                };
                match split {
                    Split::Train => tr.push(s),
                    Split::Test => te.push(s),
                }
            }
        }
        add_class(class, tr, te, &json_path, &mut train, &mut test)?;
    }
    Ok(Dataset {
        kind: DatasetKind::RealIad,
        root: root.to_path_buf(),
        classes,
        train,
        test,
        has_masks: true, // recomputed by open_dataset
        source: LayoutSource::Native,
    })
}

// ---------------------------------------------------------------------------
// ADer-style meta.json
// ---------------------------------------------------------------------------

#[derive(serde::Deserialize)]
struct MetaFile {
    train: BTreeMap<String, Vec<MetaEntry>>,
    test: BTreeMap<String, Vec<MetaEntry>>,
}

#[derive(serde::Deserialize)]
struct MetaEntry {
    img_path: String,
    #[serde(default)]
    mask_path: Option<String>,
    #[serde(default)]
    specie_name: Option<String>,
    anomaly: serde_json::Value,
}

/// Reads an ADer/UniAD-style `meta.json`:
/// `{"train": {cls: [{img_path, mask_path, cls_name, specie_name, anomaly}]}, "test": {...}}`,
/// paths relative to `root`, `anomaly` 0/1 (or a boolean).
pub(crate) fn read_meta_json(
    kind: DatasetKind,
    root: &Path,
    meta_path: &Path,
    requested: Option<&[String]>,
    opts: &OpenOptions,
) -> Result<Dataset, DataError> {
    require_file(meta_path, "meta.json file")?;
    let text = std::fs::read_to_string(meta_path).map_err(|e| DataError::io(meta_path, e))?;
    let file: MetaFile = serde_json::from_str(&text).map_err(|e| {
        DataError::parse(
            meta_path,
            "meta.json",
            format!("{e} (expected {{\"train\": {{class: [{{img_path, mask_path, specie_name, anomaly}}]}}, \"test\": {{...}}}})"),
        )
    })?;
    let available: Vec<String> = file
        .train
        .keys()
        .chain(file.test.keys())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if available.is_empty() {
        return Err(DataError::parse(
            meta_path,
            "meta.json",
            "no class in train or test",
        ));
    }
    let classes = select_classes(root, available, requested)?;
    let mut train = Vec::new();
    let mut test = Vec::new();
    let mut any_mask = false;
    let empty = Vec::new();
    for class in &classes {
        let mut parts: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for (k, split, entries) in [
            (0, Split::Train, file.train.get(class).unwrap_or(&empty)),
            (1, Split::Test, file.test.get(class).unwrap_or(&empty)),
        ] {
            for e in entries {
                let anomalous = match &e.anomaly {
                    serde_json::Value::Bool(b) => *b,
                    serde_json::Value::Number(n) => n.as_f64().map(|v| v != 0.0).unwrap_or(false),
                    other => {
                        return Err(DataError::parse(
                            meta_path,
                            "meta.json",
                            format!(
                                "entry {}: 'anomaly' must be 0/1 or a boolean, got {other}",
                                e.img_path
                            ),
                        ))
                    }
                };
                if split == Split::Train && anomalous {
                    return Err(DataError::parse(
                        meta_path,
                        "meta.json",
                        format!("anomalous image {} in the train split", e.img_path),
                    ));
                }
                let image = join_rel(root, &e.img_path);
                require_file(
                    &image,
                    &format!("image file listed in {}", meta_path.display()),
                )?;
                let mut masks = Vec::new();
                if let Some(m) = e.mask_path.as_deref().filter(|m| !m.is_empty()) {
                    let mp = join_rel(root, m);
                    require_file(&mp, &format!("mask file listed in {}", meta_path.display()))?;
                    masks.push(mp);
                    any_mask = true;
                }
                let defect = if anomalous {
                    e.specie_name
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "anomaly".to_string())
                } else {
                    GOOD.to_string()
                };
                parts[k].push(Sample {
                    class: class.clone(),
                    split,
                    image,
                    masks,
                    label: if anomalous {
                        Label::Anomaly
                    } else {
                        Label::Normal
                    },
                    defect,
                    sample_id: None,
                });
            }
        }
        let [tr, te] = parts;
        add_class(class, tr, te, meta_path, &mut train, &mut test)?;
    }
    // A meta.json that gives masks promises them for every anomalous test image.
    if any_mask && !opts.allow_missing_masks {
        if let Some(s) = test
            .iter()
            .find(|s| s.label == Label::Anomaly && s.masks.is_empty())
        {
            return Err(DataError::MissingMask {
                image: s.image.clone(),
                expected: format!("a mask_path in {}", meta_path.display()),
            });
        }
    }
    Ok(Dataset {
        kind,
        root: root.to_path_buf(),
        classes,
        train,
        test,
        has_masks: any_mask, // recomputed by open_dataset
        source: LayoutSource::MetaJson(meta_path.to_path_buf()),
    })
}
