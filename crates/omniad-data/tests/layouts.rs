//! Native dataset layouts read from small fake datasets.

mod common;

use std::path::Path;

use common::*;
use omniad_data::{
    image_size, load_mask, open_dataset, DataError, DatasetKind, Label, LayoutSource, OpenOptions,
    Split,
};

fn open(kind: DatasetKind, root: &Path) -> omniad_data::Dataset {
    open_dataset(kind, root, None, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("open {kind}: {e}"))
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn kind_names_round_trip() {
    for k in DatasetKind::ALL {
        assert_eq!(k.to_string().parse::<DatasetKind>().unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{k}\""));
        assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), k);
    }
    assert_eq!(
        "Real-IAD".parse::<DatasetKind>().unwrap(),
        DatasetKind::RealIad
    );
    let err = "mvtech".parse::<DatasetKind>().unwrap_err();
    assert!(matches!(err, DataError::UnknownKind(_)));
    assert!(msg(err).contains("mvtec, visa, realiad, loco, btad, mpdd, folder"));
}

#[test]
fn mvtec_classes_splits_and_stem_pairing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mvtec_class(root, "zipper");
    let bottle = mvtec_class(root, "bottle");
    // Masks whose sorted order differs from the images' sorted order: pairing must use stems.
    write_rgb(&bottle.join("test/hole/a.png"), 32, 24, [1, 1, 1]);
    write_rgb(&bottle.join("test/hole/b10.png"), 32, 24, [1, 1, 1]);
    write_rgb(&bottle.join("test/hole/b9.png"), 32, 24, [1, 1, 1]);
    write_mask(
        &bottle.join("ground_truth/hole/a_mask.png"),
        32,
        24,
        (0, 0, 4, 4),
        255,
    );
    write_mask(
        &bottle.join("ground_truth/hole/b10_mask.png"),
        32,
        24,
        (0, 0, 4, 4),
        255,
    );
    // BTAD-style same-stem mask names are accepted too.
    write_mask(
        &bottle.join("ground_truth/hole/b9.png"),
        32,
        24,
        (0, 0, 4, 4),
        255,
    );
    // Hidden files and folders are not data.
    write_bytes(&bottle.join("train/good/.DS_Store"), b"junk");
    write_bytes(&bottle.join("test/.ipynb_checkpoints/x.png"), b"junk");
    write_bytes(&root.join(".ipynb_checkpoints/junk.txt"), b"junk");
    write_bytes(&bottle.join("ground_truth/hole/.DS_Store"), b"junk");
    write_bytes(&root.join("license.txt"), b"root files are not classes");

    assert_eq!(DatasetKind::detect(root).unwrap(), DatasetKind::Mvtec);
    let ds = open(DatasetKind::Mvtec, root);
    assert_eq!(ds.classes, vec!["bottle", "zipper"]);
    assert_eq!(ds.source, LayoutSource::Native);
    assert!(ds.has_masks);
    assert_eq!(ds.train.len(), 6);
    assert_eq!(ds.test.len(), 4 + 3 + 4);
    assert!(ds
        .train
        .iter()
        .all(|s| s.label == Label::Normal && s.split == Split::Train && s.defect == "good"));
    // Class-major, then path order.
    let test_names: Vec<String> = ds
        .test
        .iter()
        .filter(|s| s.class == "bottle")
        .map(|s| format!("{}/{}", s.defect, file_name(&s.image)))
        .collect();
    assert_eq!(
        test_names,
        vec![
            "crack/000.png",
            "crack/001.png",
            "good/000.png",
            "good/001.png",
            "hole/a.png",
            "hole/b10.png",
            "hole/b9.png"
        ]
    );
    for s in &ds.test {
        match s.label {
            Label::Normal => {
                assert_eq!(s.defect, "good");
                assert!(s.masks.is_empty());
            }
            Label::Anomaly => {
                assert_eq!(s.masks.len(), 1, "{}", s.image.display());
                let m = file_name(&s.masks[0]);
                let stem = s.image.file_stem().unwrap().to_string_lossy().into_owned();
                assert!(
                    m == format!("{stem}_mask.png") || m == format!("{stem}.png"),
                    "{m} paired with {stem}"
                );
                assert_eq!(
                    s.masks[0]
                        .parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy(),
                    s.defect
                );
            }
        }
    }
    assert_eq!(
        ds.class_indices(Split::Test, "zipper"),
        (7..11).collect::<Vec<_>>()
    );
}

#[test]
fn classes_filter_keeps_given_order_and_rejects_unknown() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(dir.path(), "a");
    mvtec_class(dir.path(), "b");
    mvtec_class(dir.path(), "c");
    let sel = vec!["c".to_string(), "a".to_string()];
    let ds = open_dataset(
        DatasetKind::Mvtec,
        dir.path(),
        Some(&sel),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.classes, sel);
    assert!(ds.train[..3].iter().all(|s| s.class == "c"));
    assert!(ds.train[3..].iter().all(|s| s.class == "a"));

    let bad = vec!["a".to_string(), "carpet".to_string()];
    let err = open_dataset(
        DatasetKind::Mvtec,
        dir.path(),
        Some(&bad),
        &OpenOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, DataError::UnknownClass { ref class, .. } if class == "carpet"),
        "{err}"
    );
    assert!(msg(&err).contains("a, b, c"), "{err}");

    let dup = vec!["a".to_string(), "a".to_string()];
    assert!(matches!(
        open_dataset(
            DatasetKind::Mvtec,
            dir.path(),
            Some(&dup),
            &OpenOptions::default()
        ),
        Err(DataError::InvalidArgument(_))
    ));
}

#[test]
fn mpdd_is_detected_by_class_names() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_class(dir.path(), "tubes");
    mvtec_class(dir.path(), "metal_plate");
    assert_eq!(DatasetKind::detect(dir.path()).unwrap(), DatasetKind::Mpdd);
    let ds = open(DatasetKind::Mpdd, dir.path());
    assert_eq!(ds.classes, vec!["metal_plate", "tubes"]);
    assert_eq!(
        ds.test.iter().filter(|s| s.label == Label::Anomaly).count(),
        4
    );
}

#[test]
fn btad_ok_ko_and_mixed_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("01");
    write_rgb(&c.join("train/ok/0000.bmp"), 20, 10, [5, 5, 5]);
    write_rgb(&c.join("train/ok/0001.png"), 20, 10, [5, 5, 5]);
    write_rgb(&c.join("test/ok/0000.bmp"), 20, 10, [5, 5, 5]);
    write_rgb(&c.join("test/ko/0003.bmp"), 20, 10, [5, 5, 5]);
    write_rgb(&c.join("test/ko/0004.png"), 20, 10, [5, 5, 5]);
    write_mask(
        &c.join("ground_truth/ko/0003.png"),
        20,
        10,
        (0, 0, 5, 5),
        255,
    );
    write_mask(
        &c.join("ground_truth/ko/0004.png"),
        20,
        10,
        (5, 5, 10, 10),
        255,
    );
    assert_eq!(DatasetKind::detect(dir.path()).unwrap(), DatasetKind::Btad);
    let ds = open(DatasetKind::Btad, dir.path());
    assert_eq!(ds.train.len(), 2);
    let labels: Vec<(Label, &str)> = ds
        .test
        .iter()
        .map(|s| (s.label, s.defect.as_str()))
        .collect();
    assert_eq!(
        labels,
        vec![
            (Label::Anomaly, "ko"),
            (Label::Anomaly, "ko"),
            (Label::Normal, "good")
        ]
    );
    assert_eq!(file_name(&ds.test[0].masks[0]), "0003.png");
    assert_eq!(file_name(&ds.test[1].masks[0]), "0004.png");
    assert!(ds.has_masks);
}

#[test]
fn loco_uses_validation_and_unites_masks() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("juice_bottle");
    write_rgb(&c.join("train/good/000.png"), 16, 16, [1, 2, 3]);
    write_rgb(&c.join("validation/good/000.png"), 16, 16, [1, 2, 3]);
    write_rgb(&c.join("test/good/000.png"), 16, 16, [1, 2, 3]);
    write_rgb(&c.join("test/logical_anomalies/000.png"), 16, 16, [1, 2, 3]);
    write_rgb(
        &c.join("test/structural_anomalies/000.png"),
        16,
        16,
        [1, 2, 3],
    );
    // Two masks for one image, LOCO-style values (not 255).
    write_mask(
        &c.join("ground_truth/logical_anomalies/000/000.png"),
        16,
        16,
        (0, 0, 8, 16),
        7,
    );
    write_mask(
        &c.join("ground_truth/logical_anomalies/000/001.png"),
        16,
        16,
        (8, 0, 16, 4),
        200,
    );
    write_mask(
        &c.join("ground_truth/structural_anomalies/000/000.png"),
        16,
        16,
        (4, 4, 12, 12),
        255,
    );
    assert_eq!(DatasetKind::detect(dir.path()).unwrap(), DatasetKind::Loco);
    let ds = open(DatasetKind::Loco, dir.path());
    assert_eq!(ds.train.len(), 1, "train/good");
    assert_eq!(
        ds.validation.len(),
        1,
        "validation/good is held out for validation"
    );
    assert!(ds.validation[0]
        .image
        .ends_with("juice_bottle/validation/good/000.png"));
    assert_eq!(ds.validation[0].class, "juice_bottle");
    assert_eq!(ds.test.len(), 3);
    let logical = ds
        .test
        .iter()
        .find(|s| s.defect == "logical_anomalies")
        .unwrap();
    assert_eq!(logical.masks.len(), 2);
    // Union at native size, no resize.
    let m = load_mask(&logical.masks, Some((16, 16)), (16, 16)).unwrap();
    for y in 0..16 {
        for x in 0..16 {
            let expect = u8::from(x < 8 || y < 4);
            assert_eq!(m[y * 16 + x], expect, "({x}, {y})");
        }
    }
}

#[test]
fn visa_csv_with_jpg_and_stray_mask_values() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let base = root.join("candle/Data");
    write_jpeg(
        &base.join("Images/Normal/0000.JPG"),
        24,
        16,
        [100, 100, 100],
    );
    write_jpeg(
        &base.join("Images/Normal/0001.JPG"),
        24,
        16,
        [100, 100, 100],
    );
    write_jpeg(
        &base.join("Images/Normal/0002.JPG"),
        24,
        16,
        [100, 100, 100],
    );
    write_jpeg(
        &base.join("Images/Anomaly/000.JPG"),
        24,
        16,
        [100, 100, 100],
    );
    // 0/1 mask with a stray value 2: anomalous = value != 0.
    let mpath = base.join("Masks/Anomaly/000.png");
    mkdirs(&mpath);
    image::GrayImage::from_fn(24, 16, |x, _| {
        image::Luma([if x < 6 {
            1
        } else if x < 12 {
            2
        } else {
            0
        }])
    })
    .save(&mpath)
    .unwrap();
    write_bytes(
        &root.join("split_csv/1cls.csv"),
        b"object,split,label,image,mask\n\
          candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n\
          candle,train,normal,candle/Data/Images/Normal/0001.JPG,\n\
          candle,test,normal,candle/Data/Images/Normal/0002.JPG,\n\
          candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n",
    );
    assert_eq!(DatasetKind::detect(root).unwrap(), DatasetKind::Visa);
    let ds = open(DatasetKind::Visa, root);
    assert_eq!(ds.classes, vec!["candle"]);
    assert_eq!(ds.train.len(), 2);
    assert_eq!(ds.test.len(), 2);
    let anomalous = ds.test.iter().find(|s| s.label == Label::Anomaly).unwrap();
    assert_eq!(anomalous.masks, vec![mpath.clone()]);
    let native = image_size(&anomalous.image).unwrap();
    assert_eq!(native, (24, 16));
    let m = load_mask(&anomalous.masks, Some(native), (16, 24)).unwrap();
    let row: Vec<u8> = m[..24].to_vec();
    assert_eq!(row, [vec![1u8; 12], vec![0u8; 12]].concat());
}

#[test]
fn visa_csv_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_bytes(
        &root.join("split_csv/1cls.csv"),
        b"object,split,image,mask\ncandle,train,a.JPG,\n",
    );
    let err = open_dataset(DatasetKind::Visa, root, None, &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Parse { .. }), "{err}");
    assert!(msg(&err).contains("missing column 'label'"), "{err}");

    write_bytes(
        &root.join("split_csv/1cls.csv"),
        b"object,split,label,image,mask\ncandle,val,normal,a.JPG,\n",
    );
    let err = open_dataset(DatasetKind::Visa, root, None, &OpenOptions::default()).unwrap_err();
    assert!(
        msg(&err).contains("line 2") && msg(&err).contains("'val'"),
        "{err}"
    );

    write_bytes(
        &root.join("split_csv/1cls.csv"),
        b"object,split,label,image,mask\ncandle,train,normal,missing.JPG,\n",
    );
    let err = open_dataset(DatasetKind::Visa, root, None, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(err, DataError::NotFound { ref path, .. } if path.ends_with("missing.JPG")),
        "{err}"
    );
}

fn realiad_fixture(root: &Path) {
    let cls = "audiojack";
    let img = root.join("realiad_256").join(cls);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for view in 1..=5 {
        let p = format!("OK/S0001/{cls}_0001_OK_C{view}_20231021.jpg");
        write_jpeg(&img.join(&p), 16, 16, [50, 50, 50]);
        train.push(serde_json::json!({"category": cls, "anomaly_class": "OK", "image_path": p, "mask_path": null}));
        let p = format!("OK/S0002/{cls}_0002_OK_C{view}_20231021.jpg");
        write_jpeg(&img.join(&p), 16, 16, [50, 50, 50]);
        test.push(serde_json::json!({"category": cls, "anomaly_class": "OK", "image_path": p, "mask_path": null}));
        let p = format!("NG/AK/S0003/{cls}_0003_NG_AK_C{view}_20231021.jpg");
        write_jpeg(&img.join(&p), 16, 16, [50, 50, 50]);
        // Views where the defect is not visible are labelled OK in Real-IAD.
        if view <= 2 {
            let m = format!("NG/AK/S0003/{cls}_0003_NG_AK_C{view}_20231021.png");
            write_mask(&img.join(&m), 16, 16, (0, 0, 4, 4), 255);
            test.push(serde_json::json!({"category": cls, "anomaly_class": "AK", "image_path": p, "mask_path": m}));
        } else {
            test.push(serde_json::json!({"category": cls, "anomaly_class": "OK", "image_path": p, "mask_path": null}));
        }
    }
    let json = serde_json::json!({
        "meta": {"prefix": "", "normal_class": "OK"},
        "train": train,
        "test": test,
    });
    write_bytes(
        &root
            .join("realiad_jsons/realiad_jsons")
            .join(format!("{cls}.json")),
        serde_json::to_string_pretty(&json).unwrap().as_bytes(),
    );
}

#[test]
fn realiad_keeps_all_views_and_sample_ids() {
    let dir = tempfile::tempdir().unwrap();
    realiad_fixture(dir.path());
    assert_eq!(
        DatasetKind::detect(dir.path()).unwrap(),
        DatasetKind::RealIad
    );
    let ds = open(DatasetKind::RealIad, dir.path());
    assert_eq!(ds.classes, vec!["audiojack"]);
    assert_eq!(ds.train.len(), 5);
    assert_eq!(ds.test.len(), 10);
    assert!(ds.has_masks);
    let ids: std::collections::BTreeSet<_> = ds
        .test
        .iter()
        .map(|s| s.sample_id.clone().unwrap())
        .collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![
            "audiojack/NG/AK/S0003".to_string(),
            "audiojack/OK/S0002".to_string()
        ]
    );
    let ak: Vec<_> = ds
        .test
        .iter()
        .filter(|s| s.label == Label::Anomaly)
        .collect();
    assert_eq!(ak.len(), 2);
    assert!(ak.iter().all(|s| s.defect == "AK" && s.masks.len() == 1));
    assert_eq!(ds.train[0].sample_id.as_deref(), Some("audiojack/OK/S0001"));

    // The JSON folder and image folder can be given explicitly.
    let opts = OpenOptions {
        realiad_json_dir: Some(dir.path().join("realiad_jsons/realiad_jsons")),
        realiad_image_dir: Some(dir.path().join("realiad_256")),
        ..OpenOptions::default()
    };
    let ds2 = open_dataset(DatasetKind::RealIad, dir.path(), None, &opts).unwrap();
    assert_eq!(ds2.test, ds.test);

    // Pointing at the image folder itself finds the JSON folder beside it.
    let res_root = dir.path().join("realiad_256");
    assert_eq!(
        DatasetKind::detect(&res_root).unwrap(),
        DatasetKind::RealIad
    );
    let ds3 = open(DatasetKind::RealIad, &res_root);
    assert_eq!(ds3.test, ds.test);
    assert_eq!(ds3.train, ds.train);
}

#[test]
fn realiad_several_resolutions_must_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    realiad_fixture(dir.path());
    std::fs::create_dir_all(dir.path().join("realiad_1024/audiojack")).unwrap();
    let err = open_dataset(
        DatasetKind::RealIad,
        dir.path(),
        None,
        &OpenOptions::default(),
    )
    .unwrap_err();
    assert!(msg(&err).contains("realiad_image_dir"), "{err}");
}

#[test]
fn folder_without_masks_is_image_level_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("my_parts");
    write_rgb(&root.join("train/good/a.png"), 8, 8, [1, 1, 1]);
    write_rgb(&root.join("test/good/b.png"), 8, 8, [1, 1, 1]);
    write_rgb(&root.join("test/scratch/c.png"), 8, 8, [1, 1, 1]);
    assert_eq!(DatasetKind::detect(&root).unwrap(), DatasetKind::Folder);
    let ds = open(DatasetKind::Folder, &root);
    assert_eq!(ds.classes, vec!["my_parts"]);
    assert!(!ds.has_masks);
    assert_eq!(
        ds.test.iter().filter(|s| s.label == Label::Anomaly).count(),
        1
    );

    // With a mask folder given, masks are paired and required.
    let masks = dir.path().join("masks");
    write_mask(&masks.join("scratch/c_mask.png"), 8, 8, (0, 0, 2, 2), 255);
    let opts = OpenOptions {
        mask_dir: Some(masks),
        ..OpenOptions::default()
    };
    let ds = open_dataset(DatasetKind::Folder, &root, None, &opts).unwrap();
    assert!(ds.has_masks);
    assert_eq!(
        ds.test
            .iter()
            .find(|s| s.defect == "scratch")
            .unwrap()
            .masks
            .len(),
        1
    );
}

#[test]
fn folder_multi_class_with_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["x", "y"] {
        let r = dir.path().join(c);
        write_rgb(&r.join("train/good/a.png"), 8, 8, [1, 1, 1]);
        write_rgb(&r.join("test/good/b.png"), 8, 8, [1, 1, 1]);
    }
    // Only "y" has anomalies and masks.
    write_rgb(&dir.path().join("y/test/dent/c.png"), 8, 8, [1, 1, 1]);
    write_mask(
        &dir.path().join("y/ground_truth/dent/c_mask.png"),
        8,
        8,
        (0, 0, 2, 2),
        255,
    );
    let ds = open(DatasetKind::Folder, dir.path());
    assert_eq!(ds.classes, vec!["x", "y"]);
    // Class x has no anomalous image, so every anomalous test image has a mask.
    assert!(ds.has_masks);
    assert_eq!(
        ds.test
            .iter()
            .find(|s| s.defect == "dent")
            .unwrap()
            .masks
            .len(),
        1
    );
}

#[test]
fn test_split_with_only_normal_or_only_anomalous_images_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("only_good");
    write_rgb(&a.join("train/good/0.png"), 8, 8, [1, 1, 1]);
    write_rgb(&a.join("test/good/0.png"), 8, 8, [1, 1, 1]);
    std::fs::create_dir_all(a.join("ground_truth")).unwrap();
    let b = dir.path().join("only_bad");
    write_rgb(&b.join("train/good/0.png"), 8, 8, [1, 1, 1]);
    write_rgb(&b.join("test/dent/0.png"), 8, 8, [1, 1, 1]);
    write_mask(
        &b.join("ground_truth/dent/0_mask.png"),
        8,
        8,
        (0, 0, 1, 1),
        255,
    );
    let ds = open(DatasetKind::Mvtec, dir.path());
    assert_eq!(ds.test.len(), 2);
    assert!(ds.has_masks);
    assert_eq!(ds.test[0].label, Label::Anomaly);
    assert_eq!(ds.test[1].label, Label::Normal);
}

#[test]
fn ader_meta_json_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rgb(&root.join("imgs/t0.png"), 8, 8, [1, 1, 1]);
    write_rgb(&root.join("imgs/g0.png"), 8, 8, [1, 1, 1]);
    write_rgb(&root.join("imgs/d0.png"), 8, 8, [1, 1, 1]);
    write_mask(&root.join("imgs/d0_mask.png"), 8, 8, (0, 0, 2, 2), 255);
    let meta = serde_json::json!({
        "train": {"widget": [{"img_path": "imgs/t0.png", "mask_path": "", "cls_name": "widget", "specie_name": "good", "anomaly": 0}]},
        "test": {"widget": [
            {"img_path": "imgs/g0.png", "mask_path": "", "cls_name": "widget", "specie_name": "good", "anomaly": 0},
            {"img_path": "imgs/d0.png", "mask_path": "imgs/d0_mask.png", "cls_name": "widget", "specie_name": "dent", "anomaly": 1}
        ]}
    });
    write_bytes(
        &root.join("meta.json"),
        serde_json::to_string(&meta).unwrap().as_bytes(),
    );
    assert_eq!(DatasetKind::detect(root).unwrap(), DatasetKind::Mvtec);
    let ds = open(DatasetKind::Mvtec, root);
    assert_eq!(ds.source, LayoutSource::MetaJson(root.join("meta.json")));
    assert_eq!(ds.classes, vec!["widget"]);
    assert_eq!(ds.train.len(), 1);
    assert_eq!(ds.test.len(), 2);
    assert!(ds.has_masks);
    let d = ds.test.iter().find(|s| s.label == Label::Anomaly).unwrap();
    assert_eq!(d.defect, "dent");
    assert_eq!(d.masks, vec![root.join("imgs/d0_mask.png")]);
}

#[test]
fn opening_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for c in ["q", "p", "r"] {
        mvtec_class(dir.path(), c);
    }
    let a = open(DatasetKind::Mvtec, dir.path());
    let b = open(DatasetKind::Mvtec, dir.path());
    assert_eq!(a, b);
    assert_eq!(a.classes, vec!["p", "q", "r"]);
}
