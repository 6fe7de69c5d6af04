//! Teacher features against reference outputs computed in PyTorch.
//!
//! - ResNet34: `parity/small_weights_f16.safetensors` holds the reference Omni-AD model (teacher
//!   under `net_t.*`, f16) and `parity/small_expected.safetensors` its input and teacher features.
//! - EfficientNet-Lite0: `teacher/efficientnet_lite0_expected.safetensors` holds an input in
//!   `[0, 1]` and the three features computed with the shipped weights.
//!
//! Fixtures are located by `omniad_testkit` (`OMNIAD_FIXTURES`, else `shared/fixtures` next to
//! the repository); a missing fixture fails the test.
use omniad_model::teacher::{
    load_shipped_efficientnet_lite0, shipped_efficientnet_lite0_path, Teacher, TeacherArch,
    SHIPPED_EFFICIENTNET_LITE0, SHIPPED_EFFICIENTNET_LITE0_SHA256,
};
use omniad_model::weights::{read_state_dict, AssignOptions};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn fixture(rel: &str) -> PathBuf {
    omniad_testkit::fixture_file(rel)
}

fn read_map(rel: &str) -> HashMap<String, Tensor> {
    read_state_dict(&fixture(rel))
        .unwrap()
        .into_iter()
        .collect()
}

/// `max |ours - ref| / max |ref|`.
fn relative_max_error(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size());
    let diff = (ours - reference).abs().max().double_value(&[]);
    let scale = reference.abs().max().double_value(&[]);
    assert!(scale > 0.0, "reference is all zeros");
    diff / scale
}

#[test]
fn resnet34_features_match_reference() {
    let weights = read_state_dict(&fixture("parity/small_weights_f16.safetensors")).unwrap();
    let expected = read_map("parity/small_expected.safetensors");

    let vs = VarStore::new(Device::Cpu);
    let teacher = Teacher::new(&(vs.root() / "net_t"), TeacherArch::Resnet34);
    let opts = AssignOptions {
        select_prefix: Some("net_t.".to_string()),
        ..teacher.assign_options("small_weights_f16.safetensors")
    };
    let report = teacher.load_tensors(&vs, weights, &opts).unwrap();
    // Stem (conv1 + 4 bn1 tensors) + 13 BasicBlocks x (2 convs + 2 x 4 bn tensors)
    // + 2 downsamples x (conv + 4 bn tensors) = 145 variables.
    assert_eq!(report.loaded, 5 + 13 * 10 + 2 * 5);
    assert_eq!(report.loaded, vs.variables().len());
    assert_eq!(report.converted, report.loaded, "all tensors were f16");

    let input = &expected["input"];
    assert_eq!(input.size(), [2, 3, 256, 256]);
    let features = tch::no_grad(|| teacher.forward(input));
    assert_eq!(features.len(), 3);
    for (i, f) in features.iter().enumerate() {
        let reference = &expected[&format!("teacher_{i}")];
        let r = relative_max_error(f, reference);
        println!(
            "resnet34 teacher_{i} {:?}: max|ours-ref|/max|ref| = {r:.3e}",
            f.size()
        );
        assert!(r <= 1e-4, "teacher_{i}: relative max error {r:.3e} > 1e-4");
    }
}

#[test]
fn efficientnet_lite0_features_match_reference() {
    let expected = read_map("teacher/efficientnet_lite0_expected.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let teacher = Teacher::new(&(vs.root() / "teacher"), TeacherArch::EfficientNetLite0);
    let report = teacher.load_shipped_weights(&vs).unwrap();
    assert_eq!(report.loaded, vs.variables().len());
    assert!(report.ignored.is_empty(), "{:?}", report.ignored);

    let input01 = &expected["input_01"];
    let (mean, std) = TeacherArch::EfficientNetLite0.input_mean_std();
    let mean = Tensor::from_slice(&mean).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&std).view([1, 3, 1, 1]);
    let x = (input01 - mean) / std;
    // (x - 127/255) / (128/255) == (255 x - 127) / 128.
    let direct = (input01 * 255.0 - 127.0) / 128.0;
    assert!(relative_max_error(&x, &direct) < 1e-6);

    let features = tch::no_grad(|| teacher.forward(&x));
    let shapes: Vec<Vec<i64>> = features.iter().map(Tensor::size).collect();
    assert_eq!(
        shapes,
        [
            vec![2, 24, 64, 64],
            vec![2, 40, 32, 32],
            vec![2, 112, 16, 16]
        ]
    );
    for (i, f) in features.iter().enumerate() {
        let reference = &expected[&format!("feature_{i}")];
        let r = relative_max_error(f, reference);
        println!(
            "efficientnet_lite0 feature_{i} {:?}: max|ours-ref|/max|ref| = {r:.3e}",
            f.size()
        );
        assert!(r <= 1e-4, "feature_{i}: relative max error {r:.3e} > 1e-4");
    }
}

#[test]
fn shipped_weights_file_and_embedded_copy_agree() {
    let embedded = format!("{:x}", Sha256::digest(SHIPPED_EFFICIENTNET_LITE0));
    assert_eq!(embedded, SHIPPED_EFFICIENTNET_LITE0_SHA256);
    let path = shipped_efficientnet_lite0_path();
    let on_disk =
        std::fs::read(&path).unwrap_or_else(|e| panic!("shipped weights {}: {e}", path.display()));
    assert_eq!(
        format!("{:x}", Sha256::digest(&on_disk)),
        SHIPPED_EFFICIENTNET_LITE0_SHA256
    );

    // Loading from the file gives the same variables as the embedded copy.
    let vs_file = VarStore::new(Device::Cpu);
    let t_file = Teacher::new(&vs_file.root(), TeacherArch::EfficientNetLite0);
    t_file.load_weights(&vs_file, &path).unwrap();
    let vs_emb = VarStore::new(Device::Cpu);
    Teacher::new(&vs_emb.root(), TeacherArch::EfficientNetLite0);
    load_shipped_efficientnet_lite0(&vs_emb, "").unwrap();
    let a = vs_file.variables();
    let b = vs_emb.variables();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name} differs");
    }

    // Learnable parameters = all shipped tensors except BatchNorm running statistics.
    let file_params: i64 = read_state_dict(&path)
        .unwrap()
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, t)| t.numel() as i64)
        .sum();
    assert_eq!(t_file.num_params(), file_params);
    println!("efficientnet_lite0 (stem + blocks 0..10) num_params = {file_params}");
}

#[test]
fn shipped_weights_refuse_a_resnet_teacher() {
    let vs = VarStore::new(Device::Cpu);
    let teacher = Teacher::new(&vs.root(), TeacherArch::Resnet18);
    let snapshot = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect::<HashMap<_, _>>();
    let err = teacher.load_shipped_weights(&vs).unwrap_err().to_string();
    assert!(err.contains("efficientnet_lite0"), "{err}");
    assert!(err.contains("missing: conv1.weight [64, 3, 7, 7]"), "{err}");
    assert!(
        err.contains("unexpected: _conv_stem.weight [32, 3, 3, 3]"),
        "{err}"
    );
    for (n, t) in vs.variables() {
        assert!(t.equal(&snapshot[&n]), "{n} changed after a refused load");
    }
    assert_eq!(Kind::Float, teacher.kind());
}
