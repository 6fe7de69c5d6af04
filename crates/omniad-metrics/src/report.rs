//! Per-class and mean results, as a table for people and JSON for machines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::MetricOptions;

/// A metric's value, or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// The value, a fraction in `[0, 1]` (not percent).
    Defined(f64),
    /// The metric is undefined for this input; the string says why
    /// (e.g. "only normal images (no anomalous image)").
    Undefined(String),
}

impl MetricValue {
    /// The value, if defined.
    pub fn value(&self) -> Option<f64> {
        match self {
            MetricValue::Defined(v) => Some(*v),
            MetricValue::Undefined(_) => None,
        }
    }

    /// The reason, if undefined.
    pub fn reason(&self) -> Option<&str> {
        match self {
            MetricValue::Defined(_) => None,
            MetricValue::Undefined(r) => Some(r),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            MetricValue::Defined(v) if v.is_finite() => json!(v),
            _ => Value::Null,
        }
    }

    fn to_cell(&self) -> String {
        match self {
            MetricValue::Defined(v) => format!("{:.1}", v * 100.0),
            MetricValue::Undefined(_) => "n/a".to_string(),
        }
    }
}

/// The metrics this crate reports. The JSON key of each is [`Metric::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// I-AUROC: image-level area under the ROC curve.
    ImageAuroc,
    /// I-AP: image-level average precision (scikit-learn definition).
    ImageAp,
    /// I-F1-max: image-level maximum F1 over all thresholds.
    ImageF1Max,
    /// P-AUROC: pixel-level area under the ROC curve.
    PixelAuroc,
    /// P-AP: pixel-level average precision.
    PixelAp,
    /// P-F1-max: pixel-level maximum F1 over all thresholds.
    PixelF1Max,
    /// AUPRO: area under the PRO curve up to the FPR limit, divided by it.
    PixelAupro,
    /// ADer-compatible AUPRO (equal threshold steps, `>`, rescaled FPR).
    PixelAuproAder,
    /// ADer-compatible P-F1-max (21 thresholds of min-max normalised maps).
    PixelF1MaxAder,
    /// Sample-level AUROC (Real-IAD; sample score = max over its views).
    SampleAuroc,
    /// Sample-level AP.
    SampleAp,
    /// Sample-level F1-max.
    SampleF1Max,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 12] = [
        Metric::ImageAuroc,
        Metric::ImageAp,
        Metric::ImageF1Max,
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1Max,
        Metric::PixelAupro,
        Metric::PixelAuproAder,
        Metric::PixelF1MaxAder,
        Metric::SampleAuroc,
        Metric::SampleAp,
        Metric::SampleF1Max,
    ];

    /// The seven metrics averaged into mAD.
    pub const MAD: [Metric; 7] = [
        Metric::ImageAuroc,
        Metric::ImageAp,
        Metric::ImageF1Max,
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1Max,
        Metric::PixelAupro,
    ];

    /// The seven metrics averaged into the ADer-compatible mAD (`mad_ader`).
    pub const MAD_ADER: [Metric; 7] = [
        Metric::ImageAuroc,
        Metric::ImageAp,
        Metric::ImageF1Max,
        Metric::PixelAuroc,
        Metric::PixelAp,
        Metric::PixelF1MaxAder,
        Metric::PixelAuproAder,
    ];

    /// JSON key, e.g. `"image_auroc"`.
    pub fn key(self) -> &'static str {
        match self {
            Metric::ImageAuroc => "image_auroc",
            Metric::ImageAp => "image_ap",
            Metric::ImageF1Max => "image_f1_max",
            Metric::PixelAuroc => "pixel_auroc",
            Metric::PixelAp => "pixel_ap",
            Metric::PixelF1Max => "pixel_f1_max",
            Metric::PixelAupro => "pixel_aupro",
            Metric::PixelAuproAder => "pixel_aupro_ader",
            Metric::PixelF1MaxAder => "pixel_f1_max_ader",
            Metric::SampleAuroc => "sample_auroc",
            Metric::SampleAp => "sample_ap",
            Metric::SampleF1Max => "sample_f1_max",
        }
    }

    /// Column header in the table, as in papers (e.g. `"I-AUROC"`).
    pub fn header(self) -> &'static str {
        match self {
            Metric::ImageAuroc => "I-AUROC",
            Metric::ImageAp => "I-AP",
            Metric::ImageF1Max => "I-F1max",
            Metric::PixelAuroc => "P-AUROC",
            Metric::PixelAp => "P-AP",
            Metric::PixelF1Max => "P-F1max",
            Metric::PixelAupro => "AUPRO",
            Metric::PixelAuproAder => "AUPRO(ADer)",
            Metric::PixelF1MaxAder => "P-F1max(ADer)",
            Metric::SampleAuroc => "S-AUROC",
            Metric::SampleAp => "S-AP",
            Metric::SampleF1Max => "S-F1max",
        }
    }
}

/// mAD over `metrics` of `values`: the mean of those that are defined, or
/// undefined when none is. Returns the value and how many terms it used.
pub(crate) fn mad_of(
    values: &BTreeMap<Metric, MetricValue>,
    metrics: &[Metric],
) -> (MetricValue, usize) {
    let defined: Vec<f64> = metrics
        .iter()
        .filter_map(|m| values.get(m).and_then(MetricValue::value))
        .collect();
    if defined.is_empty() {
        (
            MetricValue::Undefined("none of its seven metrics is defined".into()),
            0,
        )
    } else {
        (
            MetricValue::Defined(defined.iter().sum::<f64>() / defined.len() as f64),
            defined.len(),
        )
    }
}

/// Results of one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    /// Class name.
    pub name: String,
    /// Number of images of the class.
    pub n_images: usize,
    /// Number of images labelled anomalous.
    pub n_anomalous_images: usize,
    /// Number of samples (Real-IAD), when sample ids were given.
    pub n_samples: Option<usize>,
    /// Pixels scored (0 when pixel metrics were skipped).
    pub n_pixels: u64,
    /// Anomalous pixels (mask = 1).
    pub n_anomalous_pixels: u64,
    /// Connected ground-truth regions (8-connectivity) used by AUPRO.
    pub n_regions: u64,
    /// Each computed metric; a metric that was not asked for (ADer variants
    /// without [`MetricOptions::ader`], sample metrics without sample ids) is absent.
    pub metrics: BTreeMap<Metric, MetricValue>,
    /// mAD: mean of the defined ones among [`Metric::MAD`].
    pub mad: MetricValue,
    /// How many of the seven went into `mad`.
    pub mad_terms: usize,
    /// ADer-compatible mAD over [`Metric::MAD_ADER`], with [`MetricOptions::ader`].
    pub mad_ader: Option<MetricValue>,
}

impl ClassReport {
    /// Fills `mad`, `mad_terms` and `mad_ader` from `metrics`.
    pub(crate) fn compute_mad(&mut self, ader: bool) {
        let (mad, n) = mad_of(&self.metrics, &Metric::MAD);
        self.mad = mad;
        self.mad_terms = n;
        self.mad_ader = ader.then(|| mad_of(&self.metrics, &Metric::MAD_ADER).0);
    }
}

/// Mean of one metric over the classes.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanValue {
    /// Mean over the classes where the metric is defined.
    pub value: MetricValue,
    /// Classes skipped because the metric is undefined for them.
    pub skipped: Vec<String>,
}

/// The full evaluation result: one row per class and the mean row.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Per-class results, in first-seen (or class id) order.
    pub classes: Vec<ClassReport>,
    /// Mean over classes of each metric present in any class ("m" prefix in
    /// papers: mI-AUROC, ...). Undefined entries are skipped and listed.
    pub mean: BTreeMap<Metric, MeanValue>,
    /// mAD of the mean row: mean of the defined ones among the seven mean
    /// values of [`Metric::MAD`] (equal to the mean of the class mADs when
    /// everything is defined).
    pub mean_mad: MetricValue,
    /// ADer-compatible mAD of the mean row, with [`MetricOptions::ader`].
    pub mean_mad_ader: Option<MetricValue>,
    /// Options the report was computed with.
    pub options: MetricOptions,
}

impl Report {
    /// Builds the report (means and mADs) from the class rows.
    pub(crate) fn from_classes(mut classes: Vec<ClassReport>, options: MetricOptions) -> Self {
        for c in &mut classes {
            c.compute_mad(options.ader);
        }
        let mut mean = BTreeMap::new();
        for m in Metric::ALL {
            let rows: Vec<(&str, &MetricValue)> = classes
                .iter()
                .filter_map(|c| c.metrics.get(&m).map(|v| (c.name.as_str(), v)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let vals: Vec<f64> = rows.iter().filter_map(|(_, v)| v.value()).collect();
            let skipped: Vec<String> = rows
                .iter()
                .filter(|(_, v)| v.value().is_none())
                .map(|(n, _)| n.to_string())
                .collect();
            let value = if vals.is_empty() {
                MetricValue::Undefined("undefined for every class".into())
            } else {
                MetricValue::Defined(vals.iter().sum::<f64>() / vals.len() as f64)
            };
            mean.insert(m, MeanValue { value, skipped });
        }
        let mean_values: BTreeMap<Metric, MetricValue> =
            mean.iter().map(|(k, v)| (*k, v.value.clone())).collect();
        let mean_mad = if classes.is_empty() {
            MetricValue::Undefined("no class".into())
        } else {
            mad_of(&mean_values, &Metric::MAD).0
        };
        let mean_mad_ader = options
            .ader
            .then(|| mad_of(&mean_values, &Metric::MAD_ADER).0);
        Report {
            classes,
            mean,
            mean_mad,
            mean_mad_ader,
            options,
        }
    }

    /// Metrics present in at least one class, in report order.
    fn columns(&self) -> Vec<Metric> {
        Metric::ALL
            .into_iter()
            .filter(|m| self.mean.contains_key(m))
            .collect()
    }

    /// The report as JSON. Layout (values are fractions in `[0, 1]`, `null`
    /// when undefined):
    ///
    /// ```text
    /// { "classes": [ { "class": "bottle", "image_auroc": 0.99, ..., "mad": 0.9,
    ///                  "mad_terms": 7, "n_images": 83, "n_anomalous_images": 63,
    ///                  "n_pixels": 5439488, "n_anomalous_pixels": 1234, "n_regions": 70,
    ///                  "undefined": { "<metric>": "<reason>" } }, ... ],
    ///   "mean": { "image_auroc": 0.98, ..., "mad": 0.9,
    ///             "skipped": { "<metric>": ["<class>", ...] } },
    ///   "options": { "ader": false, "aupro_fpr_limit": 0.3, "ader_aupro_steps": 100 } }
    /// ```
    /// `mad_ader` appears with the ADer option, `n_samples` with sample ids.
    pub fn to_json(&self) -> Value {
        let cols = self.columns();
        let classes: Vec<Value> = self
            .classes
            .iter()
            .map(|c| {
                let mut o = Map::new();
                o.insert("class".into(), json!(c.name));
                let mut undefined = Map::new();
                for m in &cols {
                    if let Some(v) = c.metrics.get(m) {
                        o.insert(m.key().into(), v.to_json());
                        if let Some(r) = v.reason() {
                            undefined.insert(m.key().into(), json!(r));
                        }
                    }
                }
                o.insert("mad".into(), c.mad.to_json());
                if let Some(r) = c.mad.reason() {
                    undefined.insert("mad".into(), json!(r));
                }
                o.insert("mad_terms".into(), json!(c.mad_terms));
                if let Some(v) = &c.mad_ader {
                    o.insert("mad_ader".into(), v.to_json());
                }
                o.insert("n_images".into(), json!(c.n_images));
                o.insert("n_anomalous_images".into(), json!(c.n_anomalous_images));
                if let Some(n) = c.n_samples {
                    o.insert("n_samples".into(), json!(n));
                }
                o.insert("n_pixels".into(), json!(c.n_pixels));
                o.insert("n_anomalous_pixels".into(), json!(c.n_anomalous_pixels));
                o.insert("n_regions".into(), json!(c.n_regions));
                o.insert("undefined".into(), Value::Object(undefined));
                Value::Object(o)
            })
            .collect();
        let mut mean = Map::new();
        let mut skipped = Map::new();
        for m in &cols {
            let v = &self.mean[m];
            mean.insert(m.key().into(), v.value.to_json());
            if !v.skipped.is_empty() {
                skipped.insert(m.key().into(), json!(v.skipped));
            }
        }
        mean.insert("mad".into(), self.mean_mad.to_json());
        if let Some(v) = &self.mean_mad_ader {
            mean.insert("mad_ader".into(), v.to_json());
        }
        mean.insert("skipped".into(), Value::Object(skipped));
        json!({
            "classes": classes,
            "mean": Value::Object(mean),
            "options": {
                "ader": self.options.ader,
                "aupro_fpr_limit": self.options.aupro_fpr_limit,
                "ader_aupro_steps": self.options.ader_aupro_steps,
            },
        })
    }

    /// The report as a fixed-width text table: one row per class, a `mean`
    /// row, values in percent with one decimal as in papers, `n/a` where a
    /// metric is undefined, followed by one note per `n/a` giving the reason
    /// and, for the mean row, the classes it skipped.
    pub fn to_table(&self) -> String {
        let cols = self.columns();
        let mut headers: Vec<&str> = cols.iter().map(|m| m.header()).collect();
        headers.push("mAD");
        if self.options.ader {
            headers.push("mAD(ADer)");
        }
        let name_w = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .chain([5, 4])
            .max()
            .unwrap_or(5);
        let widths: Vec<usize> = headers.iter().map(|h| h.len().max(6)).collect();
        let mut out = String::new();
        let row = |out: &mut String, name: &str, cells: &[String]| {
            let _ = write!(out, "{name:<name_w$}");
            for (c, w) in cells.iter().zip(&widths) {
                let _ = write!(out, "  {c:>w$}");
            }
            out.push('\n');
        };
        let head: Vec<String> = headers.iter().map(|s| s.to_string()).collect();
        row(&mut out, "class", &head);
        let total_w = name_w + widths.iter().map(|w| w + 2).sum::<usize>();
        out.push_str(&"-".repeat(total_w));
        out.push('\n');
        let mut notes: Vec<String> = Vec::new();
        for c in &self.classes {
            let mut cells: Vec<String> = Vec::new();
            for m in &cols {
                match c.metrics.get(m) {
                    Some(v) => {
                        cells.push(v.to_cell());
                        if let Some(r) = v.reason() {
                            notes.push(format!("{} {}: n/a, {}", c.name, m.header(), r));
                        }
                    }
                    None => cells.push("-".into()),
                }
            }
            cells.push(c.mad.to_cell());
            if c.mad_terms > 0 && c.mad_terms < 7 {
                notes.push(format!(
                    "{} mAD: mean of the {} defined metrics out of 7",
                    c.name, c.mad_terms
                ));
            }
            if let Some(v) = &c.mad_ader {
                cells.push(v.to_cell());
            }
            row(&mut out, &c.name, &cells);
        }
        out.push_str(&"-".repeat(total_w));
        out.push('\n');
        let mut cells: Vec<String> = Vec::new();
        for m in &cols {
            let v = &self.mean[m];
            cells.push(v.value.to_cell());
            if !v.skipped.is_empty() {
                notes.push(format!(
                    "mean {}: skips {} (undefined there)",
                    m.header(),
                    v.skipped.join(", ")
                ));
            }
        }
        cells.push(self.mean_mad.to_cell());
        if let Some(v) = &self.mean_mad_ader {
            cells.push(v.to_cell());
        }
        row(&mut out, "mean", &cells);
        if !notes.is_empty() {
            out.push('\n');
            for n in notes {
                out.push_str(&n);
                out.push('\n');
            }
        }
        out
    }
}
