//! Generation speed: one image per class family, and the full default dataset.
//! Run with `cargo bench -p omniad-synth`.

use criterion::{criterion_group, criterion_main, Criterion};
use omniad_synth::{class_names, generate, render_sample, Split, SynthConfig};

fn bench(c: &mut Criterion) {
    let cfg = SynthConfig::default();
    let mut g = c.benchmark_group("synth");
    g.sample_size(10);
    for class in class_names() {
        g.bench_function(format!("render_defect_{class}_256"), |b| {
            b.iter(|| render_sample(&cfg, class, Split::TestDefect, 3).map(|s| s.image.len()))
        });
    }
    g.bench_function("generate_default_480_images", |b| {
        b.iter(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            generate(dir.path(), &cfg)
                .map(|s| s.total_images)
                .map_err(|e| e.to_string())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
