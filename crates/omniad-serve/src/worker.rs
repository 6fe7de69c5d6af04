//! The inference worker: one thread owns the model (tch tensors are not `Sync`) and scores the
//! images of queued jobs in micro-batches.
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use image::RgbImage;
use omniad_model::checkpoint::CheckpointMeta;
use omniad_model::recognition::Recognition;
use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::predict::Scorer;
use tokio::sync::oneshot;

/// What the worker knows about the loaded model, sent once after loading.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The checkpoint's description.
    pub meta: CheckpointMeta,
    /// The model's input size `(H, W)`, pixels.
    pub input_size: (u32, u32),
    /// The checkpoint's description file.
    pub checkpoint: PathBuf,
}

/// One image scored: its pixels back (for the pictures), its score and, when asked, its anomaly
/// map upsampled to the image's size (row-major).
pub struct ScoredImage {
    /// The decoded image, returned to the request.
    pub image: RgbImage,
    /// Image score (`1 - cos` units).
    pub score: f64,
    /// Anomaly map at the image's size, when the job asked for it.
    pub map: Option<Vec<f32>>,
    /// The recognised class and its decision, when the run recognises classes.
    pub recognised: Option<(String, Recognition)>,
}

/// One request's images for the worker.
pub struct Job {
    /// Decoded images, scored in this order.
    pub images: Vec<RgbImage>,
    /// Whether the upsampled anomaly maps are wanted (overlay or mask answers).
    pub maps: bool,
    /// Where the results (or the failure's message) go.
    pub reply: oneshot::Sender<Result<Vec<ScoredImage>, String>>,
}

/// Micro-batching settings.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images per forward pass (a larger job is scored alone, in chunks of this size).
    pub max_batch: usize,
    /// How long to wait for more jobs after the first one of a batch.
    pub max_wait: Duration,
}

/// Loads the model of `run` on `device` at `precision`, reports it on `loaded`, then scores jobs from `jobs`
/// until every sender is dropped. A load failure is reported on `loaded` and ends the thread.
pub fn run(
    run: PathBuf,
    device: ComputeDevice,
    precision: omniad_model::Precision,
    batching: Batching,
    jobs: Receiver<Job>,
    loaded: oneshot::Sender<anyhow::Result<Loaded>>,
) {
    let scorer = match Scorer::load(&run, device).and_then(|mut s| {
        s.set_precision(precision)?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = loaded.send(Err(e));
            return;
        }
    };
    let info = Loaded {
        meta: scorer.meta().clone(),
        input_size: scorer.input_size(),
        checkpoint: scorer.checkpoint().to_path_buf(),
    };
    if loaded.send(Ok(info)).is_err() {
        return;
    }
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut batch = vec![first];
        let mut count = batch[0].images.len();
        let deadline = Instant::now() + batching.max_wait;
        let mut closed = false;
        while count < batching.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(j) if count + j.images.len() <= batching.max_batch => {
                    count += j.images.len();
                    batch.push(j);
                }
                Ok(j) => {
                    pending = Some(j);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        score_batch(&scorer, batch, batching.max_batch);
        if closed && pending.is_none() {
            return;
        }
    }
}

/// Scores the jobs of one batch (a single job larger than `max_batch` in chunks) and answers each.
fn score_batch(scorer: &Scorer, batch: Vec<Job>, max_batch: usize) {
    let mut images = Vec::new();
    let mut owners = Vec::with_capacity(batch.len());
    for job in batch {
        owners.push((job.images.len(), job.maps, job.reply));
        images.extend(job.images);
    }
    let want_maps: Vec<bool> = owners
        .iter()
        .flat_map(|(n, maps, _)| std::iter::repeat_n(*maps, *n))
        .collect();
    let result = score_images(scorer, images, &want_maps, max_batch);
    match result {
        Ok(scored) => {
            let mut scored = scored.into_iter();
            for (n, _, reply) in owners {
                let mine: Vec<ScoredImage> = scored.by_ref().take(n).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("inference failed: {msg}");
            for (_, _, reply) in owners {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
}

fn score_images(
    scorer: &Scorer,
    images: Vec<RgbImage>,
    want_maps: &[bool],
    max_batch: usize,
) -> anyhow::Result<Vec<ScoredImage>> {
    let mut out = Vec::with_capacity(images.len());
    let mut rest = images;
    let mut offset = 0;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(max_batch));
        let chunk = std::mem::replace(&mut rest, tail);
        metrics::histogram!("omniad_batch_size").record(chunk.len() as f64);
        let scored = scorer.score(&chunk)?;
        for (j, image) in chunk.into_iter().enumerate() {
            let map = if want_maps[offset + j] {
                let (w, h) = image.dimensions();
                Some(scored.map_at(j, w, h)?)
            } else {
                None
            };
            let recognised = scorer
                .recognised(&scored, j)
                .map(|(c, r)| (c.to_string(), r.clone()));
            out.push(ScoredImage {
                image,
                score: scored.scores[j],
                map,
                recognised,
            });
        }
        offset += scored.scores.len();
    }
    Ok(out)
}
