//! `omniad predict`: image scores, decisions, heatmap overlays and binary masks for new images
//! with a trained run's model.
//!
//! Each image is decoded with [`omniad_data::load_rgb`] (EXIF orientation applied; gray, RGBA
//! and 16-bit images converted like Pillow's `convert('RGB')`; any size), preprocessed exactly as
//! in training ([`omniad_data::preprocess_rgb`] with [`crate::input::preprocess_for`]: antialiased
//! bilinear resize to the model's input size, then the teacher's normalisation) and scored by
//! [`omniad_model::OmniAd::predict`] (anomaly map = mean over the three scales of
//! `1 - cos(teacher, decoder)`, Gaussian blur with sigma 4, image score = max of the map; paper
//! Sec. 3, reference `model/omniad.py` and ADer `util/metric.py`).
//!
//! # Output files
//! With [`PredictOptions::out`] set, each image gets, in that folder (`<stem>` as described
//! below):
//! - `<stem>_overlay.png`: the anomaly map upsampled bilinearly (`align_corners = false`) to the
//!   ORIGINAL image size, coloured with the Turbo colour map and blended on the image (see
//!   [`crate::overlay::overlay`]). Colour scale: `[0, 2 * threshold]` when a threshold is known
//!   (the threshold is the middle of the colour map, colours comparable across images),
//!   otherwise the map's own `[min, max]` (see [`crate::overlay::heatmap_range`]).
//! - `<stem>_mask.png`: 8-bit grayscale at the original size, 255 where the upsampled map is
//!   `>= threshold`, 0 elsewhere. Not written when no threshold is known (a warning says so).
//!
//! Output names: each input's stem is its path relative to the longest common ancestor folder
//! of all the inputs of the call (compared component by component after making the paths
//! absolute with [`std::path::absolute`] and removing `.` and `..` lexically, without resolving
//! symbolic links), without
//! its extension, with the path separators replaced by `__` (see [`relative_stem`]). E.g. the
//! inputs `data/a/test/001.png` and `data/b/test/001.png` give `a__test__001_overlay.png` and
//! `b__test__001_overlay.png`; the folder `data/a/test` holding `good/001.png` and
//! `crack/001.png` gives `good__001` and `crack__001` (the ancestor is that of the image files,
//! so a folder whose images are all in `good/` gives `001`); a single file, or files of one
//! folder, keep their plain stems. A stem longer than 200 bytes keeps its last 200 bytes. When stems
//! still collide (compared case-insensitively, as on case-insensitive file systems: e.g.
//! `x.png` and `x.jpg`, or `A.png` and `a.png`), or when an output name would be one of the
//! input files, each stem concerned gets `-<index>` appended, `index` being the input's position
//! in the list (from 0). The names depend only on the input list, so they are stable from one
//! call to the next; files of a previous call with the same names are replaced. The names used
//! are in [`PredictRecord::overlay`] and [`PredictRecord::mask`]. Every PNG is written
//! atomically (temporary file + rename), so an interrupted call leaves no partial file.
//!
//! # Bad images
//! An image that cannot be scored (missing, unreadable, corrupt or truncated, not an image, a
//! non-finite score, a PNG that cannot be written) does not stop the call: its outcome is a
//! [`PredictFailure`] naming the file and the problem, in input order, and the other images of
//! its batch and the later batches are scored as usual (see [`PredictOutcome`]). Errors that
//! concern the whole call (options, device, run folder, output folder, a libtorch failure of a
//! forward pass) stop it before any further image.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{GrayImage, RgbImage};
use omniad_data::{has_image_extension, load_rgb, preprocess_rgb, Preprocess};
use omniad_metrics::normalise_score;
use omniad_model::checkpoint::{self, CheckpointMeta};
use omniad_model::recognition::{ClassBank, Recognition};
use omniad_model::{OmniAd, Precision};
use rayon::prelude::*;
use serde::{Serialize, Serializer};
use tch::{Device, Kind, Tensor};

use crate::device::{libtorch, ComputeDevice};
use crate::input::{images_tensor, preprocess_for};
use crate::overlay;
use crate::runs::checkpoint_of;

/// The warning given once when no decision threshold is available.
pub const NO_THRESHOLD_HINT: &str =
    "no decision threshold: train with held-out images (--val-fraction), or run `omniad calibrate`, or pass --threshold";

/// Options of [`predict_run`].
#[derive(Debug, Clone, PartialEq)]
pub struct PredictOptions {
    /// Decision threshold on the image score; overrides the run's calibrated thresholds (and
    /// [`Self::per_class`]). Must be finite.
    pub threshold: Option<f64>,
    /// The class of every image, instead of recognising it: its thresholds (stored in
    /// `model.json` by training or `omniad calibrate`) are used. A class the run was not trained
    /// on, or one without a threshold, is an error listing the known ones.
    pub per_class: Option<String>,
    /// Folder for overlay and mask PNGs (created if missing); `None` writes no file.
    pub out: Option<PathBuf>,
    /// Images per forward pass, at least 1 (also the number decoded in parallel).
    pub batch_size: usize,
    /// Weight of the colour map in the overlay, in `[0, 1]` (0 = the image, 1 = the colour map).
    pub alpha: f32,
    /// Precision of the forward passes (see [`Scorer::set_precision`]).
    pub precision: Precision,
}

impl Default for PredictOptions {
    /// No override, global threshold, no files, batches of 8, `alpha = 0.5`, float32.
    fn default() -> Self {
        Self {
            threshold: None,
            per_class: None,
            out: None,
            batch_size: 8,
            alpha: 0.5,
            precision: Precision::F32,
        }
    }
}

/// Result for one image: what `omniad predict` prints as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictRecord {
    /// The input file, as given or found in a given folder.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Image score: maximum of the blurred anomaly map, in `[0, 2]` (`1 - cos` units; higher =
    /// more anomalous).
    pub image_score: f64,
    /// The class the image was judged as: given (`--class`) or recognised; `None` when the run
    /// has no class recognition (trained before omniad 0.2) and none was given.
    pub class: Option<String>,
    /// How [`Self::class`] was chosen: `given` or `recognised`.
    pub class_source: Option<ClassSource>,
    /// Confidence of a recognised class in `[0, 1]`: `1 - d1 / d2`, with `d1` the descriptor
    /// distance to that class and `d2` to the nearest other class (see
    /// [`omniad_model::recognition`]); `None` for a given class.
    pub class_confidence: Option<f64>,
    /// The image is farther from every trained class than that class's own normal images ever
    /// were (with the margin fitted on held-out normals): not a product this model knows. It
    /// gets no threshold and no decision (`anomalous` is `None`).
    pub unknown_class: bool,
    /// Score mapped to `[0, 1]` with 0.5 at the threshold (see [`omniad_metrics::normalise_score`],
    /// span from the calibration's normalisation bounds, else 1); `None` without a threshold.
    pub normalised_score: Option<f64>,
    /// Decision threshold used on the image score (the class's, else the global one, else
    /// `--threshold`); `None` when none is known or the class is unknown.
    pub threshold: Option<f64>,
    /// Threshold on the anomaly map's pixels used for the mask (the class's pixel threshold,
    /// else the image threshold); `None` like `threshold`.
    pub pixel_threshold: Option<f64>,
    /// `image_score >= threshold`; `None` without a threshold.
    pub anomalous: Option<bool>,
    /// Heatmap overlay PNG written (original size), if an output folder was given.
    #[serde(serialize_with = "lossy_opt_path")]
    pub overlay: Option<PathBuf>,
    /// Binary mask PNG written (original size, 0/255), if an output folder and a threshold were
    /// given.
    #[serde(serialize_with = "lossy_opt_path")]
    pub mask: Option<PathBuf>,
    /// Width of the original image in pixels (after EXIF orientation).
    pub width: u32,
    /// Height of the original image in pixels (after EXIF orientation).
    pub height: u32,
}

/// How an image's class was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassSource {
    /// By the caller (`--class`, `class=`).
    Given,
    /// By the run's class recognition.
    Recognised,
}

/// The decision rule for one image: its class and the thresholds and normalisation that
/// follow from it (see [`Scorer::judge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// The class judged as (see [`PredictRecord::class`]).
    pub class: Option<String>,
    /// How it was chosen.
    pub class_source: Option<ClassSource>,
    /// Confidence of a recognised class.
    pub class_confidence: Option<f64>,
    /// Not a trained class.
    pub unknown_class: bool,
    /// Image-score threshold.
    pub threshold: Option<f64>,
    /// Pixel threshold for the mask and the overlay's colour scale.
    pub pixel_threshold: Option<f64>,
    /// Normalisation bounds of the score (see
    /// [`omniad_model::checkpoint::Thresholds::score_bounds`]).
    pub bounds: Option<(f64, f64)>,
}

/// An input image [`predict_run`] could not score, and why; printed by `omniad predict` as the
/// JSON line `{"path": ..., "error": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictFailure {
    /// The input file, as given or found in a given folder.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// What went wrong, on one line, naming the file (e.g. `scan.png: cannot decode image
    /// (corrupt or truncated file?): ...`).
    pub error: String,
}

impl fmt::Display for PredictFailure {
    /// The error message (it names the file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for PredictFailure {}

/// What became of one input of [`predict_run`]. Serialised untagged: the [`PredictRecord`] of a
/// scored image, or the [`PredictFailure`] `{"path", "error"}` of one that could not be scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PredictOutcome {
    /// The image was scored (and its pictures written, with an output folder).
    Scored(PredictRecord),
    /// The image could not be scored; the others were.
    Failed(PredictFailure),
}

impl PredictOutcome {
    /// The input file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Scored(r) => &r.path,
            Self::Failed(f) => &f.path,
        }
    }

    /// The record of a scored image; `None` for a failure.
    pub fn record(&self) -> Option<&PredictRecord> {
        match self {
            Self::Scored(r) => Some(r),
            Self::Failed(_) => None,
        }
    }

    /// The failure of an image that could not be scored; `None` for a scored one.
    pub fn failure(&self) -> Option<&PredictFailure> {
        match self {
            Self::Scored(_) => None,
            Self::Failed(f) => Some(f),
        }
    }

    /// The record, or the failure as an error.
    ///
    /// # Errors
    /// The [`PredictFailure`] of an image that could not be scored.
    pub fn into_result(self) -> std::result::Result<PredictRecord, PredictFailure> {
        match self {
            Self::Scored(r) => Ok(r),
            Self::Failed(f) => Err(f),
        }
    }
}

/// Paths as JSON strings even when they are not valid UTF-8 (serde's own impl fails then).
fn lossy_path<S: Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

fn lossy_opt_path<S: Serializer>(
    p: &Option<PathBuf>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match p {
        Some(p) => lossy_path(p, s),
        None => s.serialize_none(),
    }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Expands the command-line inputs into the list of images to predict.
///
/// A file is kept as given (whatever its extension; decoding sniffs the format). A folder is
/// walked recursively (symbolic links followed) in sorted order, keeping files with an image
/// extension ([`omniad_data::IMAGE_EXTENSIONS`], case-insensitive) and skipping hidden files
/// and folders (name starting with `.`; a hidden folder given explicitly is still walked). A
/// file reached twice (e.g. given and inside a given folder) is kept once, at its first place.
///
/// # Errors
/// A path that does not exist (named), an unreadable folder or a symbolic-link loop (named),
/// or no image at all (the inputs are listed). [`collect_inputs_reporting`] reports the
/// entries of a folder that cannot be read instead of stopping at them.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let (found, unreadable) = collect_inputs_reporting(paths)?;
    match unreadable.into_iter().next() {
        Some(f) => Err(f.into()),
        None => Ok(found),
    }
}

/// [`collect_inputs`], except that an entry inside a given folder that cannot be read (a
/// symbolic-link loop, a dangling link, a folder without permission) does not stop the walk: it
/// is returned as a [`PredictFailure`] naming it, and the rest of the folder is walked.
///
/// # Errors
/// A path given on the command line that does not exist (named); no image found and nothing
/// unreadable either.
pub fn collect_inputs_reporting(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PredictFailure>)> {
    let mut unreadable = Vec::new();
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |p: PathBuf, found: &mut Vec<PathBuf>| {
        let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if seen.insert(key) {
            found.push(p);
        } else {
            tracing::debug!("{} given twice: predicted once", p.display());
        }
    };
    for p in paths {
        let meta = std::fs::metadata(p)
            .with_context(|| format!("input {}: not found or not accessible", p.display()))?;
        if !meta.is_dir() {
            push(p.clone(), &mut found);
            continue;
        }
        let before = found.len();
        let walker = walkdir::WalkDir::new(p)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
        for entry in walker {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let at = e.path().unwrap_or(p).to_path_buf();
                    unreadable.push(PredictFailure {
                        error: format!(
                            "{}: cannot read this entry of folder {}: {e}",
                            at.display(),
                            p.display()
                        ),
                        path: at,
                    });
                    continue;
                }
            };
            if entry.file_type().is_file() && has_image_extension(entry.path()) {
                push(entry.into_path(), &mut found);
            }
        }
        if found.len() == before {
            tracing::warn!("{}: no image file in this folder", p.display());
        }
    }
    if found.is_empty() && unreadable.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        bail!(
            "no image found in {} (looked for files ending in .{})",
            if names.is_empty() {
                "the inputs (none given)".to_string()
            } else {
                names.join(", ")
            },
            omniad_data::IMAGE_EXTENSIONS.join(", .")
        );
    }
    Ok((found, unreadable))
}

/// Longest stem, in bytes, of an output file (its end is kept), so that `<stem>-<index>_overlay.png`
/// stays within the usual 255-byte limit of a file name.
const MAX_STEM_BYTES: usize = 200;

/// The longest common ancestor folder of the files `paths`: the longest common leading
/// components of their parent folders, compared lexically (no file system access). Give it
/// absolute paths (as [`output_stems`] does) for a meaningful answer; with no path, the empty
/// path.
pub fn common_ancestor(paths: &[PathBuf]) -> PathBuf {
    let mut parents = paths
        .iter()
        .map(|p| p.parent().unwrap_or_else(|| Path::new("")));
    let Some(first) = parents.next() else {
        return PathBuf::new();
    };
    let mut common: Vec<Component> = first.components().collect();
    for parent in parents {
        let n = common
            .iter()
            .zip(parent.components())
            .take_while(|(a, b)| **a == *b)
            .count();
        common.truncate(n);
    }
    common.iter().collect()
}

/// The output stem of the file `path` below the folder `ancestor`: its path relative to
/// `ancestor` (all of `path` when it is not below it), without the extension, the components
/// joined with `__` (e.g. `good/001.png` below `data/a/test` gives `good__001`; `..` stays
/// `..`), at most 200 bytes (the end is kept). A file without a stem gives `image`.
pub fn relative_stem(path: &Path, ancestor: &Path) -> String {
    let rel = path.strip_prefix(ancestor).unwrap_or(path);
    let mut parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            Component::Prefix(p) => Some(
                p.as_os_str()
                    .to_string_lossy()
                    .chars()
                    .filter(|c| c.is_alphanumeric())
                    .collect(),
            ),
            Component::RootDir | Component::CurDir => None,
        })
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = Path::new(&last)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !stem.is_empty() {
            parts.push(stem);
        }
    }
    if parts.is_empty() {
        return "image".to_string();
    }
    let mut stem = parts.join("__");
    if stem.len() > MAX_STEM_BYTES {
        let mut cut = stem.len() - MAX_STEM_BYTES;
        while !stem.is_char_boundary(cut) {
            cut += 1;
        }
        stem.drain(..cut);
    }
    stem
}

/// `p` with `.` dropped and each `..` removing the component before it, without touching the
/// file system (`a/b/../c` is `a/c`; a leading `..` stays).
fn lexical_normal(p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::ParentDir if matches!(out.last(), Some(Component::RootDir)) => {}
            c => out.push(c),
        }
    }
    out.iter().collect()
}

/// The output stem of each input (`<out>/<stem>_overlay.png`, `<out>/<stem>_mask.png`): its path
/// relative to the common ancestor folder of all inputs ([`common_ancestor`] of the absolute
/// paths, [`relative_stem`]), unique case-insensitively, `-<index>` appended where needed; see
/// the module docs for the rule. `out` should exist (it is canonicalised to detect outputs that
/// would overwrite an input).
pub fn output_stems(inputs: &[PathBuf], out: &Path) -> Vec<String> {
    let absolute: Vec<PathBuf> = inputs
        .iter()
        .map(|p| lexical_normal(&std::path::absolute(p).unwrap_or_else(|_| p.clone())))
        .collect();
    let ancestor = common_ancestor(&absolute);
    let base: Vec<String> = absolute
        .iter()
        .map(|p| relative_stem(p, &ancestor))
        .collect();
    let mut count: HashMap<String, usize> = HashMap::new();
    for b in &base {
        *count.entry(b.to_lowercase()).or_default() += 1;
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let input_set: HashSet<PathBuf> = inputs.iter().map(|p| canon(p)).collect();
    let out = canon(out);
    let clobbers_input = |stem: &str| {
        [format!("{stem}_overlay.png"), format!("{stem}_mask.png")]
            .iter()
            .any(|n| input_set.contains(&out.join(n)))
    };
    let mut used = HashSet::new();
    let mut stems = Vec::with_capacity(inputs.len());
    for (i, b) in base.iter().enumerate() {
        let mut stem = b.clone();
        if count[&b.to_lowercase()] > 1 || clobbers_input(&stem) {
            stem = format!("{b}-{i}");
        }
        // `<b>-<i>` may be another input's plain stem: lengthen until unique.
        while used.contains(&stem.to_lowercase()) || clobbers_input(&stem) {
            stem = format!("{stem}-{i}");
        }
        used.insert(stem.to_lowercase());
        stems.push(stem);
    }
    stems
}

/// Creates the output folder and checks that a file can be written in it.
fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let probe = out.join(format!(".omniad-write-test-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| format!("output folder {} is not writable", out.display()))?;
    Ok(())
}

/// Refuses a decision threshold that is negative or not a finite number (image scores are
/// `>= 0`).
///
/// # Errors
/// The threshold and the rule, as a message.
pub fn check_threshold(t: f64) -> Result<()> {
    if !(t.is_finite() && t >= 0.0) {
        bail!(
            "threshold {t}: a decision threshold on the image score must be a finite number >= 0"
        );
    }
    Ok(())
}

/// Checks a class given by a caller before any image is scored: it must be a class the model
/// was trained on (by `meta`'s recognition or provenance; not checked when neither records
/// classes), and have a calibrated threshold unless `threshold` overrides it: its own, or the
/// global one for a class the run records as trained (as for a recognised class). `ckpt` names
/// the checkpoint in messages.
///
/// # Errors
/// An untrained class (the trained ones are listed), or one without a threshold.
pub fn check_class(
    meta: &CheckpointMeta,
    ckpt: &Path,
    class: &str,
    threshold: Option<f64>,
) -> Result<()> {
    let trained = crate::calibrate::trained_classes(meta).unwrap_or_default();
    if !trained.is_empty() && !trained.iter().any(|c| c == class) {
        bail!(
            "{}: the model was not trained on class {class:?} (trained classes: {})",
            ckpt.display(),
            trained.join(", ")
        );
    }
    if let Some(t) = threshold {
        check_threshold(t)?;
        tracing::info!("threshold {t} overrides the calibrated threshold of class {class}");
        return Ok(());
    }
    let Some(th) = meta.thresholds.as_ref() else {
        bail!(
            "{}: no calibrated thresholds, so none for class {class}: run `omniad calibrate` first, or pass --threshold",
            ckpt.display()
        );
    };
    // a trained class without its own threshold is judged with the global one, as a
    // recognised class is; a class the run does not record is refused without its own
    let global_applies = trained.iter().any(|c| c == class) && th.global.is_some();
    if th.per_class.contains_key(class) || global_applies {
        return Ok(());
    }
    let known: Vec<&str> = th.per_class.keys().map(String::as_str).collect();
    bail!(
        "{}: no calibrated threshold for class {class:?} (calibrated classes: {})",
        ckpt.display(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// The decision rule for one image: its class (`given`, else the `recognised` class and its
/// decision), then the thresholds: `threshold` when given (for the image score and the mask),
/// else the class's calibrated image and pixel thresholds (a class without a pixel threshold
/// uses its image threshold), else the global ones. An image of an unknown class gets no
/// threshold. Normalisation: the stored `score_bounds`, else the span `2 t` (see
/// [`omniad_model::checkpoint::Thresholds::score_bounds`]).
///
/// # Errors
/// A `given` class that was not trained or has no threshold (see [`check_class`]); a
/// `threshold` that is negative or not finite.
pub fn judge(
    meta: &CheckpointMeta,
    ckpt: &Path,
    recognised: Option<(&str, &Recognition)>,
    given: Option<&str>,
    threshold: Option<f64>,
) -> Result<Judgement> {
    let stored = meta.thresholds.as_ref();
    let (class, class_source, class_confidence, unknown_class) = match (given, recognised) {
        (Some(c), _) => {
            check_class(meta, ckpt, c, threshold)?;
            (Some(c.to_string()), Some(ClassSource::Given), None, false)
        }
        (None, Some((name, r))) => (
            Some(name.to_string()),
            Some(ClassSource::Recognised),
            Some(r.confidence),
            r.unknown,
        ),
        (None, None) => (None, None, None, false),
    };
    let (image_t, pixel_t) = if unknown_class {
        (None, None)
    } else if let Some(t) = threshold {
        check_threshold(t)?;
        (Some(t), Some(t))
    } else {
        let per_class = |m: &BTreeMap<String, f64>| class.as_ref().and_then(|c| m.get(c)).copied();
        match stored {
            None => (None, None),
            Some(th) => match per_class(&th.per_class) {
                Some(t) => (Some(t), per_class(&th.pixel_per_class).or(Some(t))),
                None => (th.global, th.pixel_global.or(th.global)),
            },
        }
    };
    let bounds = image_t.map(|t| {
        stored
            .and_then(|th| th.score_bounds)
            .unwrap_or((0.0, 2.0 * t))
    });
    Ok(Judgement {
        class,
        class_source,
        class_confidence,
        unknown_class,
        threshold: image_t,
        pixel_threshold: pixel_t,
        bounds,
    })
}

/// A run's model loaded once, scoring images already decoded to RGB: the one scoring path of
/// [`predict_run`] and of `omniad serve`, so that both give bit-identical scores for the same
/// pixels in the same batch.
pub struct Scorer {
    model: OmniAd,
    pp: Preprocess,
    ckpt: PathBuf,
    meta: CheckpointMeta,
    bank: Option<ClassBank>,
    precision: Precision,
}

/// Scores and anomaly maps of one batch scored by [`Scorer::score`].
pub struct Scored {
    /// Image score of each image, in input order (maximum of its blurred anomaly map, `1 - cos`
    /// units, in `[0, 2]` for a sound checkpoint; not checked for finiteness here).
    pub scores: Vec<f64>,
    /// Class recognition of each image (`None` when the run has no class recognition).
    pub recognitions: Option<Vec<Recognition>>,
    /// `[B, H, W]` anomaly maps at the model's input size, on the model's device.
    maps: Tensor,
    /// The model's input size `(H, W)`, pixels.
    size: (i64, i64),
}

impl Scored {
    /// The anomaly map of image `j` upsampled bilinearly (`align_corners = false`) to
    /// `width x height` pixels, row-major on the CPU.
    ///
    /// # Errors
    /// `j` out of range, or a libtorch failure.
    pub fn map_at(&self, j: usize, width: u32, height: u32) -> Result<Vec<f32>> {
        if j >= self.scores.len() {
            bail!("image {j} of a batch of {}", self.scores.len());
        }
        upsample(&self.maps.get(j as i64), self.size, (height, width))
    }
}

impl Scorer {
    /// Loads the checkpoint of the run folder `run` (completing or discarding an interrupted
    /// save first, see [`checkpoint_of`]) on `device`.
    ///
    /// # Errors
    /// An unknown or unavailable device, a run folder without a valid checkpoint, weights that
    /// do not match their checksum or architecture, an invalid input preprocessing.
    pub fn load(run: &Path, device: ComputeDevice) -> Result<Self> {
        let device = device.open()?;
        let ckpt = checkpoint_of(run)?;
        Self::from_checkpoint(&ckpt, device)
    }

    /// Loads the checkpoint whose description file (`model.json`) is `ckpt` on `device`.
    ///
    /// # Errors
    /// As [`Self::load`], after the run folder checks.
    pub fn from_checkpoint(ckpt: &Path, device: Device) -> Result<Self> {
        let (model, meta, bank) = checkpoint::load_full(ckpt, device)?;
        let pp = preprocess_for(&model.cfg);
        pp.validate()?;
        Ok(Self {
            model,
            pp,
            ckpt: ckpt.to_path_buf(),
            meta,
            bank,
            precision: Precision::F32,
        })
    }

    /// Sets the precision of the forward passes of [`Self::score`]: float32 (the default), or
    /// bfloat16 / float16 matrix products and convolutions with norms, anomaly map, image score
    /// and class-recognition descriptors in float32 ([`omniad_model::precision`]). The weights
    /// stay as stored; lower precision changes image scores by about 1e-3 relative.
    ///
    /// # Errors
    /// float16 on the CPU ([`Precision::check_device`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision
            .check_device(self.model.device())
            .map_err(anyhow::Error::msg)?;
        self.precision = precision;
        Ok(())
    }

    /// The precision of the forward passes.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The checkpoint's description (architecture, thresholds, weights checksum, provenance).
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The checkpoint's description file (`model.json`).
    pub fn checkpoint(&self) -> &Path {
        &self.ckpt
    }

    /// The model's input size `(H, W)` in pixels (every image is resized to it).
    pub fn input_size(&self) -> (u32, u32) {
        self.pp.size
    }

    /// Whether the run recognises classes (trained with omniad 0.2 or later).
    pub fn recognises_classes(&self) -> bool {
        self.bank.is_some()
    }

    /// Checks a class given by a caller before any image is scored: see [`check_class`].
    ///
    /// # Errors
    /// As [`check_class`].
    pub fn check_class(&self, class: &str, threshold: Option<f64>) -> Result<()> {
        check_class(&self.meta, &self.ckpt, class, threshold)
    }

    /// The recognised class name and decision of image `j` of `scored`, when the run
    /// recognises classes.
    pub fn recognised<'s>(
        &'s self,
        scored: &'s Scored,
        j: usize,
    ) -> Option<(&'s str, &'s Recognition)> {
        let bank = self.bank.as_ref()?;
        let r = scored.recognitions.as_ref()?.get(j)?;
        Some((bank.classes[r.class].as_str(), r))
    }

    /// The decision rule for image `j` of `scored`: see [`judge`].
    ///
    /// # Errors
    /// `j` out of range; as [`judge`].
    pub fn judge(
        &self,
        scored: &Scored,
        j: usize,
        given: Option<&str>,
        threshold: Option<f64>,
    ) -> Result<Judgement> {
        if j >= scored.scores.len() {
            bail!("image {j} of a batch of {}", scored.scores.len());
        }
        judge(
            &self.meta,
            &self.ckpt,
            self.recognised(scored, j),
            given,
            threshold,
        )
    }

    /// Scores `images` (any sizes) in one forward pass `[B, 3, H, W]`: each is preprocessed as
    /// in training ([`preprocess_rgb`] with [`preprocess_for`], in parallel) and scored by
    /// [`OmniAd::predict`].
    ///
    /// # Errors
    /// No image, or a libtorch failure (e.g. out of memory), as a message.
    pub fn score(&self, images: &[RgbImage]) -> Result<Scored> {
        if images.is_empty() {
            bail!("no image to score");
        }
        let pp = &self.pp;
        let inputs: Vec<Vec<f32>> = images
            .par_iter()
            .map(|img| preprocess_rgb(img, pp))
            .collect();
        let mut flat = Vec::with_capacity(images.len() * pp.tensor_len());
        for x in &inputs {
            flat.extend_from_slice(x);
        }
        drop(inputs);
        let model = &self.model;
        let pred = libtorch("forward pass", || {
            let x = images_tensor(&flat, images.len(), pp, model.device());
            self.precision.run(|| model.predict(&x))
        })?;
        let scores = Vec::<f32>::try_from(
            pred.image_scores
                .to_device(Device::Cpu)
                .to_kind(Kind::Float),
        )?;
        let recognitions = match &self.bank {
            Some(bank) => Some(
                libtorch("class recognition", || bank.recognise(&pred.descriptors))?
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        Ok(Scored {
            scores: scores.into_iter().map(f64::from).collect(),
            recognitions,
            maps: pred.anomaly_map,
            size: (pp.size.0 as i64, pp.size.1 as i64),
        })
    }
}

/// The record of one scored image (no picture paths): class, decision and normalised score by
/// the judgement `j` ([`Scorer::judge`]); `width x height` is the image's size.
///
/// # Errors
/// A non-finite score (the message names `path` and the checkpoint `ckpt`, which may be damaged).
pub fn make_record(
    path: &Path,
    score: f64,
    j: &Judgement,
    (width, height): (u32, u32),
    ckpt: &Path,
) -> Result<PredictRecord> {
    if !score.is_finite() {
        bail!(
            "{}: the image score is {score} (not finite): the checkpoint {} may be damaged",
            path.display(),
            ckpt.display()
        );
    }
    let threshold = j.threshold;
    Ok(PredictRecord {
        path: path.to_path_buf(),
        image_score: score,
        class: j.class.clone(),
        class_source: j.class_source,
        class_confidence: j.class_confidence,
        unknown_class: j.unknown_class,
        normalised_score: threshold.map(|t| normalise_score(score, t, j.bounds)),
        threshold,
        pixel_threshold: j.pixel_threshold,
        anomalous: threshold.map(|t| score >= t),
        overlay: None,
        mask: None,
        width,
        height,
    })
}

/// The pictures of one image: the heatmap overlay (colour scale as in the module docs, `alpha`
/// the colour map's weight in `[0, 1]`) and, with a threshold (the pixel threshold of
/// [`Judgement::pixel_threshold`]), the 0/255 binary mask, both at the image's size. `map` is the anomaly map upsampled to that size ([`Scored::map_at`]).
///
/// # Errors
/// A map whose length is not the image's pixel count, or `alpha` outside `[0, 1]`.
pub fn render(
    img: &RgbImage,
    map: &[f32],
    threshold: Option<f64>,
    alpha: f32,
) -> Result<(RgbImage, Option<GrayImage>)> {
    let (iw, ih) = img.dimensions();
    let range = overlay::heatmap_range(map, threshold);
    let picture = overlay::overlay(img, map, range, alpha)?;
    let mask = match threshold {
        Some(t) => Some(overlay::binary_mask(map, iw, ih, t)?),
        None => None,
    };
    Ok((picture, mask))
}

fn validate(opts: &PredictOptions) -> Result<()> {
    if opts.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    if !(0.0..=1.0).contains(&opts.alpha) {
        bail!("overlay alpha {} must be in [0, 1]", opts.alpha);
    }
    if let Some(t) = opts.threshold {
        check_threshold(t)?;
    }
    Ok(())
}

/// What every scored image of a [`predict_run`] call shares: the scorer (whose checkpoint holds
/// the thresholds and the class recognition), the given class and threshold override, the
/// checkpoint (named in messages) and the pictures' folder and blend factor.
struct RecordContext<'a> {
    scorer: &'a Scorer,
    class: Option<&'a str>,
    threshold: Option<f64>,
    ckpt: &'a Path,
    out: Option<&'a Path>,
    alpha: f32,
}

/// The record of the scored image `j` of `scored` (`img` decoded from `path`): its judgement
/// ([`Scorer::judge`]: class, thresholds), [`make_record`], then, with an output folder, its overlay and mask written as `<out>/<stem>_overlay.png` and
/// `<out>/<stem>_mask.png` (the mask, `map >= pixel threshold`, only with a threshold). The one place where
/// [`predict_run`] makes the record of a scored image.
///
/// # Errors
/// Those of [`make_record`] (a non-finite score), an anomaly map that cannot be upsampled, a
/// picture that cannot be rendered or written; each message names `path`.
fn scored_record(
    ctx: &RecordContext,
    path: &Path,
    img: &RgbImage,
    scored: &Scored,
    j: usize,
    stem: Option<&str>,
) -> Result<PredictRecord> {
    let judgement = ctx.scorer.judge(scored, j, ctx.class, ctx.threshold)?;
    let mut record = make_record(
        path,
        scored.scores[j],
        &judgement,
        img.dimensions(),
        ctx.ckpt,
    )?;
    if let (Some(out), Some(stem)) = (ctx.out, stem) {
        let (iw, ih) = img.dimensions();
        let named = || format!("{}: cannot make its pictures", path.display());
        let map = scored.map_at(j, iw, ih).with_context(named)?;
        let (picture, mask) =
            render(img, &map, judgement.pixel_threshold, ctx.alpha).with_context(named)?;
        let overlay_path = out.join(format!("{stem}_overlay.png"));
        overlay::write_rgb_png(&overlay_path, &picture)
            .with_context(|| format!("{}: cannot write its overlay", path.display()))?;
        record.overlay = Some(overlay_path);
        if let Some(mask) = mask {
            let mask_path = out.join(format!("{stem}_mask.png"));
            overlay::write_gray_png(&mask_path, &mask)
                .with_context(|| format!("{}: cannot write its mask", path.display()))?;
            record.mask = Some(mask_path);
        }
    }
    Ok(record)
}

/// An error and its causes on one line, `outer: inner: ...`, skipping a cause whose message the
/// previous one already ends with (errors that print their source themselves). Used for the
/// `{"path", "error"}` lines of `omniad predict` and the CLI's `error:` line.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !msg.is_empty() && msg.ends_with(&s) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s);
    }
    msg.replace('\n', " ")
}

/// Scores `inputs` with the model of the run folder `run` on `device` (`cpu`, `cuda`,
/// `cuda:N`), writes overlays and masks when `opts.out` is set (see the module docs), calls
/// `on_record` with the outcome of each image as soon as it is done (in input order) and returns
/// all outcomes, in input order.
///
/// Every input gets an outcome: an image that cannot be scored (missing, unreadable, corrupt,
/// not an image, a non-finite score, a PNG that cannot be written) is a
/// [`PredictOutcome::Failed`] naming the file and the problem, and the other images of its batch
/// and the later batches are scored as usual (the batch then holds fewer images).
///
/// Class and thresholds per image by [`Scorer::judge`]: the class `opts.per_class`, else the
/// recognised one; `opts.threshold`, else the class's calibrated thresholds, else the global
/// ones. With none, decisions, normalised scores and masks are `None` and a warning
/// ([`NO_THRESHOLD_HINT`]) is logged once.
///
/// Images go through the model `opts.batch_size` at a time as `[B, 3, H, W]` at the model's
/// input size (`H, W` from the checkpoint); the `[B, H, W]` anomaly maps are upsampled to each
/// image's own size for the pictures.
///
/// # Errors
/// Checked before any image is read: invalid options (batch size 0, alpha outside `[0, 1]`,
/// non-finite threshold), no input, an unknown device, a run folder without a (valid)
/// checkpoint, an output folder that cannot be created or written, a `per_class` without a
/// calibrated threshold. Then, stopping the call: a libtorch failure of a forward pass (e.g. out
/// of memory), or an error returned by `on_record`.
pub fn predict_run(
    run: &Path,
    inputs: &[PathBuf],
    device: ComputeDevice,
    opts: &PredictOptions,
    mut on_record: impl FnMut(&PredictOutcome) -> Result<()>,
) -> Result<Vec<PredictOutcome>> {
    validate(opts)?;
    if inputs.is_empty() {
        bail!("no input image given");
    }
    let device = device.open()?;
    opts.precision
        .check_device(device)
        .map_err(anyhow::Error::msg)?;
    let ckpt = checkpoint_of(run)?;
    if let Some(out) = &opts.out {
        prepare_out_dir(out)?;
    }
    let stems = opts.out.as_deref().map(|out| output_stems(inputs, out));
    let mut scorer = Scorer::from_checkpoint(&ckpt, device)?;
    scorer.set_precision(opts.precision)?;
    if let Some(class) = opts.per_class.as_deref() {
        scorer.check_class(class, opts.threshold)?;
    }
    let meta = scorer.meta();
    if opts.threshold.is_none() && meta.thresholds.is_none() {
        tracing::warn!("{NO_THRESHOLD_HINT}");
        if opts.out.is_some() {
            tracing::warn!("no decision threshold: binary masks are not written (overlays are)");
        }
    }
    let ctx = RecordContext {
        scorer: &scorer,
        class: opts.per_class.as_deref(),
        threshold: opts.threshold,
        ckpt: &ckpt,
        out: opts.out.as_deref(),
        alpha: opts.alpha,
    };
    let mut outcomes = Vec::with_capacity(inputs.len());
    for (chunk_no, chunk) in inputs.chunks(opts.batch_size).enumerate() {
        let decoded: Vec<_> = chunk.par_iter().map(|p| load_rgb(p)).collect();
        // The decoded images, scored together; each input's place among them, or its error.
        let mut images = Vec::with_capacity(chunk.len());
        let mut slots = Vec::with_capacity(chunk.len());
        for item in decoded {
            slots.push(item.map(|img| {
                images.push(img);
                images.len() - 1
            }));
        }
        let scored = if images.is_empty() {
            None
        } else {
            Some(scorer.score(&images)?)
        };
        for (k, (path, slot)) in chunk.iter().zip(slots).enumerate() {
            let stem = stems
                .as_ref()
                .map(|s| s[chunk_no * opts.batch_size + k].as_str());
            let result = match (slot, &scored) {
                (Ok(j), Some(scored)) => scored_record(&ctx, path, &images[j], scored, j, stem),
                (Ok(_), None) => Err(anyhow::anyhow!(
                    "{}: decoded but not scored",
                    path.display()
                )),
                (Err(e), _) => Err(e.into()),
            };
            let outcome = match result {
                Ok(record) => PredictOutcome::Scored(record),
                Err(e) => PredictOutcome::Failed(PredictFailure {
                    path: path.clone(),
                    error: error_line(&e),
                }),
            };
            on_record(&outcome)?;
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

/// Bilinear resize (`align_corners = false`, PyTorch's `F.interpolate` default) of one anomaly
/// map `[H, W]` (any device) to `(out_h, out_w)`; returns the `out_h * out_w` values row-major on
/// the CPU.
fn upsample(map: &Tensor, (h, w): (i64, i64), (out_h, out_w): (u32, u32)) -> Result<Vec<f32>> {
    let resized = map
        .to_kind(Kind::Float)
        .reshape([1, 1, h, w])
        .upsample_bilinear2d([i64::from(out_h), i64::from(out_w)], false, None, None);
    Ok(Vec::<f32>::try_from(
        resized.to_device(Device::Cpu).flatten(0, -1),
    )?)
}
