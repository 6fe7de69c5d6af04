//! omniad's checkpoint format: a safetensors file of every weight (`net_t.*`, `Neck.*`,
//! `net_s.*`, f32) plus a JSON file describing it (architecture, input size and normalisation,
//! calibrated thresholds, training provenance) that records the SHA-256 of the weights file.
//!
//! Both files are written atomically (temporary file, fsync, rename, fsync of the folder) and the
//! checksum is verified at load, so a truncated or altered checkpoint is refused instead of
//! producing wrong scores.
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::config::OmniAdConfig;
use crate::model::OmniAd;
use crate::recognition::{self, ClassBank, RecognitionMeta};
use omniad_io::write_atomic;

/// Value of [`CheckpointMeta::format`].
pub const FORMAT: &str = "omniad-checkpoint";
/// Current [`CheckpointMeta::version`].
pub const VERSION: u32 = 1;

/// Errors of checkpoint reading and writing. Every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Writing a file failed (names the file and the OS error, e.g. no space left on device).
    #[error(transparent)]
    Write(#[from] omniad_io::WriteError),
    /// The JSON file is not a valid omniad checkpoint description.
    #[error("{path}: not a valid omniad checkpoint description: {msg}")]
    BadMeta {
        /// File concerned.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The weights file does not have the checksum recorded in the JSON file.
    #[error("{path}: checksum mismatch (file is truncated or altered): expected sha256 {expected}, found {found}")]
    Checksum {
        /// Weights file.
        path: PathBuf,
        /// Recorded checksum.
        expected: String,
        /// Checksum of the file on disk.
        found: String,
    },
    /// Tensors that cannot be stored as safetensors (an unsupported dtype, a failed copy).
    #[error("{path}: cannot serialise weights: {msg}")]
    Unstorable {
        /// File the weights were meant for.
        path: PathBuf,
        /// What failed.
        msg: String,
    },
    /// The weights file cannot be parsed as safetensors.
    #[error("{path}: unreadable weights: {msg}")]
    BadWeights {
        /// Weights file.
        path: PathBuf,
        /// Parser message.
        msg: String,
    },
    /// The weights do not fit the architecture the JSON file describes.
    #[error("{path}: weights do not match the architecture ({arch}):{details}")]
    Mismatch {
        /// Weights file.
        path: PathBuf,
        /// Short architecture description.
        arch: String,
        /// One line per missing, unexpected or mis-shaped tensor.
        details: String,
    },
}

/// Calibrated decision thresholds: on the image score per class (and for all classes), and on
/// the anomaly map's pixels for masks. Fitted at the end of `omniad train` on held-out normal
/// images, or by `omniad calibrate` (runs of omniad before 0.2 stored those of `omniad eval`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Image-score threshold for all classes together (used when an image's class is neither
    /// given nor recognised).
    pub global: Option<f64>,
    /// Image-score threshold per class.
    #[serde(default)]
    pub per_class: BTreeMap<String, f64>,
    /// How they were chosen (e.g. "quantile 0.995 of held-out normal image scores").
    #[serde(default)]
    pub method: String,
    /// Normalisation bounds `(lo, hi)` of the image score: `normalised = clamp((score - t) /
    /// (hi - lo) + 0.5, 0, 1)` with `t` the threshold used. `None` (every calibration since
    /// 0.2): the span is `2 t`, i.e. `normalised = clamp(score / (2 t), 0, 1)`: 0.5 at the
    /// class's threshold, 1 at twice it, the same scale as the overlay's colours.
    #[serde(default)]
    pub score_bounds: Option<(f64, f64)>,
    /// Pixel threshold on the anomaly map per class: the binary mask is `map >= it`. A class
    /// without one uses its image-score threshold (as runs before 0.2 did).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pixel_per_class: BTreeMap<String, f64>,
    /// Pixel threshold for all classes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixel_global: Option<f64>,
    /// The images the thresholds were fitted on, in words (e.g. "48 held-out normal training
    /// images (8 per class)").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fitted_on: String,
}

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Architecture.
    pub config: OmniAdConfig,
    /// The teacher's input `(mean, std)` per RGB channel, applied to `[0, 1]` pixels. Read from
    /// the older key `normalization` too.
    #[serde(alias = "normalization")]
    pub input_mean_std: ([f32; 3], [f32; 3]),
    /// File name (same folder) of the weights.
    pub weights_file: String,
    /// Lower-case hex SHA-256 of the weights file.
    pub weights_sha256: String,
    /// Calibrated thresholds, if evaluated.
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
    /// Training provenance (dataset, classes, epochs, seed, omniad version, ...), free-form.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// Class recognition (fitted at the end of training): the classes, their unknown-class
    /// distances; the bank vectors are the tensors [`recognition::BANK_TENSOR`] and
    /// [`recognition::LABELS_TENSOR`] of the weights file (covered by its checksum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recognition: Option<RecognitionMeta>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lower-case hex SHA-256 of a file.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file.
pub fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialises named tensors (moved to the CPU and made contiguous, dtypes kept) to safetensors
/// bytes, in memory: nothing touches the disk, so a full disk is reported by the write of the
/// bytes, never as a serialisation failure.
///
/// # Errors
/// [`CheckpointError::Unstorable`] (naming `path`, the file the bytes are meant for) for a dtype
/// safetensors cannot store or a tensor libtorch cannot copy out.
pub fn safetensors_bytes(
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    use safetensors::tensor::{Dtype, TensorView};
    let bad = |msg: String| CheckpointError::Unstorable {
        path: path.to_path_buf(),
        msg,
    };
    let mut raw: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let kind = t.kind();
        let dtype = match kind {
            Kind::Bool => Dtype::BOOL,
            Kind::Uint8 => Dtype::U8,
            Kind::Int8 => Dtype::I8,
            Kind::Int16 => Dtype::I16,
            Kind::Int => Dtype::I32,
            Kind::Int64 => Dtype::I64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            k => return Err(bad(format!("{name}: cannot store {k:?} tensors"))),
        };
        let cpu = t.to_device(Device::Cpu).contiguous();
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        raw.push((name.as_str(), dtype, shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| bad(format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, &None).map_err(|e| bad(e.to_string()))
}

/// Saves `model` as `<dir>/<stem>.safetensors` + `<dir>/<stem>.json` and returns the JSON path.
///
/// `thresholds` and `provenance` go into the JSON as given.
///
/// # Errors
/// I/O errors naming the file; [`CheckpointError::BadWeights`] if any tensor holds NaN or inf
/// (a diverged model is never saved). The previous checkpoint of the same stem stays intact if
/// the weights cannot be written.
pub fn save(
    model: &OmniAd,
    dir: &Path,
    stem: &str,
    thresholds: Option<Thresholds>,
    provenance: serde_json::Value,
) -> Result<PathBuf, CheckpointError> {
    save_full(model, dir, stem, thresholds, provenance, None)
}

/// [`save`] with an optional class-recognition bank: its vectors go into the weights file
/// (under [`recognition::BANK_TENSOR`] and [`recognition::LABELS_TENSOR`]) and its
/// description into `model.json`'s `recognition`.
///
/// # Errors
/// As [`save`].
pub fn save_full(
    model: &OmniAd,
    dir: &Path,
    stem: &str,
    thresholds: Option<Thresholds>,
    provenance: serde_json::Value,
    recognition: Option<(&ClassBank, RecognitionMeta)>,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let weights_file = format!("{stem}.safetensors");
    let wpath = dir.join(&weights_file);
    let mut tensors = model.named_tensors();
    let recognition = recognition.map(|(bank, meta)| {
        tensors.extend(bank.tensors());
        meta
    });
    let non_finite: Vec<&str> = tensors
        .iter()
        .filter(|(_, t)| t.isfinite().logical_not().any().int64_value(&[]) != 0)
        .map(|(n, _)| n.as_str())
        .collect();
    if !non_finite.is_empty() {
        return Err(CheckpointError::BadWeights {
            path: wpath,
            msg: format!(
                "refusing to save non-finite (NaN/inf) values in {} tensor(s): {}",
                non_finite.len(),
                non_finite.join(", ")
            ),
        });
    }
    let bytes = safetensors_bytes(&tensors, &wpath)?;
    let sha = hex(&Sha256::digest(&bytes));
    write_atomic(&wpath, &bytes)?;
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        version: VERSION,
        config: model.cfg.clone(),
        input_mean_std: model.cfg.teacher.input_mean_std(),
        weights_file,
        weights_sha256: sha,
        thresholds,
        provenance,
        recognition,
    };
    let jpath = dir.join(format!("{stem}.json"));
    write_meta(&jpath, &meta)?;
    Ok(jpath)
}

/// Writes a checkpoint description atomically (e.g. after calibrating thresholds).
///
/// # Errors
/// I/O errors naming the file.
pub fn write_meta(path: &Path, meta: &CheckpointMeta) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(meta).map_err(|e| CheckpointError::BadMeta {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Reads and validates a checkpoint description.
///
/// # Errors
/// [`CheckpointError::Io`] if unreadable, [`CheckpointError::BadMeta`] if it is not an omniad
/// checkpoint JSON of a supported version or its architecture is invalid.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |msg: String| CheckpointError::BadMeta {
        path: path.to_path_buf(),
        msg,
    };
    let meta: CheckpointMeta = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(bad(format!(
            "format is {:?}, expected {FORMAT:?}",
            meta.format
        )));
    }
    if meta.version != VERSION {
        return Err(bad(format!(
            "version {} is not supported (this omniad reads version {VERSION})",
            meta.version
        )));
    }
    meta.config.validate().map_err(|e| bad(e.0))?;
    if meta.weights_file.contains('/') || meta.weights_file.contains('\\') {
        return Err(bad(format!(
            "weights_file {:?} must be a file name in the same folder",
            meta.weights_file
        )));
    }
    Ok(meta)
}

/// Loads a checkpoint from its JSON file onto `device`: verifies the checksum, builds the
/// architecture and assigns every tensor (strict: missing, unexpected and mis-shaped tensors are
/// all reported).
///
/// # Errors
/// See [`CheckpointError`]; each names the file.
pub fn load(json_path: &Path, device: Device) -> Result<(OmniAd, CheckpointMeta), CheckpointError> {
    load_full(json_path, device).map(|(model, meta, _)| (model, meta))
}

/// [`load`], also returning the class-recognition bank when the checkpoint has one.
///
/// # Errors
/// As [`load`]; [`CheckpointError::BadWeights`] for a bank that does not fit its description
/// (or bank tensors without one).
pub fn load_full(
    json_path: &Path,
    device: Device,
) -> Result<(OmniAd, CheckpointMeta, Option<ClassBank>), CheckpointError> {
    let meta = read_meta(json_path)?;
    let wpath = json_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&meta.weights_file);
    let found = sha256_file(&wpath)?;
    if found != meta.weights_sha256 {
        return Err(CheckpointError::Checksum {
            path: wpath,
            expected: meta.weights_sha256.clone(),
            found,
        });
    }
    let mut tensors =
        Tensor::read_safetensors(&wpath).map_err(|e| CheckpointError::BadWeights {
            path: wpath.clone(),
            msg: e.to_string(),
        })?;
    let mut take = |name: &str| {
        tensors
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| tensors.swap_remove(i).1)
    };
    let parts = (
        take(recognition::BANK_TENSOR),
        take(recognition::LABELS_TENSOR),
    );
    let bank =
        match (&meta.recognition, parts) {
            (Some(rm), (Some(bank), Some(labels))) => {
                Some(ClassBank::from_parts(rm, bank, labels).map_err(|msg| {
                    CheckpointError::BadWeights {
                        path: wpath.clone(),
                        msg,
                    }
                })?)
            }
            (None, (None, None)) => None,
            (Some(_), _) => return Err(CheckpointError::BadWeights {
                path: wpath.clone(),
                msg:
                    "model.json describes a class-recognition bank but the weights lack its tensors"
                        .into(),
            }),
            (None, _) => {
                return Err(CheckpointError::BadWeights {
                    path: wpath.clone(),
                    msg: "class-recognition tensors without their description in model.json".into(),
                })
            }
        };
    let mut model = OmniAd::new(&meta.config, device).map_err(|msg| CheckpointError::BadMeta {
        path: json_path.to_path_buf(),
        msg: msg.to_string(),
    })?;
    assign_all(&mut model, tensors).map_err(|WeightMismatch(details)| {
        CheckpointError::Mismatch {
            path: wpath.clone(),
            arch: format!(
                "teacher {}, depths {:?}",
                meta.config.teacher, meta.config.depths
            ),
            details,
        }
    })?;
    Ok((model, meta, bank))
}

/// Tensors that do not fit a model: one line per missing, unexpected or mis-shaped tensor, with
/// the shapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WeightMismatch(pub String);

/// Copies `tensors` into the model's variables (teacher and student stores), strictly.
/// Nothing is copied unless every name and shape matches.
///
/// # Errors
/// [`WeightMismatch`]: a multi-line list of missing, unexpected and mis-shaped tensors with
/// their shapes.
pub fn assign_all(
    model: &mut OmniAd,
    tensors: Vec<(String, Tensor)>,
) -> Result<(), WeightMismatch> {
    let mut vars = model.teacher_vs.variables();
    vars.extend(model.vs.variables());
    let mut given: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut problems = Vec::new();
    for (name, var) in &vars {
        match given.get(name) {
            None => problems.push(format!("\n  missing: {name} {:?}", var.size())),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "\n  mis-shaped: {name}: expected {:?}, found {:?}",
                var.size(),
                t.size()
            )),
            _ => {}
        }
    }
    for (name, t) in &given {
        if !vars.contains_key(name) {
            problems.push(format!("\n  unexpected: {name} {:?}", t.size()));
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(WeightMismatch(problems.concat()));
    }
    tch::no_grad(|| {
        for (name, var) in vars {
            if let Some(src) = given.remove(&name) {
                let mut var = var;
                var.copy_(&src.to_kind(Kind::Float).to_device(var.device()));
            }
        }
    });
    Ok(())
}
