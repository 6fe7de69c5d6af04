//! Pixel metrics on a larger set (several counting blocks per worker, scores
//! of both signs) against independent straightforward implementations:
//! scikit-learn-style curves over one full sort of all pixels, and the MVTec
//! AD evaluation's PRO curve (per-pixel cumulative sums over the sorted
//! pixels, last index of each distinct score kept).

use omniad_metrics::{binary_metrics, evaluate_arrays, Metric, MetricOptions, SyntheticSet};

/// 8-connected region labels of one mask (0 = background), by flood fill.
fn regions(mask: &[u8], h: usize, w: usize) -> (Vec<usize>, usize) {
    let mut lab = vec![0usize; h * w];
    let mut n = 0;
    for s in 0..h * w {
        if mask[s] == 0 || lab[s] != 0 {
            continue;
        }
        n += 1;
        lab[s] = n;
        let mut stack = vec![s];
        while let Some(p) = stack.pop() {
            let (y, x) = ((p / w) as i64, (p % w) as i64);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (yy, xx) = (y + dy, x + dx);
                    if yy < 0 || xx < 0 || yy >= h as i64 || xx >= w as i64 {
                        continue;
                    }
                    let q = yy as usize * w + xx as usize;
                    if mask[q] != 0 && lab[q] == 0 {
                        lab[q] = n;
                        stack.push(q);
                    }
                }
            }
        }
    }
    (lab, n)
}

fn mvtec_aupro(maps: &[f32], masks: &[u8], n: usize, h: usize, w: usize, limit: f64) -> f64 {
    let hw = h * w;
    let mut fp_change = vec![0f64; n * hw];
    let mut pro_change = vec![0f64; n * hw];
    let (mut n_ok, mut n_regions) = (0usize, 0usize);
    for i in 0..n {
        let (lab, k) = regions(&masks[i * hw..(i + 1) * hw], h, w);
        let mut sizes = vec![0usize; k + 1];
        for &l in &lab {
            sizes[l] += 1;
        }
        for p in 0..hw {
            if lab[p] == 0 {
                fp_change[i * hw + p] = 1.0;
                n_ok += 1;
            } else {
                pro_change[i * hw + p] = 1.0 / sizes[lab[p]] as f64;
            }
        }
        n_regions += k;
    }
    let mut order: Vec<usize> = (0..n * hw).collect();
    order.sort_by(|&a, &b| maps[b].partial_cmp(&maps[a]).unwrap());
    let (mut fprs, mut pros) = (vec![0.0], vec![0.0]);
    let (mut fp, mut pro) = (0.0, 0.0);
    for (j, &p) in order.iter().enumerate() {
        fp += fp_change[p];
        pro += pro_change[p];
        let last = j + 1 == order.len() || maps[order[j + 1]] != maps[p];
        if last {
            fprs.push(fp / n_ok as f64);
            pros.push(pro / n_regions as f64);
        }
    }
    let mut area = 0.0;
    for i in 1..fprs.len() {
        let (x0, y0, x1, y1) = (fprs[i - 1], pros[i - 1], fprs[i], pros[i]);
        if x1 <= limit {
            area += (x1 - x0) * (y0 + y1) / 2.0;
        } else {
            if x0 < limit {
                let yl = y0 + (y1 - y0) * (limit - x0) / (x1 - x0);
                area += (limit - x0) * (y0 + yl) / 2.0;
            }
            break;
        }
    }
    area / limit
}

#[test]
fn pixel_metrics_match_independent_implementations() {
    let (n, h, w) = (600, 64, 64);
    let mut set = SyntheticSet::generate(n, h, w, 1, 42);
    // scores of both signs, and coarse ties between normal and anomalous pixels
    for (i, v) in set.anomaly_maps.iter_mut().enumerate() {
        *v -= 0.5;
        if i % 7 == 0 {
            *v = (*v * 64.0).round() / 64.0;
        }
    }
    let opts = MetricOptions::default();
    let r = evaluate_arrays(&set.as_arrays(), &opts).unwrap();
    let c = &r.classes[0];
    let labels: Vec<bool> = set.masks.iter().map(|&m| m == 1).collect();
    let b = binary_metrics(&set.anomaly_maps, &labels).unwrap();
    let get = |m: Metric| c.metrics[&m].value().unwrap();
    assert!((get(Metric::PixelAuroc) - b.auroc.value().unwrap()).abs() < 1e-9);
    assert!((get(Metric::PixelAp) - b.ap.value().unwrap()).abs() < 1e-9);
    assert!((get(Metric::PixelF1Max) - b.f1_max.value().unwrap()).abs() < 1e-9);
    let want = mvtec_aupro(&set.anomaly_maps, &set.masks, n, h, w, 0.3);
    assert!(
        (get(Metric::PixelAupro) - want).abs() < 1e-9,
        "{} vs {want}",
        get(Metric::PixelAupro)
    );
    assert!(get(Metric::PixelAuroc) > 0.8 && get(Metric::PixelAupro) > 0.5);
    // the streaming path stores keys instead of maps: same numbers
    let s = set.evaluate_streaming(&opts).unwrap();
    assert_eq!(s.classes[0].metrics, c.metrics);
}

/// ADer `util/metric.py` done the slow way: one pass over all pixels per
/// threshold.
fn ader_brute(maps: &[f32], masks: &[u8], n: usize, h: usize, w: usize) -> (f64, f64) {
    let hw = h * w;
    let min = maps.iter().copied().fold(f32::INFINITY, f32::min);
    let max = maps.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // cal_pro_score with max_step = 100 (np.arange on float32 scalars)
    let delta = (max - min) / 100.0;
    let len = ((max - min) / delta).ceil() as usize;
    let d = (min + delta) - min;
    let mut regions_all: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        let (lab, k) = regions(&masks[i * hw..(i + 1) * hw], h, w);
        for r in 1..=k {
            regions_all.push(
                (0..hw)
                    .filter(|&p| lab[p] == r)
                    .map(|p| i * hw + p)
                    .collect(),
            );
        }
    }
    let n_ok = masks.iter().filter(|&&m| m == 0).count() as f64;
    let mut pts = Vec::new();
    for i in 0..len {
        let th = match i {
            0 => min,
            1 => min + delta,
            _ => min + i as f32 * d,
        };
        let fp = maps
            .iter()
            .zip(masks)
            .filter(|(&s, &m)| m == 0 && s > th)
            .count() as f64;
        let pro = regions_all
            .iter()
            .map(|r| r.iter().filter(|&&p| maps[p] > th).count() as f64 / r.len() as f64)
            .sum::<f64>()
            / regions_all.len() as f64;
        pts.push((fp / n_ok, pro));
    }
    let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| p.0 < 0.3).collect();
    let fmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let fmax = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let mut aupro = 0.0;
    for wd in pts.windows(2) {
        let x0 = (wd[0].0 - fmin) / (fmax - fmin);
        let x1 = (wd[1].0 - fmin) / (fmax - fmin);
        aupro += (x0 - x1) * (wd[0].1 + wd[1].1) / 2.0;
    }
    // mF1_max_px: 21 thresholds on min-max normalised maps, '>'
    let eps = 1e-8;
    let n_gt = masks.iter().filter(|&&m| m == 1).count() as f64;
    let mut f1_max = 0.0f64;
    for k in 0..21 {
        let t = k as f64 * 0.05;
        let (mut inter, mut pred) = (0.0, 0.0);
        for (&s, &m) in maps.iter().zip(masks) {
            if (((s - min) / (max - min)) as f64) > t {
                pred += 1.0;
                if m == 1 {
                    inter += 1.0;
                }
            }
        }
        let p = inter / (pred + eps);
        let r = inter / (n_gt + eps);
        f1_max = f1_max.max(2.0 * p * r / (p + r + eps));
    }
    (aupro, f1_max)
}

#[test]
fn ader_variants_match_a_per_threshold_implementation() {
    let (n, h, w) = (60, 48, 40);
    let set = SyntheticSet::generate(n, h, w, 1, 5);
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    let r = evaluate_arrays(&set.as_arrays(), &opts).unwrap();
    let c = &r.classes[0];
    let (aupro, f1) = ader_brute(&set.anomaly_maps, &set.masks, n, h, w);
    let got_aupro = c.metrics[&Metric::PixelAuproAder].value().unwrap();
    let got_f1 = c.metrics[&Metric::PixelF1MaxAder].value().unwrap();
    assert!((got_aupro - aupro).abs() < 1e-9, "{got_aupro} vs {aupro}");
    assert!((got_f1 - f1).abs() < 1e-12, "{got_f1} vs {f1}");
    // ADer's mAD swaps in its two variants
    let mad_ader = Metric::MAD_ADER
        .iter()
        .map(|m| c.metrics[m].value().unwrap())
        .sum::<f64>()
        / 7.0;
    assert!((c.mad_ader.as_ref().unwrap().value().unwrap() - mad_ader).abs() < 1e-12);
}
