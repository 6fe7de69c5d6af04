//! Bad input: every case gives an error naming the file and the problem
//! (no panic, no hang, no silent skip).

mod common;

use std::path::Path;

use common::*;
use omniad_data::{
    image_size, load_image, load_mask, load_rgb, load_rgb_with_limits, open_dataset, DataError,
    DatasetKind, DecodeLimits, OpenOptions,
};

fn open_err(kind: DatasetKind, root: &Path) -> DataError {
    match open_dataset(kind, root, None, &OpenOptions::default()) {
        Ok(ds) => panic!("expected an error, opened {} classes", ds.classes.len()),
        Err(e) => e,
    }
}

fn valid_png_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = write_rgb(&dir.path().join("v.png"), 64, 48, [10, 20, 30]);
    std::fs::read(p).unwrap()
}

#[test]
fn corrupt_image_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // PNG signature followed by garbage.
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    bytes.extend((0..200u32).map(|i| (i * 7 % 251) as u8));
    let p = write_bytes(&dir.path().join("bad.png"), &bytes);
    let err = load_image(&p, &imagenet((256, 256))).unwrap_err();
    assert!(
        matches!(err, DataError::Decode { ref path, .. } if path == &p),
        "{err}"
    );
    assert!(msg(&err).contains("bad.png"), "{err}");
}

#[test]
fn truncated_png_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_png_bytes();
    let p = write_bytes(&dir.path().join("cut.png"), &bytes[..bytes.len() / 2]);
    let err = load_rgb(&p).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert!(msg(&err).contains("cut.png"), "{err}");
}

#[test]
fn truncated_jpeg_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jpg");
    // A noisy image so that the entropy-coded data is long.
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8])
    });
    img.save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    let p = write_bytes(&dir.path().join("cut.jpg"), &bytes[..bytes.len() / 2]);
    let err = load_rgb(&p).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    assert!(msg(&err).contains("cut.jpg"), "{err}");
}

#[test]
fn zero_byte_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_bytes(&dir.path().join("empty.png"), b"");
    let err = load_image(&p, &imagenet((256, 256))).unwrap_err();
    assert!(
        matches!(err, DataError::EmptyFile { ref path } if path == &p),
        "{err}"
    );
    assert!(
        msg(&err).contains("empty.png") && msg(&err).contains("0 bytes"),
        "{err}"
    );
}

#[test]
fn unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    // A GIF (recognised by its magic bytes, not decoded by this crate).
    let p = write_bytes(
        &dir.path().join("anim.gif"),
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    );
    let err = load_rgb(&p).unwrap_err();
    assert!(matches!(err, DataError::UnsupportedFormat { .. }), "{err}");
    assert!(msg(&err).contains("anim.gif"), "{err}");
    // Unknown content and unknown extension.
    let p = write_bytes(&dir.path().join("notes.xyz"), b"just some text");
    let err = load_rgb(&p).unwrap_err();
    assert!(matches!(err, DataError::UnsupportedFormat { .. }), "{err}");
    assert!(msg(&err).contains("png, jpg"), "{err}");
}

#[test]
fn unsupported_file_inside_a_dataset_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    let stray = write_bytes(&c.join("train/good/readme.txt"), b"hello");
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::Layout { ref path, .. } if path == &stray),
        "{err}"
    );
}

#[test]
fn directory_where_a_file_should_be() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("looks_like.png");
    std::fs::create_dir_all(&d).unwrap();
    let err = load_image(&d, &imagenet((256, 256))).unwrap_err();
    assert!(
        matches!(err, DataError::IsDirectory { ref path, .. } if path == &d),
        "{err}"
    );

    let c = mvtec_class(dir.path().join("ds").as_path(), "bottle");
    let sub = c.join("train/good/nested");
    std::fs::create_dir_all(&sub).unwrap();
    let err = open_err(DatasetKind::Mvtec, &dir.path().join("ds"));
    assert!(
        matches!(err, DataError::IsDirectory { ref path, .. } if path == &sub),
        "{err}"
    );
}

#[test]
fn anomalous_image_without_mask() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    let img = write_rgb(&c.join("test/crack/007.png"), 32, 24, [1, 1, 1]);
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::MissingMask { ref image, .. } if image == &img),
        "{err}"
    );
    assert!(msg(&err).contains("007_mask"), "{err}");

    // Opt-in leniency: accepted, and the dataset reports image-level evaluation only.
    let opts = OpenOptions {
        allow_missing_masks: true,
        ..OpenOptions::default()
    };
    let ds = open_dataset(DatasetKind::Mvtec, dir.path(), None, &opts).unwrap();
    assert!(!ds.has_masks);
}

#[test]
fn mvtec_class_without_ground_truth_folder() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    std::fs::remove_dir_all(c.join("ground_truth")).unwrap();
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(matches!(err, DataError::MissingMask { .. }), "{err}");
}

#[test]
fn mask_size_differs_from_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = write_rgb(&dir.path().join("a.png"), 32, 24, [1, 1, 1]);
    let mask = write_mask(&dir.path().join("a_mask.png"), 30, 24, (0, 0, 3, 3), 255);
    let native = image_size(&img).unwrap();
    assert_eq!(native, (32, 24));
    let err = load_mask(std::slice::from_ref(&mask), Some(native), (16, 16)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::MaskSizeMismatch {
                mask_width: 30,
                image_width: 32,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        msg(&err).contains("a_mask.png")
            && msg(&err).contains("30x24")
            && msg(&err).contains("32x24"),
        "{err}"
    );

    // Two masks of one image must agree with each other too.
    let m2 = write_mask(&dir.path().join("b.png"), 32, 24, (0, 0, 3, 3), 255);
    let err = load_mask(&[m2, mask], None, (16, 16)).unwrap_err();
    assert!(matches!(err, DataError::MaskSizeMismatch { .. }), "{err}");
}

#[test]
fn mask_without_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    let orphan = write_mask(
        &c.join("ground_truth/crack/099_mask.png"),
        32,
        24,
        (0, 0, 3, 3),
        255,
    );
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::OrphanMask { ref mask, .. } if mask == &orphan),
        "{err}"
    );
    assert!(msg(&err).contains("099"), "{err}");

    // A ground-truth folder for a defect that has no test folder.
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    let orphan = write_mask(
        &c.join("ground_truth/hole/000_mask.png"),
        32,
        24,
        (0, 0, 3, 3),
        255,
    );
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::OrphanMask { ref mask, .. } if mask == &orphan),
        "{err}"
    );
}

#[test]
fn empty_class() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(dir.path(), "bottle");
    std::fs::create_dir_all(dir.path().join("cable")).unwrap();
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::EmptyClass { ref class, .. } if class == "cable"),
        "{err}"
    );

    // A class whose train folder holds only hidden files.
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    for e in std::fs::read_dir(c.join("train/good")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    write_bytes(&c.join("train/good/.DS_Store"), b"x");
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::EmptyClass { ref split, .. } if split == "train"),
        "{err}"
    );
}

#[test]
fn missing_split_folder() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    std::fs::remove_dir_all(c.join("test")).unwrap();
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(
        matches!(err, DataError::MissingSplit { ref path, .. } if path == &c.join("test")),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    std::fs::remove_dir_all(c.join("train")).unwrap();
    let err = open_err(DatasetKind::Mvtec, dir.path());
    assert!(matches!(err, DataError::MissingSplit { .. }), "{err}");
    assert!(msg(&err).contains("train/good"), "{err}");
}

#[test]
fn root_missing_or_unknown_layout() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = DatasetKind::detect(&missing).unwrap_err();
    assert!(
        matches!(err, DataError::NotFound { ref path, .. } if path == &missing),
        "{err}"
    );
    let err = open_err(DatasetKind::Mvtec, &missing);
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");

    std::fs::create_dir_all(dir.path().join("random/stuff")).unwrap();
    let err = DatasetKind::detect(&dir.path().join("random")).unwrap_err();
    assert!(
        matches!(err, DataError::UnknownLayout { ref hint, .. } if hint.is_empty()),
        "{err}"
    );
    // An anomalib-style flat folder (good/ + crack/ with images) gets a hint how to arrange it.
    for sub in ["good", "crack"] {
        let d = dir.path().join("flat").join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("000.png"), b"not decoded here").unwrap();
    }
    let flat = msg(DatasetKind::detect(&dir.path().join("flat")).unwrap_err());
    assert!(flat.contains("folders of images (crack, good)"), "{flat}");
    assert!(flat.contains("anomalib Folder dataset"), "{flat}");
    assert!(flat.contains("train/good"), "{flat}");
    let text = msg(&err);
    for layout in [
        "visa",
        "realiad",
        "loco",
        "btad",
        "mvtec",
        "mpdd",
        "folder",
        "meta.json",
    ] {
        assert!(text.contains(layout), "'{layout}' missing from: {text}");
    }

    let file = write_bytes(&dir.path().join("file_root"), b"x");
    assert!(matches!(
        DatasetKind::detect(&file),
        Err(DataError::Layout { .. })
    ));
}

#[test]
fn image_above_size_limit_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    // Valid header announcing 30000 x 30000 pixels (2.7 GB as RGB), almost no pixel data.
    let p = write_bytes(
        &dir.path().join("huge.png"),
        &png_huge_header(30_000, 30_000),
    );
    let err = load_image(&p, &imagenet((256, 256))).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                width: 30_000,
                height: 30_000,
                max_width: 20_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(msg(&err).contains("huge.png"), "{err}");
    // The header alone can still be read.
    assert_eq!(image_size(&p).unwrap(), (30_000, 30_000));

    // The limit is configurable.
    let small = write_rgb(&dir.path().join("small.png"), 64, 48, [1, 2, 3]);
    let limits = DecodeLimits {
        max_width: 32,
        max_height: 32,
    };
    let err = load_rgb_with_limits(&small, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                width: 64,
                height: 48,
                ..
            }
        ),
        "{err}"
    );
    assert!(load_rgb_with_limits(&small, &DecodeLimits::default()).is_ok());
    let zero = DecodeLimits {
        max_width: 0,
        max_height: 10,
    };
    assert!(matches!(
        load_rgb_with_limits(&small, &zero),
        Err(DataError::InvalidArgument(_))
    ));
}

#[test]
fn realiad_bad_json_is_a_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let j = write_bytes(
        &dir.path().join("realiad_jsons/realiad_jsons/toy.json"),
        b"{\"train\": [}",
    );
    let err = open_err(DatasetKind::RealIad, dir.path());
    assert!(
        matches!(err, DataError::Parse { ref path, .. } if path == &j),
        "{err}"
    );
}

#[test]
fn realiad_anomaly_without_mask_path() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("realiad_256/toy");
    write_jpeg(&img.join("OK/S1/a_C1.jpg"), 8, 8, [1, 1, 1]);
    write_jpeg(&img.join("OK/S2/b_C1.jpg"), 8, 8, [1, 1, 1]);
    write_jpeg(&img.join("NG/AK/S3/c_C1.jpg"), 8, 8, [1, 1, 1]);
    let json = serde_json::json!({
        "train": [{"anomaly_class": "OK", "image_path": "OK/S1/a_C1.jpg", "mask_path": null}],
        "test": [
            {"anomaly_class": "OK", "image_path": "OK/S2/b_C1.jpg", "mask_path": null},
            {"anomaly_class": "AK", "image_path": "NG/AK/S3/c_C1.jpg", "mask_path": null}
        ]
    });
    write_bytes(
        &dir.path().join("realiad_jsons/realiad_jsons/toy.json"),
        serde_json::to_string(&json).unwrap().as_bytes(),
    );
    let err = open_err(DatasetKind::RealIad, dir.path());
    assert!(
        matches!(err, DataError::MissingMask { ref image, .. } if image.ends_with("c_C1.jpg")),
        "{err}"
    );
}

#[test]
fn hidden_files_are_ignored_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let c = mvtec_class(dir.path(), "bottle");
    // Garbage that would fail to decode if it were read.
    write_bytes(&c.join("train/good/.DS_Store"), b"\0\0\0\x01Bud1");
    write_bytes(&c.join("train/good/._000.png"), b"AppleDouble");
    write_bytes(
        &c.join("test/crack/.ipynb_checkpoints/000-checkpoint.png"),
        b"x",
    );
    write_bytes(&c.join("ground_truth/.DS_Store"), b"x");
    write_bytes(&dir.path().join(".ipynb_checkpoints/x"), b"x");
    let ds = open_dataset(
        DatasetKind::Mvtec,
        dir.path(),
        None,
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.classes, vec!["bottle"]);
    assert_eq!(ds.train.len(), 3);
    assert_eq!(ds.test.len(), 4);
    for s in ds.train.iter().chain(&ds.test) {
        let name = s.image.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with('.'), "{name}");
        load_image(&s.image, &imagenet((8, 8))).unwrap();
    }
}
