//! `predict` through tract: JSON lines as `omniad predict` prints them (a record per scored
//! image, `{"path", "error"}` for an image that cannot be scored; the others are still scored).
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::judge::{self, Record};
use crate::Session;

/// An image that could not be scored, and why (one line, naming the file).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The input file.
    pub path: String,
    /// What went wrong.
    pub error: String,
}

/// What became of one input (serialised untagged, like `omniad predict`'s lines).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// Scored.
    Scored(Record),
    /// Not scored.
    Failed(Failure),
}

/// Options of [`predict`].
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The class of every image instead of recognising it.
    pub class: Option<String>,
    /// Threshold overriding the calibrated ones.
    pub threshold: Option<f64>,
    /// Images per run of the graph (at least 1; a fixed-batch export needs exactly its size,
    /// the last batch is then padded by repeating its last image).
    pub batch_size: usize,
}

impl Default for Options {
    /// Recognised class, calibrated thresholds, batches of 8.
    fn default() -> Self {
        Self {
            class: None,
            threshold: None,
            batch_size: 8,
        }
    }
}

/// The image files of `paths`: files as given, folders walked recursively in sorted order
/// keeping files with an image extension and skipping hidden entries.
///
/// # Errors
/// A path that does not exist, an unreadable folder, no image at all.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot read folder: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if omniad_data::has_image_extension(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or folder", p.display());
        }
    }
    if out.is_empty() {
        bail!("no image found in the given paths");
    }
    Ok(out)
}

/// Scores `inputs` with `session`, calling `on_outcome` for each in input order.
///
/// # Errors
/// Invalid options (batch size 0, a bad threshold, a given class without threshold), a tract
/// failure, or an error of `on_outcome`. Undecodable images are [`Outcome::Failed`].
pub fn predict(
    session: &Session,
    inputs: &[PathBuf],
    opts: &Options,
    mut on_outcome: impl FnMut(&Outcome) -> Result<()>,
) -> Result<Vec<Outcome>> {
    if opts.batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    if let Some(t) = opts.threshold {
        judge::check_threshold(t)?;
    }
    if let Some(c) = &opts.class {
        judge::check_class(session.sidecar(), c, opts.threshold)?;
    }
    let fixed = session.sidecar().input.batch;
    let step = fixed.unwrap_or(opts.batch_size);
    let mut all = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(step) {
        let decoded: Vec<_> = chunk.par_iter().map(|p| omniad_data::load_rgb(p)).collect();
        let mut images = Vec::new();
        let mut slots = Vec::new();
        for d in decoded {
            slots.push(d.map(|img| {
                images.push(img);
                images.len() - 1
            }));
        }
        let n = images.len();
        let scored = if n == 0 {
            None
        } else {
            let mut batch = images.clone();
            if let Some(b) = fixed {
                while batch.len() < b {
                    batch.push(images[n - 1].clone());
                }
            }
            Some(session.score(&batch)?)
        };
        for (path, slot) in chunk.iter().zip(slots) {
            let outcome = match (slot, &scored) {
                (Ok(j), Some(s)) => session
                    .judge(s, j, opts.class.as_deref(), opts.threshold)
                    .and_then(|jd| {
                        judge::make_record(path, s.scores[j], &jd, images[j].dimensions())
                    })
                    .map_or_else(
                        |e| {
                            Outcome::Failed(Failure {
                                path: path.to_string_lossy().into_owned(),
                                error: format!("{e:#}"),
                            })
                        },
                        Outcome::Scored,
                    ),
                (Err(e), _) => Outcome::Failed(Failure {
                    path: path.to_string_lossy().into_owned(),
                    error: e.to_string(),
                }),
                (Ok(_), None) => Outcome::Failed(Failure {
                    path: path.to_string_lossy().into_owned(),
                    error: "decoded but not scored".into(),
                }),
            };
            on_outcome(&outcome)?;
            all.push(outcome);
        }
    }
    Ok(all)
}
