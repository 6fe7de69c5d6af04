//! Deterministic synthetic anomaly maps for benchmarks (`omniad bench metrics`).
//!
//! Each map is a smooth background (a few separable Gaussian bumps) plus
//! per-pixel noise; about 70 % of the images (as in the MVTec AD test sets)
//! get one to three irregular elliptical anomalous regions whose scores are
//! raised with a soft fall-off that also leaks past the region border (false
//! positives). At 256x256 about 3 % of all pixels are anomalous. Everything
//! is drawn from SplitMix64 seeded per image, so the data depend only on
//! `(n_maps, h, w, n_classes, seed)`, not on the thread count.

use std::time::Instant;

use rayon::prelude::*;

use crate::eval::{evaluate_arrays, ArrayRef, EvalArrays, ImageRecord, PixelRecord};
use crate::report::Report;
use crate::{Accumulator, MetricOptions, MetricsError};

/// SplitMix64 pseudo-random generator (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }
}

/// A synthetic evaluation set, in the tensor layout of the safetensors format.
#[derive(Debug, Clone)]
pub struct SyntheticSet {
    /// Number of images `N`.
    pub n: usize,
    /// Map height `H` in pixels.
    pub h: usize,
    /// Map width `W` in pixels.
    pub w: usize,
    /// `[N, H, W]` anomaly maps, values roughly in `[0, 1.2]`.
    pub anomaly_maps: Vec<f32>,
    /// `[N, H, W]` ground-truth masks, 0/1.
    pub masks: Vec<u8>,
    /// `[N]` image scores (max of each map).
    pub image_scores: Vec<f32>,
    /// `[N]` image labels, 0/1.
    pub labels: Vec<u8>,
    /// `[N]` class ids (contiguous blocks of images).
    pub class_ids: Vec<u32>,
    /// Class names `synthetic_0`, ...
    pub class_names: Vec<String>,
    shape: [usize; 3],
}

fn fill_image(map: &mut [f32], mask: &mut [u8], h: usize, w: usize, rng: &mut SplitMix64) -> bool {
    let scale = h.min(w) as f32 / 256.0;
    // smooth background: separable Gaussian bumps
    map.fill(0.1);
    let mut gx = vec![0f32; w];
    let mut gy = vec![0f32; h];
    for _ in 0..4 {
        let a = rng.range(0.03, 0.15);
        let (cx, cy) = (rng.range(0.0, w as f32), rng.range(0.0, h as f32));
        let s = rng.range(h as f32 / 16.0, h as f32 / 4.0).max(1.0);
        for (x, g) in gx.iter_mut().enumerate() {
            let d = (x as f32 - cx) / s;
            *g = (-0.5 * d * d).exp();
        }
        for (y, g) in gy.iter_mut().enumerate() {
            let d = (y as f32 - cy) / s;
            *g = a * (-0.5 * d * d).exp();
        }
        for (row, &g) in map.chunks_exact_mut(w).zip(&gy) {
            for (v, &f) in row.iter_mut().zip(&gx) {
                *v += g * f;
            }
        }
    }
    for v in map.iter_mut() {
        *v += 0.04 * rng.next_f32();
    }
    mask.fill(0);
    let anomalous = rng.next_f32() < 0.7;
    if anomalous {
        let n_blobs = 1 + (rng.next_u64() % 3) as usize;
        for _ in 0..n_blobs {
            let (cx, cy) = (rng.range(0.0, w as f32), rng.range(0.0, h as f32));
            let rx = rng.range(9.0, 36.0) * scale;
            let ry = rng.range(9.0, 36.0) * scale;
            let rot = rng.range(0.0, std::f32::consts::PI);
            let (sin, cos) = rot.sin_cos();
            let wobble = rng.range(0.0, 6.3);
            let amp = rng.range(0.05, 0.6);
            let reach = 1.5 * rx.max(ry);
            let x0 = (cx - reach).floor().max(0.0) as usize;
            let x1 = ((cx + reach).ceil() as usize).min(w.saturating_sub(1));
            let y0 = (cy - reach).floor().max(0.0) as usize;
            let y1 = ((cy + reach).ceil() as usize).min(h.saturating_sub(1));
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let u = (dx * cos + dy * sin) / rx.max(0.5);
                    let v = (-dx * sin + dy * cos) / ry.max(0.5);
                    let r = (u * u + v * v).sqrt();
                    let edge = 1.0 + 0.25 * (3.0 * v.atan2(u) + wobble).sin();
                    let d = r / edge;
                    let i = y * w + x;
                    if d <= 1.0 {
                        mask[i] = 1;
                    }
                    let f = 1.0 - (d / 1.4) * (d / 1.4);
                    if f > 0.0 {
                        map[i] += amp * f;
                    }
                }
            }
        }
    }
    anomalous && mask.contains(&1)
}

impl SyntheticSet {
    /// Generates `n_maps` maps of `h x w` pixels split into `n_classes`
    /// contiguous classes (at least one), deterministically from `seed`.
    pub fn generate(n_maps: usize, h: usize, w: usize, n_classes: usize, seed: u64) -> Self {
        let hw = h * w;
        let n_classes = n_classes.max(1);
        let mut anomaly_maps = vec![0f32; n_maps * hw];
        let mut masks = vec![0u8; n_maps * hw];
        let labels: Vec<u8> = if hw == 0 {
            vec![0; n_maps]
        } else {
            anomaly_maps
                .par_chunks_mut(hw)
                .zip(masks.par_chunks_mut(hw))
                .enumerate()
                .map(|(i, (map, mask))| {
                    let mut rng =
                        SplitMix64::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                    rng.next_u64();
                    fill_image(map, mask, h, w, &mut rng) as u8
                })
                .collect()
        };
        let image_scores = if hw == 0 {
            vec![0.0; n_maps]
        } else {
            anomaly_maps
                .par_chunks(hw)
                .map(|m| m.iter().copied().fold(f32::NEG_INFINITY, f32::max))
                .collect()
        };
        let class_ids = (0..n_maps)
            .map(|i| (i * n_classes / n_maps.max(1)) as u32)
            .collect();
        SyntheticSet {
            n: n_maps,
            h,
            w,
            anomaly_maps,
            masks,
            image_scores,
            labels,
            class_ids,
            class_names: (0..n_classes).map(|c| format!("synthetic_{c}")).collect(),
            shape: [n_maps, h, w],
        }
    }

    /// Borrowed view for [`evaluate_arrays`] / [`crate::write_safetensors`].
    pub fn as_arrays(&self) -> EvalArrays<'_> {
        EvalArrays {
            image_scores: &self.image_scores,
            labels: &self.labels,
            anomaly_maps: Some(ArrayRef {
                data: &self.anomaly_maps,
                shape: &self.shape,
            }),
            masks: Some(ArrayRef {
                data: &self.masks,
                shape: &self.shape,
            }),
            class_ids: Some(&self.class_ids),
            class_names: self.class_names.clone(),
            sample_ids: None,
        }
    }

    /// Fraction of anomalous pixels.
    pub fn anomalous_pixel_fraction(&self) -> f64 {
        let n = self.masks.iter().filter(|&&m| m != 0).count();
        n as f64 / self.masks.len().max(1) as f64
    }

    /// Size of the maps and masks in bytes (the "input maps").
    pub fn input_bytes(&self) -> usize {
        self.anomaly_maps.len() * 4 + self.masks.len()
    }

    /// Feeds every image to a new [`Accumulator`] and returns its report.
    ///
    /// # Errors
    /// Those of [`Accumulator::push`] (none for generated data).
    pub fn evaluate_streaming(&self, opts: &MetricOptions) -> Result<Report, MetricsError> {
        let mut acc = Accumulator::new(opts.clone())?;
        let hw = self.h * self.w;
        for i in 0..self.n {
            acc.push(ImageRecord {
                class: &self.class_names[self.class_ids[i] as usize],
                image_score: self.image_scores[i],
                label: self.labels[i] == 1,
                pixels: Some(PixelRecord {
                    anomaly_map: &self.anomaly_maps[i * hw..(i + 1) * hw],
                    mask: Some(&self.masks[i * hw..(i + 1) * hw]),
                    height: self.h,
                    width: self.w,
                }),
                sample_id: None,
            })?;
        }
        acc.finish()
    }
}

/// Result of [`bench_synthetic`].
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Number of maps.
    pub n_maps: usize,
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
    /// Total pixels scored.
    pub n_pixels: u64,
    /// Fraction of anomalous pixels.
    pub anomalous_pixel_fraction: f64,
    /// Seconds spent generating the data (not part of the metric time).
    pub generate_s: f64,
    /// Wall-clock seconds of [`evaluate_arrays`] (all image and pixel
    /// metrics, exact AUPRO included, default options).
    pub evaluate_s: f64,
    /// The report that was computed.
    pub report: Report,
}

/// Generates an MVTec-sized-like set with [`SyntheticSet::generate`]
/// (one class, so the pixel metrics run over all `n_maps * h * w` pixels at
/// once: the worst case) and times [`evaluate_arrays`] on it with the default
/// options. MVTec AD test size: `bench_synthetic(1725, 256, 256, seed)`.
///
/// # Errors
/// Those of [`evaluate_arrays`] (none for generated data).
pub fn bench_synthetic(
    n_maps: usize,
    h: usize,
    w: usize,
    seed: u64,
) -> Result<BenchResult, MetricsError> {
    let t0 = Instant::now();
    let set = SyntheticSet::generate(n_maps, h, w, 1, seed);
    let generate_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let report = evaluate_arrays(&set.as_arrays(), &MetricOptions::default())?;
    let evaluate_s = t1.elapsed().as_secs_f64();
    Ok(BenchResult {
        n_maps,
        h,
        w,
        n_pixels: (n_maps * h * w) as u64,
        anomalous_pixel_fraction: set.anomalous_pixel_fraction(),
        generate_s,
        evaluate_s,
        report,
    })
}
