//! The safetensors exchange format read by `omniad metrics FILE.safetensors`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorInfo, TensorView};

use crate::eval::{evaluate_arrays, ArrayRef, EvalArrays};
use crate::report::Report;
use crate::{MetricOptions, MetricsError};

/// Metadata key holding the class names: a JSON list of strings, indexed by
/// the `class_ids` tensor, e.g. `{"class_names": "[\"bottle\", \"cable\"]"}`.
pub const CLASS_NAMES_KEY: &str = "class_names";

fn invalid(msg: String) -> MetricsError {
    MetricsError::InvalidInput(msg)
}

struct Tensors<'a> {
    data: &'a [u8],
    meta: Metadata,
}

impl<'a> Tensors<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, MetricsError> {
        let (n, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| invalid(format!("not a valid safetensors file: {e:?}")))?;
        Ok(Tensors {
            data: &bytes[8 + n..],
            meta,
        })
    }

    fn get(&self, name: &str) -> Option<(&TensorInfo, &'a [u8])> {
        let info = self.meta.info(name)?;
        let (a, b) = info.data_offsets;
        Some((info, &self.data[a..b]))
    }

    fn require(&self, name: &str) -> Result<(&TensorInfo, &'a [u8]), MetricsError> {
        self.get(name)
            .ok_or_else(|| invalid(format!("required tensor `{name}` is missing")))
    }
}

fn bad_dtype(name: &str, got: Dtype, want: &str) -> MetricsError {
    invalid(format!(
        "tensor `{name}` has dtype {got:?}; expected {want}"
    ))
}

fn f32s<'a>(
    name: &str,
    info: &TensorInfo,
    bytes: &'a [u8],
) -> Result<Cow<'a, [f32]>, MetricsError> {
    if info.dtype != Dtype::F32 {
        return Err(bad_dtype(name, info.dtype, "F32"));
    }
    if cfg!(target_endian = "little") {
        if let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(bytes) {
            return Ok(Cow::Borrowed(s));
        }
    }
    Ok(Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

fn u8s<'a>(name: &str, info: &TensorInfo, bytes: &'a [u8]) -> Result<&'a [u8], MetricsError> {
    match info.dtype {
        Dtype::U8 | Dtype::BOOL => Ok(bytes),
        d => Err(bad_dtype(name, d, "U8 (or BOOL)")),
    }
}

fn ints(name: &str, info: &TensorInfo, bytes: &[u8]) -> Result<Vec<i64>, MetricsError> {
    Ok(match info.dtype {
        Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        d => return Err(bad_dtype(name, d, "U8, I32 or I64")),
    })
}

fn shape_1d(name: &str, info: &TensorInfo) -> Result<(), MetricsError> {
    if info.shape.len() != 1 {
        return Err(invalid(format!(
            "tensor `{name}` must have shape [N]; got {:?}",
            info.shape
        )));
    }
    Ok(())
}

/// Scores the tensors of a safetensors file held in memory.
///
/// Tensors (names fixed): `anomaly_maps` F32 `[N, H, W]` (optional),
/// `masks` U8/BOOL `[N, H, W]` 0/1 (optional), `image_scores` F32 `[N]`,
/// `labels` U8/BOOL `[N]` 0/1, `class_ids` U8/I32/I64 `[N]` (optional),
/// `sample_ids` U8/I32/I64 `[N]` (optional, Real-IAD samples). Metadata:
/// [`CLASS_NAMES_KEY`] (optional) = JSON list of class names.
///
/// # Errors
/// [`MetricsError::InvalidInput`] for a malformed file, a missing required
/// tensor, a wrong dtype or bad metadata, [`MetricsError::BadId`] for a
/// negative id, and everything [`evaluate_arrays`] returns.
pub fn evaluate_safetensors(bytes: &[u8], opts: &MetricOptions) -> Result<Report, MetricsError> {
    let t = Tensors::parse(bytes)?;
    let (info, b) = t.require("image_scores")?;
    shape_1d("image_scores", info)?;
    let image_scores = f32s("image_scores", info, b)?;
    let (info, b) = t.require("labels")?;
    shape_1d("labels", info)?;
    let labels = u8s("labels", info, b)?;
    let maps = match t.get("anomaly_maps") {
        Some((info, b)) => Some((f32s("anomaly_maps", info, b)?, info.shape.clone())),
        None => None,
    };
    let masks = match t.get("masks") {
        Some((info, b)) => Some((u8s("masks", info, b)?, info.shape.clone())),
        None => None,
    };
    let ids = |name: &'static str| -> Result<Option<Vec<i64>>, MetricsError> {
        match t.get(name) {
            None => Ok(None),
            Some((info, b)) => {
                shape_1d(name, info)?;
                let v = ints(name, info, b)?;
                if let Some((index, &value)) = v.iter().enumerate().find(|(_, &x)| x < 0) {
                    return Err(MetricsError::BadId {
                        what: if name == "class_ids" {
                            "class id"
                        } else {
                            "sample id"
                        },
                        index,
                        value,
                        reason: "ids must be >= 0".into(),
                    });
                }
                Ok(Some(v))
            }
        }
    };
    let class_ids: Option<Vec<u32>> = match ids("class_ids")? {
        None => None,
        Some(v) => Some(
            v.iter()
                .enumerate()
                .map(|(index, &x)| {
                    u32::try_from(x).map_err(|_| MetricsError::BadId {
                        what: "class id",
                        index,
                        value: x,
                        reason: "too large".into(),
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let sample_ids: Option<Vec<u64>> =
        ids("sample_ids")?.map(|v| v.iter().map(|&x| x as u64).collect());
    let class_names: Vec<String> = match t
        .meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CLASS_NAMES_KEY))
    {
        None => Vec::new(),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            invalid(format!(
                "metadata `{CLASS_NAMES_KEY}` must be a JSON list of strings: {e}"
            ))
        })?,
    };
    let input = EvalArrays {
        image_scores: &image_scores,
        labels,
        anomaly_maps: maps.as_ref().map(|(d, s)| ArrayRef {
            data: d.as_ref(),
            shape: s.as_slice(),
        }),
        masks: masks.as_ref().map(|(d, s)| ArrayRef {
            data: d,
            shape: s.as_slice(),
        }),
        class_ids: class_ids.as_deref(),
        class_names,
        sample_ids: sample_ids.as_deref(),
    };
    evaluate_arrays(&input, opts)
}

/// Reads and scores a safetensors file (format in [`evaluate_safetensors`]).
///
/// # Errors
/// Every error is wrapped so that its message starts with `path`
/// ([`MetricsError::Io`] or [`MetricsError::InFile`]).
pub fn evaluate_file(path: &Path, opts: &MetricOptions) -> Result<Report, MetricsError> {
    let bytes = std::fs::read(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    evaluate_safetensors(&bytes, opts).map_err(|e| e.in_file(path))
}

fn le_bytes_f32(v: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(v))
    } else {
        Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

fn le_bytes_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `input` as a safetensors file in the format of
/// [`evaluate_safetensors`] (class ids and sample ids as I64). The file is
/// written to a temporary name next to `path` and renamed, so no partial file
/// is ever left at `path`.
///
/// # Errors
/// [`MetricsError::Io`] naming the file, [`MetricsError::InvalidInput`] when
/// a shape does not match its data.
pub fn write_safetensors(path: &Path, input: &EvalArrays<'_>) -> Result<(), MetricsError> {
    let n = input.image_scores.len();
    let scores = le_bytes_f32(input.image_scores);
    let maps = input
        .anomaly_maps
        .map(|m| (le_bytes_f32(m.data), m.shape.to_vec()));
    let class_ids: Option<Vec<u8>> = input
        .class_ids
        .map(|c| le_bytes_i64(&c.iter().map(|&x| x as i64).collect::<Vec<_>>()));
    let sample_ids: Option<Vec<u8>> = input
        .sample_ids
        .map(|c| le_bytes_i64(&c.iter().map(|&x| x as i64).collect::<Vec<_>>()));
    fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, MetricsError> {
        TensorView::new(dtype, shape.clone(), data)
            .map_err(|e| invalid(format!("shape {shape:?} does not match its data: {e:?}")))
    }
    let mut tensors: Vec<(&str, TensorView<'_>)> = vec![
        ("image_scores", view(Dtype::F32, vec![n], &scores)?),
        (
            "labels",
            view(Dtype::U8, vec![input.labels.len()], input.labels)?,
        ),
    ];
    if let Some((d, s)) = &maps {
        tensors.push(("anomaly_maps", view(Dtype::F32, s.clone(), d)?));
    }
    if let Some(m) = &input.masks {
        tensors.push(("masks", view(Dtype::U8, m.shape.to_vec(), m.data)?));
    }
    if let (Some(d), Some(c)) = (&class_ids, input.class_ids) {
        tensors.push(("class_ids", view(Dtype::I64, vec![c.len()], d)?));
    }
    if let (Some(d), Some(c)) = (&sample_ids, input.sample_ids) {
        tensors.push(("sample_ids", view(Dtype::I64, vec![c.len()], d)?));
    }
    let metadata = if input.class_names.is_empty() {
        None
    } else {
        let names = serde_json::to_string(&input.class_names)
            .map_err(|e| invalid(format!("class names: {e}")))?;
        Some(HashMap::from([(CLASS_NAMES_KEY.to_string(), names)]))
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let io_err = |p: &Path, source: std::io::Error| MetricsError::Io {
        path: p.to_path_buf(),
        source,
    };
    if let Err(e) = safetensors::serialize_to_file(tensors, &metadata, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e {
            safetensors::SafeTensorError::IoError(source) => io_err(path, source),
            e => invalid(format!("{}: cannot serialise: {e:?}", path.display())),
        });
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}
