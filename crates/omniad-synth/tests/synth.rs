//! Integration tests of the synthetic dataset generator.

use image::{GenericImageView, ImageReader};
use omniad_synth::{
    class_info, class_names, generate, read_manifest, render_sample, Family, Split, SynthConfig,
    SynthError, MANIFEST,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// All files under `root`, relative path -> bytes.
fn read_tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn small_cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        seed,
        train_per_class: 2,
        test_good_per_class: 1,
        test_defect_per_class: 5,
        ..SynthConfig::default()
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

#[test]
fn class_registry_meets_the_spec() {
    let names = class_names();
    assert!(names.len() >= 6, "{names:?}");
    let infos: Vec<_> = names.iter().map(|n| class_info(n).unwrap()).collect();
    let textures = infos.iter().filter(|c| c.family == Family::Texture).count();
    let objects = infos.iter().filter(|c| c.family == Family::Object).count();
    assert!(
        textures >= 2 && objects >= 3,
        "{textures} textures, {objects} objects"
    );
    for c in &infos {
        assert!(c.defects.len() >= 4, "{} has {:?}", c.name, c.defects);
        assert!(!c.defects.contains(&"good"));
    }
    assert!(class_info("carpet").is_none());
}

#[test]
fn same_seed_is_byte_identical_for_any_thread_count_and_seeds_differ() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    one.install(|| generate(a.path(), &small_cfg(11))).unwrap();
    three
        .install(|| generate(b.path(), &small_cfg(11)))
        .unwrap();
    generate(c.path(), &small_cfg(12)).unwrap();
    let (ta, tb, tc) = (
        read_tree(a.path()),
        read_tree(b.path()),
        read_tree(c.path()),
    );
    // 6 classes x (2 + 1 + 5 images + 5 masks) + synth.json
    assert_eq!(ta.len(), 6 * 13 + 1);
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(
            v == &tb[k],
            "{} differs between 1 and 3 threads",
            k.display()
        );
    }
    // Another seed: same layout, every image different.
    assert_eq!(ta.keys().collect::<Vec<_>>(), tc.keys().collect::<Vec<_>>());
    let pngs: Vec<_> = ta
        .keys()
        .filter(|k| k.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), 6 * 13);
    for k in pngs {
        if !k.to_string_lossy().ends_with("_mask.png") {
            assert!(
                ta[k] != tc[k],
                "{} identical for seeds 11 and 12",
                k.display()
            );
        }
    }
}

#[test]
fn default_config_layout_counts_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth");
    let cfg = SynthConfig::default();
    let t = Instant::now();
    let summary = generate(&out, &cfg).unwrap();
    eprintln!(
        "default config: {} images in {:.2} s",
        summary.total_images,
        t.elapsed().as_secs_f64()
    );

    assert_eq!(summary.total_images, 6 * 80);
    assert_eq!(summary.classes.len(), class_names().len());
    let manifest = read_manifest(&out).unwrap();
    assert!(manifest.complete);
    assert_eq!(manifest.config, cfg);
    assert_eq!(manifest.classes, summary.classes);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(json["generator"], "omniad-synth");
    assert_eq!(json["config"]["seed"], 0);

    for c in &summary.classes {
        let base = out.join(&c.name);
        assert_eq!(c.train_good, 40);
        assert_eq!(c.test_good, 15);
        assert_eq!(count_files(&base.join("train/good")), 40);
        assert_eq!(count_files(&base.join("test/good")), 15);
        assert_eq!(c.test_defects.values().sum::<usize>(), 25);
        assert_eq!(c.test_defects.len(), c.defects.len());
        assert!(c.test_defects.len() >= 4);
        for (d, &n) in &c.test_defects {
            assert_eq!(n, 25 / c.defects.len());
            assert_eq!(count_files(&base.join("test").join(d)), n, "{}/{d}", c.name);
            assert_eq!(count_files(&base.join("ground_truth").join(d)), n);
            for k in 0..n {
                let img = ImageReader::open(base.join(format!("test/{d}/{k:03}.png")))
                    .unwrap()
                    .decode()
                    .unwrap();
                let mask =
                    ImageReader::open(base.join(format!("ground_truth/{d}/{k:03}_mask.png")))
                        .unwrap()
                        .decode()
                        .unwrap();
                assert_eq!(img.dimensions(), (256, 256));
                assert_eq!(img.color(), image::ColorType::Rgb8);
                assert_eq!(mask.dimensions(), (256, 256));
                assert_eq!(mask.color(), image::ColorType::L8);
                let m = mask.to_luma8();
                assert!(m.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
                assert!(
                    m.pixels().any(|p| p.0[0] == 255),
                    "{}/{d}/{k:03} has an empty mask",
                    c.name
                );
            }
        }
        // The files on disk are exactly what render_sample produces.
        let s = render_sample(&cfg, &c.name, Split::TestDefect, 7).unwrap();
        let disk = ImageReader::open(out.join(&s.image_path))
            .unwrap()
            .decode()
            .unwrap()
            .to_rgb8();
        assert_eq!(disk, s.image);
        let disk_mask = ImageReader::open(out.join(s.mask_path.as_ref().unwrap()))
            .unwrap()
            .decode()
            .unwrap()
            .to_luma8();
        assert_eq!(&disk_mask, s.mask.as_ref().unwrap());
        let g = render_sample(&cfg, &c.name, Split::Train, 39).unwrap();
        let disk = ImageReader::open(out.join(&g.image_path))
            .unwrap()
            .decode()
            .unwrap()
            .to_rgb8();
        assert_eq!(disk, g.image);
    }
    // No temporary files are left behind.
    let tree = read_tree(&out);
    assert_eq!(tree.len(), 6 * (80 + 25) + 1);
    assert!(tree
        .keys()
        .all(|k| !k.to_string_lossy().contains(".synth-")));
}

#[test]
fn masks_cover_exactly_the_changed_pixels() {
    let cfg = SynthConfig {
        seed: 5,
        ..SynthConfig::default()
    };
    let npx = 256.0 * 256.0;
    for class in class_names() {
        let info = class_info(class).unwrap();
        let mut areas: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for index in 0..(3 * info.defects.len()) {
            let s = render_sample(&cfg, class, Split::TestDefect, index).unwrap();
            let defect = s.defect.unwrap();
            assert_eq!(defect, info.defects[index % info.defects.len()]);
            let mask = s.mask.as_ref().unwrap();
            let mut area = 0usize;
            let mut diff_sum = 0u64;
            for ((m, a), b) in mask.pixels().zip(s.image.pixels()).zip(s.clean.pixels()) {
                let changed = a != b;
                assert_eq!(
                    m.0[0] == 255,
                    changed,
                    "{class}/{defect} #{index}: mask and change disagree"
                );
                assert!(m.0[0] == 0 || m.0[0] == 255);
                if changed {
                    area += 1;
                    diff_sum += (0..3).map(|c| a.0[c].abs_diff(b.0[c])).max().unwrap_or(0) as u64;
                }
            }
            let frac = area as f64 / npx;
            assert!(
                frac >= 0.001,
                "{class}/{defect} #{index}: mask covers only {:.3}%",
                100.0 * frac
            );
            assert!(
                frac <= 0.08,
                "{class}/{defect} #{index}: mask covers {:.2}%",
                100.0 * frac
            );
            // The defect is clearly visible, not a faint change.
            let mean_diff = diff_sum as f64 / area as f64;
            assert!(
                mean_diff >= 20.0,
                "{class}/{defect} #{index}: mean change {mean_diff:.1} levels"
            );
            areas.entry(defect).or_default().push(100.0 * frac);
        }
        for (d, a) in &areas {
            let mean = a.iter().sum::<f64>() / a.len() as f64;
            eprintln!("{class}/{d}: mean mask area {mean:.2}% of the image");
        }
    }
}

#[test]
fn good_images_have_no_mask_and_vary_naturally() {
    let cfg = SynthConfig::default();
    for class in class_names() {
        let a = render_sample(&cfg, class, Split::Train, 0).unwrap();
        let b = render_sample(&cfg, class, Split::Train, 1).unwrap();
        let t = render_sample(&cfg, class, Split::TestGood, 0).unwrap();
        for s in [&a, &b, &t] {
            assert!(s.mask.is_none() && s.mask_path.is_none() && s.defect.is_none());
            assert_eq!(s.image, s.clean);
        }
        let mad = |x: &image::RgbImage, y: &image::RgbImage| {
            x.as_raw()
                .iter()
                .zip(y.as_raw())
                .map(|(p, q)| p.abs_diff(*q) as f64)
                .sum::<f64>()
                / x.as_raw().len() as f64
        };
        // Normal images differ clearly (position / phase / lighting), yet
        // belong to the same class: the mean colour stays close.
        let d_ab = mad(&a.image, &b.image);
        let d_at = mad(&a.image, &t.image);
        assert!(
            d_ab > 4.0 && d_at > 4.0,
            "{class}: normal images too similar ({d_ab:.1}, {d_at:.1})"
        );
        let mean = |x: &image::RgbImage| {
            x.as_raw().iter().map(|&v| v as f64).sum::<f64>() / x.as_raw().len() as f64
        };
        assert!(
            (mean(&a.image) - mean(&b.image)).abs() < 25.0,
            "{class}: class appearance drifts"
        );
        assert_eq!(
            a.image_path,
            PathBuf::from(class).join("train/good/000.png")
        );
        assert_eq!(t.image_path, PathBuf::from(class).join("test/good/000.png"));
    }
}

#[test]
fn refuses_a_foreign_non_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let err = generate(dir.path(), &small_cfg(1)).unwrap_err();
    assert!(matches!(err, SynthError::ForeignOutput { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // Nothing was written or removed.
    assert_eq!(count_files(dir.path()), 1);

    // A synth.json from another tool does not make the folder ours.
    std::fs::write(dir.path().join(MANIFEST), br#"{"generator":"other"}"#).unwrap();
    let err = generate(dir.path(), &small_cfg(1)).unwrap_err();
    assert!(matches!(err, SynthError::ForeignOutput { .. }), "{err:?}");
    assert_eq!(count_files(dir.path()), 2);

    // A plain file as output path.
    let file = dir.path().join("notes.txt");
    let err = generate(&file, &small_cfg(1)).unwrap_err();
    assert!(matches!(err, SynthError::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.txt"));
}

#[test]
fn regenerates_over_a_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    let first = SynthConfig {
        classes: Some(vec!["woven".into(), "screw".into()]),
        ..small_cfg(3)
    };
    generate(dir.path(), &first).unwrap();
    let before = read_tree(dir.path());
    // Same config again: identical result.
    generate(dir.path(), &first).unwrap();
    assert_eq!(read_tree(dir.path()), before);
    // Different classes: the old class folders are replaced.
    let second = SynthConfig {
        classes: Some(vec!["label".into()]),
        test_defect_per_class: 3,
        ..small_cfg(3)
    };
    let summary = generate(dir.path(), &second).unwrap();
    assert_eq!(summary.total_images, 2 + 1 + 3);
    assert!(!dir.path().join("woven").exists() && !dir.path().join("screw").exists());
    let tree = read_tree(dir.path());
    assert_eq!(tree.len(), 2 + 1 + 3 + 3 + 1);
    assert_eq!(read_manifest(dir.path()).unwrap().config, second);
    // 3 defective images over 5 kinds: the first three kinds get one each.
    let kinds = &class_info("label").unwrap().defects;
    assert_eq!(summary.classes[0].test_defects.len(), 3);
    for k in &kinds[..3] {
        assert_eq!(summary.classes[0].test_defects[*k], 1);
    }
}

#[test]
fn invalid_configs_are_rejected_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let err = generate(
        &out,
        &SynthConfig {
            size: 16,
            ..small_cfg(0)
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, SynthError::InvalidConfig { field: "size", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("16"));
    let err = generate(
        &out,
        &SynthConfig {
            classes: Some(vec!["woven".into(), "bottle".into()]),
            ..small_cfg(0)
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("'bottle'") && err.to_string().contains("woven"),
        "{err}"
    );
    let err = generate(
        &out,
        &SynthConfig {
            classes: Some(vec!["tiled".into(), "tiled".into()]),
            ..small_cfg(0)
        },
    )
    .unwrap_err();
    assert!(matches!(err, SynthError::DuplicateClass { .. }), "{err}");
    let err = generate(
        &out,
        &SynthConfig {
            classes: Some(vec![]),
            ..small_cfg(0)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SynthError::InvalidConfig {
                field: "classes",
                ..
            }
        ),
        "{err}"
    );
    let err = generate(
        &out,
        &SynthConfig {
            train_per_class: 1_000_000,
            ..small_cfg(0)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SynthError::InvalidConfig {
                field: "train_per_class",
                ..
            }
        ),
        "{err}"
    );
    // Nothing was created for rejected configs.
    assert!(!out.exists());
    let err = render_sample(&small_cfg(0), "nope", Split::Train, 0).unwrap_err();
    assert!(matches!(err, SynthError::UnknownClass { .. }));
}

#[test]
fn other_sizes_scale_the_scene() {
    let cfg = SynthConfig {
        size: 128,
        ..SynthConfig::default()
    };
    for class in class_names() {
        let s = render_sample(&cfg, class, Split::TestDefect, 2).unwrap();
        assert_eq!(s.image.dimensions(), (128, 128));
        let mask = s.mask.unwrap();
        assert_eq!(mask.dimensions(), (128, 128));
        assert!(
            mask.pixels().filter(|p| p.0[0] == 255).count() >= 16,
            "{class}"
        );
    }
}
