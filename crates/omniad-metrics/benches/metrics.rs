//! Criterion benchmark of the full metric set on a deterministic synthetic
//! MVTec-sized input: 1725 anomaly maps of 256x256 (113M pixels, ~3 %
//! anomalous in blob-shaped regions), one class (worst case) and 15 classes.
//!
//! `cargo bench -p omniad-metrics --bench metrics`; set `OMNIAD_BENCH_MAPS`
//! to use fewer maps (e.g. 172) for a quick run. Peak memory is reported by
//! `examples/bench_metrics.rs`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use omniad_metrics::{binary_metrics, evaluate_arrays, MetricOptions, SyntheticSet};

fn n_maps() -> usize {
    std::env::var("OMNIAD_BENCH_MAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1725)
}

fn bench_all_metrics(c: &mut Criterion) {
    let n = n_maps();
    let mut g = c.benchmark_group("all_metrics_256x256");
    g.sample_size(10);
    g.throughput(Throughput::Elements((n * 256 * 256) as u64));
    for classes in [1usize, 15] {
        let set = SyntheticSet::generate(n, 256, 256, classes, 0);
        let exact = MetricOptions::default();
        g.bench_with_input(
            BenchmarkId::new(format!("arrays_{classes}class"), n),
            &set,
            |b, set| b.iter(|| evaluate_arrays(&set.as_arrays(), &exact).map(|r| r.mean_mad)),
        );
        if classes == 1 {
            let ader = MetricOptions {
                ader: true,
                ..MetricOptions::default()
            };
            g.bench_with_input(BenchmarkId::new("arrays_1class_ader", n), &set, |b, set| {
                b.iter(|| evaluate_arrays(&set.as_arrays(), &ader).map(|r| r.mean_mad))
            });
            g.bench_with_input(BenchmarkId::new("streaming_1class", n), &set, |b, set| {
                b.iter(|| set.evaluate_streaming(&exact).map(|r| r.mean_mad))
            });
        }
    }
    g.finish();
}

fn bench_image_metrics(c: &mut Criterion) {
    let set = SyntheticSet::generate(1725, 32, 32, 1, 0);
    let labels: Vec<bool> = set.labels.iter().map(|&l| l == 1).collect();
    c.bench_function("image_metrics_1725", |b| {
        b.iter(|| binary_metrics(&set.image_scores, &labels).map(|m| m.auroc))
    });
}

criterion_group!(benches, bench_all_metrics, bench_image_metrics);
criterion_main!(benches);
