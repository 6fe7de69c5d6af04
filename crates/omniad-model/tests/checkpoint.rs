//! Checkpoint format (`omniad_model::checkpoint`): a save/load round trip is bit-exact, and every
//! kind of damage (truncation, a flipped bit, an edited or invalid JSON description, weights of
//! another architecture) is refused with an error naming the file and the problem.
//!
//! Small model throughout: shipped EfficientNet-Lite0 teacher, depths `[1, 1, 1, 1]`, 64x64 input.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use omniad_model::checkpoint::{self, CheckpointError, CheckpointMeta, Thresholds};
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use tch::{Device, Kind, Tensor};

fn tiny_cfg() -> OmniAdConfig {
    OmniAdConfig {
        depths: [1, 1, 1, 1],
        image_size: (64, 64),
        ..OmniAdConfig::default_offline()
    }
}

/// A tiny model with the shipped teacher weights, random student weights and non-trivial neck
/// BatchNorm running statistics (one training-mode forward pass), so every kind of tensor
/// (frozen, trainable, buffer) carries information a round trip could lose.
fn tiny_model() -> OmniAd {
    tch::set_num_threads(1);
    tch::manual_seed(11);
    let model = OmniAd::new(&tiny_cfg(), Device::Cpu).expect("valid tiny config");
    model
        .teacher()
        .load_shipped_weights(&model.teacher_vs)
        .expect("shipped EfficientNet-Lite0 weights load");
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let feats = model.teacher_features(&x);
    tch::no_grad(|| {
        let _ = model.reconstruct(&feats, true);
    });
    model
}

fn test_input() -> Tensor {
    tch::manual_seed(5);
    Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu))
}

fn thresholds() -> Thresholds {
    Thresholds {
        global: Some(0.375),
        per_class: BTreeMap::from([("screw".to_string(), 0.25), ("woven".to_string(), 0.5)]),
        method: "test".into(),
        score_bounds: Some((0.125, 0.875)),
        ..Default::default()
    }
}

/// Saves the tiny model into a new temporary folder; returns (folder guard, json, weights).
fn saved(model: &OmniAd) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = checkpoint::save(
        model,
        dir.path(),
        "model",
        Some(thresholds()),
        serde_json::json!({"dataset": "synthetic", "epochs": 1}),
    )
    .expect("save");
    let weights = dir.path().join("model.safetensors");
    (dir, json, weights)
}

/// Raw bits of a float tensor (exact comparison, NaN-safe).
fn bits(t: &Tensor) -> Vec<u32> {
    let flat = t.to_kind(Kind::Float).flatten(0, -1);
    let v = Vec::<f32>::try_from(&flat).expect("f32 tensor");
    v.into_iter().map(f32::to_bits).collect()
}

fn load_err(json: &Path) -> CheckpointError {
    match checkpoint::load(json, Device::Cpu) {
        Ok(_) => panic!("{} loaded, but it should have been refused", json.display()),
        Err(e) => e,
    }
}

fn edit_json(json: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(json).expect("read json")).expect("valid json");
    edit(&mut v);
    fs::write(json, serde_json::to_string_pretty(&v).expect("serialise")).expect("write json");
}

fn files_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Names and shapes of all tensors of a model of this configuration.
fn names_shapes(cfg: &OmniAdConfig) -> BTreeMap<String, Vec<i64>> {
    let m = OmniAd::new(cfg, Device::Cpu).expect("valid config");
    m.named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect()
}

/// Checks a `Mismatch` error's details list exactly the differences between the tensors the file
/// holds (`have`) and the ones the described architecture needs (`want`), by name.
fn assert_mismatch_lists(
    err: &CheckpointError,
    weights: &Path,
    have: &BTreeMap<String, Vec<i64>>,
    want: &BTreeMap<String, Vec<i64>>,
) {
    let CheckpointError::Mismatch { path, details, .. } = err else {
        panic!("expected CheckpointError::Mismatch, got {err:?}");
    };
    assert_eq!(path, weights);
    let msg = err.to_string();
    assert!(msg.contains(&weights.display().to_string()), "{msg}");
    assert!(msg.contains("do not match the architecture"), "{msg}");
    let lines: BTreeSet<String> = details
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let mut expected = BTreeSet::new();
    for (name, shape) in want {
        match have.get(name) {
            None => {
                expected.insert(format!("missing: {name} {shape:?}"));
            }
            Some(s) if s != shape => {
                expected.insert(format!(
                    "mis-shaped: {name}: expected {shape:?}, found {s:?}"
                ));
            }
            Some(_) => {}
        }
    }
    for (name, shape) in have {
        if !want.contains_key(name) {
            expected.insert(format!("unexpected: {name} {shape:?}"));
        }
    }
    assert!(
        !expected.is_empty(),
        "test set-up: the architectures are equal"
    );
    assert_eq!(lines, expected, "mismatch details");
}

#[test]
fn round_trip_is_bit_identical() {
    let model = tiny_model();
    let (dir, json, weights) = saved(&model);
    assert_eq!(json, dir.path().join("model.json"));
    // Exactly the two files, no temporary leftovers.
    assert_eq!(
        files_in(dir.path()),
        BTreeSet::from(["model.json".to_string(), "model.safetensors".to_string()])
    );

    let (loaded, meta) = checkpoint::load(&json, Device::Cpu).expect("load");

    // Description.
    assert_eq!(meta.format, checkpoint::FORMAT);
    assert_eq!(meta.version, checkpoint::VERSION);
    assert_eq!(meta.config, tiny_cfg());
    assert_eq!(loaded.cfg, tiny_cfg());
    assert_eq!(
        meta.input_mean_std,
        TeacherArch::EfficientNetLite0.input_mean_std()
    );
    assert_eq!(meta.weights_file, "model.safetensors");
    assert_eq!(
        meta.weights_sha256,
        checkpoint::sha256_file(&weights).expect("sha")
    );
    assert_eq!(meta.weights_sha256.len(), 64);
    assert_eq!(meta.thresholds, Some(thresholds()));
    assert_eq!(
        meta.provenance,
        serde_json::json!({"dataset": "synthetic", "epochs": 1})
    );

    // Every tensor: same names, kinds, shapes and bits.
    let a = model.named_tensors();
    let b = loaded.named_tensors();
    assert_eq!(
        a.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        b.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(a.iter().any(|(n, _)| n.starts_with("net_t.")));
    assert!(a.iter().any(|(n, _)| n.starts_with("Neck.")));
    assert!(a.iter().any(|(n, _)| n.starts_with("net_s.")));
    let mut nontrivial_running_mean = false;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.kind(), y.kind(), "{name}");
        assert_eq!(x.size(), y.size(), "{name}");
        assert!(
            bits(x) == bits(y),
            "{name}: values differ after the round trip"
        );
        if name.starts_with("Neck.") && name.ends_with("running_mean") {
            nontrivial_running_mean |= x.abs().max().double_value(&[]) > 0.0;
        }
    }
    assert!(
        nontrivial_running_mean,
        "test set-up: neck running statistics should have been updated"
    );
    // The loaded student is still trainable and the teacher frozen.
    assert_eq!(loaded.num_params(), model.num_params());
    assert!(loaded
        .trainable_named()
        .iter()
        .all(|(_, t)| t.requires_grad()));
    assert!(loaded
        .teacher_vs
        .variables()
        .values()
        .all(|t| !t.requires_grad()));

    // Same anomaly maps and scores, bit for bit.
    let x = test_input();
    let p = model.predict(&x);
    let q = loaded.predict(&x);
    assert_eq!(p.anomaly_map.size(), vec![2, 64, 64]);
    assert_eq!(p.image_scores.size(), vec![2]);
    assert!(
        bits(&p.anomaly_map) == bits(&q.anomaly_map),
        "anomaly maps differ"
    );
    assert!(
        bits(&p.image_scores) == bits(&q.image_scores),
        "image scores differ"
    );
    // Real values: finite, within [0, 2], image score = max of the map.
    let scores = Vec::<f32>::try_from(&p.image_scores).expect("scores");
    for (i, s) in scores.iter().enumerate() {
        assert!(s.is_finite() && *s > 0.0 && *s <= 2.0, "score {s}");
        let max = p.anomaly_map.get(i as i64).max().double_value(&[]) as f32;
        assert_eq!(*s, max, "image score {i} is the max of its map");
    }

    // Saving the loaded model again gives the same weights file (deterministic format).
    let dir2 = tempfile::tempdir().expect("temp dir");
    checkpoint::save(&loaded, dir2.path(), "model", None, serde_json::Value::Null)
        .expect("save again");
    assert_eq!(
        checkpoint::sha256_file(&dir2.path().join("model.safetensors")).expect("sha"),
        meta.weights_sha256
    );
}

#[test]
fn truncated_weights_are_refused() {
    let model = tiny_model();
    let (_dir, json, weights) = saved(&model);
    let bytes = fs::read(&weights).expect("read weights");
    fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");

    let err = load_err(&json);
    let msg = err.to_string();
    match &err {
        CheckpointError::Checksum {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, &weights);
            assert_ne!(expected, found);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert!(msg.contains(&weights.display().to_string()), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");

    // Even with the checksum recomputed, the safetensors parser refuses the cut file.
    let sha = checkpoint::sha256_file(&weights).expect("sha");
    edit_json(&json, |v| v["weights_sha256"] = sha.into());
    let err = load_err(&json);
    assert!(
        matches!(&err, CheckpointError::BadWeights { path, .. } if path == &weights),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&weights.display().to_string()), "{msg}");
    assert!(msg.contains("unreadable weights"), "{msg}");
}

#[test]
fn a_single_flipped_bit_is_refused() {
    let model = tiny_model();
    let (_dir, json, weights) = saved(&model);
    let mut bytes = fs::read(&weights).expect("read weights");
    let i = bytes.len() - 1000; // in the tensor data, far from the header
    bytes[i] ^= 0x01;
    fs::write(&weights, &bytes).expect("write");

    let err = load_err(&json);
    assert!(
        matches!(&err, CheckpointError::Checksum { path, .. } if path == &weights),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&weights.display().to_string()), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[test]
fn tampered_descriptions_are_refused() {
    let model = tiny_model();
    let (dir, json, weights) = saved(&model);
    let original = fs::read_to_string(&json).expect("read json");
    let json_name = json.display().to_string();

    // Edited checksum: the weights no longer match it.
    let fake = "0".repeat(64);
    edit_json(&json, |v| v["weights_sha256"] = fake.clone().into());
    let err = load_err(&json);
    match &err {
        CheckpointError::Checksum { path, expected, .. } => {
            assert_eq!(path, &weights);
            assert_eq!(expected, &fake);
        }
        other => panic!("edited checksum: expected a checksum error, got {other:?}"),
    }
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    // (edit, words the message must contain)
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "unknown format",
            Box::new(|v| v["format"] = "some-other-tool".into()),
            &["not a valid omniad checkpoint", "format", "some-other-tool"],
        ),
        (
            "future version",
            Box::new(|v| v["version"] = 99.into()),
            &["version 99 is not supported"],
        ),
        (
            "image_size not a multiple of 32",
            Box::new(|v| v["config"]["image_size"] = serde_json::json!([100, 100])),
            &["image_size 100x100", "multiples of 32"],
        ),
        (
            "num_tokens not a square",
            Box::new(|v| v["config"]["num_tokens"] = 10.into()),
            &["num_tokens 10"],
        ),
        (
            "three depths",
            Box::new(|v| v["config"]["depths"] = serde_json::json!([1, 1, 1])),
            &["not a valid omniad checkpoint"],
        ),
        (
            "unknown teacher",
            Box::new(|v| v["config"]["teacher"] = "vgg16".into()),
            &["not a valid omniad checkpoint", "vgg16"],
        ),
        (
            "unknown config key",
            Box::new(|v| v["config"]["dropout"] = 0.5.into()),
            &["not a valid omniad checkpoint", "dropout"],
        ),
        (
            "weights outside the folder",
            Box::new(|v| v["weights_file"] = "../model.safetensors".into()),
            &["weights_file", "same folder"],
        ),
        (
            "missing field",
            Box::new(|v| {
                v.as_object_mut().expect("object").remove("weights_sha256");
            }),
            &["weights_sha256"],
        ),
    ];
    for (what, edit, words) in cases {
        fs::write(&json, &original).expect("restore json");
        edit_json(&json, |v| edit(v));
        let err = load_err(&json);
        assert!(
            matches!(&err, CheckpointError::BadMeta { path, .. } if path == &json),
            "{what}: expected BadMeta naming the JSON file, got {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&json_name), "{what}: {msg}");
        for w in words {
            assert!(msg.contains(w), "{what}: {msg:?} should contain {w:?}");
        }
        // read_meta alone refuses it the same way.
        assert!(checkpoint::read_meta(&json).is_err(), "{what}");
    }

    // Not JSON at all (cut in the middle).
    fs::write(&json, &original[..original.len() / 2]).expect("cut json");
    let err = load_err(&json);
    assert!(matches!(err, CheckpointError::BadMeta { .. }), "{err:?}");
    assert!(err.to_string().contains(&json_name), "{err}");

    // Weights file gone: an I/O error naming it.
    fs::write(&json, &original).expect("restore json");
    checkpoint::load(&json, Device::Cpu).expect("restored checkpoint loads again");
    fs::remove_file(&weights).expect("remove weights");
    let err = load_err(&json);
    assert!(
        matches!(&err, CheckpointError::Io { path, .. } if path == &weights),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&weights.display().to_string()),
        "{err}"
    );

    // Description gone: an I/O error naming it.
    let missing = dir.path().join("nothing.json");
    let err = load_err(&missing);
    assert!(
        matches!(&err, CheckpointError::Io { path, .. } if path == &missing),
        "{err:?}"
    );
}

#[test]
fn weights_of_another_architecture_are_a_mismatch() {
    let model = tiny_model();
    let (_dir, json, weights) = saved(&model);
    let have = names_shapes(&tiny_cfg());
    let sha_before = checkpoint::sha256_file(&weights).expect("sha");

    // Deeper decoder: the file lacks the second block of stage 0.
    let deeper = OmniAdConfig {
        depths: [2, 1, 1, 1],
        ..tiny_cfg()
    };
    edit_json(&json, |v| {
        v["config"]["depths"] = serde_json::json!([2, 1, 1, 1]);
        // The weights file is untouched, so its recorded checksum still holds.
        v["weights_sha256"] = sha_before.clone().into();
    });
    let err = load_err(&json);
    assert_mismatch_lists(&err, &weights, &have, &names_shapes(&deeper));
    let CheckpointError::Mismatch { details, arch, .. } = &err else {
        unreachable!()
    };
    assert!(details.contains("missing: net_s."), "{details}");
    assert!(!details.contains("unexpected"), "{details}");
    assert!(arch.contains("[2, 1, 1, 1]"), "{arch}");

    // Another teacher: teacher tensors missing/unexpected, student tensors mis-shaped.
    let resnet = OmniAdConfig {
        teacher: TeacherArch::Resnet18,
        ..tiny_cfg()
    };
    edit_json(&json, |v| {
        v["config"]["depths"] = serde_json::json!([1, 1, 1, 1]);
        v["config"]["teacher"] = "resnet18".into();
    });
    let err = load_err(&json);
    assert_mismatch_lists(&err, &weights, &have, &names_shapes(&resnet));
    let CheckpointError::Mismatch { details, arch, .. } = &err else {
        unreachable!()
    };
    assert!(
        details.contains("missing: net_t.conv1.weight [64, 3, 7, 7]"),
        "{details}"
    );
    assert!(details.contains("unexpected: net_t."), "{details}");
    assert!(arch.contains("resnet18"), "{arch}");
}

#[test]
fn a_missing_or_extra_tensor_is_a_mismatch() {
    let model = tiny_model();
    let (_dir, json, weights) = saved(&model);
    let mut tensors = Tensor::read_safetensors(&weights).expect("read weights");
    let removed = tensors
        .iter()
        .position(|(n, _)| n.starts_with("net_s.") && n.ends_with(".weight"))
        .expect("a decoder weight");
    let (removed_name, removed_t) = tensors.remove(removed);

    let rewrite = |tensors: &[(String, Tensor)]| {
        Tensor::write_safetensors(tensors, &weights).expect("write weights");
        let sha = checkpoint::sha256_file(&weights).expect("sha");
        edit_json(&json, |v| v["weights_sha256"] = sha.into());
    };

    rewrite(&tensors);
    let err = load_err(&json);
    let CheckpointError::Mismatch { details, .. } = &err else {
        panic!("expected Mismatch, got {err:?}");
    };
    assert_eq!(
        details.trim(),
        format!("missing: {removed_name} {:?}", removed_t.size())
    );

    tensors.push((removed_name, removed_t));
    tensors.push((
        "net_s.extra.weight".to_string(),
        Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
    ));
    rewrite(&tensors);
    let err = load_err(&json);
    let CheckpointError::Mismatch { details, .. } = &err else {
        panic!("expected Mismatch, got {err:?}");
    };
    assert_eq!(details.trim(), "unexpected: net_s.extra.weight [3, 2]");
    assert!(err.to_string().contains(&weights.display().to_string()));

    // Put back exactly the saved tensors: loads again.
    tensors.pop();
    rewrite(&tensors);
    checkpoint::load(&json, Device::Cpu).expect("the original tensor set loads");
}

#[test]
fn failed_writes_leave_no_partial_file() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().expect("temp dir");

    // Target is a non-empty folder: the rename fails, the temporary file is removed.
    let target = dir.path().join("model.safetensors");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("keep"), b"x").expect("write");
    let err = omniad_io::write_atomic(&target, b"0123456789").expect_err("must fail");
    assert_eq!(err.path, target, "{err:?}");
    assert!(err.to_string().contains(&target.display().to_string()));
    assert_eq!(
        files_in(dir.path()),
        BTreeSet::from(["model.safetensors".to_string()]),
        "no temporary file left"
    );

    // A checkpoint folder below a regular file cannot be created: an error naming it.
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").expect("write");
    let model = OmniAd::new(&tiny_cfg(), Device::Cpu).expect("model");
    let below = file.join("run");
    let err = checkpoint::save(&model, &below, "model", None, serde_json::Value::Null)
        .expect_err("must fail");
    assert!(
        err.to_string().contains(&below.display().to_string()),
        "{err}"
    );

    // A successful write replaces the file and leaves only it.
    let ok = dir.path().join("meta.json");
    omniad_io::write_atomic(&ok, b"first").expect("write");
    omniad_io::write_atomic(&ok, b"second").expect("overwrite");
    assert_eq!(fs::read(&ok).expect("read"), b"second");
    assert_eq!(
        files_in(dir.path()),
        BTreeSet::from([
            "meta.json".to_string(),
            "model.safetensors".to_string(),
            "plain-file".to_string()
        ])
    );
}

#[test]
fn write_meta_round_trips_a_description() {
    let model = tiny_model();
    let (_dir, json, _weights) = saved(&model);
    let mut meta: CheckpointMeta = checkpoint::read_meta(&json).expect("read");
    meta.thresholds = Some(Thresholds {
        global: Some(1.5),
        ..Thresholds::default()
    });
    checkpoint::write_meta(&json, &meta).expect("write");
    assert_eq!(checkpoint::read_meta(&json).expect("read back"), meta);
    let (_, loaded_meta) = checkpoint::load(&json, Device::Cpu).expect("still loads");
    assert_eq!(loaded_meta.thresholds.and_then(|t| t.global), Some(1.5));
}
