//! Teacher construction on random weights: feature shapes, parameter counts, variable names,
//! frozen variables and input validation.
use omniad_model::teacher::{Teacher, TeacherArch, TeacherError};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn build(arch: TeacherArch) -> (VarStore, Teacher) {
    let vs = VarStore::new(Device::Cpu);
    let t = Teacher::new(&(vs.root() / "teacher"), arch);
    (vs, t)
}

#[test]
fn feature_shapes_for_every_arch() {
    tch::manual_seed(0);
    for arch in TeacherArch::ALL {
        let (_vs, teacher) = build(arch);
        let [c1, c2, c3] = arch.channels();
        let x = Tensor::randn([2, 3, 64, 96], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| teacher.forward(&x));
        let shapes: Vec<Vec<i64>> = f.iter().map(Tensor::size).collect();
        assert_eq!(
            shapes,
            [vec![2, c1, 16, 24], vec![2, c2, 8, 12], vec![2, c3, 4, 6]],
            "{arch}"
        );
        for (i, t) in f.iter().enumerate() {
            let max = t.abs().max().double_value(&[]);
            assert!(
                max.is_finite() && max > 0.0,
                "{arch} feature {i}: max |x| = {max}"
            );
        }
        // Sizes that are not multiples of 16 round up at each stride-2 step.
        let x = Tensor::randn([1, 3, 50, 33], (Kind::Float, Device::Cpu));
        let f = tch::no_grad(|| teacher.forward(&x));
        let hw: Vec<(i64, i64)> = f.iter().map(|t| (t.size()[2], t.size()[3])).collect();
        assert_eq!(hw, [(13, 9), (7, 5), (4, 3)], "{arch}");
    }
}

/// Learnable parameters of a bias-free conv / a BatchNorm (weight + bias).
fn conv(cin: i64, cout: i64, k: i64) -> i64 {
    cin * cout * k * k
}
fn bn(c: i64) -> i64 {
    2 * c
}

/// BasicBlock / Bottleneck parameter counts (torchvision layout), with the shortcut projection
/// when `downsample`.
fn basic(cin: i64, planes: i64, downsample: bool) -> i64 {
    conv(cin, planes, 3)
        + bn(planes)
        + conv(planes, planes, 3)
        + bn(planes)
        + if downsample {
            conv(cin, planes, 1) + bn(planes)
        } else {
            0
        }
}
fn bottleneck(cin: i64, planes: i64, width: i64, downsample: bool) -> i64 {
    let out = planes * 4;
    conv(cin, width, 1)
        + bn(width)
        + conv(width, width, 3)
        + bn(width)
        + conv(width, out, 1)
        + bn(out)
        + if downsample {
            conv(cin, out, 1) + bn(out)
        } else {
            0
        }
}

#[test]
fn num_params_match_torchvision_counts_without_layer4_and_fc() {
    // Full-model counts published by torchvision (`sum(p.numel() for p in m.parameters())`),
    // minus `layer4` and `fc`, which the teacher does not have.
    let fc = |cin: i64| cin * 1000 + 1000;
    let r18_layer4 = basic(256, 512, true) + basic(512, 512, false);
    let r34_layer4 = basic(256, 512, true) + 2 * basic(512, 512, false);
    let r50_layer4 = bottleneck(1024, 512, 512, true) + 2 * bottleneck(2048, 512, 512, false);
    let w50_layer4 = bottleneck(1024, 512, 1024, true) + 2 * bottleneck(2048, 512, 1024, false);
    let expected = [
        (TeacherArch::Resnet18, 11_689_512 - r18_layer4 - fc(512)),
        (TeacherArch::Resnet34, 21_797_672 - r34_layer4 - fc(512)),
        (TeacherArch::Resnet50, 25_557_032 - r50_layer4 - fc(2048)),
        (
            TeacherArch::WideResnet50_2,
            68_883_240 - w50_layer4 - fc(2048),
        ),
    ];
    for (arch, want) in expected {
        let (_vs, teacher) = build(arch);
        println!("{arch}: num_params up to layer3 = {}", teacher.num_params());
        assert_eq!(teacher.num_params(), want, "{arch}");
    }
    assert_eq!(expected[0].1, 2_782_784);
    assert_eq!(expected[1].1, 8_170_304);
    assert_eq!(expected[2].1, 8_543_296);
    assert_eq!(expected[3].1, 24_862_528);
}

#[test]
fn variables_use_state_dict_names_and_are_frozen() {
    let (vs, _t) = build(TeacherArch::Resnet34);
    let vars = vs.variables();
    let shape = |n: &str| vars.get(n).map(Tensor::size);
    assert_eq!(shape("teacher.conv1.weight"), Some(vec![64, 3, 7, 7]));
    assert_eq!(shape("teacher.bn1.running_var"), Some(vec![64]));
    assert_eq!(
        shape("teacher.layer1.2.conv2.weight"),
        Some(vec![64, 64, 3, 3])
    );
    assert_eq!(
        shape("teacher.layer2.0.downsample.0.weight"),
        Some(vec![128, 64, 1, 1])
    );
    assert_eq!(shape("teacher.layer3.5.bn2.running_mean"), Some(vec![256]));
    assert_eq!(shape("teacher.layer3.0.downsample.1.bias"), Some(vec![256]));
    assert!(!vars
        .keys()
        .any(|k| k.contains("layer4") || k.contains("fc.")));
    assert!(!vars.keys().any(|k| k.contains("num_batches_tracked")));
    assert!(
        vs.trainable_variables().is_empty(),
        "teacher variables must not be trainable"
    );
    assert!(vars.values().all(|t| !t.requires_grad()));

    let (vs, _t) = build(TeacherArch::WideResnet50_2);
    let vars = vs.variables();
    assert_eq!(
        vars["teacher.layer1.0.conv2.weight"].size(),
        [128, 128, 3, 3]
    );
    assert_eq!(
        vars["teacher.layer3.5.conv3.weight"].size(),
        [1024, 512, 1, 1]
    );

    let (vs, _t) = build(TeacherArch::EfficientNetLite0);
    let vars = vs.variables();
    assert_eq!(vars["teacher._conv_stem.weight"].size(), [32, 3, 3, 3]);
    assert!(!vars.contains_key("teacher._blocks.0._expand_conv.weight"));
    assert_eq!(
        vars["teacher._blocks.10._depthwise_conv.weight"].size(),
        [672, 1, 5, 5]
    );
    assert!(!vars.keys().any(|k| k.starts_with("teacher._blocks.11.")));
}

#[test]
fn input_validation() {
    let (_vs, teacher) = build(TeacherArch::Resnet18);
    let bad = [
        Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([1, 1, 32, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([1, 3, 0, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([1, 3, 32, 32], (Kind::Double, Device::Cpu)),
    ];
    for x in &bad {
        let err = teacher.try_forward(x).unwrap_err();
        assert!(matches!(err, TeacherError::InvalidInput(_)), "{err}");
    }
    let msg = teacher.try_forward(&bad[1]).unwrap_err().to_string();
    assert!(
        msg.contains("[B, 3, H, W]") && msg.contains("[1, 1, 32, 32]"),
        "{msg}"
    );
    let ok = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(teacher.try_forward(&ok).unwrap()[2].size(), [1, 256, 2, 2]);
}

#[test]
fn bn_uses_running_statistics() {
    // A sample's features do not depend on the other samples of the batch: BatchNorm never uses
    // batch statistics (train-mode BN would normalise over the batch).
    tch::manual_seed(1);
    let (_vs, teacher) = build(TeacherArch::EfficientNetLite0);
    let a = Tensor::randn([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));
    let single = tch::no_grad(|| teacher.forward(&a));
    let batch = tch::no_grad(|| teacher.forward(&Tensor::cat(&[&a, &b], 0)));
    for (s, bt) in single.iter().zip(&batch) {
        let diff = (s - bt.narrow(0, 0, 1)).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "batch composition changed a sample's features by {diff}"
        );
    }
}
