//! Entry points: whole arrays at once ([`evaluate_arrays`]) and streaming
//! ([`Accumulator`]).

use std::collections::HashMap;
use std::hash::Hash;

use crate::curve::{binary_metrics, one_class_reason, BinaryMetrics};
use crate::pixel::{
    class_pixel_metrics_from_maps, pixel_metrics, scan_image, ClassPixels, NegChunk, PixelResults,
    Scratch,
};
use crate::report::{ClassReport, Metric, MetricValue, Report};
use crate::MetricsError;

/// Options of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricOptions {
    /// Also compute the ADer-compatible variants `pixel_aupro_ader` and
    /// `pixel_f1_max_ader` (and `mad_ader`), for comparing with tables
    /// published with the ADer benchmark code (`util/metric.py`). Default `false`.
    pub ader: bool,
    /// FPR limit of AUPRO, in `(0, 1]`. Default `0.3` (MVTec AD convention).
    pub aupro_fpr_limit: f64,
    /// Number of equal threshold steps of the ADer AUPRO between the class's
    /// min and max score (`max_step` in ADer), `>= 1`. Default `100`.
    pub ader_aupro_steps: usize,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            ader: false,
            aupro_fpr_limit: 0.3,
            ader_aupro_steps: 100,
        }
    }
}

impl MetricOptions {
    /// Checks the documented ranges.
    ///
    /// # Errors
    /// [`MetricsError::InvalidOptions`] naming the bad field.
    pub fn validate(&self) -> Result<(), MetricsError> {
        if !(self.aupro_fpr_limit > 0.0 && self.aupro_fpr_limit <= 1.0) {
            return Err(MetricsError::InvalidOptions(format!(
                "aupro_fpr_limit = {} is outside (0, 1]",
                self.aupro_fpr_limit
            )));
        }
        if self.ader_aupro_steps == 0 {
            return Err(MetricsError::InvalidOptions(
                "ader_aupro_steps must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A borrowed row-major array with its shape.
#[derive(Debug, Clone, Copy)]
pub struct ArrayRef<'a, T> {
    /// Elements, row-major (C order).
    pub data: &'a [T],
    /// Shape; the product must equal `data.len()`.
    pub shape: &'a [usize],
}

/// Whole-dataset input of [`evaluate_arrays`]; the same tensors as the
/// safetensors file format (see the crate docs).
#[derive(Debug, Clone)]
pub struct EvalArrays<'a> {
    /// Image scores `[N]`, finite, higher = more anomalous.
    pub image_scores: &'a [f32],
    /// Image labels `[N]`: 0 = normal, 1 = anomalous.
    pub labels: &'a [u8],
    /// Anomaly maps `[N, H, W]`, finite; `None` skips the pixel metrics.
    pub anomaly_maps: Option<ArrayRef<'a, f32>>,
    /// Ground-truth masks `[N, H, W]`, 0/1; `None` skips the pixel metrics.
    pub masks: Option<ArrayRef<'a, u8>>,
    /// Class of each image `[N]`, an index into `class_names`; `None` = one class.
    pub class_ids: Option<&'a [u32]>,
    /// Class names; when empty, class `i` is named `class_i` (or `all` when
    /// there are no class ids).
    pub class_names: Vec<String>,
    /// Real-IAD sample of each image `[N]` (the views of one sample share the
    /// id within a class); `None` skips the sample metrics.
    pub sample_ids: Option<&'a [u64]>,
}

fn check_len(what: &str, len: usize, n: usize) -> Result<(), MetricsError> {
    if len != n {
        return Err(MetricsError::ShapeMismatch {
            a: what.into(),
            a_shape: vec![len],
            b: "image_scores".into(),
            b_shape: vec![n],
        });
    }
    Ok(())
}

fn check_array<T>(what: &str, a: &ArrayRef<'_, T>, n: usize) -> Result<(), MetricsError> {
    let numel = a
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if a.shape.len() != 3 || numel != Some(a.data.len()) {
        return Err(MetricsError::InvalidInput(format!(
            "{what} must have shape [N, H, W] matching its {} elements; got shape {:?}",
            a.data.len(),
            a.shape
        )));
    }
    if a.shape[0] != n {
        return Err(MetricsError::ShapeMismatch {
            a: what.into(),
            a_shape: a.shape.to_vec(),
            b: "image_scores".into(),
            b_shape: vec![n],
        });
    }
    Ok(())
}

pub(crate) fn check_scores(scores: &[f32]) -> Result<(), MetricsError> {
    if let Some((index, &value)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(MetricsError::NonFiniteScore { index, value });
    }
    Ok(())
}

/// Image- and sample-level metrics of one class.
fn image_rows<K: Hash + Eq + Clone>(
    scores: &[f32],
    labels: &[bool],
    samples: Option<Result<Vec<K>, String>>,
    metrics: &mut std::collections::BTreeMap<Metric, MetricValue>,
) -> Result<Option<usize>, MetricsError> {
    let b = binary_metrics(scores, labels)?;
    metrics.insert(Metric::ImageAuroc, b.auroc);
    metrics.insert(Metric::ImageAp, b.ap);
    metrics.insert(Metric::ImageF1Max, b.f1_max);
    let mut n_samples = None;
    if let Some(samples) = samples {
        let b = match samples {
            Err(reason) => BinaryMetrics::undefined(&reason),
            Ok(ids) => {
                let mut index: HashMap<K, usize> = HashMap::new();
                let mut s_scores: Vec<f32> = Vec::new();
                let mut s_labels: Vec<bool> = Vec::new();
                for ((id, &s), &l) in ids.iter().zip(scores).zip(labels) {
                    let next = s_scores.len();
                    let i = *index.entry(id.clone()).or_insert(next);
                    if i == next {
                        s_scores.push(s);
                        s_labels.push(l);
                    } else {
                        s_scores[i] = s_scores[i].max(s);
                        s_labels[i] |= l;
                    }
                }
                n_samples = Some(s_scores.len());
                let n_pos = s_labels.iter().filter(|&&l| l).count() as u64;
                match one_class_reason(n_pos, s_labels.len() as u64 - n_pos, "sample") {
                    Some(r) => BinaryMetrics::undefined(&r),
                    None => binary_metrics(&s_scores, &s_labels)?,
                }
            }
        };
        metrics.insert(Metric::SampleAuroc, b.auroc);
        metrics.insert(Metric::SampleAp, b.ap);
        metrics.insert(Metric::SampleF1Max, b.f1_max);
    }
    Ok(n_samples)
}

fn insert_pixels(c: &mut ClassReport, p: PixelResults) {
    c.n_pixels = p.n_pixels;
    c.n_anomalous_pixels = p.n_anomalous_pixels;
    c.n_regions = p.n_regions;
    c.metrics.insert(Metric::PixelAuroc, p.auroc);
    c.metrics.insert(Metric::PixelAp, p.ap);
    c.metrics.insert(Metric::PixelF1Max, p.f1_max);
    c.metrics.insert(Metric::PixelAupro, p.aupro);
    if let Some(v) = p.aupro_ader {
        c.metrics.insert(Metric::PixelAuproAder, v);
    }
    if let Some(v) = p.f1_max_ader {
        c.metrics.insert(Metric::PixelF1MaxAder, v);
    }
}

fn empty_class(name: String, n_images: usize, n_anomalous_images: usize) -> ClassReport {
    ClassReport {
        name,
        n_images,
        n_anomalous_images,
        n_samples: None,
        n_pixels: 0,
        n_anomalous_pixels: 0,
        n_regions: 0,
        metrics: Default::default(),
        mad: MetricValue::Undefined(String::new()),
        mad_terms: 0,
        mad_ader: None,
    }
}

/// Scores a whole dataset held in memory: per-class image-, pixel- and
/// (with sample ids) sample-level metrics, their means and mAD.
///
/// Pixel metrics are computed directly on the borrowed maps (no copy of the
/// normal pixels); extra memory is about 8 bytes per anomalous pixel plus
/// `O(distinct anomalous scores)`.
///
/// # Errors
/// * [`MetricsError::NonFiniteScore`] / [`MetricsError::NonFiniteMap`] naming
///   the image index (and pixel);
/// * [`MetricsError::ShapeMismatch`] naming both shapes, or
///   [`MetricsError::InvalidInput`] for a malformed shape;
/// * [`MetricsError::NotBinary`] for a label or mask value other than 0/1;
/// * [`MetricsError::BadId`] for a class id without a name;
/// * [`MetricsError::InvalidOptions`].
pub fn evaluate_arrays(
    input: &EvalArrays<'_>,
    opts: &MetricOptions,
) -> Result<Report, MetricsError> {
    opts.validate()?;
    let n = input.image_scores.len();
    check_len("labels", input.labels.len(), n)?;
    check_scores(input.image_scores)?;
    if let Some((index, &v)) = input.labels.iter().enumerate().find(|(_, &l)| l > 1) {
        return Err(MetricsError::NotBinary {
            what: "label",
            index,
            value: v as i64,
        });
    }
    if let Some(m) = &input.anomaly_maps {
        check_array("anomaly_maps", m, n)?;
    }
    if let Some(k) = &input.masks {
        check_array("masks", k, n)?;
        if let Some(m) = &input.anomaly_maps {
            if m.shape != k.shape {
                return Err(MetricsError::ShapeMismatch {
                    a: "anomaly_maps".into(),
                    a_shape: m.shape.to_vec(),
                    b: "masks".into(),
                    b_shape: k.shape.to_vec(),
                });
            }
        }
    }
    if let Some(s) = input.sample_ids {
        check_len("sample_ids", s.len(), n)?;
    }

    // group images by class
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    match input.class_ids {
        None => {
            let name = match input.class_names.as_slice() {
                [one] => one.clone(),
                _ => "all".to_string(),
            };
            groups.push((name, (0..n).collect()));
        }
        Some(ids) => {
            check_len("class_ids", ids.len(), n)?;
            let n_names = input.class_names.len();
            let mut per: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
            for (index, &id) in ids.iter().enumerate() {
                if n_names > 0 && id as usize >= n_names {
                    return Err(MetricsError::BadId {
                        what: "class id",
                        index,
                        value: id as i64,
                        reason: format!(
                            "only {n_names} class names are given (metadata `{}`)",
                            crate::CLASS_NAMES_KEY
                        ),
                    });
                }
                per.entry(id).or_default().push(index);
            }
            for (id, idx) in per {
                let name = input
                    .class_names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("class_{id}"));
                groups.push((name, idx));
            }
        }
    }

    let mut classes = Vec::with_capacity(groups.len());
    for (name, idx) in groups {
        let scores: Vec<f32> = idx.iter().map(|&i| input.image_scores[i]).collect();
        let labels: Vec<bool> = idx.iter().map(|&i| input.labels[i] == 1).collect();
        let mut c = empty_class(name, idx.len(), labels.iter().filter(|&&l| l).count());
        let samples = input
            .sample_ids
            .map(|s| Ok(idx.iter().map(|&i| s[i]).collect::<Vec<u64>>()));
        c.n_samples = image_rows(&scores, &labels, samples, &mut c.metrics)?;
        let pixels = match (&input.anomaly_maps, &input.masks) {
            (None, _) => PixelResults::undefined("no anomaly maps in the input", opts),
            (Some(_), None) => PixelResults::undefined("no ground-truth masks in the input", opts),
            (Some(m), Some(k)) => {
                let (h, w) = (m.shape[1], m.shape[2]);
                let hw = h * w;
                let images: Vec<(usize, &[f32], &[u8])> = idx
                    .iter()
                    .map(|&i| {
                        (
                            i,
                            &m.data[i * hw..(i + 1) * hw],
                            &k.data[i * hw..(i + 1) * hw],
                        )
                    })
                    .collect();
                class_pixel_metrics_from_maps(&images, h, w, opts)?
            }
        };
        insert_pixels(&mut c, pixels);
        classes.push(c);
    }
    Ok(Report::from_classes(classes, opts.clone()))
}

/// Pixel data of one image pushed to an [`Accumulator`].
#[derive(Debug, Clone, Copy)]
pub struct PixelRecord<'a> {
    /// Anomaly map `[height, width]`, row-major, finite.
    pub anomaly_map: &'a [f32],
    /// Ground-truth mask `[height, width]`, 0/1. `None` = no ground truth
    /// (pass an all-zero mask for a normal image that has ground truth).
    pub mask: Option<&'a [u8]>,
    /// Map height in pixels.
    pub height: usize,
    /// Map width in pixels.
    pub width: usize,
}

/// One image pushed to an [`Accumulator`].
#[derive(Debug, Clone, Copy)]
pub struct ImageRecord<'a> {
    /// Class name (e.g. `"bottle"`).
    pub class: &'a str,
    /// Image score, finite, higher = more anomalous.
    pub image_score: f32,
    /// Ground-truth image label, `true` = anomalous.
    pub label: bool,
    /// Anomaly map and mask; `None` when the method gives no map.
    pub pixels: Option<PixelRecord<'a>>,
    /// Real-IAD sample id shared by the views of one sample (within its
    /// class); the sample score is the max over its views and the sample is
    /// anomalous when any view is.
    pub sample_id: Option<&'a str>,
}

/// Pixel storage of one class in an [`Accumulator`].
#[derive(Debug, Default)]
struct PixelStore {
    data: ClassPixels,
    /// Keys of the normal pixels, one boxed slice per image (4 bytes/pixel).
    neg: Vec<Box<[u32]>>,
    /// First image without map / without mask, if any.
    no_map: Option<usize>,
    no_mask: Option<usize>,
    with_map: usize,
    with_mask: usize,
}

impl PixelStore {
    fn collecting(&self) -> bool {
        self.no_map.is_none() && self.no_mask.is_none()
    }

    fn stop(&mut self) {
        self.data = ClassPixels::default();
        self.neg = Vec::new();
    }
}

#[derive(Debug)]
struct ClassAcc {
    name: String,
    scores: Vec<f32>,
    labels: Vec<bool>,
    samples: Vec<Option<String>>,
    pixels: PixelStore,
}

/// Streaming evaluator for `omniad eval`: push images one at a time, get the
/// [`Report`] at the end.
///
/// Memory: the anomalous pixels are kept as (score key, region) pairs (8 bytes
/// each) and the normal pixels as order-preserving `u32` keys of their `f32`
/// scores (4 bytes each) — exact, about 4 bytes per pixel overall; the
/// anomaly maps and masks themselves are not kept.
#[derive(Debug)]
pub struct Accumulator {
    opts: MetricOptions,
    classes: Vec<ClassAcc>,
    index: HashMap<String, usize>,
    n_images: usize,
    scratch: Scratch,
}

impl Accumulator {
    /// A new, empty accumulator.
    ///
    /// # Errors
    /// [`MetricsError::InvalidOptions`].
    pub fn new(opts: MetricOptions) -> Result<Self, MetricsError> {
        opts.validate()?;
        Ok(Accumulator {
            opts,
            classes: Vec::new(),
            index: HashMap::new(),
            n_images: 0,
            scratch: Scratch::default(),
        })
    }

    /// Number of images pushed so far (the index the next image will get in
    /// error messages).
    pub fn n_images(&self) -> usize {
        self.n_images
    }

    /// Approximate bytes held for pixel metrics.
    pub fn stored_bytes(&self) -> usize {
        self.classes
            .iter()
            .map(|c| {
                c.pixels.neg.iter().map(|n| n.len() * 4).sum::<usize>()
                    + c.pixels.data.n_pos() as usize * 8
            })
            .sum()
    }

    /// Adds one image.
    ///
    /// # Errors
    /// Nothing is stored when an error is returned:
    /// * [`MetricsError::NonFiniteScore`] / [`MetricsError::NonFiniteMap`]
    ///   naming the image index (the push count) and pixel;
    /// * [`MetricsError::ShapeMismatch`] when the map or mask length is not
    ///   `height * width`;
    /// * [`MetricsError::NotBinary`] for a mask value other than 0/1.
    pub fn push(&mut self, img: ImageRecord<'_>) -> Result<(), MetricsError> {
        let index = self.n_images;
        if !img.image_score.is_finite() {
            return Err(MetricsError::NonFiniteScore {
                index,
                value: img.image_score,
            });
        }
        if let Some(p) = &img.pixels {
            let hw = p.height.saturating_mul(p.width);
            if p.anomaly_map.len() != hw {
                return Err(MetricsError::ShapeMismatch {
                    a: format!("anomaly map of image {index}"),
                    a_shape: vec![p.anomaly_map.len()],
                    b: "its declared [height, width]".into(),
                    b_shape: vec![p.height, p.width],
                });
            }
            if let Some(m) = p.mask {
                if m.len() != hw {
                    return Err(MetricsError::ShapeMismatch {
                        a: format!("mask of image {index}"),
                        a_shape: vec![m.len()],
                        b: format!("anomaly map of image {index}"),
                        b_shape: vec![p.height, p.width],
                    });
                }
            }
        }
        let ci = match self.index.get(img.class) {
            Some(&i) => i,
            None => {
                self.classes.push(ClassAcc {
                    name: img.class.to_string(),
                    scores: Vec::new(),
                    labels: Vec::new(),
                    samples: Vec::new(),
                    pixels: PixelStore::default(),
                });
                self.index
                    .insert(img.class.to_string(), self.classes.len() - 1);
                self.classes.len() - 1
            }
        };
        let class = &mut self.classes[ci];
        let store = &mut class.pixels;
        // validate (and, while the class is complete, extract) the pixels
        let mut stored = None;
        match img.pixels {
            Some(PixelRecord {
                anomaly_map,
                mask: Some(mask),
                height,
                width,
            }) if store.collecting() => {
                let mut neg = Vec::new();
                let px = scan_image(
                    index,
                    anomaly_map,
                    mask,
                    height,
                    width,
                    &mut self.scratch,
                    Some(&mut neg),
                )?;
                stored = Some((px, neg));
            }
            Some(p) => {
                if let Some(i) = p.anomaly_map.iter().position(|v| !v.is_finite()) {
                    return Err(MetricsError::NonFiniteMap {
                        index,
                        y: i / p.width.max(1),
                        x: i % p.width.max(1),
                        value: p.anomaly_map[i],
                    });
                }
                if let Some(&v) = p.mask.and_then(|m| m.iter().find(|&&v| v > 1)) {
                    return Err(MetricsError::NotBinary {
                        what: "mask",
                        index,
                        value: v as i64,
                    });
                }
            }
            None => {}
        }
        // commit
        match (&img.pixels, stored) {
            (_, Some((px, neg))) => {
                store.with_map += 1;
                store.with_mask += 1;
                store.data.add(px);
                store.neg.push(neg.into_boxed_slice());
            }
            (Some(p), None) => {
                store.with_map += 1;
                if p.mask.is_some() {
                    store.with_mask += 1;
                } else if store.no_mask.is_none() {
                    store.no_mask = Some(index);
                    store.stop();
                }
            }
            (None, None) => {
                if store.no_map.is_none() {
                    store.no_map = Some(index);
                    store.stop();
                }
            }
        }
        class.scores.push(img.image_score);
        class.labels.push(img.label);
        class.samples.push(img.sample_id.map(str::to_string));
        self.n_images += 1;
        Ok(())
    }

    /// Computes the report (classes in first-pushed order).
    ///
    /// Pixel metrics of a class are undefined (with the reason) when none of
    /// its images had a map or a mask, or when some had and others did not.
    /// Sample metrics are reported when any image had a sample id; they are
    /// undefined for a class where only some images have one.
    ///
    /// # Errors
    /// None in practice (inputs were validated by [`Accumulator::push`]); the
    /// `Result` keeps the signature stable.
    pub fn finish(self) -> Result<Report, MetricsError> {
        let opts = self.opts;
        let any_samples = self
            .classes
            .iter()
            .any(|c| c.samples.iter().any(Option::is_some));
        let mut out = Vec::with_capacity(self.classes.len());
        for c in self.classes {
            let n_anom = c.labels.iter().filter(|&&l| l).count();
            let mut r = empty_class(c.name, c.scores.len(), n_anom);
            let samples = any_samples.then(|| {
                if c.samples.iter().all(Option::is_some) {
                    Ok(c.samples.into_iter().flatten().collect::<Vec<String>>())
                } else {
                    Err("only some images of the class have a sample id".to_string())
                }
            });
            r.n_samples = image_rows(&c.scores, &c.labels, samples, &mut r.metrics)?;
            let s = c.pixels;
            let pixels = if s.with_map == 0 {
                PixelResults::undefined("no anomaly maps were given", &opts)
            } else if s.with_mask == 0 {
                PixelResults::undefined("no ground-truth masks were given", &opts)
            } else if let Some(i) = s.no_map {
                PixelResults::undefined(
                    &format!("image {i} has no anomaly map but other images of the class do"),
                    &opts,
                )
            } else if let Some(i) = s.no_mask {
                PixelResults::undefined(
                    &format!("image {i} has no mask but other images of the class do"),
                    &opts,
                )
            } else {
                let chunks: Vec<NegChunk<'_>> = s.neg.iter().map(|k| NegChunk::Keys(k)).collect();
                pixel_metrics(s.data, &chunks, &opts)
            };
            insert_pixels(&mut r, pixels);
            out.push(r);
        }
        Ok(Report::from_classes(out, opts))
    }
}
