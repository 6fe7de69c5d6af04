//! The report of a fixture run folder: its numbers, curves, galleries and self-containment, and
//! the errors a user can cause.
mod common;

use common::{attrs, make_run, sections};
use omniad_report::{build_report, write_report, ReportOptions};
use serde_json::Value;

const CLASSES: &[(&str, usize, usize)] = &[("bolt", 12, 14), ("fabric", 9, 11), ("cap", 10, 0)];

fn section<'a>(html: &'a str, class: &str) -> &'a str {
    let marker = format!("<section class=\"class\" id=\"class-{class}\"");
    let i = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no section {class}"));
    let rest = &html[i..];
    &rest[..rest.find("</section>").unwrap()]
}

#[test]
fn table_numbers_are_those_of_metrics_json() {
    let f = make_run(CLASSES, true);
    let r = build_report(&f.run, &ReportOptions::default()).unwrap();
    let html = common::unescape(&r.html);
    let metrics: Value = serde_json::from_str(&common::read(&f.run.join("metrics.json"))).unwrap();
    let table = &html[html.find("<table id=\"metrics\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows = sections(table, "<tr class=\"");
    // 3 classes + mean
    assert_eq!(rows.len(), 4, "{table}");
    let mut checked = 0;
    for row in rows {
        let class = attrs(row, "data-class")[0];
        let want = if class == "mean" {
            metrics["mean"].clone()
        } else {
            metrics["classes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["class"] == class)
                .unwrap()
                .clone()
        };
        let cells = sections(row, "<td data-key=\"");
        assert_eq!(cells.len(), 8, "7 metrics + mAD: {row}");
        for cell in cells {
            let key = &cell[..cell.find('"').unwrap()];
            match want[key].as_f64() {
                Some(v) => {
                    let got: f64 = attrs(cell, "data-value")[0].parse().unwrap();
                    assert_eq!(got, v, "{class} {key}");
                    let text = &cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()];
                    assert_eq!(text, format!("{:.1}", 100.0 * v), "{class} {key}");
                    checked += 1;
                }
                None => {
                    assert!(want[key].is_null(), "{class} {key}");
                    assert!(cell.contains(">n/a</td>"), "{class} {key}: {cell}");
                    // the reason of metrics.json is the cell's title
                    if class != "mean" {
                        let reason = want["undefined"][key].as_str().unwrap();
                        assert!(cell.contains(reason), "{cell}");
                    }
                }
            }
        }
    }
    // cap has no anomalous image: its image metrics and pixel metrics are n/a
    assert!(checked > 20, "{checked}");
    assert_eq!(r.classes, vec!["bolt", "fabric", "cap"]);
}

#[test]
fn curves_histograms_and_operating_points_per_class() {
    let f = make_run(CLASSES, true);
    let r = build_report(&f.run, &ReportOptions::default()).unwrap();
    let html = &common::unescape(&r.html);
    assert_eq!(
        attrs(html, "data-chart")
            .iter()
            .filter(|k| **k == "loss")
            .count(),
        1
    );
    for (class, _, n_bad) in CLASSES {
        let s = section(html, class);
        let kinds = attrs(s, "data-chart");
        if *n_bad > 0 {
            assert_eq!(kinds, vec!["roc", "pr", "pro", "scores"], "{class}");
        } else {
            // no anomalous image: no ROC/PR/PRO, with the reason
            assert_eq!(kinds, vec!["scores"], "{class}");
            assert!(s.contains("no ROC or precision-recall curve"), "{s}");
            assert!(s.contains("no PRO curve"), "{s}");
        }
        assert_eq!(s.matches("<svg").count(), kinds.len());
        // operating point at the stored per-class threshold, `score >= threshold`
        let t = f.thresholds.per_class.get(*class).copied().unwrap_or(0.5);
        let sc = &f.scores[*class];
        let count = |flag: bool, lab: bool| {
            sc.iter()
                .filter(|(s, l)| (*s as f64 >= t) == flag && *l == lab)
                .count()
        };
        let op = &s[s.find("<table class=\"op\">").unwrap()..];
        let cells: Vec<&str> = op
            .split("<td>")
            .skip(1)
            .map(|c| &c[..c.find("</td>").unwrap()])
            .collect();
        let want = [
            count(true, true),
            count(true, false),
            count(false, false),
            count(false, true),
        ];
        let got: Vec<usize> = cells[..4].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(got, want, "{class}: TP FP TN FN");
        assert_eq!(got.iter().sum::<usize>(), sc.len());
        if *n_bad > 0 {
            let tp = want[0] as f64;
            assert_eq!(
                cells[5],
                format!("{:.1}%", 100.0 * tp / *n_bad as f64),
                "recall"
            );
        } else {
            assert!(
                cells[5].starts_with("n/a"),
                "recall without anomalies: {}",
                cells[5]
            );
        }
        // the threshold is drawn on the score histogram
        let hist = &s[s.find("data-chart=\"scores\"").unwrap()..];
        assert!(hist.contains(&format!("threshold {t:.4}")), "{class}");
    }
}

#[test]
fn self_contained_and_thumbnail_budget() {
    let f = make_run(CLASSES, true);
    for budget in [0usize, 2, 5] {
        let opts = ReportOptions {
            thumbs_per_class: budget,
            thumb_size: 48,
        };
        let out = f.dir.path().join(format!("r{budget}.html"));
        let r = write_report(&f.run, &out, &opts).unwrap();
        let html = common::read(&out);
        assert_eq!(html, r.html);
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script"), "no script");
        assert!(!html.contains("<link"), "no external stylesheet");
        assert!(html.contains("Content-Security-Policy"));
        let srcs = attrs(&html, "src");
        assert!(
            srcs.iter().all(|s| s.starts_with("data:image/")),
            "{srcs:?}"
        );
        for (class, n_good, n_bad) in CLASSES {
            let s = section(&html, class);
            let rows = s.matches("<div class=\"thumb-row").count();
            // images that can be shown: every FN, FP and TP
            let t = f.thresholds.per_class.get(*class).copied().unwrap_or(0.5);
            let shown = f.scores[*class]
                .iter()
                .filter(|(s, l)| *l || *s as f64 >= t)
                .count();
            assert_eq!(
                rows,
                budget.min(shown),
                "{class} ({n_good}+{n_bad}), budget {budget}"
            );
            assert_eq!(s.matches("<img ").count(), 4 * rows, "{class}");
        }
        // every thumbnail is budget-sized: the image thumbnails decode to 48x48
        if let Some(uri) = srcs.first() {
            use base64::Engine as _;
            let b64 = uri.split_once(";base64,").unwrap().1;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            assert_eq!((img.width(), img.height()), (48, 48));
        }
    }
    // the first false negative of bolt is its lowest-scoring missed anomalous image
    let r = build_report(&f.run, &ReportOptions::default()).unwrap();
    let s = section(&r.html, "bolt");
    let t = f.thresholds.per_class["bolt"];
    let worst_fn = f.scores["bolt"]
        .iter()
        .filter(|(s, l)| *l && (*s as f64) < t)
        .map(|p| p.0)
        .fold(f32::INFINITY, f32::min);
    if worst_fn.is_finite() {
        let first = sections(s, "<div class=\"thumb-row kind-")[0];
        assert!(first.starts_with("false_negative"), "{first}");
        assert!(first.contains(&format!("score {worst_fn:.4}")), "{first}");
    }
}

#[test]
fn runs_without_maps_or_log_say_so() {
    let f = make_run(&CLASSES[..1], false);
    std::fs::remove_file(f.run.join("train_log.jsonl")).unwrap();
    let r = build_report(&f.run, &ReportOptions::default()).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("no anomaly maps saved")),
        "{:?}",
        r.warnings
    );
    assert!(
        r.warnings.iter().any(|w| w.contains("train_log.jsonl")),
        "{:?}",
        r.warnings
    );
    assert!(r.html.contains("no anomaly maps saved"));
    assert!(!r.html.contains("<div class=\"thumb-row"));
    let kinds = attrs(&r.html, "data-chart");
    assert_eq!(kinds, vec!["roc", "pr", "scores"]);
}

fn err(run: &std::path::Path) -> String {
    build_report(run, &ReportOptions::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn user_errors_name_the_file_and_field() {
    let f = make_run(&CLASSES[..2], true);
    let run = &f.run;
    let e = err(&run.join("nope"));
    assert!(
        e.contains("nope") && e.contains("run folder not found"),
        "{e}"
    );

    // missing results.json: says which file and what to run
    let results = std::fs::read(run.join("results.json")).unwrap();
    std::fs::remove_file(run.join("results.json")).unwrap();
    let e = err(run);
    assert!(
        e.contains("results.json") && e.contains("omniad eval"),
        "{e}"
    );
    // results.json of another evaluation (a class fewer)
    let mut v: Value = serde_json::from_slice(&results).unwrap();
    v["images"] = Value::Array(
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["class"] == "bolt")
            .cloned()
            .collect(),
    );
    std::fs::write(run.join("results.json"), v.to_string()).unwrap();
    let e = err(run);
    assert!(e.contains("fabric") && e.contains("omniad eval"), "{e}");
    // results.json of another evaluation (other scores)
    let mut v: Value = serde_json::from_slice(&results).unwrap();
    let first_bolt = v["images"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|i| i["class"] == "bolt" && i["anomalous"] == true)
        .unwrap();
    first_bolt["score"] = serde_json::json!(-5.0);
    std::fs::write(run.join("results.json"), v.to_string()).unwrap();
    let e = err(run);
    assert!(
        e.contains("bolt") && e.contains("I-AUROC") && e.contains("omniad eval"),
        "{e}"
    );
    std::fs::write(run.join("results.json"), &results).unwrap();

    // maps of another size
    let maps = std::fs::read(run.join("maps/bolt.safetensors")).unwrap();
    let mut v: Value = serde_json::from_slice(&results).unwrap();
    v["map_size"] = serde_json::json!([12, 12]);
    std::fs::write(run.join("results.json"), v.to_string()).unwrap();
    let e = err(run);
    assert!(
        e.contains("bolt.safetensors") && e.contains("anomaly_maps") && e.contains("shape"),
        "{e}"
    );
    std::fs::write(run.join("results.json"), &results).unwrap();
    std::fs::write(run.join("maps/bolt.safetensors"), b"garbage").unwrap();
    let e = err(run);
    assert!(
        e.contains("bolt.safetensors") && e.contains("safetensors"),
        "{e}"
    );
    std::fs::write(run.join("maps/bolt.safetensors"), &maps).unwrap();

    // a bad training-log line
    let log = std::fs::read(run.join("train_log.jsonl")).unwrap();
    std::fs::write(
        run.join("train_log.jsonl"),
        "{\"epoch\":1,\"step\":1,\"loss\":\"x\"}\n",
    )
    .unwrap();
    let e = err(run);
    assert!(
        e.contains("train_log.jsonl") && e.contains("line 1") && e.contains("loss"),
        "{e}"
    );
    std::fs::write(run.join("train_log.jsonl"), &log).unwrap();

    // model.json without thresholds (a run trained with --val-fraction 0, not calibrated):
    // the report still shows the metrics and curves, says why there is no operating point,
    // and shows no gallery
    let model = common::read(&run.join("model.json"));
    let mut m: Value = serde_json::from_str(&model).unwrap();
    m["thresholds"] = Value::Null;
    std::fs::write(run.join("model.json"), m.to_string()).unwrap();
    let r = build_report(run, &ReportOptions::default()).unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("no calibrated thresholds") && w.contains("omniad calibrate")),
        "{:?}",
        r.warnings
    );
    assert!(!r.html.contains("Operating point at the threshold"));
    assert!(!r.html.contains("<div class=\"thumb-row"));
    assert!(r
        .html
        .contains("no stored threshold: no operating point and no gallery"));
    assert!(r.html.contains("data-chart=\"roc\""));
    std::fs::write(run.join("model.json"), &model).unwrap();

    // metrics.json: missing, then malformed
    let metrics = std::fs::read(run.join("metrics.json")).unwrap();
    std::fs::write(run.join("metrics.json"), "{\"classes\": 3}").unwrap();
    let e = err(run);
    assert!(e.contains("metrics.json") && e.contains("`classes`"), "{e}");
    let mut m: Value = serde_json::from_slice(&metrics).unwrap();
    m["options"]["aupro_fpr_limit"] = Value::Null;
    std::fs::write(run.join("metrics.json"), m.to_string()).unwrap();
    let e = err(run);
    assert!(
        e.contains("metrics.json") && e.contains("aupro_fpr_limit"),
        "{e}"
    );
    std::fs::remove_file(run.join("metrics.json")).unwrap();
    let e = err(run);
    assert!(
        e.contains("metrics.json") && e.contains("omniad eval"),
        "{e}"
    );
    std::fs::write(run.join("metrics.json"), &metrics).unwrap();

    // options and output
    let e = build_report(
        run,
        &ReportOptions {
            thumb_size: 4,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("thumbnail size 4"), "{e}");
    let e = write_report(
        run,
        &run.join("no/such/dir/r.html"),
        &ReportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("r.html") && e.contains("does not exist"), "{e}");
    // and after all that, the run still gives a report
    build_report(run, &ReportOptions::default()).unwrap();
}
