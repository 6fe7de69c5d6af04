//! Values computed independently (scikit-learn, an exact AUPRO and ADer's
//! `cal_pro_score`) for the `metrics/case1_*.safetensors` fixtures.

use std::path::PathBuf;

use omniad_metrics::{
    evaluate_file, Accumulator, ImageRecord, Metric, MetricOptions, PixelRecord, Report,
};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    omniad_testkit::fixture_dir("metrics", "expected.json")
}

fn expected() -> serde_json::Value {
    let p = fixtures().join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const CASES: [&str; 4] = ["case1_0", "case1_1", "case1_2", "case1_3"];

fn tolerance(m: Metric) -> f64 {
    match m {
        Metric::PixelAupro => 1e-4,
        Metric::PixelAuproAder => 1e-3,
        _ => 1e-6,
    }
}

fn check(case: &str, report: &Report, want: &serde_json::Value) {
    assert_eq!(report.classes.len(), 1, "{case}: one class expected");
    let c = &report.classes[0];
    let mut checked = 0;
    for m in Metric::ALL {
        let Some(w) = want[case].get(m.key()) else {
            continue;
        };
        let w = w
            .as_f64()
            .unwrap_or_else(|| panic!("{case}.{} not a number", m.key()));
        let got = c
            .metrics
            .get(&m)
            .and_then(|v| v.value())
            .unwrap_or_else(|| {
                panic!(
                    "{case}: {} missing or undefined: {:?}",
                    m.key(),
                    c.metrics.get(&m)
                )
            });
        assert!(
            (got - w).abs() <= tolerance(m),
            "{case}: {} = {got}, expected {w} (tolerance {})",
            m.key(),
            tolerance(m)
        );
        checked += 1;
    }
    assert_eq!(
        checked, 8,
        "{case}: expected.json should hold the 8 metrics"
    );
}

#[test]
fn file_api_matches_reference_values() {
    let want = expected();
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    for case in CASES {
        let path = fixtures().join(format!("{case}.safetensors"));
        let report = evaluate_file(&path, &opts).unwrap_or_else(|e| panic!("{e}"));
        check(case, &report, &want);
        // JSON carries the same numbers under the metric names
        let j = report.to_json();
        let a = j["classes"][0]["pixel_aupro"].as_f64().unwrap();
        assert!((a - want[case]["pixel_aupro"].as_f64().unwrap()).abs() < 1e-4);
        let m = j["mean"]["image_auroc"].as_f64().unwrap();
        assert!((m - want[case]["image_auroc"].as_f64().unwrap()).abs() < 1e-6);
        // mAD = mean of the seven exact metrics
        let mad: f64 = Metric::MAD
            .iter()
            .map(|m| want[case][m.key()].as_f64().unwrap())
            .sum::<f64>()
            / 7.0;
        assert!((j["classes"][0]["mad"].as_f64().unwrap() - mad).abs() < 1e-5);
        assert!((j["mean"]["mad"].as_f64().unwrap() - mad).abs() < 1e-5);
    }
}

#[test]
fn streaming_api_matches_reference_values() {
    let want = expected();
    let opts = MetricOptions {
        ader: true,
        ..MetricOptions::default()
    };
    for case in CASES {
        let path = fixtures().join(format!("{case}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let f32s = |name: &str| -> Vec<f32> {
            st.tensor(name)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let maps = f32s("anomaly_maps");
        let scores = f32s("image_scores");
        let masks = st.tensor("masks").unwrap();
        let shape = masks.shape().to_vec();
        let masks = masks.data();
        let labels = st.tensor("labels").unwrap().data();
        let (n, h, w) = (shape[0], shape[1], shape[2]);
        let mut acc = Accumulator::new(opts.clone()).unwrap();
        for i in 0..n {
            acc.push(ImageRecord {
                class: "case",
                image_score: scores[i],
                label: labels[i] == 1,
                pixels: Some(PixelRecord {
                    anomaly_map: &maps[i * h * w..(i + 1) * h * w],
                    mask: Some(&masks[i * h * w..(i + 1) * h * w]),
                    height: h,
                    width: w,
                }),
                sample_id: None,
            })
            .unwrap();
        }
        let report = acc.finish().unwrap();
        check(case, &report, &want);
    }
}
