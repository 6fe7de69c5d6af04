//! The paper's ablations as configuration: which parameters exist and that each variant runs.
use omniad_model::{Branches, GlobalAttention, OmniAd, OmniAdConfig, TeacherArch};
use tch::{Device, Kind, Tensor};

fn build(branches: Branches, attention: GlobalAttention, num_tokens: i64) -> OmniAd {
    let cfg = OmniAdConfig {
        teacher: TeacherArch::EfficientNetLite0,
        depths: [1, 1, 1, 1],
        image_size: (64, 64),
        branches,
        attention,
        num_tokens,
        ..OmniAdConfig::paper()
    };
    OmniAd::new(&cfg, Device::Cpu).unwrap()
}

fn names(m: &OmniAd) -> Vec<String> {
    m.trainable_named().into_iter().map(|(n, _)| n).collect()
}

fn runs(m: &OmniAd) {
    let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
    let (t, s) = m.forward_t(&x, true);
    for (a, b) in t.iter().zip(&s) {
        assert_eq!(a.size(), b.size());
    }
    OmniAd::loss(&t, &s).backward();
    let p = m.predict(&x);
    assert_eq!(p.anomaly_map.size(), vec![2, 64, 64]);
    assert!(p.image_scores.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn branch_ablations_build_only_their_branch() {
    tch::set_num_threads(1);
    let prefix = "net_s.layers_up.0.blocks.0.blocks.0.";
    let both = build(Branches::Both, GlobalAttention::LearnableTokens, 64);
    let global = build(Branches::GlobalOnly, GlobalAttention::LearnableTokens, 64);
    let local = build(Branches::LocalOnly, GlobalAttention::LearnableTokens, 64);
    let has = |m: &OmniAd, part: &str| {
        names(m)
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}{part}")))
    };
    assert!(has(&both, "toProxy.") && has(&both, "conv33.") && has(&both, "mlp."));
    assert!(
        has(&global, "toProxy.")
            && !has(&global, "conv33.")
            && !has(&global, "conv55.")
            && !has(&global, "mlp.")
    );
    assert!(!has(&local, "toProxy.") && has(&local, "conv55."));
    for m in [&both, &global, &local] {
        runs(m);
    }
    let count = |m: &OmniAd| m.num_params().0;
    assert!(count(&global) < count(&both) && count(&local) < count(&both));
}

#[test]
fn attention_and_token_ablations() {
    tch::set_num_threads(1);
    let sa = build(Branches::Both, GlobalAttention::SelfAttention, 64);
    let n = names(&sa);
    assert!(n.iter().any(|n| n.ends_with("toProxy.q.weight")));
    assert!(!n
        .iter()
        .any(|n| n.contains("learnable_q") || n.contains("kv_y") || n.contains("ffn2")));
    runs(&sa);
    let t16 = build(Branches::Both, GlobalAttention::LearnableTokens, 16);
    let lq = t16
        .trainable_named()
        .into_iter()
        .find(|(n, _)| n == "net_s.layers_up.0.blocks.0.blocks.0.toProxy.learnable_q")
        .unwrap();
    assert_eq!(lq.1.size(), vec![1, 16, 512]);
    runs(&t16);
    let bad = OmniAdConfig {
        num_tokens: 10,
        ..OmniAdConfig::paper()
    };
    assert!(OmniAd::new(&bad, Device::Cpu)
        .unwrap_err()
        .0
        .contains("perfect square"));
}
