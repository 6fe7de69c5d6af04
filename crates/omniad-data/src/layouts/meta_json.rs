//! An ADer-style `meta.json` (`{"train": {class: [entries]}, "test": {...}}`) for any layout.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{add_class, select_classes, Listing};
use crate::dataset::{Label, OpenOptions, Sample, Split};
use crate::error::DataError;
use crate::fsutil::{join_rel, require_file};

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
    root: &Path,
    meta_path: &Path,
    requested: Option<&[String]>,
    opts: &OpenOptions,
) -> Result<Listing, DataError> {
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
                let defect = e
                    .specie_name
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("anomaly");
                let label = if anomalous {
                    Label::Anomaly
                } else {
                    Label::Normal
                };
                parts[k].push(Sample::labelled(class, split, image, label, defect, masks));
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
    Ok(Listing {
        classes,
        train,
        validation: Vec::new(),
        test,
    })
}
