//! Batch loader: order, shuffling, masks, prefetch, errors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use omniad_data::{
    shuffled_indices, DataError, Label, Loader, LoaderOptions, Preprocess, Sample, Split,
};

const H: u32 = 6;
const W: u32 = 4;

/// `n` test samples; sample `i` is a constant image of red value `i`, and odd
/// samples are anomalous with a mask covering the left half.
fn samples(dir: &Path, n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let image = write_rgb(&dir.join(format!("img{i}.png")), 8, 12, [i as u8, 0, 0]);
            let anomalous = i % 2 == 1;
            let masks: Vec<PathBuf> = if anomalous {
                vec![write_mask(
                    &dir.join(format!("img{i}_mask.png")),
                    8,
                    12,
                    (0, 0, 4, 12),
                    255,
                )]
            } else {
                Vec::new()
            };
            Sample {
                class: "c".to_string(),
                split: Split::Test,
                image,
                masks,
                label: if anomalous {
                    Label::Anomaly
                } else {
                    Label::Normal
                },
                defect: if anomalous {
                    "d".to_string()
                } else {
                    "good".to_string()
                },
                sample_id: None,
            }
        })
        .collect()
}

fn plain_pp() -> Preprocess {
    // mean 0, std 1: the tensor holds v / 255, so the red value identifies the sample.
    Preprocess {
        size: (H, W),
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

fn red_of(batch: &omniad_data::Batch, b: usize) -> usize {
    let plane = (H * W) as usize;
    let v = batch.images[b * 3 * plane];
    (v * 255.0).round() as usize
}

fn collect(loader: Loader) -> Vec<omniad_data::Batch> {
    loader.map(|b| b.expect("batch")).collect()
}

#[test]
fn batches_follow_the_given_order_with_any_prefetch() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(dir.path(), 10);
    let mut reference: Option<Vec<omniad_data::Batch>> = None;
    for prefetch in [0, 1, 3] {
        let mut opts = LoaderOptions::new(4, plain_pp());
        opts.prefetch = prefetch;
        let loader = Loader::new(&s, opts).unwrap();
        assert_eq!(loader.num_batches(), 3);
        assert_eq!(loader.len(), 3);
        let batches = collect(loader);
        let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let idx: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(idx, (0..10).collect::<Vec<_>>());
        for b in &batches {
            assert_eq!(b.images.len(), b.len() * 3 * (H * W) as usize);
            assert!(b.masks.is_none());
            assert_eq!(b.size, (H, W));
            assert!(b.native_sizes.iter().all(|&d| d == (8, 12)));
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(red_of(b, k), i, "image content must belong to sample {i}");
            }
        }
        match &reference {
            None => reference = Some(batches),
            Some(r) => assert_eq!(r, &batches, "prefetch {prefetch} changed the result"),
        }
    }
}

#[test]
fn shuffling_is_seeded_and_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(dir.path(), 9);
    let order = |seed: u64, epoch: u64| -> Vec<usize> {
        let mut opts = LoaderOptions::new(2, plain_pp());
        opts.shuffle_seed = Some(seed);
        opts.epoch = epoch;
        collect(Loader::new(&s, opts).unwrap())
            .iter()
            .flat_map(|b| b.indices.clone())
            .collect()
    };
    let a = order(5, 0);
    assert_eq!(a, shuffled_indices(9, 5, 0));
    assert_eq!(a, order(5, 0));
    assert_ne!(a, order(5, 1));
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..9).collect::<Vec<_>>());
}

#[test]
fn subsets_by_indices_and_drop_last() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(dir.path(), 8);
    let mut opts = LoaderOptions::new(2, plain_pp());
    opts.drop_last = true;
    let loader = Loader::with_indices(&s, &[7, 2, 5], opts).unwrap();
    assert_eq!(loader.num_batches(), 1);
    assert_eq!(loader.num_samples(), 2);
    let batches = collect(loader);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].indices, vec![7, 2]);
    assert_eq!(red_of(&batches[0], 0), 7);
    assert_eq!(red_of(&batches[0], 1), 2);

    let err = Loader::with_indices(&s, &[8], LoaderOptions::new(2, plain_pp()))
        .err()
        .unwrap();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
    let err = Loader::new(&s, LoaderOptions::new(0, plain_pp()))
        .err()
        .unwrap();
    assert!(matches!(err, DataError::InvalidArgument(_)), "{err}");
}

#[test]
fn masks_are_loaded_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(dir.path(), 4);
    let mut opts = LoaderOptions::new(4, plain_pp());
    opts.with_masks = true;
    let batches = collect(Loader::new(&s, opts).unwrap());
    let masks = batches[0].masks.as_ref().expect("masks requested");
    let plane = (H * W) as usize;
    assert_eq!(masks.len(), 4 * plane);
    for i in 0..4 {
        let m = &masks[i * plane..(i + 1) * plane];
        if i % 2 == 0 {
            assert!(
                m.iter().all(|&v| v == 0),
                "normal sample {i} has an empty mask"
            );
        } else {
            // Left half of every row is anomalous.
            for y in 0..H as usize {
                assert_eq!(
                    &m[y * W as usize..(y + 1) * W as usize],
                    &[1, 1, 0, 0],
                    "sample {i} row {y}"
                );
            }
        }
    }
    // Native anomalous pixels: the 4x12 left half of the 8x12 masks; 0 without a mask.
    assert_eq!(batches[0].mask_pixels, Some(vec![0, 48, 0, 48]));
    // An all-zero mask marks no pixel; without masks requested there are no counts.
    write_mask(&s[1].masks[0], 8, 12, (0, 0, 0, 0), 255);
    let mut opts = LoaderOptions::new(4, plain_pp());
    opts.with_masks = true;
    let batches = collect(Loader::new(&s, opts).unwrap());
    assert_eq!(batches[0].mask_pixels, Some(vec![0, 0, 0, 48]));
    let batches = collect(Loader::new(&s, LoaderOptions::new(4, plain_pp())).unwrap());
    assert_eq!(batches[0].mask_pixels, None);
}

#[test]
fn a_bad_file_fails_its_batch_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = samples(dir.path(), 6);
    let bad = write_bytes(&dir.path().join("bad.png"), b"not an image at all");
    s[3].image = bad.clone();
    // Mask of another sample with the wrong size.
    let wrong = write_mask(&dir.path().join("wrong_mask.png"), 5, 5, (0, 0, 1, 1), 255);
    s[5].masks = vec![wrong.clone()];
    for prefetch in [0, 2] {
        let mut opts = LoaderOptions::new(2, plain_pp());
        opts.prefetch = prefetch;
        opts.with_masks = true;
        let results: Vec<_> = Loader::new(&s, opts).unwrap().collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok());
        let e1 = results[1].as_ref().unwrap_err();
        assert!(e1.to_string().contains("bad.png"), "{e1}");
        let e2 = results[2].as_ref().unwrap_err();
        assert!(
            matches!(e2, DataError::MaskSizeMismatch { mask, .. } if mask == &wrong),
            "{e2}"
        );
    }
}

#[test]
fn dropping_a_loader_early_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = samples(dir.path(), 12);
    let mut opts = LoaderOptions::new(1, plain_pp());
    opts.prefetch = 2;
    let mut loader = Loader::new(&s, opts).unwrap();
    let first = loader.next().unwrap().unwrap();
    assert_eq!(first.indices, vec![0]);
    assert_eq!(loader.len(), 11);
    drop(loader); // must not hang
}

#[test]
fn empty_sample_list_yields_nothing() {
    let loader = Loader::new(&[], LoaderOptions::new(3, plain_pp())).unwrap();
    assert_eq!(loader.num_batches(), 0);
    assert_eq!(loader.count(), 0);
}
