//! Throughput of model-input preprocessing and of the batch loader.
//!
//! `cargo bench -p omniad-data --bench preprocess`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::{Rgb, RgbImage};
use omniad_data::{
    load_image, preprocess_rgb, Label, Loader, LoaderOptions, Preprocess, Sample, Split,
};

fn test_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 3 + y) as u8, (x ^ y) as u8, (y * 5) as u8])
    })
}

fn bench_preprocess(c: &mut Criterion) {
    let pp = Preprocess::new((256, 256), ([0.5; 3], [0.25; 3]));
    let mut g = c.benchmark_group("preprocess_rgb");
    for (w, h) in [(1024u32, 1024u32), (700, 523)] {
        let img = test_image(w, h);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{w}x{h}_to_256x256"), |b| {
            b.iter(|| preprocess_rgb(&img, &pp))
        });
    }
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pp = Preprocess::new((256, 256), ([0.5; 3], [0.25; 3]));
    let mut g = c.benchmark_group("load_image");
    for ext in ["png", "jpg"] {
        let path = dir.path().join(format!("img.{ext}"));
        test_image(1024, 1024).save(&path).expect("write");
        g.bench_function(format!("1024x1024_{ext}"), |b| {
            b.iter(|| load_image(&path, &pp).expect("load"))
        });
    }
    g.finish();
}

fn bench_loader(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let samples: Vec<Sample> = (0..32)
        .map(|i| {
            let image = dir.path().join(format!("{i}.jpg"));
            test_image(512, 512).save(&image).expect("write");
            Sample {
                class: "c".into(),
                split: Split::Train,
                image,
                masks: Vec::new(),
                label: Label::Normal,
                defect: "good".into(),
                sample_id: None,
            }
        })
        .collect();
    let mut g = c.benchmark_group("loader");
    g.throughput(Throughput::Elements(samples.len() as u64));
    g.sample_size(10);
    g.bench_function("32x512x512_jpg_batch8", |b| {
        b.iter(|| {
            let loader = Loader::new(
                &samples,
                LoaderOptions::new(8, Preprocess::new((256, 256), ([0.5; 3], [0.25; 3]))),
            )
            .expect("loader");
            loader.map(|b| b.expect("batch").len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench_preprocess, bench_decode, bench_loader);
criterion_main!(benches);
