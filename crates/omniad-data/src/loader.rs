//! Parallel, bounded-memory batch loader and deterministic shuffling.
//!
//! A [`Loader`] decodes the images (and masks) of one batch in parallel on
//! rayon's global pool. With `prefetch > 0` a background thread prepares the
//! next batches while the caller consumes the current one; a bounded channel
//! keeps at most `prefetch` finished batches waiting, so memory does not grow
//! with the dataset. The order of batches and of samples inside a batch is
//! fixed by the index order (and the shuffle seed), never by thread timing.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;

use crate::dataset::Sample;
use crate::decode::DecodeLimits;
use crate::error::DataError;
use crate::preprocess::{load_image_sized, load_mask_counted, Preprocess};

/// A uniform integer in `0..n` (`n > 0`) without modulo bias (Lemire's method).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// A deterministic permutation of `0..n` for a given `seed` and `epoch`.
///
/// Fisher–Yates driven by ChaCha8 (`rand_chacha`, seeded with `seed`, stream
/// `epoch`), whose output is stable across platforms and crate versions: the
/// same `(n, seed, epoch)` always gives the same order, and each epoch gives a
/// different order.
pub fn shuffled_indices(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Options of a [`Loader`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderOptions {
    /// Samples per batch (`B`), at least 1. The last batch may be smaller unless `drop_last`.
    pub batch_size: usize,
    /// Resize and normalisation applied to every image.
    pub preprocess: Preprocess,
    /// Shuffle with this seed ([`shuffled_indices`]); `None` keeps the given order.
    pub shuffle_seed: Option<u64>,
    /// Epoch number mixed into the shuffle (a new order per epoch).
    pub epoch: u64,
    /// Also load the ground-truth masks (`[B, H, W]`, 0/1; zeros for samples without masks).
    pub with_masks: bool,
    /// Batches prepared ahead by a background thread (0 = decode inside `next()`).
    /// At most this many finished batches wait in memory.
    pub prefetch: usize,
    /// Drop the last batch when it is smaller than `batch_size` (training).
    pub drop_last: bool,
    /// Header-checked size limit for every image and mask.
    pub limits: DecodeLimits,
}

impl LoaderOptions {
    /// `batch_size` and `preprocess` with defaults: no shuffle, epoch 0, no masks,
    /// prefetch 2, keep the last partial batch, [`DecodeLimits::global`].
    pub fn new(batch_size: usize, preprocess: Preprocess) -> Self {
        LoaderOptions {
            batch_size,
            preprocess,
            shuffle_seed: None,
            epoch: 0,
            with_masks: false,
            prefetch: 2,
            drop_last: false,
            limits: DecodeLimits::global(),
        }
    }
}

/// One batch of decoded samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[B, 3, H, W]` normalised images (see [`crate::preprocess_rgb`]).
    pub images: Vec<f32>,
    /// `[B, H, W]` 0/1 ground-truth masks when the loader was asked for them.
    pub masks: Option<Vec<u8>>,
    /// With [`Self::masks`]: the anomalous pixels of each sample's ground-truth mask at native
    /// size, before the resize (0 for a sample without mask file, or whose mask is all zero),
    /// e.g. to warn about an anomalous image whose mask marks nothing.
    pub mask_pixels: Option<Vec<u64>>,
    /// Index of each batch element in the sample slice given to the loader.
    pub indices: Vec<usize>,
    /// Native size `(W, H)` of each image (after EXIF orientation), pixels.
    pub native_sizes: Vec<(u32, u32)>,
    /// `(H, W)` of every image and mask in the batch.
    pub size: (u32, u32),
}

impl Batch {
    /// Number of samples `B`.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True when the batch holds no sample (never produced by a [`Loader`]).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// What the loader keeps of a decoded sample besides its pixels: the native size `(W, H)` and
/// the anomalous pixels of its mask at native size.
type Loaded = ((u32, u32), u64);

/// What the loader needs of a sample.
struct Item {
    index: usize,
    image: PathBuf,
    masks: Vec<PathBuf>,
}

struct Plan {
    items: Vec<Item>,
    opts: LoaderOptions,
    num_batches: usize,
}

impl Plan {
    fn batch(&self, b: usize) -> Result<Batch, DataError> {
        let bs = self.opts.batch_size;
        let items = &self.items[b * bs..((b + 1) * bs).min(self.items.len())];
        let pp = &self.opts.preprocess;
        let (h, w) = pp.size;
        let n_img = pp.tensor_len();
        let n_mask = h as usize * w as usize;
        let mut images = vec![0.0f32; items.len() * n_img];
        let mut masks = vec![
            0u8;
            if self.opts.with_masks {
                items.len() * n_mask
            } else {
                0
            }
        ];
        let limits = &self.opts.limits;
        let with_masks = self.opts.with_masks;
        let load = |(img_out, mask_out, item): (&mut [f32], Option<&mut [u8]>, &Item)| {
            let (pixels, dims) = load_image_sized(&item.image, pp, limits)?;
            img_out.copy_from_slice(&pixels);
            let mut native = 0;
            if let Some(m) = mask_out {
                let (mask, n) = load_mask_counted(&item.masks, Some(dims), pp.size, limits)?;
                m.copy_from_slice(&mask);
                native = n;
            }
            Ok::<_, DataError>((dims, native))
        };
        let results: Vec<Result<Loaded, DataError>> = if with_masks {
            images
                .par_chunks_mut(n_img)
                .zip(masks.par_chunks_mut(n_mask))
                .zip(items.par_iter())
                .map(|((i, m), it)| load((i, Some(m), it)))
                .collect()
        } else {
            images
                .par_chunks_mut(n_img)
                .zip(items.par_iter())
                .map(|(i, it)| load((i, None, it)))
                .collect()
        };
        let (native_sizes, mask_pixels): (Vec<_>, Vec<_>) = results
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        Ok(Batch {
            images,
            masks: with_masks.then_some(masks),
            mask_pixels: with_masks.then_some(mask_pixels),
            indices: items.iter().map(|it| it.index).collect(),
            native_sizes,
            size: pp.size,
        })
    }
}

/// Iterator over decoded [`Batch`]es of a sample list, in deterministic order.
///
/// Yields `Result<Batch, DataError>`: a batch containing an unreadable file
/// yields the error of its first failing sample (in batch order, naming the
/// file); iteration then continues with the next batch, so a caller may stop
/// (`?`) or skip. Dropping the loader stops the background thread after the
/// batch it is decoding.
///
/// Decoding runs on rayon's global pool: iterate a loader from an ordinary
/// thread, not from inside a rayon task (which could leave the pool without a
/// free thread to decode the batch being waited for).
///
/// Memory: besides the batch being consumed, at most `prefetch` decoded
/// batches exist (one being decoded plus `prefetch - 1` waiting); only paths
/// are kept for the rest of the samples.
pub struct Loader {
    plan: Arc<Plan>,
    next_batch: usize,
    rx: Option<Receiver<Result<Batch, DataError>>>,
    worker: Option<JoinHandle<()>>,
    failed: bool,
}

impl Loader {
    /// A loader over every sample of `samples`, in slice order (or shuffled).
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] for `batch_size == 0`, an invalid
    /// preprocess or zero decode limits.
    pub fn new(samples: &[Sample], opts: LoaderOptions) -> Result<Loader, DataError> {
        let all: Vec<usize> = (0..samples.len()).collect();
        Loader::with_indices(samples, &all, opts)
    }

    /// A loader over `samples[i]` for each `i` of `indices`, in that order (or
    /// shuffled); [`Batch::indices`] report positions in `samples`.
    ///
    /// Only the paths of the selected samples are copied; no image is read here.
    ///
    /// # Errors
    /// As [`Loader::new`], plus [`DataError::InvalidArgument`] for an index out of range.
    pub fn with_indices(
        samples: &[Sample],
        indices: &[usize],
        opts: LoaderOptions,
    ) -> Result<Loader, DataError> {
        if opts.batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".to_string(),
            ));
        }
        opts.preprocess.validate()?;
        opts.limits.validate()?;
        if let Some(&bad) = indices.iter().find(|&&i| i >= samples.len()) {
            return Err(DataError::InvalidArgument(format!(
                "sample index {bad} out of range (only {} samples)",
                samples.len()
            )));
        }
        let order: Vec<usize> = match opts.shuffle_seed {
            Some(seed) => shuffled_indices(indices.len(), seed, opts.epoch)
                .into_iter()
                .map(|k| indices[k])
                .collect(),
            None => indices.to_vec(),
        };
        let items: Vec<Item> = order
            .into_iter()
            .map(|i| Item {
                index: i,
                image: samples[i].image.clone(),
                masks: samples[i].masks.clone(),
            })
            .collect();
        let num_batches = if opts.drop_last {
            items.len() / opts.batch_size
        } else {
            items.len().div_ceil(opts.batch_size)
        };
        let prefetch = opts.prefetch;
        let plan = Arc::new(Plan {
            items,
            opts,
            num_batches,
        });
        let mut loader = Loader {
            plan,
            next_batch: 0,
            rx: None,
            worker: None,
            failed: false,
        };
        if prefetch > 0 && num_batches > 0 {
            let (tx, rx) = sync_channel(prefetch - 1);
            let plan = Arc::clone(&loader.plan);
            let spawned = std::thread::Builder::new()
                .name("omniad-data-loader".to_string())
                .spawn(move || {
                    for b in 0..plan.num_batches {
                        if tx.send(plan.batch(b)).is_err() {
                            break; // the loader was dropped
                        }
                    }
                });
            match spawned {
                Ok(handle) => {
                    loader.rx = Some(rx);
                    loader.worker = Some(handle);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the loader thread; decoding without prefetch");
                }
            }
        }
        Ok(loader)
    }

    /// Total number of batches of this epoch.
    pub fn num_batches(&self) -> usize {
        self.plan.num_batches
    }

    /// Number of samples iterated (all selected samples, minus a dropped last partial batch).
    pub fn num_samples(&self) -> usize {
        if self.plan.opts.drop_last {
            self.plan.num_batches * self.plan.opts.batch_size
        } else {
            self.plan.items.len()
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_batch >= self.plan.num_batches {
            return None;
        }
        let b = self.next_batch;
        let out = match &self.rx {
            None => self.plan.batch(b),
            Some(rx) => match rx.recv() {
                Ok(r) => r,
                Err(_) => {
                    self.failed = true;
                    return Some(Err(DataError::LoaderStopped {
                        delivered: b,
                        total: self.plan.num_batches,
                    }));
                }
            },
        };
        self.next_batch += 1;
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            self.plan.num_batches - self.next_batch
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Loader {}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next `send` fail, so it exits
        // after the batch in progress.
        self.rx = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let a = shuffled_indices(1000, 42, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, shuffled_indices(1000, 42, 0));
        assert_ne!(a, shuffled_indices(1000, 42, 1));
        assert_ne!(a, shuffled_indices(1000, 43, 0));
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn shuffle_small_sizes() {
        assert!(shuffled_indices(0, 1, 0).is_empty());
        assert_eq!(shuffled_indices(1, 1, 0), vec![0]);
    }

    #[test]
    fn shuffle_is_roughly_uniform() {
        // Position of element 0 over many epochs of a 4-element shuffle.
        let mut counts = [0usize; 4];
        for epoch in 0..4000 {
            let p = shuffled_indices(4, 7, epoch);
            let pos = p.iter().position(|&v| v == 0).unwrap();
            counts[pos] += 1;
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for n in [1u64, 2, 3, 7, 1000, u64::MAX] {
            for _ in 0..100 {
                assert!(below(&mut rng, n) < n);
            }
        }
    }
}
