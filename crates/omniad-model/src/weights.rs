//! Strict loading of pretrained weights into a [`tch::nn::VarStore`].
//!
//! - [`read_state_dict`] reads a named-tensor list from `.safetensors` or from a PyTorch
//!   `torch.save(state_dict)` file (`.pth`, `.pt`, `.bin`; zip or legacy layout, possibly wrapped
//!   under `"state_dict"`, `"model"`, `"net"` or `"model_state_dict"`), without Python.
//! - [`assign`] copies such a list into the variables of a VarStore under a prefix. It is strict:
//!   every variable must receive a tensor of the same shape and every tensor must land in a
//!   variable, except names the caller declares known-unused ([`AssignOptions`]). Everything is
//!   checked before the first copy, so on error the VarStore is unchanged — there is never a
//!   silent or partial load.
//!
//! Float tensors of another precision (`f16`, `bf16`, `f64`) are converted to the variable's
//! kind; the copy runs under `no_grad` and moves data to the variable's device.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Kind, TchError, Tensor};

mod pth;

/// Errors from reading or assigning weights. Every variant names the file (or source) concerned.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The weights file does not exist.
    #[error("weights file {} not found", .path.display())]
    NotFound {
        /// Path as given by the caller.
        path: PathBuf,
    },
    /// The weights file exists but cannot be read (permissions, a directory, I/O error).
    #[error("cannot read weights file {}: {source}", .path.display())]
    Io {
        /// Path as given by the caller.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file extension is none of `.safetensors`, `.pth`, `.pt`, `.bin`.
    #[error(
        "weights file {} has an unsupported extension: expected .safetensors, .pth, .pt or .bin",
        .path.display()
    )]
    UnsupportedExtension {
        /// Path as given by the caller.
        path: PathBuf,
    },
    /// The content is damaged: truncated, bit-flipped (zip CRC mismatch), invalid header or
    /// pickle, a tensor view outside its storage, ...
    #[error("weights file {file} is corrupt or truncated: {reason}")]
    Corrupt {
        /// File (or source) name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The content is valid but uses something this reader does not handle (a dtype such as
    /// complex, big-endian data, a pickled object that is not a state dict, ...).
    #[error("weights file {file} is not supported: {reason}")]
    Unsupported {
        /// File (or source) name.
        file: String,
        /// What is not supported.
        reason: String,
    },
    /// The names, shapes or dtypes of the file do not match the model's variables.
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
    /// Some tensors contain NaN or infinity.
    #[error("weights file {file} has non-finite values (NaN or infinity) in: {}", .names.join(", "))]
    NonFinite {
        /// File (or source) name.
        file: String,
        /// Offending tensor names (as in the file).
        names: Vec<String>,
    },
    /// libtorch failed while converting or copying (e.g. out of device memory).
    #[error("cannot copy weights from {file} into the model: {source}")]
    Torch {
        /// File (or source) name.
        file: String,
        /// Underlying libtorch error.
        #[source]
        source: TchError,
    },
}

/// Details of a [`WeightsError::Mismatch`]: every problem, by tensor name (after wrapper
/// prefixes are stripped) and shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mismatch {
    /// File (or source) name.
    pub file: String,
    /// Variables of the model with no tensor in the file: `(name, shape)`.
    pub missing: Vec<(String, Vec<i64>)>,
    /// Tensors of the file with no variable in the model: `(name, shape)`.
    pub unexpected: Vec<(String, Vec<i64>)>,
    /// `(name, expected shape, shape in the file)`.
    pub mis_shaped: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// `(name, variable kind, kind in the file)` where no lossless-enough conversion exists
    /// (e.g. an integer tensor for a float variable).
    pub wrong_dtype: Vec<(String, Kind, Kind)>,
    /// A guess at what the file contains (e.g. "the file looks like resnet50 weights").
    pub hint: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights in {} do not match the model: {} missing, {} unexpected, {} mis-shaped",
            self.file,
            self.missing.len(),
            self.unexpected.len(),
            self.mis_shaped.len()
        )?;
        if !self.wrong_dtype.is_empty() {
            write!(f, ", {} of the wrong dtype", self.wrong_dtype.len())?;
        }
        for (name, shape) in &self.missing {
            write!(f, "\n  missing: {name} {shape:?}")?;
        }
        for (name, shape) in &self.unexpected {
            write!(f, "\n  unexpected: {name} {shape:?}")?;
        }
        for (name, expected, found) in &self.mis_shaped {
            write!(
                f,
                "\n  mis-shaped: {name} expected {expected:?}, found {found:?}"
            )?;
        }
        for (name, expected, found) in &self.wrong_dtype {
            write!(
                f,
                "\n  wrong dtype: {name} expected {expected:?}, found {found:?}"
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl Mismatch {
    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mis_shaped.is_empty()
            && self.wrong_dtype.is_empty()
    }
}

/// How [`assign`] maps file names to variables.
///
/// A file name goes through, in order: (1) removal of any of [`strip_prefixes`] at its start,
/// repeatedly (so `module.net_t.conv1.weight` becomes `conv1.weight`); (2) if [`select_prefix`]
/// is set, names without it are ignored and it is removed from the others; (3) names starting
/// with one of [`ignore_prefixes`] or ending with one of [`ignore_suffixes`] are ignored. The
/// remaining names must be exactly the variable names under the VarStore prefix.
///
/// [`strip_prefixes`]: AssignOptions::strip_prefixes
/// [`select_prefix`]: AssignOptions::select_prefix
/// [`ignore_prefixes`]: AssignOptions::ignore_prefixes
/// [`ignore_suffixes`]: AssignOptions::ignore_suffixes
#[derive(Debug, Clone, PartialEq)]
pub struct AssignOptions {
    /// Name of the source used in error messages (usually the file path).
    pub source: String,
    /// Wrapper prefixes removed from names, e.g. `module.` (DataParallel) or `net_t.`.
    pub strip_prefixes: Vec<String>,
    /// Keep only names starting with this prefix (removed); ignore the rest. E.g. `net_t.` to
    /// take the teacher out of a whole Omni-AD checkpoint.
    pub select_prefix: Option<String>,
    /// Known-unused name prefixes (e.g. `layer4.`, `fc.` for a ResNet teacher).
    pub ignore_prefixes: Vec<String>,
    /// Known-unused name suffixes (e.g. `num_batches_tracked`).
    pub ignore_suffixes: Vec<String>,
    /// Refuse tensors holding NaN or infinity ([`WeightsError::NonFinite`]). Default true.
    pub require_finite: bool,
}

impl Default for AssignOptions {
    /// Source `"<memory>"`, strip `module.`, ignore `*num_batches_tracked`, require finite values.
    fn default() -> Self {
        AssignOptions {
            source: "<memory>".to_string(),
            strip_prefixes: vec!["module.".to_string()],
            select_prefix: None,
            ignore_prefixes: Vec::new(),
            ignore_suffixes: vec!["num_batches_tracked".to_string()],
            require_finite: true,
        }
    }
}

impl AssignOptions {
    /// Maps a file name to the variable name it is meant for, or `None` if it is to be ignored.
    pub fn map_name(&self, name: &str) -> Option<String> {
        let mut n = name;
        'strip: loop {
            for p in &self.strip_prefixes {
                if !p.is_empty() {
                    if let Some(rest) = n.strip_prefix(p.as_str()) {
                        n = rest;
                        continue 'strip;
                    }
                }
            }
            break;
        }
        if let Some(sel) = &self.select_prefix {
            n = n.strip_prefix(sel.as_str())?;
        }
        let ignored = self
            .ignore_prefixes
            .iter()
            .any(|p| n.starts_with(p.as_str()))
            || self.ignore_suffixes.iter().any(|s| n.ends_with(s.as_str()));
        (!ignored).then(|| n.to_string())
    }
}

/// What [`assign`] did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadReport {
    /// Source name (from [`AssignOptions::source`]).
    pub source: String,
    /// Number of variables written.
    pub loaded: usize,
    /// Number of scalar elements written.
    pub elements: i64,
    /// Names of the file that were ignored (as in the file).
    pub ignored: Vec<String>,
    /// Number of tensors converted from another float precision (e.g. `f16` to `f32`).
    pub converted: usize,
}

/// Reads all named tensors of a weights file, on the CPU, in the file's dtypes.
///
/// Formats by extension (case-insensitive): `.safetensors`; `.pth`, `.pt`, `.bin` written by
/// Python `torch.save` (a state dict, or a dict wrapping it under `"state_dict"`, `"model"`,
/// `"net"` or `"model_state_dict"`). Names are returned as stored (safetensors: sorted by name;
/// PyTorch: in dict order).
///
/// # Errors
/// [`WeightsError::NotFound`], [`WeightsError::Io`], [`WeightsError::UnsupportedExtension`],
/// [`WeightsError::Corrupt`] (truncated, bit-flipped, invalid) and
/// [`WeightsError::Unsupported`], each naming the file.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, WeightsError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_safetensors = match ext.as_deref() {
        Some("safetensors") => true,
        Some("pth" | "pt" | "bin") => false,
        _ => {
            return Err(WeightsError::UnsupportedExtension {
                path: path.to_path_buf(),
            })
        }
    };
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WeightsError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            WeightsError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let file = path.display().to_string();
    if is_safetensors {
        read_safetensors_bytes(&bytes, &file)
    } else {
        read_pth_bytes(&bytes, &file)
    }
}

/// Parses a `.safetensors` buffer; `source` names it in errors. Tensors are returned sorted by
/// name, on the CPU, in their stored dtype.
///
/// # Errors
/// [`WeightsError::Corrupt`] for an invalid or truncated buffer, [`WeightsError::Unsupported`]
/// for dtypes libtorch lacks.
pub fn read_safetensors_bytes(
    bytes: &[u8],
    source: &str,
) -> Result<Vec<(String, Tensor)>, WeightsError> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| WeightsError::Corrupt {
        file: source.to_string(),
        reason: format!("invalid safetensors data: {e:?}"),
    })?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => {
                return Err(WeightsError::Unsupported {
                    file: source.to_string(),
                    reason: format!("tensor '{name}' has dtype {other:?}"),
                })
            }
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| {
            WeightsError::Corrupt {
                file: source.to_string(),
                reason: format!("tensor '{name}': {e}"),
            }
        })?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Parses a PyTorch `torch.save` buffer (zip or legacy layout) holding a state dict; `source`
/// names it in errors. Zip entries are CRC-checked. Tensors are returned on the CPU, in dict
/// order and their stored dtype.
///
/// # Errors
/// [`WeightsError::Corrupt`] (truncated, CRC mismatch, invalid pickle or views) and
/// [`WeightsError::Unsupported`] (no state dict inside, unknown storage types, big-endian).
pub fn read_pth_bytes(bytes: &[u8], source: &str) -> Result<Vec<(String, Tensor)>, WeightsError> {
    pth::read_pth_bytes(bytes, source)
}

fn is_float(k: Kind) -> bool {
    matches!(k, Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double)
}

/// Copies `tensors` into the variables of `vs` whose names start with `prefix` (e.g.
/// `"teacher."`; empty for all variables), strictly. See [`AssignOptions`] for the name
/// mapping.
///
/// Checks, before anything is copied: every variable under `prefix` receives exactly one tensor
/// of the same shape, every kept tensor has a variable, float tensors only go to float
/// variables (converted to the variable's kind), integer/bool tensors only to variables of the
/// same kind, and (if [`AssignOptions::require_finite`]) all values are finite. The copies run
/// under `no_grad` onto the variables' device.
///
/// # Errors
/// [`WeightsError::Mismatch`] listing every missing, unexpected, mis-shaped and wrongly typed
/// tensor by name and shape; [`WeightsError::Corrupt`] when two file names map to the same
/// variable; [`WeightsError::NonFinite`]; [`WeightsError::Torch`] if libtorch fails. On any
/// error the VarStore is left unchanged.
pub fn assign(
    vs: &VarStore,
    prefix: &str,
    tensors: Vec<(String, Tensor)>,
    opts: &AssignOptions,
) -> Result<LoadReport, WeightsError> {
    let prefix = if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    };
    let targets: BTreeMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(name, t)| {
            name.strip_prefix(prefix.as_str())
                .map(|n| (n.to_string(), t))
        })
        .collect();

    let mut report = LoadReport {
        source: opts.source.clone(),
        ..LoadReport::default()
    };
    let mut kept: BTreeMap<String, (String, Tensor)> = BTreeMap::new();
    for (name, t) in tensors {
        match opts.map_name(&name) {
            None => report.ignored.push(name),
            Some(mapped) => {
                if let Some((first, _)) = kept.get(&mapped) {
                    return Err(WeightsError::Corrupt {
                        file: opts.source.clone(),
                        reason: format!(
                            "tensors '{first}' and '{name}' both map to the variable '{mapped}'"
                        ),
                    });
                }
                kept.insert(mapped, (name, t));
            }
        }
    }

    let mut mismatch = Mismatch {
        file: opts.source.clone(),
        ..Mismatch::default()
    };
    for (name, var) in &targets {
        match kept.get(name) {
            None => mismatch.missing.push((name.clone(), var.size())),
            Some((_, t)) => {
                let (expected, found) = (var.size(), t.size());
                if expected != found {
                    mismatch.mis_shaped.push((name.clone(), expected, found));
                } else {
                    let (vk, tk) = (var.kind(), t.kind());
                    let ok = if is_float(vk) { is_float(tk) } else { vk == tk };
                    if !ok {
                        mismatch.wrong_dtype.push((name.clone(), vk, tk));
                    }
                }
            }
        }
    }
    for (name, (_, t)) in &kept {
        if !targets.contains_key(name) {
            mismatch.unexpected.push((name.clone(), t.size()));
        }
    }
    if !mismatch.is_empty() {
        return Err(WeightsError::Mismatch(Box::new(mismatch)));
    }

    let torch_err = |source: TchError| WeightsError::Torch {
        file: opts.source.clone(),
        source,
    };
    // Convert everything first (dtype, device), then check values, then copy.
    let mut staged: Vec<(&Tensor, Tensor, &str)> = Vec::with_capacity(targets.len());
    let mut non_finite = Vec::new();
    for (name, var) in &targets {
        let Some((file_name, t)) = kept.get(name) else {
            continue; // unreachable: checked above
        };
        let converted = t
            .f_to_kind(var.kind())
            .and_then(|c| c.f_to_device(var.device()))
            .map_err(torch_err)?;
        if t.kind() != var.kind() {
            report.converted += 1;
        }
        if opts.require_finite && is_float(var.kind()) {
            let finite = converted
                .f_isfinite()
                .and_then(|f| f.f_all())
                .and_then(|a| a.f_int64_value(&[]))
                .map_err(torch_err)?;
            if finite == 0 {
                non_finite.push(file_name.clone());
            }
        }
        staged.push((var, converted, file_name.as_str()));
    }
    if !non_finite.is_empty() {
        return Err(WeightsError::NonFinite {
            file: opts.source.clone(),
            names: non_finite,
        });
    }
    tch::no_grad(|| -> Result<(), WeightsError> {
        for (var, value, _) in &staged {
            let mut var = var.shallow_clone();
            var.f_copy_(value).map_err(torch_err)?;
        }
        Ok(())
    })?;
    report.loaded = staged.len();
    report.elements = staged.iter().map(|(_, v, _)| v.numel() as i64).sum();
    Ok(report)
}

/// [`read_state_dict`] then [`assign`], with `opts.source` set to the path.
///
/// # Errors
/// Those of [`read_state_dict`] and [`assign`].
pub fn load_file(
    vs: &VarStore,
    prefix: &str,
    path: &Path,
    opts: &AssignOptions,
) -> Result<LoadReport, WeightsError> {
    let tensors = read_state_dict(path)?;
    let opts = AssignOptions {
        source: path.display().to_string(),
        ..opts.clone()
    };
    assign(vs, prefix, tensors, &opts)
}

/// Names and shapes of a tensor list, sorted by name (for reports and architecture guesses).
pub fn names_and_shapes(tensors: &[(String, Tensor)]) -> Vec<(String, Vec<i64>)> {
    let mut v: Vec<(String, Vec<i64>)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    v.sort();
    v
}
