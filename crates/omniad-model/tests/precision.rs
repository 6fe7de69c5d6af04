//! Mixed precision (`omniad_model::precision`): bfloat16 inference and training stay close to
//! float32 and keep float32 where the module docs say.
use omniad_model::{OmniAd, OmniAdConfig, Precision, TeacherArch};
use tch::{Device, Kind, Tensor};

fn model(teacher: TeacherArch) -> OmniAd {
    tch::manual_seed(3);
    let cfg = OmniAdConfig {
        teacher,
        depths: [1, 1, 1, 1],
        jitter_scale: 0.0,
        image_size: (64, 64),
        ..OmniAdConfig::paper()
    };
    OmniAd::new(&cfg, Device::Cpu).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn bf16_inference_is_close_to_f32_and_hands_out_f32() {
    for teacher in [TeacherArch::EfficientNetLite0, TeacherArch::Resnet34] {
        let m = model(teacher);
        let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let full = m.predict(&x);
        let low = Precision::Bf16.run(|| m.predict(&x));
        for t in [&low.anomaly_map, &low.image_scores, &low.descriptors] {
            assert_eq!(t.kind(), Kind::Float);
        }
        let (dm, ds) = (
            rel(&low.anomaly_map, &full.anomaly_map),
            rel(&low.image_scores, &full.image_scores),
        );
        println!("{teacher:?}: anomaly map {dm:.2e}, image scores {ds:.2e}");
        // bfloat16 rounds each operand to 8 bits (3.9e-3 relative); errors average out.
        assert!(dm < 2e-2 && ds < 2e-2, "{dm} {ds}");
        // The teacher runs in float32 under every precision: the class-recognition
        // descriptors (teacher features only) are bit-identical.
        assert!(low.descriptors.equal(&full.descriptors));
        // ...and it really ran in bfloat16
        assert!(dm > 1e-5, "{dm}");
        // Outside `run` the model is float32 again, bit for bit.
        assert!(m.predict(&x).anomaly_map.equal(&full.anomaly_map));
    }
}

#[test]
fn bf16_training_step_gives_f32_gradients_close_to_f32() {
    let m = model(TeacherArch::EfficientNetLite0);
    let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
    let grads = |p: Precision| {
        for (_, mut v) in m.trainable_named() {
            v.zero_grad();
        }
        // The teacher runs in float32 under every precision: the targets are exact.
        let t = p.run(|| m.teacher_features(&x));
        assert!(t[2].equal(&m.teacher_features(&x)[2]));
        let s = p.run(|| m.reconstruct(&t, true));
        let loss = OmniAd::loss(&t, &s);
        assert_eq!(loss.kind(), Kind::Float);
        loss.backward();
        let g: Vec<(String, Tensor)> = m
            .trainable_named()
            .into_iter()
            .map(|(n, v)| (n, v.grad().copy()))
            .collect();
        (loss.double_value(&[]), g)
    };
    let (l32, g32) = grads(Precision::F32);
    let (l16, g16) = grads(Precision::Bf16);
    assert!((l16 - l32).abs() < 1e-2 * l32, "loss {l16} vs {l32}");
    let flat = |g: &[(String, Tensor)]| {
        Tensor::cat(
            &g.iter().map(|(_, t)| t.flatten(0, -1)).collect::<Vec<_>>(),
            0,
        )
    };
    let mut worst: Vec<(f64, f64, String)> = Vec::new();
    for ((n, a), (_, b)) in g16.iter().zip(&g32) {
        assert_eq!(
            a.kind(),
            Kind::Float,
            "{n}: master-weight gradients are float32"
        );
        worst.push((
            (a - b).norm().double_value(&[]),
            b.norm().double_value(&[]),
            n.clone(),
        ));
    }
    worst.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap());
    for w in worst.iter().take(8) {
        println!("{w:?}");
    }
    let (a, b) = (flat(&g16), flat(&g32));
    let cos = (&a * &b).sum(Kind::Float).double_value(&[])
        / (a.norm().double_value(&[]) * b.norm().double_value(&[]));
    println!(
        "loss f32 {l32} bf16 {l16}; gradient cosine {cos:.5}, relative {:.2e}",
        rel(&a, &b)
    );
    // The decoder's bfloat16 backward pass perturbs the gradient reaching the neck by about
    // 1e-3, which its train-mode BatchNorms amplify (their gradients nearly cancel): the neck's
    // weight gradients end 10-15% away, the rest of the model within a few percent.
    assert!(cos > 0.99, "{cos}");
    assert!(rel(&a, &b) < 0.15, "{}", rel(&a, &b));
    assert!(rel(&a, &b) > 1e-5, "bf16 must differ from f32");
}

#[test]
fn counted_work_does_not_depend_on_precision() {
    let m = model(TeacherArch::Resnet34);
    let f = m.macs_per_image();
    let b = Precision::Bf16.run(|| m.macs_per_image());
    assert_eq!(f, b);
}
