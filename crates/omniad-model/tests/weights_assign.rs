//! Strict assignment of state dicts to teacher variables: every mismatch is reported by name and
//! shape, and a refused load leaves the VarStore unchanged.
use omniad_model::teacher::{Teacher, TeacherArch};
use omniad_model::weights::{assign, load_file, AssignOptions, WeightsError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn teacher(arch: TeacherArch) -> (VarStore, Teacher) {
    let vs = VarStore::new(Device::Cpu);
    let t = Teacher::new(&(vs.root() / "teacher"), arch);
    (vs, t)
}

/// A random state dict with the names and shapes of `arch` (as a timm/torchvision file would
/// have them, without `layer4`/`fc`).
fn random_state_dict(arch: TeacherArch, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let (vs, _t) = teacher(arch);
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| {
            let name = n.trim_start_matches("teacher.").to_string();
            let value = if name.ends_with("running_var") {
                Tensor::rand_like(&t) + 0.5
            } else {
                Tensor::randn_like(&t)
            };
            (name, value)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write(dir: &Path, name: &str, tensors: &[(String, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

fn snapshot(vs: &VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect()
}

fn assert_unchanged(vs: &VarStore, before: &HashMap<String, Tensor>) {
    for (n, t) in vs.variables() {
        assert!(t.equal(&before[&n]), "{n} changed after a refused load");
    }
}

fn mismatch_message(err: WeightsError) -> String {
    let msg = err.to_string();
    assert!(
        matches!(err, WeightsError::Mismatch(_)),
        "not a Mismatch: {msg}"
    );
    msg
}

#[test]
fn full_load_copies_values_and_ignores_unused_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = random_state_dict(TeacherArch::Resnet18, 1);
    // What a torchvision file also has: layer4, fc and num_batches_tracked; and f16 storage.
    sd.push((
        "layer4.0.conv1.weight".into(),
        Tensor::zeros([512, 256, 3, 3], (Kind::Float, Device::Cpu)),
    ));
    sd.push((
        "fc.weight".into(),
        Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)),
    ));
    sd.push((
        "fc.bias".into(),
        Tensor::zeros([1000], (Kind::Float, Device::Cpu)),
    ));
    sd.push(("bn1.num_batches_tracked".into(), Tensor::from(5i64)));
    let half: Vec<(String, Tensor)> = sd
        .iter()
        .map(|(n, t)| {
            let t = if n.starts_with("layer1.") {
                t.to_kind(Kind::Half)
            } else {
                t.shallow_clone()
            };
            (format!("module.{n}"), t)
        })
        .collect();
    let path = write(dir.path(), "resnet18.safetensors", &half);

    let (vs, t) = teacher(TeacherArch::Resnet18);
    let report = t.load_weights(&vs, &path).unwrap();
    assert_eq!(report.loaded, vs.variables().len());
    assert_eq!(report.loaded, 75);
    let mut ignored = report.ignored.clone();
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "module.bn1.num_batches_tracked",
            "module.fc.bias",
            "module.fc.weight",
            "module.layer4.0.conv1.weight"
        ]
    );
    // layer1 of resnet18: 2 blocks x 10 tensors were stored in f16.
    assert_eq!(report.converted, 20);
    let vars = vs.variables();
    for (name, value) in &sd {
        let Some(var) = vars.get(&format!("teacher.{name}")) else {
            continue;
        };
        assert_eq!(var.kind(), Kind::Float);
        let expected = if name.starts_with("layer1.") {
            value.to_kind(Kind::Half).to_kind(Kind::Float)
        } else {
            value.shallow_clone()
        };
        assert!(var.equal(&expected), "{name} was not copied exactly");
    }
}

#[test]
fn missing_tensor_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = random_state_dict(TeacherArch::Resnet18, 2);
    sd.retain(|(n, _)| n != "layer1.0.bn1.running_var" && n != "layer3.1.conv2.weight");
    let path = write(dir.path(), "partial.safetensors", &sd);
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let before = snapshot(&vs);
    let msg = mismatch_message(t.load_weights(&vs, &path).unwrap_err());
    assert!(msg.contains("partial.safetensors"), "{msg}");
    assert!(
        msg.contains("2 missing, 0 unexpected, 0 mis-shaped"),
        "{msg}"
    );
    assert!(
        msg.contains("missing: layer1.0.bn1.running_var [64]"),
        "{msg}"
    );
    assert!(
        msg.contains("missing: layer3.1.conv2.weight [256, 256, 3, 3]"),
        "{msg}"
    );
    assert!(!msg.contains("hint"), "{msg}");
    assert_unchanged(&vs, &before);
}

#[test]
fn unexpected_tensor_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = random_state_dict(TeacherArch::Resnet18, 3);
    sd.push((
        "layer2.0.se.fc.weight".into(),
        Tensor::zeros([8, 128], (Kind::Float, Device::Cpu)),
    ));
    let path = write(dir.path(), "extra.safetensors", &sd);
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let before = snapshot(&vs);
    let msg = mismatch_message(t.load_weights(&vs, &path).unwrap_err());
    assert!(
        msg.contains("0 missing, 1 unexpected, 0 mis-shaped"),
        "{msg}"
    );
    assert!(
        msg.contains("unexpected: layer2.0.se.fc.weight [8, 128]"),
        "{msg}"
    );
    assert_unchanged(&vs, &before);
}

#[test]
fn mis_shaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = random_state_dict(TeacherArch::Resnet18, 4);
    for (n, t) in sd.iter_mut() {
        if n == "conv1.weight" {
            *t = Tensor::zeros([64, 3, 3, 3], (Kind::Float, Device::Cpu));
        }
    }
    let path = write(dir.path(), "reshaped.safetensors", &sd);
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let before = snapshot(&vs);
    let msg = mismatch_message(t.load_weights(&vs, &path).unwrap_err());
    assert!(
        msg.contains("0 missing, 0 unexpected, 1 mis-shaped"),
        "{msg}"
    );
    assert!(
        msg.contains("mis-shaped: conv1.weight expected [64, 3, 7, 7], found [64, 3, 3, 3]"),
        "{msg}"
    );
    assert_unchanged(&vs, &before);
}

#[test]
fn wrong_architecture_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            TeacherArch::Resnet50,
            TeacherArch::Resnet34,
            "unexpected: layer1.0.conv3.weight [256, 64, 1, 1]",
        ),
        (
            TeacherArch::Resnet18,
            TeacherArch::Resnet34,
            "missing: layer1.2.conv1.weight [64, 64, 3, 3]",
        ),
        (
            TeacherArch::WideResnet50_2,
            TeacherArch::Resnet50,
            "mis-shaped: layer1.0.conv1.weight expected [64, 64, 1, 1], found [128, 64, 1, 1]",
        ),
    ];
    for (file_arch, model_arch, line) in cases {
        let sd = random_state_dict(file_arch, 5);
        let path = write(dir.path(), &format!("{file_arch}.safetensors"), &sd);
        let (vs, t) = teacher(model_arch);
        let before = snapshot(&vs);
        let msg = mismatch_message(t.load_weights(&vs, &path).unwrap_err());
        assert!(msg.contains(line), "{file_arch} into {model_arch}: {msg}");
        assert!(
            msg.contains(&format!(
                "hint: the file looks like {file_arch} weights, but the teacher is {model_arch}"
            )),
            "{file_arch} into {model_arch}: {msg}"
        );
        assert_unchanged(&vs, &before);
    }
}

#[test]
fn detect_recognises_every_supported_layout() {
    for arch in TeacherArch::ALL {
        let sd = random_state_dict(arch, 6);
        let names: Vec<(String, Vec<i64>)> =
            sd.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        assert_eq!(TeacherArch::detect(&names), Some(arch));
    }
    assert_eq!(TeacherArch::detect(&[("foo.weight".into(), vec![3])]), None);
}

#[test]
fn non_finite_values_are_refused() {
    let mut sd = random_state_dict(TeacherArch::Resnet18, 7);
    for (n, t) in sd.iter_mut() {
        if n == "layer2.1.bn2.weight" {
            let _ = t.get(3).fill_(f64::NAN);
        }
        if n == "bn1.bias" {
            let _ = t.get(0).fill_(f64::INFINITY);
        }
    }
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let before = snapshot(&vs);
    let err = t
        .load_tensors(&vs, sd, &t.assign_options("nan-weights"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::NonFinite { .. }), "{msg}");
    assert!(
        msg.contains("nan-weights") && msg.contains("layer2.1.bn2.weight"),
        "{msg}"
    );
    assert!(msg.contains("bn1.bias"), "{msg}");
    assert_unchanged(&vs, &before);
}

#[test]
fn integer_tensor_for_a_float_variable_is_a_dtype_mismatch() {
    let mut sd = random_state_dict(TeacherArch::Resnet18, 8);
    for (n, t) in sd.iter_mut() {
        if n == "bn1.running_mean" {
            *t = Tensor::zeros([64], (Kind::Int64, Device::Cpu));
        }
    }
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let msg = mismatch_message(
        t.load_tensors(&vs, sd, &t.assign_options("ints"))
            .unwrap_err(),
    );
    assert!(
        msg.contains("wrong dtype: bn1.running_mean expected Float, found Int64"),
        "{msg}"
    );
}

#[test]
fn two_names_for_one_variable_are_refused() {
    let mut sd = random_state_dict(TeacherArch::Resnet18, 9);
    let dup = sd[0].1.copy();
    let name = format!("module.{}", sd[0].0);
    sd.push((name, dup));
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let err = t
        .load_tensors(&vs, sd, &t.assign_options("dups"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::Corrupt { .. }), "{msg}");
    assert!(msg.contains("both map to the variable"), "{msg}");
}

#[test]
fn select_prefix_takes_one_sub_model() {
    // A whole-model file: teacher under `net_t.`, other modules next to it.
    let mut sd: Vec<(String, Tensor)> = random_state_dict(TeacherArch::Resnet18, 10)
        .into_iter()
        .map(|(n, t)| (format!("net_t.{n}"), t))
        .collect();
    sd.push((
        "net_s.layers_up.0.weight".into(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    ));
    sd.push((
        "Neck.conv1.weight".into(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    ));
    let (vs, t) = teacher(TeacherArch::Resnet18);
    let opts = AssignOptions {
        select_prefix: Some("net_t.".into()),
        ..t.assign_options("whole-model")
    };
    let report = t.load_tensors(&vs, sd, &opts).unwrap();
    assert_eq!(report.loaded, 75);
    assert_eq!(report.ignored.len(), 2);
}

#[test]
fn pth_round_trip_into_a_var_store() {
    // Variables with the names and shapes of tests/data/tiny_state_dict.pth.
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let _ = (&root / "conv1").zeros("weight", &[4, 3, 3, 3]);
    for n in ["weight", "bias", "running_mean", "running_var"] {
        let _ = (&root / "bn1").zeros(n, &[4]);
    }
    let _ = (&root / "fc").zeros("weight", &[2, 4]);
    let _ = (&root / "fc").zeros("bias", &[2]);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for file in [
        "tiny_state_dict.pth",
        "tiny_state_dict_legacy.pth",
        "tiny_checkpoint_wrapped.pt",
    ] {
        let report = load_file(&vs, "", &data.join(file), &AssignOptions::default()).unwrap();
        assert_eq!(report.loaded, 7, "{file}");
        assert_eq!(report.converted, 3, "{file}: f16, bf16 and f64 tensors");
        assert_eq!(report.ignored.len(), 1, "{file}: num_batches_tracked");
        let vars = vs.variables();
        let vals =
            |n: &str| Vec::<f64>::try_from(vars[n].to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let ramp =
            |n: usize, s: f64, b: f64| (0..n).map(|i| i as f64 * s + b).collect::<Vec<f64>>();
        assert_eq!(vals("conv1.weight"), ramp(108, 0.25, -13.5), "{file}");
        assert_eq!(vals("bn1.weight"), ramp(4, 0.5, 0.5), "{file}");
        assert_eq!(vals("bn1.bias"), ramp(4, 0.25, -0.5), "{file}");
        assert_eq!(vals("bn1.running_mean"), ramp(4, 0.5, -1.0), "{file}");
        assert_eq!(vals("bn1.running_var"), ramp(4, 1.0, 1.0), "{file}");
        assert_eq!(
            vals("fc.weight"),
            [0., 2., 4., 6., 1., 3., 5., 7.],
            "{file}"
        );
        assert_eq!(vals("fc.bias"), [3.0, 4.0], "{file}");
        // Reset so the next file is really loaded.
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.zero_();
            }
        });
    }
}

#[test]
fn empty_prefix_and_dotted_prefix_are_equivalent() {
    let sd = random_state_dict(TeacherArch::Resnet18, 11);
    let (vs, _t) = teacher(TeacherArch::Resnet18);
    let opts = TeacherArch::Resnet18.assign_options("x");
    let a = assign(
        &vs,
        "teacher",
        sd.iter().map(|(n, t)| (n.clone(), t.copy())).collect(),
        &opts,
    )
    .unwrap();
    let b = assign(&vs, "teacher.", sd, &opts).unwrap();
    assert_eq!(a.loaded, b.loaded);
    // Parameters plus the BatchNorm running mean and variance: 1 + 4 BNs of 64 channels, 5 of
    // 128 and 5 of 256.
    let bn_channels = 5 * 64 + 5 * 128 + 5 * 256;
    assert_eq!(a.elements, 2_782_784 + 2 * bn_channels);
}
