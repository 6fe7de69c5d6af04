//! VisA: `split_csv/1cls.csv` lists every image with its split, label and mask.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{add_class, select_classes, Listing};
use crate::dataset::{Label, OpenOptions, Sample, Split};
use crate::error::DataError;
use crate::fsutil::{join_rel, require_file};

pub(crate) fn visa_csv_path(root: &Path, opts: &OpenOptions) -> PathBuf {
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
) -> Result<Listing, DataError> {
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
            let s = Sample::labelled(class, r.split, image, r.label, "anomaly", masks);
            match r.split {
                Split::Train => tr.push(s),
                Split::Test => te.push(s),
            }
        }
        add_class(class, tr, te, &csv_path, &mut train, &mut test)?;
    }
    Ok(Listing {
        classes,
        train,
        validation: Vec::new(),
        test,
    })
}
