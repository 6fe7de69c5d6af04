//! Class recognition from teacher features: which of the trained classes an image shows, how
//! sure that is, and whether it shows none of them (omniad's addition for multi-class
//! deployment; the paper evaluates with the class known).
//!
//! # Descriptor
//! [`descriptors`]: for each of the teacher's three feature maps, the global average over the
//! spatial positions, L2-normalised; the three are concatenated and divided by `sqrt(3)`, so a
//! descriptor has unit length and `1 - a·b` is the cosine distance (in `[0, 2]`). Defects are
//! local, so averaging over the whole image leaves a descriptor close to that of the product's
//! normal images; different products (or a random photo) land elsewhere. It depends only on the
//! frozen teacher, never on the decoder.
//!
//! # Bank and decision ([`ClassBank`])
//! Per class, a bank of at most [`BANK_PER_CLASS`] descriptors of its training images, chosen by
//! greedy k-center selection (each next vector the one farthest from those chosen), so the bank
//! covers the class's spread. An image's class is the class of its nearest bank vector; its
//! `confidence` is `1 - d1 / d2` with `d1` the distance to that class and `d2` to the nearest
//! other class (0 = equally close to two classes, 1 = far from every other; 1 with one class).
//! The image is of an unknown class when `d1` exceeds the class's `unknown_distance`:
//! `r · (1 + margin)`, where `r` is the largest nearest-bank distance seen among the class's own
//! normal images, the training images (leave-one-out for bank members) and the held-out
//! validation images, and `margin` ([`UNKNOWN_MARGIN`] by default) the slack beyond them.
use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

/// Name of the descriptor recipe stored with a bank (a different recipe cannot be mixed).
pub const DESCRIPTOR: &str = "teacher-gap-l2-v1";
/// Most bank vectors kept per class.
pub const BANK_PER_CLASS: usize = 256;
/// Default slack of the unknown-class distance over the largest distance the class's own
/// normal images show (see the module docs).
pub const UNKNOWN_MARGIN: f64 = 1.0;
/// Safetensors name of the bank `[N, D]` f32 in a checkpoint's weights file.
pub const BANK_TENSOR: &str = "recognition.bank";
/// Safetensors name of the bank vectors' class indices `[N]` i64.
pub const LABELS_TENSOR: &str = "recognition.labels";

/// Image descriptors `[B, c1 + c2 + c3]` (f32, unit length, on the features' device) of
/// teacher features `[B, c_i, h_i, w_i]`; see the module docs.
pub fn descriptors(feats: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = feats
        .iter()
        .map(|f| {
            let g = f
                .to_kind(Kind::Float)
                .mean_dim([2i64, 3].as_slice(), false, Kind::Float);
            let n = g
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
                .clamp_min(1e-12);
            g / n
        })
        .collect();
    Tensor::cat(&parts, 1) / (parts.len().max(1) as f64).sqrt()
}

/// The class decision for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognition {
    /// Index of the nearest class in [`ClassBank::classes`].
    pub class: usize,
    /// Cosine distance to that class's nearest bank vector, in `[0, 2]`.
    pub distance: f64,
    /// `1 - d1 / d2` in `[0, 1]` (see the module docs).
    pub confidence: f64,
    /// `distance` exceeds the class's unknown-class distance.
    pub unknown: bool,
}

/// The class descriptions stored in a checkpoint: bank vectors, their classes, and each
/// class's unknown-class distance.
#[derive(Debug)]
pub struct ClassBank {
    /// Class names; indices of [`Self::labels`] point here.
    pub classes: Vec<String>,
    /// `[N, D]` f32 on the CPU, unit rows.
    pub bank: Tensor,
    /// Class index of each bank row.
    pub labels: Vec<i64>,
    /// Per class (same order as `classes`): distances above this are an unknown class.
    pub unknown_distance: Vec<f64>,
    /// The margin the distances were fitted with.
    pub margin: f64,
}

/// What [`ClassBank::fit`] measured per class (for the training summary and the README).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassFit {
    /// Training images described.
    pub train_images: usize,
    /// Bank vectors kept.
    pub bank_vectors: usize,
    /// Largest leave-one-out nearest-bank distance of a training image.
    pub train_max_distance: f64,
    /// Validation images described.
    pub val_images: usize,
    /// Largest nearest-bank distance of a validation image (`None` without one).
    pub val_max_distance: Option<f64>,
    /// The unknown-class distance.
    pub unknown_distance: f64,
}

/// The JSON half of a bank in `model.json` (the vectors are in the weights file).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecognitionMeta {
    /// Always [`DESCRIPTOR`].
    pub descriptor: String,
    /// Class names, in the order of the labels tensor's indices.
    pub classes: Vec<String>,
    /// Unknown-class distance per class.
    pub unknown_distance: BTreeMap<String, f64>,
    /// The margin used.
    pub margin: f64,
    /// What was measured per class when fitting.
    #[serde(default)]
    pub fit: BTreeMap<String, ClassFit>,
}

/// Cosine distances `[A, B]` between unit rows of `a: [A, D]` and `b: [B, D]`.
fn distances(a: &Tensor, b: &Tensor) -> Tensor {
    (a.matmul(&b.tr()).neg() + 1.0).clamp_min(0.0)
}

/// Greedy k-center selection of at most `k` rows of `x: [n, D]`, starting from the row nearest
/// the mean; returns row indices.
fn k_center(x: &Tensor, k: usize) -> Vec<i64> {
    let n = x.size()[0] as usize;
    if n <= k {
        return (0..n as i64).collect();
    }
    let mean = x.mean_dim([0i64].as_slice(), true, Kind::Float);
    let first = distances(&mean, x).argmin(1, false).int64_value(&[0]);
    let mut chosen = vec![first];
    let mut nearest = distances(&x.get(first).unsqueeze(0), x).squeeze_dim(0);
    while chosen.len() < k {
        let next = nearest.argmax(0, false).int64_value(&[]);
        chosen.push(next);
        let d = distances(&x.get(next).unsqueeze(0), x).squeeze_dim(0);
        nearest = nearest.minimum(&d);
    }
    chosen
}

impl ClassBank {
    /// Fits a bank: `train[c]` and `val[c]` are the descriptors `[n, D]` of class `classes[c]`'s
    /// training and held-out validation images (`val[c]` may have 0 rows). `margin >= 0`.
    ///
    /// # Errors
    /// A class without training descriptors, mismatched lengths or dimensions, a negative or
    /// non-finite margin.
    pub fn fit(
        classes: Vec<String>,
        train: &[Tensor],
        val: &[Tensor],
        margin: f64,
    ) -> Result<(Self, BTreeMap<String, ClassFit>), String> {
        if classes.is_empty() || train.len() != classes.len() || val.len() != classes.len() {
            return Err(format!(
                "class bank: {} classes, {} training and {} validation descriptor sets",
                classes.len(),
                train.len(),
                val.len()
            ));
        }
        if !(margin.is_finite() && margin >= 0.0) {
            return Err(format!(
                "class bank: margin {margin} must be a finite number >= 0"
            ));
        }
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut unknown = Vec::new();
        let mut fits = BTreeMap::new();
        let dim = train[0].size().get(1).copied().unwrap_or(0);
        for (c, name) in classes.iter().enumerate() {
            let t = train[c].to_device(Device::Cpu).to_kind(Kind::Float);
            let n = t.size()[0];
            if n == 0 {
                return Err(format!("class bank: class {name} has no training image"));
            }
            if t.size()[1] != dim || val[c].size().get(1).is_some_and(|&d| d != dim) {
                return Err(format!(
                    "class bank: class {name}: descriptors of different lengths"
                ));
            }
            let keep = k_center(&t, BANK_PER_CLASS);
            let bank = t.index_select(0, &Tensor::from_slice(&keep));
            // leave-one-out: a bank member's own row does not count as its neighbour
            let d = distances(&t, &bank);
            for (j, &i) in keep.iter().enumerate() {
                let _ = d.get(i).get(j as i64).fill_(f64::INFINITY);
            }
            let train_max = if keep.len() > 1 || (n as usize) > keep.len() {
                let nn = d.min_dim(1, false).0;
                let finite = nn.masked_select(&nn.isfinite());
                if finite.numel() == 0 {
                    0.0
                } else {
                    finite.max().double_value(&[])
                }
            } else {
                0.0
            };
            let v = val[c].to_device(Device::Cpu).to_kind(Kind::Float);
            let val_max = (v.size()[0] > 0).then(|| {
                distances(&v, &bank)
                    .min_dim(1, false)
                    .0
                    .max()
                    .double_value(&[])
            });
            let r = train_max.max(val_max.unwrap_or(0.0));
            let limit = r * (1.0 + margin);
            unknown.push(limit);
            fits.insert(
                name.clone(),
                ClassFit {
                    train_images: n as usize,
                    bank_vectors: keep.len(),
                    train_max_distance: train_max,
                    val_images: v.size()[0] as usize,
                    val_max_distance: val_max,
                    unknown_distance: limit,
                },
            );
            labels.extend(std::iter::repeat_n(c as i64, keep.len()));
            rows.push(bank);
        }
        Ok((
            Self {
                classes,
                bank: Tensor::cat(&rows, 0),
                labels,
                unknown_distance: unknown,
                margin,
            },
            fits,
        ))
    }

    /// Descriptor length `D`.
    pub fn dim(&self) -> i64 {
        self.bank.size()[1]
    }

    /// Class decisions for descriptors `[B, D]` (any device; see the module docs).
    ///
    /// # Errors
    /// A descriptor length that is not the bank's.
    pub fn recognise(&self, desc: &Tensor) -> Result<Vec<Recognition>, String> {
        let size = desc.size();
        if size.len() != 2 || size[1] != self.dim() {
            return Err(format!(
                "class recognition: descriptors of shape {size:?}, the bank holds length {}",
                self.dim()
            ));
        }
        let d = distances(
            &desc.to_device(Device::Cpu).to_kind(Kind::Float),
            &self.bank,
        );
        let d: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&d).map_err(|e| e.to_string())?;
        let k = self.classes.len();
        Ok(d.iter()
            .map(|row| {
                let mut per_class = vec![f64::INFINITY; k];
                for (x, &c) in row.iter().zip(&self.labels) {
                    let c = c as usize;
                    per_class[c] = per_class[c].min(f64::from(*x));
                }
                let (best, d1) =
                    per_class
                        .iter()
                        .copied()
                        .enumerate()
                        .fold(
                            (0, f64::INFINITY),
                            |a, (c, x)| if x < a.1 { (c, x) } else { a },
                        );
                let d2 = per_class
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| *c != best)
                    .map(|(_, &x)| x)
                    .fold(f64::INFINITY, f64::min);
                let confidence = if d2.is_infinite() {
                    1.0
                } else if d2 <= 0.0 {
                    0.0
                } else {
                    (1.0 - d1 / d2).clamp(0.0, 1.0)
                };
                Recognition {
                    class: best,
                    distance: d1,
                    confidence,
                    unknown: d1 > self.unknown_distance[best],
                }
            })
            .collect())
    }

    /// The JSON half for `model.json` (with the per-class fit measurements).
    pub fn meta(&self, fit: BTreeMap<String, ClassFit>) -> RecognitionMeta {
        RecognitionMeta {
            descriptor: DESCRIPTOR.to_string(),
            classes: self.classes.clone(),
            unknown_distance: self
                .classes
                .iter()
                .cloned()
                .zip(self.unknown_distance.iter().copied())
                .collect(),
            margin: self.margin,
            fit,
        }
    }

    /// The tensors for the weights file: [`BANK_TENSOR`] and [`LABELS_TENSOR`].
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            (BANK_TENSOR.to_string(), self.bank.shallow_clone()),
            (LABELS_TENSOR.to_string(), Tensor::from_slice(&self.labels)),
        ]
    }

    /// Rebuilds a bank from `model.json`'s description and the two tensors.
    ///
    /// # Errors
    /// Another descriptor recipe, a missing class distance, tensors of the wrong shape or
    /// kind, labels out of range, non-finite values.
    pub fn from_parts(
        meta: &RecognitionMeta,
        bank: Tensor,
        labels: Tensor,
    ) -> Result<Self, String> {
        if meta.descriptor != DESCRIPTOR {
            return Err(format!(
                "class recognition: descriptor {:?} is not supported (this omniad uses {DESCRIPTOR:?})",
                meta.descriptor
            ));
        }
        let bs = bank.size();
        if bs.len() != 2 || labels.size() != [bs[0]] || bs[0] == 0 {
            return Err(format!(
                "class recognition: bank of shape {bs:?} with labels of shape {:?}",
                labels.size()
            ));
        }
        let bank = bank.to_device(Device::Cpu).to_kind(Kind::Float);
        if bank.isfinite().logical_not().any().int64_value(&[]) != 0 {
            return Err("class recognition: the bank holds non-finite values".into());
        }
        let labels: Vec<i64> =
            Vec::<i64>::try_from(labels.to_kind(Kind::Int64)).map_err(|e| e.to_string())?;
        let k = meta.classes.len() as i64;
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= k) {
            return Err(format!(
                "class recognition: label {bad} outside the {k} classes"
            ));
        }
        let mut unknown = Vec::with_capacity(meta.classes.len());
        for c in &meta.classes {
            match meta.unknown_distance.get(c) {
                Some(d) if d.is_finite() && *d >= 0.0 => unknown.push(*d),
                _ => {
                    return Err(format!(
                        "class recognition: no valid unknown-class distance for class {c}"
                    ))
                }
            }
        }
        Ok(Self {
            classes: meta.classes.clone(),
            bank,
            labels,
            unknown_distance: unknown,
            margin: meta.margin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(rows: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_slice(&flat).reshape([rows.len() as i64, 3]);
        let n = t.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
        t / n
    }

    #[test]
    fn descriptors_are_unit_length_and_ignore_local_changes_a_little() {
        let f = [
            Tensor::rand([2, 4, 8, 8], (Kind::Float, Device::Cpu)),
            Tensor::rand([2, 6, 4, 4], (Kind::Float, Device::Cpu)),
            Tensor::rand([2, 5, 2, 2], (Kind::Float, Device::Cpu)),
        ];
        let d = descriptors(&f);
        assert_eq!(d.size(), [2, 15]);
        let norms =
            Vec::<f32>::try_from(d.norm_scalaropt_dim(2.0, [1i64].as_slice(), false)).unwrap();
        for n in norms {
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
    }

    #[test]
    fn recognises_nearest_class_flags_far_images_and_round_trips() {
        // class a around x, class b around y
        let a = unit(&[[1.0, 0.05, 0.0], [1.0, -0.05, 0.0], [1.0, 0.0, 0.05]]);
        let b = unit(&[[0.0, 1.0, 0.05], [0.05, 1.0, 0.0], [0.0, 1.0, -0.05]]);
        let va = unit(&[[1.0, 0.02, 0.02]]);
        let vb = Tensor::zeros([0, 3], (Kind::Float, Device::Cpu));
        let (bank, fit) =
            ClassBank::fit(vec!["a".into(), "b".into()], &[a, b], &[va, vb], 0.5).unwrap();
        assert_eq!(fit["a"].bank_vectors, 3);
        assert_eq!(fit["a"].val_images, 1);
        assert!(fit["b"].val_max_distance.is_none());
        // leave-one-out distance within class a: between unit([1,.05,0]) and unit([1,-.05,0])
        // etc.; the limit is 1.5x the largest of them
        assert!(fit["a"].train_max_distance > 0.0);
        assert!(
            (fit["a"].unknown_distance
                - 1.5
                    * fit["a"]
                        .train_max_distance
                        .max(fit["a"].val_max_distance.unwrap()))
            .abs()
                < 1e-9
        );
        let q = unit(&[[1.0, 0.01, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let r = bank.recognise(&q).unwrap();
        assert_eq!((r[0].class, r[0].unknown), (0, false));
        assert!(r[0].confidence > 0.9, "{:?}", r[0]);
        assert_eq!((r[1].class, r[1].unknown), (1, false));
        assert!(r[2].unknown, "{:?}", r[2]);
        // round trip through the stored parts
        let meta = bank.meta(fit);
        let t = bank.tensors();
        let again =
            ClassBank::from_parts(&meta, t[0].1.shallow_clone(), t[1].1.shallow_clone()).unwrap();
        assert_eq!(again.recognise(&q).unwrap(), r);
        // a damaged description is refused
        let mut bad = meta.clone();
        bad.unknown_distance.remove("b");
        assert!(
            ClassBank::from_parts(&bad, t[0].1.shallow_clone(), t[1].1.shallow_clone())
                .unwrap_err()
                .contains("class b")
        );
        assert!(bank
            .recognise(&Tensor::zeros([1, 4], (Kind::Float, Device::Cpu)))
            .is_err());
    }

    #[test]
    fn k_center_spreads_the_bank() {
        let x = unit(&[
            [1.0, 0.0, 0.0],
            [1.0, 0.01, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ]);
        let mut k = k_center(&x, 3);
        k.sort();
        // the two near-duplicates are never both kept
        assert!(!(k.contains(&0) && k.contains(&1)), "{k:?}");
        assert!(k.contains(&2) && k.contains(&3), "{k:?}");
    }
}
