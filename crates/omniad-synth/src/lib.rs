//! Deterministic synthetic multi-class anomaly dataset in MVTec-AD layout.
//!
//! `omniad synth` / `omniad demo` use this crate so that a new user can train
//! and evaluate an Omni-AD model (Omni-AD, ICME 2025, arXiv 2503.21125)
//! without downloading MVTec-AD. Everything is procedural code of this crate
//! (no downloads, no external assets) and seeded: the same
//! [`SynthConfig::seed`] gives byte-identical files on any number of threads.
//!
//! # Classes
//!
//! | class     | family  | defect kinds                                   |
//! |-----------|---------|------------------------------------------------|
//! | `woven`   | texture | scratch, crack, stain, hole, color             |
//! | `grained` | texture | scratch, crack, stain, hole, color             |
//! | `tiled`   | texture | scratch, crack, stain, hole, color             |
//! | `flange`  | object  | scratch, crack, stain, broken, color           |
//! | `screw`   | object  | scratch, stain, broken, thread, color          |
//! | `label`   | object  | scratch, stain, missing, misplaced, color      |
//!
//! Normal images vary in position, rotation, pattern phase, colour,
//! illumination (brightness, gradient, vignetting, white balance) and sensor
//! noise. Defects are drawn at the same time as the ground-truth mask: a
//! defective image is the defect-free image of the same scene with the defect
//! added, and its mask is *exactly* the set of pixels where the two differ.
//!
//! # Layout (MVTec-AD, Bergmann et al., CVPR 2019)
//!
//! ```text
//! <out>/synth.json
//! <out>/<class>/train/good/000.png
//! <out>/<class>/test/good/000.png
//! <out>/<class>/test/<defect>/000.png
//! <out>/<class>/ground_truth/<defect>/000_mask.png
//! ```
//!
//! Images are 8-bit RGB PNGs of `size x size` pixels; masks are 8-bit
//! single-channel PNGs of the same size with values 0 (normal) and 255
//! (defect).

mod canvas;
mod defects;
mod objects;
mod rng;
mod scene;
mod textures;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the manifest written at the root of the output folder.
pub const MANIFEST: &str = "synth.json";
/// Value of the manifest's `generator` field; marks a folder as ours.
pub const GENERATOR: &str = "omniad-synth";
/// Version of the manifest format.
pub const FORMAT_VERSION: u32 = 1;

/// Smallest and largest accepted image side, pixels.
pub const SIZE_RANGE: (u32, u32) = (64, 4096);
/// Largest accepted per-class image count of any split.
pub const MAX_PER_SPLIT: usize = 100_000;

/// Errors of dataset generation.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The output folder holds files that are not a previous synth output.
    #[error(
        "output folder {path} is not empty and is not a previous omniad-synth output (no valid {MANIFEST}); \
         choose a new or empty folder"
    )]
    ForeignOutput { path: PathBuf },
    /// The output path exists but is not a folder.
    #[error("output path {path} exists and is not a folder")]
    NotADirectory { path: PathBuf },
    /// A requested class does not exist.
    #[error("unknown synth class '{name}' (known classes: {known})")]
    UnknownClass { name: String, known: String },
    /// A class was requested twice.
    #[error("synth class '{name}' is listed more than once")]
    DuplicateClass { name: String },
    /// A configuration value is out of range.
    #[error("invalid synth config: {field} {message}")]
    InvalidConfig {
        field: &'static str,
        message: String,
    },
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("could not encode PNG {path}: {source}")]
    Png {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The manifest could not be written or read.
    #[error("invalid or unwritable manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// No visible defect could be placed (internal error; should not happen).
    #[error("could not place a visible '{defect}' defect on a '{class}' image")]
    Degenerate { class: String, defect: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Generation settings. `Default` gives the dataset used by `omniad demo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Master seed; every image is seeded from `(seed, class, split, index)`.
    pub seed: u64,
    /// Image side in pixels (square images), in [`SIZE_RANGE`]; default 256.
    /// Geometry is designed for 256 and scaled proportionally.
    pub size: u32,
    /// Normal training images per class (`train/good`), default 40.
    pub train_per_class: usize,
    /// Normal test images per class (`test/good`), default 15.
    pub test_good_per_class: usize,
    /// Defective test images per class, spread round-robin over the class's
    /// defect kinds (default 25 = 5 per kind).
    pub test_defect_per_class: usize,
    /// Classes to generate (names from [`class_names`]); `None` = all.
    pub classes: Option<Vec<String>>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            size: 256,
            train_per_class: 40,
            test_good_per_class: 15,
            test_defect_per_class: 25,
            classes: None,
        }
    }
}

/// Texture (full-frame pattern) or object (one part on a background), as in
/// the MVTec-AD category split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Texture,
    Object,
}

/// Static description of a class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    /// Folder name of the class.
    pub name: &'static str,
    /// Texture or object.
    pub family: Family,
    /// Defect kinds (folder names under `test/` and `ground_truth/`), in the
    /// round-robin order used to assign defective test images.
    pub defects: Vec<&'static str>,
}

/// Names of all classes, in generation order.
pub fn class_names() -> Vec<&'static str> {
    scene::CLASSES.iter().map(|c| c.name).collect()
}

/// Description of class `name`, or `None` if it does not exist.
pub fn class_info(name: &str) -> Option<ClassInfo> {
    scene::find(name).map(|c| ClassInfo {
        name: c.name,
        family: c.family,
        defects: c.defects.to_vec(),
    })
}

/// Dataset split of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// `train/good`.
    Train,
    /// `test/good`.
    TestGood,
    /// `test/<defect>`, with a mask in `ground_truth/<defect>`.
    TestDefect,
}

impl Split {
    fn tag(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::TestGood => 2,
            Split::TestDefect => 3,
        }
    }
}

/// One rendered image with its defect-free counterpart and mask.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The image as written to disk, `size x size` RGB.
    pub image: RgbImage,
    /// The same scene without the defect (equal to `image` for good images).
    pub clean: RgbImage,
    /// Ground truth for defective images: 255 exactly where `image != clean`
    /// (any channel), 0 elsewhere; `None` for good images.
    pub mask: Option<GrayImage>,
    /// Defect kind (`None` for good images).
    pub defect: Option<&'static str>,
    /// Path of the image relative to the output folder.
    pub image_path: PathBuf,
    /// Path of the mask relative to the output folder.
    pub mask_path: Option<PathBuf>,
}

/// Defect kind and index inside its folder of defective test image `index`.
fn defect_slot(def: &scene::ClassDef, index: usize) -> (&'static str, usize) {
    let n = def.defects.len();
    (def.defects[index % n], index / n)
}

fn validate_size(size: u32) -> Result<(), SynthError> {
    if size < SIZE_RANGE.0 || size > SIZE_RANGE.1 {
        return Err(SynthError::InvalidConfig {
            field: "size",
            message: format!(
                "must be in {}..={} pixels, got {size}",
                SIZE_RANGE.0, SIZE_RANGE.1
            ),
        });
    }
    Ok(())
}

fn validate(cfg: &SynthConfig) -> Result<Vec<&'static scene::ClassDef>, SynthError> {
    validate_size(cfg.size)?;
    for (field, v) in [
        ("train_per_class", cfg.train_per_class),
        ("test_good_per_class", cfg.test_good_per_class),
        ("test_defect_per_class", cfg.test_defect_per_class),
    ] {
        if v > MAX_PER_SPLIT {
            return Err(SynthError::InvalidConfig {
                field,
                message: format!("must be at most {MAX_PER_SPLIT}, got {v}"),
            });
        }
    }
    let Some(names) = &cfg.classes else {
        return Ok(scene::CLASSES.iter().collect());
    };
    if names.is_empty() {
        return Err(SynthError::InvalidConfig {
            field: "classes",
            message: "must name at least one class (or be None for all)".into(),
        });
    }
    let mut out: Vec<&'static scene::ClassDef> = Vec::new();
    for n in names {
        let def = scene::find(n).ok_or_else(|| SynthError::UnknownClass {
            name: n.clone(),
            known: class_names().join(", "),
        })?;
        if out.iter().any(|d| d.name == def.name) {
            return Err(SynthError::DuplicateClass { name: n.clone() });
        }
        out.push(def);
    }
    Ok(out)
}

fn lookup(class: &str) -> Result<&'static scene::ClassDef, SynthError> {
    scene::find(class).ok_or_else(|| SynthError::UnknownClass {
        name: class.to_string(),
        known: class_names().join(", "),
    })
}

/// Renders image `index` of `split` for `class` exactly as [`generate`]
/// writes it (only `cfg.seed` and `cfg.size` matter), together with the
/// defect-free render of the same scene.
///
/// For [`Split::TestDefect`], image `index` has defect kind
/// `defects[index % n]` and is file `index / n` of that defect's folder.
///
/// Errors: [`SynthError::UnknownClass`], [`SynthError::InvalidConfig`] (size
/// out of range), [`SynthError::Degenerate`].
pub fn render_sample(
    cfg: &SynthConfig,
    class: &str,
    split: Split,
    index: usize,
) -> Result<Sample, SynthError> {
    let def = lookup(class)?;
    validate_size(cfg.size)?;
    let seed = rng::derive(&[cfg.seed, rng::hash_str(def.name), split.tag(), index as u64]);
    let size = cfg.size as usize;
    let base = PathBuf::from(def.name);
    let (defect, image_path, mask_path) = match split {
        Split::Train => (
            None,
            base.join("train")
                .join("good")
                .join(format!("{index:03}.png")),
            None,
        ),
        Split::TestGood => (
            None,
            base.join("test")
                .join("good")
                .join(format!("{index:03}.png")),
            None,
        ),
        Split::TestDefect => {
            let (d, k) = defect_slot(def, index);
            (
                Some(d),
                base.join("test").join(d).join(format!("{k:03}.png")),
                Some(
                    base.join("ground_truth")
                        .join(d)
                        .join(format!("{k:03}_mask.png")),
                ),
            )
        }
    };
    let out = scene::render(def, seed, size, defect)?;
    Ok(Sample {
        image: out.image,
        clean: out.clean,
        mask: out.mask,
        defect,
        image_path,
        mask_path,
    })
}

/// Image counts of one generated class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSummary {
    /// Class name (folder name).
    pub name: String,
    /// Texture or object.
    pub family: Family,
    /// All defect kinds of the class, in round-robin order.
    pub defects: Vec<String>,
    /// Images in `train/good`.
    pub train_good: usize,
    /// Images in `test/good`.
    pub test_good: usize,
    /// Images (and masks) per defect folder; kinds with zero images are absent.
    pub test_defects: BTreeMap<String, usize>,
}

/// Result of [`generate`]; also the content of `synth.json` (see [`Manifest`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// Output folder as given to [`generate`].
    pub out: PathBuf,
    /// Master seed.
    pub seed: u64,
    /// Image side, pixels.
    pub size: u32,
    /// Per-class counts, in generation order.
    pub classes: Vec<ClassSummary>,
    /// Total number of images written (masks not counted).
    pub total_images: usize,
}

/// Content of `<out>/synth.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`GENERATOR`].
    pub generator: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// `false` while generation runs; `true` once every file is written.
    pub complete: bool,
    /// Configuration the dataset was generated with.
    pub config: SynthConfig,
    /// Per-class counts.
    pub classes: Vec<ClassSummary>,
    /// Total number of images (masks not counted).
    pub total_images: usize,
}

/// Reads and checks `<out>/synth.json`.
///
/// Errors: [`SynthError::Io`] if it cannot be read, [`SynthError::Manifest`]
/// if it is not a valid omniad-synth manifest.
pub fn read_manifest(out: &Path) -> Result<Manifest, SynthError> {
    let path = out.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|source| SynthError::Manifest {
        path: path.clone(),
        source,
    })?;
    if m.generator != GENERATOR {
        return Err(SynthError::Manifest {
            path,
            source: serde::de::Error::custom(format!(
                "generator is '{}', expected '{GENERATOR}'",
                m.generator
            )),
        });
    }
    Ok(m)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    omniad_io::write_atomic(path, bytes).map_err(|e| SynthError::Io {
        path: e.path,
        source: e.source,
    })
}

fn png_bytes(
    path: &Path,
    raw: &[u8],
    w: u32,
    h: u32,
    color: ExtendedColorType,
) -> Result<Vec<u8>, SynthError> {
    let mut buf = Vec::new();
    PngEncoder::new(&mut buf)
        .write_image(raw, w, h, color)
        .map_err(|source| SynthError::Png {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(buf)
}

/// Checks the output folder and removes a previous synth output's classes.
fn prepare_out(out: &Path) -> Result<(), SynthError> {
    match std::fs::metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir_all(out).map_err(io_err(out));
        }
        Err(e) => return Err(io_err(out)(e)),
        Ok(md) if !md.is_dir() => {
            return Err(SynthError::NotADirectory {
                path: out.to_path_buf(),
            })
        }
        Ok(_) => {}
    }
    let mut entries = std::fs::read_dir(out).map_err(io_err(out))?;
    if entries.next().is_none() {
        return Ok(());
    }
    let old = read_manifest(out).map_err(|_| SynthError::ForeignOutput {
        path: out.to_path_buf(),
    })?;
    // Only folders of known class names are removed, never anything else.
    for c in &old.classes {
        if let Some(def) = scene::find(&c.name) {
            let dir = out.join(def.name);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
        }
    }
    Ok(())
}

fn write_manifest(out: &Path, m: &Manifest) -> Result<(), SynthError> {
    let path = out.join(MANIFEST);
    let mut text = serde_json::to_string_pretty(m).map_err(|source| SynthError::Manifest {
        path: path.clone(),
        source,
    })?;
    text.push('\n');
    write_atomic(&path, text.as_bytes())
}

/// Generates the dataset into `out` (created if missing) and returns the
/// counts. Images are rendered in parallel with rayon; every file is written
/// atomically (temporary file + rename) and the output is byte-identical for
/// the same `cfg` whatever the number of threads.
///
/// `out` must be missing, empty, or a previous synth output (it has a valid
/// `synth.json`); in the last case the previous class folders are removed
/// first. `synth.json` is written with `complete: false` before the images
/// and rewritten with `complete: true` at the end.
///
/// Errors: [`SynthError::ForeignOutput`] (non-empty folder that is not ours),
/// [`SynthError::NotADirectory`], [`SynthError::UnknownClass`],
/// [`SynthError::DuplicateClass`], [`SynthError::InvalidConfig`],
/// [`SynthError::Io`], [`SynthError::Png`], [`SynthError::Manifest`],
/// [`SynthError::Degenerate`].
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary, SynthError> {
    let defs = validate(cfg)?;
    let classes: Vec<ClassSummary> = defs
        .iter()
        .map(|d| {
            let mut test_defects = BTreeMap::new();
            for i in 0..cfg.test_defect_per_class {
                *test_defects
                    .entry(defect_slot(d, i).0.to_string())
                    .or_insert(0) += 1;
            }
            ClassSummary {
                name: d.name.to_string(),
                family: d.family,
                defects: d.defects.iter().map(|s| s.to_string()).collect(),
                train_good: cfg.train_per_class,
                test_good: cfg.test_good_per_class,
                test_defects,
            }
        })
        .collect();
    let per_class = cfg.train_per_class + cfg.test_good_per_class + cfg.test_defect_per_class;
    let total_images = per_class * defs.len();
    let mut manifest = Manifest {
        generator: GENERATOR.to_string(),
        format_version: FORMAT_VERSION,
        complete: false,
        config: cfg.clone(),
        classes: classes.clone(),
        total_images,
    };

    prepare_out(out)?;
    write_manifest(out, &manifest)?;
    for c in &classes {
        let base = out.join(&c.name);
        let mut dirs = vec![
            base.join("train").join("good"),
            base.join("test").join("good"),
        ];
        for d in c.test_defects.keys() {
            dirs.push(base.join("test").join(d));
            dirs.push(base.join("ground_truth").join(d));
        }
        for d in dirs {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
    }

    let mut jobs = Vec::with_capacity(total_images);
    for d in &defs {
        for i in 0..cfg.train_per_class {
            jobs.push((d.name, Split::Train, i));
        }
        for i in 0..cfg.test_good_per_class {
            jobs.push((d.name, Split::TestGood, i));
        }
        for i in 0..cfg.test_defect_per_class {
            jobs.push((d.name, Split::TestDefect, i));
        }
    }
    jobs.par_iter()
        .try_for_each(|&(class, split, index)| -> Result<(), SynthError> {
            let s = render_sample(cfg, class, split, index)?;
            let path = out.join(&s.image_path);
            let bytes = png_bytes(
                &path,
                s.image.as_raw(),
                cfg.size,
                cfg.size,
                ExtendedColorType::Rgb8,
            )?;
            write_atomic(&path, &bytes)?;
            if let (Some(mask), Some(rel)) = (&s.mask, &s.mask_path) {
                let path = out.join(rel);
                let bytes = png_bytes(
                    &path,
                    mask.as_raw(),
                    cfg.size,
                    cfg.size,
                    ExtendedColorType::L8,
                )?;
                write_atomic(&path, &bytes)?;
            }
            Ok(())
        })?;

    manifest.complete = true;
    write_manifest(out, &manifest)?;
    Ok(SynthSummary {
        out: out.to_path_buf(),
        seed: cfg.seed,
        size: cfg.size,
        classes,
        total_images,
    })
}
