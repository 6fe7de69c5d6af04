//! Multiply-accumulate counts of the network against the reference's FLOP figures.
//!
//! The reference's counter (issue 19) gives the paper configuration (ResNet34 teacher, decoder
//! depths [3, 9, 9, 7], 256x256) 22.1 GFLOP per image of inference and depths [1, 1, 1, 1]
//! 10.6 GFLOP, counting a multiply-add as two FLOPs.
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use tch::Device;

fn macs(teacher: TeacherArch, depths: [usize; 4]) -> omniad_model::MacCount {
    let cfg = OmniAdConfig {
        teacher,
        depths,
        ..OmniAdConfig::paper()
    };
    OmniAd::new(&cfg, Device::Cpu).unwrap().macs_per_image()
}

#[test]
fn paper_configuration_matches_the_reference_flop_count() {
    let paper = macs(TeacherArch::Resnet34, [3, 9, 9, 7]);
    let small = macs(TeacherArch::Resnet34, [1, 1, 1, 1]);
    let gflop = |m: u64| 2.0 * m as f64 / 1e9;
    let (p, s) = (gflop(paper.inference()), gflop(small.inference()));
    println!(
        "ResNet34 [3,9,9,7]: {p:.2} GFLOP (reference 22.1); [1,1,1,1]: {s:.2} (reference 10.6)"
    );
    assert!((p / 22.1 - 1.0).abs() < 0.01, "{p}");
    assert!((s / 10.6 - 1.0).abs() < 0.01, "{s}");
    // The teacher does not depend on the decoder; ResNet34 to layer3 at 256x256 by hand:
    // conv1 7x7x3x64 at 128^2, layer1 6 convs 3x3x64x64 at 64^2, layer2 8 convs 3x3 (the first
    // 64 -> 128, stride 2) + 1x1 downsample at 32^2, layer3 12 convs + downsample at 16^2.
    let hand: u64 = 147 * 64 * 128 * 128
        + 6 * 576 * 64 * 64 * 64
        + (576 * 128 + 7 * 1152 * 128 + 64 * 128) * 32 * 32
        + (1152 * 256 + 11 * 2304 * 256 + 128 * 256) * 16 * 16;
    assert_eq!(paper.teacher, hand);
    assert_eq!(small.teacher, hand);
    assert_eq!(paper.anomaly_map, small.anomaly_map);
    // 24 more Omni-blocks: the student grows, the training step counts it three times.
    assert!(paper.student > 5 * small.student);
    assert_eq!(paper.train_step(), paper.teacher + 3 * paper.student);
}

#[test]
fn efficientnet_teacher_is_counted_too() {
    let m = macs(TeacherArch::EfficientNetLite0, [1, 1, 1, 1]);
    // EfficientNet-Lite0 blocks 0..10 at 256x256: about 0.32 GMAC (0.39 GMAC for the whole
    // classifier at 224x224, published).
    assert!(
        m.teacher > 250_000_000 && m.teacher < 400_000_000,
        "{}",
        m.teacher
    );
    assert!(m.student > 0 && m.anomaly_map > 0);
}
