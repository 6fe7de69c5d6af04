//! Real-IAD: `realiad_jsons/realiad_jsons/<class>.json` per class, five camera views per sample.
use std::path::{Path, PathBuf};

use super::{add_class, select_classes, Listing};
use crate::dataset::{DatasetKind, Label, OpenOptions, Sample, Split};
use crate::error::DataError;
use crate::fsutil::{is_hidden, join_rel, list_dir, require_file, stem};

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
) -> Result<Listing, DataError> {
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
                let label = if normal {
                    Label::Normal
                } else {
                    Label::Anomaly
                };
                let s = Sample::labelled(class, split, image, label, &e.anomaly_class, masks)
                    .with_sample_id(sample_id);
                match split {
                    Split::Train => tr.push(s),
                    Split::Test => te.push(s),
                }
            }
        }
        add_class(class, tr, te, &json_path, &mut train, &mut test)?;
    }
    Ok(Listing {
        classes,
        train,
        validation: Vec::new(),
        test,
    })
}
