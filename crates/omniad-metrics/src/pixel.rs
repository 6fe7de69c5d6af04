//! Exact pixel-level metrics of one class: P-AUROC, P-AP, P-F1-max, AUPRO at
//! an FPR limit, and the ADer-compatible AUPRO and F1-max.
//!
//! Algorithm (one counting pass over the normal pixels, no sort of all pixels):
//! 1. Per image, ground-truth regions are labelled (8-connectivity) and the
//!    anomalous pixels are collected as `(key, region)` pairs (`key` is the
//!    order-preserving `u32` image of the `f32` score). Normal pixels are only
//!    counted.
//! 2. The anomalous pixels (a few % of all) are sorted.
//! 3. Every metric only needs, for a set of cut keys `c` (each distinct
//!    anomalous score `p` and its successor `p + 1`, plus the ADer
//!    thresholds), the number of normal pixels with key `>= c`. The normal
//!    pixels are counted against the sorted cuts in parallel, block by block
//!    (cache-blocked radix sort of a block of keys, then a merge with the
//!    cuts: only sequential memory access), then suffix-summed.
//! 4. One sweep over the anomalous pixels from the highest score down gives
//!    the ROC and precision-recall curves at every distinct score (normal-only
//!    thresholds between two anomalous scores only move the FPR, which the
//!    counts of step 3 capture exactly) and the PRO curve, integrated on the
//!    fly up to the FPR limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::curve::{one_class_reason, Sweep};
use crate::keys::{f32_of, key_of};
use crate::regions::label_regions;
use crate::report::MetricValue;
use crate::{MetricOptions, MetricsError};

/// Anomalous pixels and counts of one image, as produced by [`scan_image`].
#[derive(Debug, Default)]
pub(crate) struct ImagePixels {
    /// `key << 32 | region` for each anomalous pixel (region 0-based, local).
    pub pos: Vec<u64>,
    /// Pixel count of each local region.
    pub sizes: Vec<u32>,
    /// Number of normal pixels.
    pub n_neg: u64,
    /// Smallest and largest key over all pixels of the image.
    pub min_key: u32,
    pub max_key: u32,
}

/// Reusable buffers for [`scan_image`].
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    labels: Vec<u32>,
    stack: Vec<u32>,
    sizes: Vec<u32>,
}

/// Validates one image's anomaly map (`[h, w]`, finite) and mask (`[h, w]`,
/// 0/1), labels its regions and extracts its anomalous pixels. When
/// `neg_keys` is given, the keys of the normal pixels are appended to it.
pub(crate) fn scan_image(
    index: usize,
    map: &[f32],
    mask: &[u8],
    h: usize,
    w: usize,
    scratch: &mut Scratch,
    mut neg_keys: Option<&mut Vec<u32>>,
) -> Result<ImagePixels, MetricsError> {
    if let Some(i) = map.iter().position(|v| !v.is_finite()) {
        return Err(MetricsError::NonFiniteMap {
            index,
            y: i / w.max(1),
            x: i % w.max(1),
            value: map[i],
        });
    }
    if let Some(&v) = mask.iter().find(|&&m| m > 1) {
        return Err(MetricsError::NotBinary {
            what: "mask",
            index,
            value: v as i64,
        });
    }
    let n_regions = label_regions(
        mask,
        h,
        w,
        &mut scratch.labels,
        &mut scratch.stack,
        &mut scratch.sizes,
    );
    let mut out = ImagePixels {
        pos: Vec::new(),
        sizes: scratch.sizes.clone(),
        n_neg: 0,
        min_key: u32::MAX,
        max_key: 0,
    };
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    if n_regions == 0 {
        for &s in map {
            let k = key_of(s);
            lo = lo.min(k);
            hi = hi.max(k);
        }
        out.n_neg = map.len() as u64;
        if let Some(v) = neg_keys.as_deref_mut() {
            v.extend(map.iter().map(|&s| key_of(s)));
        }
    } else {
        let n_pos: usize = scratch.sizes.iter().map(|&s| s as usize).sum();
        out.pos.reserve_exact(n_pos);
        if let Some(v) = neg_keys.as_deref_mut() {
            v.reserve(map.len() - n_pos);
        }
        for (&s, &r) in map.iter().zip(scratch.labels.iter()) {
            let k = key_of(s);
            lo = lo.min(k);
            hi = hi.max(k);
            if r != 0 {
                out.pos.push(((k as u64) << 32) | (r - 1) as u64);
            } else if let Some(v) = neg_keys.as_deref_mut() {
                v.push(k);
            }
        }
        out.n_neg = (map.len() - n_pos) as u64;
    }
    out.min_key = lo;
    out.max_key = hi;
    Ok(out)
}

/// The normal pixels of a class, as they are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NegChunk<'a> {
    /// Keys of normal pixels only.
    Keys(&'a [u32]),
    /// A whole anomaly map with its mask; pixels with `mask != 0` are skipped.
    Masked { map: &'a [f32], mask: &'a [u8] },
}

/// Anomalous pixels, regions and normal-pixel count of one class.
#[derive(Debug)]
pub(crate) struct ClassPixels {
    pos: Vec<u64>,
    sizes: Vec<u32>,
    n_neg: u64,
    min_key: u32,
    max_key: u32,
    n_images: usize,
}

impl Default for ClassPixels {
    fn default() -> Self {
        ClassPixels {
            pos: Vec::new(),
            sizes: Vec::new(),
            n_neg: 0,
            min_key: u32::MAX,
            max_key: 0,
            n_images: 0,
        }
    }
}

impl ClassPixels {
    /// Appends one image, renumbering its regions after those already held.
    pub(crate) fn add(&mut self, img: ImagePixels) {
        let offset = self.sizes.len() as u64;
        if self.pos.is_empty() && offset == 0 {
            self.pos = img.pos;
        } else {
            self.pos.extend(img.pos.iter().map(|&p| p + offset));
        }
        self.sizes.extend_from_slice(&img.sizes);
        self.n_neg += img.n_neg;
        self.min_key = self.min_key.min(img.min_key);
        self.max_key = self.max_key.max(img.max_key);
        self.n_images += 1;
    }

    /// Number of anomalous pixels.
    pub(crate) fn n_pos(&self) -> u64 {
        self.pos.len() as u64
    }
}

/// Pixel-level results of one class.
#[derive(Debug, Clone)]
pub(crate) struct PixelResults {
    pub auroc: MetricValue,
    pub ap: MetricValue,
    pub f1_max: MetricValue,
    pub aupro: MetricValue,
    /// Only with [`MetricOptions::ader`].
    pub aupro_ader: Option<MetricValue>,
    /// Only with [`MetricOptions::ader`].
    pub f1_max_ader: Option<MetricValue>,
    pub n_pixels: u64,
    pub n_anomalous_pixels: u64,
    pub n_regions: u64,
}

impl PixelResults {
    /// Every pixel metric undefined for `reason`.
    pub(crate) fn undefined(reason: &str, opts: &MetricOptions) -> Self {
        let u = || MetricValue::Undefined(reason.to_string());
        PixelResults {
            auroc: u(),
            ap: u(),
            f1_max: u(),
            aupro: u(),
            aupro_ader: opts.ader.then(u),
            f1_max_ader: opts.ader.then(u),
            n_pixels: 0,
            n_anomalous_pixels: 0,
            n_regions: 0,
        }
    }
}

/// Piecewise-linear integration of a curve from `(0, 0)` up to `x = limit`,
/// interpolating linearly at the limit (as the MVTec AD evaluation's
/// `trapezoid(..., x_max)`).
struct Integrator {
    limit: f64,
    x: f64,
    y: f64,
    area: f64,
    done: bool,
}

impl Integrator {
    fn new(limit: f64) -> Self {
        Integrator {
            limit,
            x: 0.0,
            y: 0.0,
            area: 0.0,
            done: false,
        }
    }

    #[inline]
    fn line_to(&mut self, x1: f64, y1: f64) {
        if self.done {
            return;
        }
        if x1 <= self.limit {
            self.area += (x1 - self.x) * (self.y + y1) * 0.5;
        } else {
            if self.x < self.limit {
                let y_lim = self.y + (y1 - self.y) * (self.limit - self.x) / (x1 - self.x);
                self.area += (self.limit - self.x) * (self.y + y_lim) * 0.5;
            }
            self.done = true;
        }
        self.x = x1;
        self.y = y1;
    }
}

/// LSD radix sort of `a` (values `< 2^bits`), using `tmp` (same length) as
/// scratch. Digits of at most 11 bits; passes whose digit is the same for
/// every value are skipped. Returns `true` when the sorted values ended up in
/// `tmp` instead of `a`.
fn radix_sort(a: &mut [u32], tmp: &mut [u32], bits: u32) -> bool {
    let len = a.len();
    if bits == 0 || len < 2 {
        return false;
    }
    let passes = bits.div_ceil(11);
    let digit = bits.div_ceil(passes);
    let nb = 1usize << digit;
    let mask = (nb - 1) as u32;
    let mut hist = vec![0usize; nb * passes as usize];
    for &x in a.iter() {
        for p in 0..passes {
            hist[p as usize * nb + ((x >> (p * digit)) & mask) as usize] += 1;
        }
    }
    let mut in_tmp = false;
    for p in 0..passes {
        let h = &mut hist[p as usize * nb..(p as usize + 1) * nb];
        if h.contains(&len) {
            continue;
        }
        let mut sum = 0usize;
        for c in h.iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        let (src, dst): (&[u32], &mut [u32]) = if in_tmp {
            (&*tmp, &mut *a)
        } else {
            (&*a, &mut *tmp)
        };
        let shift = p * digit;
        for &x in src {
            let d = ((x >> shift) & mask) as usize;
            dst[h[d]] = x;
            h[d] += 1;
        }
        in_tmp = !in_tmp;
    }
    in_tmp
}

/// Bits of the top digit used to split a block into cache-sized buckets.
const TOP_BITS: u32 = 9;

/// Per-worker state of [`negatives_ge`].
struct BlockCounter<'a> {
    /// Cuts relative to `min_key`, ascending, followed by the sentinel
    /// `u32::MAX` (greater than every relative key and cut).
    cuts: &'a [u32],
    /// `counts[j]` = keys with exactly `j` cuts `<=` them.
    counts: Vec<u64>,
    buf: Vec<u32>,
    tmp: Vec<u32>,
    small: Vec<u32>,
    hist: Vec<usize>,
    /// Shift of the top digit; keys are `< 2^(top_shift + TOP_BITS)`.
    top_shift: u32,
}

impl BlockCounter<'_> {
    #[inline(always)]
    fn push(&mut self, r: u32) {
        self.hist[(r >> self.top_shift) as usize] += 1;
        self.buf.push(r);
    }

    /// Sorts the block held in `buf` (MSD scatter on the top digit, then an
    /// in-cache LSD sort of each bucket) and merges it into `counts`.
    fn flush(&mut self) {
        let len = self.buf.len();
        if len == 0 {
            return;
        }
        self.tmp.resize(len, 0);
        let mut sum = 0usize;
        for h in self.hist.iter_mut() {
            let n = *h;
            *h = sum;
            sum += n;
        }
        for &x in &self.buf {
            let d = (x >> self.top_shift) as usize;
            self.tmp[self.hist[d]] = x;
            self.hist[d] += 1;
        }
        // after the scatter hist[d] is the end of bucket d
        let mut ci = 0usize;
        let mut run = 0u64;
        let mut start = 0usize;
        for d in 0..self.hist.len() {
            let end = self.hist[d];
            if end == start {
                continue;
            }
            let bucket = &mut self.tmp[start..end];
            self.small.resize(bucket.len(), 0);
            let small = &mut self.small[..bucket.len()];
            let sorted: &[u32] = if radix_sort(bucket, small, self.top_shift) {
                small
            } else {
                bucket
            };
            // `cuts` ends with a sentinel above every key; count runs of keys
            // between two cuts in a register
            for &k in sorted {
                if self.cuts[ci] <= k {
                    self.counts[ci] += run;
                    run = 0;
                    ci += 1;
                    while self.cuts[ci] <= k {
                        ci += 1;
                    }
                }
                run += 1;
            }
            start = end;
        }
        self.counts[ci] += run;
        self.buf.clear();
        self.hist.iter_mut().for_each(|h| *h = 0);
    }
}

/// For each cut (ascending, distinct, all `>= min_key`) the number of normal
/// pixels with key `>= cut`. All normal keys lie in `[min_key, max_key]`.
///
/// Each worker gathers a block of normal-pixel keys (relative to `min_key`),
/// sorts it cache-blocked (one scatter on the top 9 bits into buckets of a
/// few hundred KiB, then an LSD radix sort of each bucket inside the cache)
/// and merges it with the cuts, so every memory access is sequential; blocks
/// are a few times larger than the cut list so the merge walks cost little.
/// Scratch per worker: two `u32` blocks and one `u64` count per cut.
fn negatives_ge(
    cuts: &[u32],
    chunks: &[NegChunk<'_>],
    n_neg: u64,
    min_key: u32,
    max_key: u32,
) -> Vec<u64> {
    let n_bins = cuts.len() + 1;
    let bits = 32 - (max_key - min_key).leading_zeros();
    let top_shift = bits.saturating_sub(TOP_BITS);
    // relative keys and cuts are <= max_key - min_key + 1 < u32::MAX (finite keys)
    let rel_cuts: Vec<u32> = cuts
        .iter()
        .map(|&c| c - min_key)
        .chain(std::iter::once(u32::MAX))
        .collect();
    let n_workers = rayon::current_num_threads().max(1).min(chunks.len().max(1));
    let per_worker = (n_neg as usize).div_ceil(n_workers);
    let block = (4 * cuts.len())
        .clamp(1 << 20, 1 << 24)
        .min(per_worker.max(1));
    let next = AtomicUsize::new(0);
    let partial: Vec<Vec<u64>> = (0..n_workers)
        .into_par_iter()
        .map(|_| {
            let mut w = BlockCounter {
                cuts: &rel_cuts,
                counts: vec![0u64; n_bins + 1],
                buf: Vec::with_capacity(block),
                tmp: Vec::new(),
                small: Vec::new(),
                hist: vec![0usize; 1 << (bits - top_shift)],
                top_shift,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                match *chunk {
                    NegChunk::Keys(keys) => keys.iter().for_each(|&k| w.push(k - min_key)),
                    NegChunk::Masked { map, mask } => {
                        for (&s, &m) in map.iter().zip(mask) {
                            if m == 0 {
                                w.push(key_of(s) - min_key);
                            }
                        }
                    }
                }
                if w.buf.len() >= block {
                    w.flush();
                }
            }
            w.flush();
            w.counts
        })
        .collect();
    let mut totals = vec![0u64; n_bins];
    for w in &partial {
        for (t, c) in totals.iter_mut().zip(w) {
            *t += c;
        }
    }
    drop(partial);
    // keys >= cuts[i] are those in bins > i
    let mut ge = vec![0u64; cuts.len()];
    let mut acc = 0u64;
    for i in (0..cuts.len()).rev() {
        acc += totals[i + 1];
        ge[i] = acc;
    }
    ge
}

/// Looks up `ge` for cuts queried in non-increasing order.
struct DescLookup<'a> {
    cuts: &'a [u32],
    ge: &'a [u64],
    i: usize,
}

impl DescLookup<'_> {
    #[inline]
    fn get(&mut self, c: u32) -> u64 {
        while self.i > 0 && self.cuts[self.i - 1] > c {
            self.i -= 1;
        }
        debug_assert!(self.i > 0 && self.cuts[self.i - 1] == c);
        self.ge[self.i - 1]
    }
}

/// Random-access lookup of `ge` at a cut that is in `cuts`.
fn ge_at(cuts: &[u32], ge: &[u64], c: u32) -> u64 {
    let i = cuts.partition_point(|&x| x < c);
    debug_assert!(i < cuts.len() && cuts[i] == c);
    ge.get(i).copied().unwrap_or(0)
}

/// Thresholds and cut keys of the ADer-compatible metrics
/// (ADer `util/metric.py`, `Evaluator.cal_pro_score` and `mF1_max_px`).
struct AderCuts {
    /// Cut key of each AUPRO threshold, in ascending threshold order
    /// (pixel predicted anomalous ⇔ `score > th` ⇔ `key >= cut`).
    aupro: Vec<u32>,
    /// Cut key of each of the 21 F1 thresholds on the min-max normalised map.
    f1: Vec<u32>,
    /// Why the metrics are undefined, if they are.
    undefined: Option<String>,
}

impl AderCuts {
    fn new(min_key: u32, max_key: u32, steps: usize) -> Self {
        let (min, max) = (f32_of(min_key), f32_of(max_key));
        let span = max - min;
        if !(span > 0.0 && span.is_finite()) {
            return AderCuts {
                aupro: Vec::new(),
                f1: Vec::new(),
                undefined: Some(
                    "constant anomaly maps (max = min): ADer's thresholds are undefined".into(),
                ),
            };
        }
        // np.arange(min, max, delta) on float32 scalars.
        let delta = span / steps as f32;
        let len = (span / delta).ceil().max(0.0) as usize;
        let second = min + delta;
        let d = second - min;
        let aupro = (0..len)
            .map(|i| match i {
                0 => min,
                1 => second,
                _ => min + i as f32 * d,
            })
            .map(|th| key_of(th).saturating_add(1))
            .collect();
        // mF1_max_px: np.arange(0.0, 1.0 + 1e-3, 0.05) -> 21 thresholds on
        // (x - min) / (max - min) (float32), compared in float64 with '>'.
        let f1 = (0..21)
            .map(|k| {
                let t = k as f64 * 0.05;
                let pred = |key: u32| (((f32_of(key) - min) / span) as f64) > t;
                // smallest key in [min_key, max_key] with pred true (monotone)
                let (mut lo, mut hi) = (min_key as u64, max_key as u64 + 1);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if pred(mid as u32) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                lo.min(u32::MAX as u64) as u32
            })
            .collect();
        AderCuts {
            aupro,
            f1,
            undefined: None,
        }
    }
}

/// Computes every pixel metric of one class.
///
/// `neg` must hold exactly the normal pixels that were counted in `data`.
pub(crate) fn pixel_metrics(
    data: ClassPixels,
    neg: &[NegChunk<'_>],
    opts: &MetricOptions,
) -> PixelResults {
    let ClassPixels {
        mut pos,
        sizes,
        n_neg,
        min_key,
        max_key,
        ..
    } = data;
    let n_pos = pos.len() as u64;
    let n_regions = sizes.len() as u64;
    if let Some(reason) = one_class_reason(n_pos, n_neg, "pixel") {
        let mut r = PixelResults::undefined(&reason, opts);
        r.n_pixels = n_pos + n_neg;
        r.n_anomalous_pixels = n_pos;
        r.n_regions = n_regions;
        return r;
    }
    pos.par_sort_unstable();

    // Cut keys: every distinct anomalous key p and p + 1 (ascending).
    let mut cuts: Vec<u32> = Vec::new();
    let mut last: Option<u32> = None;
    for &p in &pos {
        let k = (p >> 32) as u32;
        if last == Some(k) {
            continue;
        }
        last = Some(k);
        if cuts.last() != Some(&k) {
            cuts.push(k);
        }
        cuts.push(k + 1); // finite keys are < u32::MAX
    }
    let ader = opts
        .ader
        .then(|| AderCuts::new(min_key, max_key, opts.ader_aupro_steps));
    if let Some(a) = &ader {
        cuts.extend_from_slice(&a.aupro);
        cuts.extend_from_slice(&a.f1);
        cuts.sort(); // nearly sorted: linear-time run merge
        cuts.dedup();
    }
    let ge = negatives_ge(&cuts, neg, n_neg, min_key, max_key);

    // Probes (ADer cuts), visited in descending order during the sweep.
    let mut probes: Vec<u32> = match &ader {
        Some(a) if a.undefined.is_none() => a.aupro.iter().chain(&a.f1).copied().collect(),
        _ => Vec::new(),
    };
    probes.sort_unstable_by(|a, b| b.cmp(a));
    probes.dedup();
    let mut probe_vals: Vec<(u64, f64)> = vec![(0, 0.0); probes.len()];

    let inv_size: Vec<f64> = sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let nn = n_neg as f64;
    let nr = n_regions as f64;
    let mut sweep = Sweep::new(n_pos);
    let mut integ = Integrator::new(opts.aupro_fpr_limit);
    let mut look = DescLookup {
        cuts: &cuts,
        ge: &ge,
        i: cuts.len(),
    };
    let mut pro_sum = 0.0f64;
    let mut tp = 0u64;
    let mut probe_i = 0usize;
    let mut j = pos.len();
    while j > 0 {
        let p = (pos[j - 1] >> 32) as u32;
        while probe_i < probes.len() && probes[probe_i] > p {
            probe_vals[probe_i] = (tp, pro_sum);
            probe_i += 1;
        }
        let mut count = 0u64;
        let mut inc = 0.0f64;
        while j > 0 && (pos[j - 1] >> 32) as u32 == p {
            inc += inv_size[(pos[j - 1] & 0xFFFF_FFFF) as usize];
            count += 1;
            j -= 1;
        }
        let gt = look.get(p + 1);
        let ge_p = look.get(p);
        // normal-only thresholds above p: FPR moves, PRO stays
        sweep.push(0, gt - sweep.fp());
        integ.line_to(gt as f64 / nn, pro_sum / nr);
        // threshold p itself
        sweep.push(count, ge_p - gt);
        tp += count;
        pro_sum += inc;
        integ.line_to(ge_p as f64 / nn, pro_sum / nr);
    }
    while probe_i < probes.len() {
        probe_vals[probe_i] = (tp, pro_sum);
        probe_i += 1;
    }
    sweep.push(0, n_neg - sweep.fp());
    integ.line_to(1.0, pro_sum / nr);
    let (auroc, ap, f1) = sweep.finish();
    let aupro = integ.area / opts.aupro_fpr_limit;

    let probe = |c: u32| -> (u64, f64, u64) {
        let i = probes.partition_point(|&x| x > c);
        let (tp, pro) = probe_vals[i];
        (tp, pro, ge_at(&cuts, &ge, c))
    };
    let (aupro_ader, f1_max_ader) = match &ader {
        None => (None, None),
        Some(a) => match &a.undefined {
            Some(r) => (
                Some(MetricValue::Undefined(r.clone())),
                Some(MetricValue::Undefined(r.clone())),
            ),
            None => {
                // cal_pro_score: keep FPR < limit, min-max rescale FPR, trapezoid.
                let pts: Vec<(f64, f64)> = a
                    .aupro
                    .iter()
                    .map(|&c| {
                        let (_, pro, fp) = probe(c);
                        (fp as f64 / nn, pro / nr)
                    })
                    .filter(|&(fpr, _)| fpr < opts.aupro_fpr_limit)
                    .collect();
                let fmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
                let fmax = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
                let aupro_ader = if pts.len() < 2 || fmax <= fmin {
                    MetricValue::Undefined(format!(
                        "ADer AUPRO: fewer than two distinct FPRs below {} on its threshold grid",
                        opts.aupro_fpr_limit
                    ))
                } else {
                    let area: f64 = pts
                        .windows(2)
                        .map(|w| {
                            let x0 = (w[0].0 - fmin) / (fmax - fmin);
                            let x1 = (w[1].0 - fmin) / (fmax - fmin);
                            (x0 - x1) * (w[0].1 + w[1].1) * 0.5
                        })
                        .sum();
                    MetricValue::Defined(area)
                };
                let eps = 1e-8;
                let f1_ader =
                    a.f1.iter()
                        .map(|&c| {
                            let (tp, _, fp) = probe(c);
                            let tp = tp as f64;
                            let precision = tp / (tp + fp as f64 + eps);
                            let recall = tp / (n_pos as f64 + eps);
                            2.0 * precision * recall / (precision + recall + eps)
                        })
                        .fold(0.0f64, f64::max);
                (Some(aupro_ader), Some(MetricValue::Defined(f1_ader)))
            }
        },
    };

    PixelResults {
        auroc: MetricValue::Defined(auroc),
        ap: MetricValue::Defined(ap),
        f1_max: MetricValue::Defined(f1),
        aupro: MetricValue::Defined(aupro),
        aupro_ader,
        f1_max_ader,
        n_pixels: n_pos + n_neg,
        n_anomalous_pixels: n_pos,
        n_regions,
    }
}

/// Scans the images of one class held as full maps and masks (`[h, w]` each)
/// in parallel and computes its pixel metrics. `index` gives each image's
/// position in the input, for error messages.
pub(crate) fn class_pixel_metrics_from_maps(
    images: &[(usize, &[f32], &[u8])],
    h: usize,
    w: usize,
    opts: &MetricOptions,
) -> Result<PixelResults, MetricsError> {
    let scanned: Vec<Result<ImagePixels, MetricsError>> = images
        .par_iter()
        .map_init(Scratch::default, |scratch, &(index, map, mask)| {
            scan_image(index, map, mask, h, w, scratch, None)
        })
        .collect();
    let mut data = ClassPixels::default();
    for r in scanned {
        data.add(r?);
    }
    let chunks: Vec<NegChunk<'_>> = images
        .iter()
        .map(|&(_, map, mask)| NegChunk::Masked { map, mask })
        .collect();
    Ok(pixel_metrics(data, &chunks, opts))
}

/// The PRO curve behind AUPRO for one class, as `(FPR, PRO)` points: `(0, 0)`, then one point
/// per distinct score from the highest down (predicted anomalous = `score >= threshold`), ending
/// at FPR 1. Integrating it with the trapezoid rule up to an FPR limit, interpolating linearly at
/// the limit, and dividing by the limit gives the class's `pixel_aupro`.
///
/// `maps` F32 `[n, h, w]` and `masks` U8 `[n, h, w]` (0/1), as in [`crate::evaluate_arrays`].
/// `None` when the class has no anomalous or no normal pixel (AUPRO is undefined).
///
/// # Errors
/// Lengths other than `n * h * w`, a non-finite map value or a mask value other than 0/1
/// (naming the image and pixel).
pub fn pro_curve(
    maps: &[f32],
    masks: &[u8],
    n: usize,
    h: usize,
    w: usize,
) -> Result<Option<Vec<(f64, f64)>>, MetricsError> {
    let len = n * h * w;
    for (what, got) in [("anomaly_maps", maps.len()), ("masks", masks.len())] {
        if got != len {
            return Err(MetricsError::ShapeMismatch {
                a: what.into(),
                a_shape: vec![got],
                b: "n * h * w".into(),
                b_shape: vec![n, h, w],
            });
        }
    }
    let mut data = ClassPixels::default();
    let mut neg: Vec<u32> = Vec::new();
    let mut scratch = Scratch::default();
    for i in 0..n {
        let r = i * h * w..(i + 1) * h * w;
        let img = scan_image(
            i,
            &maps[r.clone()],
            &masks[r],
            h,
            w,
            &mut scratch,
            Some(&mut neg),
        )?;
        data.add(img);
    }
    let ClassPixels { mut pos, sizes, .. } = data;
    if pos.is_empty() || neg.is_empty() {
        return Ok(None);
    }
    pos.sort_unstable();
    neg.sort_unstable();
    let inv_size: Vec<f64> = sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let (nn, nr) = (neg.len() as f64, sizes.len() as f64);
    let mut points = vec![(0.0, 0.0)];
    let (mut i, mut j) = (pos.len(), neg.len());
    let (mut fp, mut pro_sum) = (0u64, 0.0f64);
    while i > 0 || j > 0 {
        let kp = (i > 0).then(|| (pos[i - 1] >> 32) as u32);
        let kn = (j > 0).then(|| neg[j - 1]);
        let k = kp.max(kn).unwrap_or(0);
        while i > 0 && (pos[i - 1] >> 32) as u32 == k {
            pro_sum += inv_size[(pos[i - 1] & 0xFFFF_FFFF) as usize];
            i -= 1;
        }
        while j > 0 && neg[j - 1] == k {
            fp += 1;
            j -= 1;
        }
        points.push((fp as f64 / nn, pro_sum / nr));
    }
    Ok(Some(points))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(m: &MetricValue) -> f64 {
        match m {
            MetricValue::Defined(x) => *x,
            MetricValue::Undefined(r) => panic!("undefined: {r}"),
        }
    }

    /// Brute-force PRO curve at every distinct threshold, MVTec-style.
    fn brute_aupro(maps: &[Vec<f32>], masks: &[Vec<u8>], h: usize, w: usize, lim: f64) -> f64 {
        let mut regions: Vec<Vec<usize>> = Vec::new(); // (image*h*w + pixel) lists
        let mut sc = Scratch::default();
        for (i, m) in masks.iter().enumerate() {
            let n = label_regions(m, h, w, &mut sc.labels, &mut sc.stack, &mut sc.sizes);
            for r in 1..=n {
                regions.push(
                    (0..h * w)
                        .filter(|&p| sc.labels[p] == r)
                        .map(|p| i * h * w + p)
                        .collect(),
                );
            }
        }
        let all: Vec<f32> = maps.iter().flatten().copied().collect();
        let lab: Vec<u8> = masks.iter().flatten().copied().collect();
        let mut th: Vec<f32> = all.clone();
        th.sort_by(|a, b| b.partial_cmp(a).unwrap());
        th.dedup();
        let n_neg = lab.iter().filter(|&&l| l == 0).count() as f64;
        let mut pts = vec![(0.0, 0.0)];
        for &t in &th {
            let fp = all
                .iter()
                .zip(&lab)
                .filter(|(&s, &l)| l == 0 && s >= t)
                .count() as f64;
            let pro: f64 = regions
                .iter()
                .map(|r| r.iter().filter(|&&p| all[p] >= t).count() as f64 / r.len() as f64)
                .sum::<f64>()
                / regions.len() as f64;
            pts.push((fp / n_neg, pro));
        }
        let mut area = 0.0;
        for wd in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (wd[0], wd[1]);
            if x1 <= lim {
                area += (x1 - x0) * (y0 + y1) / 2.0;
            } else {
                if x0 < lim {
                    let yl = y0 + (y1 - y0) * (lim - x0) / (x1 - x0);
                    area += (lim - x0) * (y0 + yl) / 2.0;
                }
                break;
            }
        }
        area / lim
    }

    #[test]
    fn exact_aupro_matches_brute_force_with_ties() {
        let (h, w) = (7, 9);
        let mut s = 12345u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut maps = Vec::new();
        let mut masks = Vec::new();
        for _ in 0..5 {
            // quantised scores => many ties between normal and anomalous pixels
            let mask: Vec<u8> = (0..h * w).map(|_| (rnd() % 5 == 0) as u8).collect();
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| ((rnd() % 12) as f32 + 4.0 * m as f32) / 16.0)
                .collect();
            maps.push(map);
            masks.push(mask);
        }
        let imgs: Vec<(usize, &[f32], &[u8])> = maps
            .iter()
            .zip(&masks)
            .enumerate()
            .map(|(i, (a, b))| (i, a.as_slice(), b.as_slice()))
            .collect();
        for lim in [0.3, 0.05, 1.0] {
            let opts = MetricOptions {
                aupro_fpr_limit: lim,
                ..MetricOptions::default()
            };
            let r = class_pixel_metrics_from_maps(&imgs, h, w, &opts).unwrap();
            let want = brute_aupro(&maps, &masks, h, w, lim);
            assert!(
                (val(&r.aupro) - want).abs() < 1e-12,
                "{lim}: {:?} vs {want}",
                r.aupro
            );
            // the exported PRO curve integrates to the same AUPRO
            let flat_maps: Vec<f32> = maps.iter().flatten().copied().collect();
            let flat_masks: Vec<u8> = masks.iter().flatten().copied().collect();
            let curve = pro_curve(&flat_maps, &flat_masks, maps.len(), h, w)
                .unwrap()
                .unwrap();
            let mut integ = Integrator::new(lim);
            for &(x, y) in &curve[1..] {
                integ.line_to(x, y);
            }
            assert!(
                (integ.area / lim - val(&r.aupro)).abs() < 1e-12,
                "{lim}: curve {} vs {:?}",
                integ.area / lim,
                r.aupro
            );
            let end = *curve.last().unwrap();
            assert!(end.0 == 1.0 && (end.1 - 1.0).abs() < 1e-12, "{end:?}");
            // the pixel AUROC / AP / F1 equal the image-level implementation
            let all: Vec<f32> = maps.iter().flatten().copied().collect();
            let lab: Vec<bool> = masks.iter().flatten().map(|&m| m == 1).collect();
            let b = crate::binary_metrics(&all, &lab).unwrap();
            assert!((val(&r.auroc) - val(&b.auroc)).abs() < 1e-12);
            assert!((val(&r.ap) - val(&b.ap)).abs() < 1e-12);
            assert!((val(&r.f1_max) - val(&b.f1_max)).abs() < 1e-12);
        }
    }
}
