//! Inputs and bad input of `omniad predict`: folder walking, name collisions, corrupt images,
//! missing paths, unwritable output folders, runs without checkpoint, invalid options.
mod predict_common;

use std::path::{Path, PathBuf};

use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::predict::{collect_inputs, output_stems, predict_run, PredictOptions};
use predict_common::*;

fn err_text(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.unwrap_err())
}

#[test]
fn folders_are_walked_sorted_without_hidden_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    for sub in ["b", "a/deep", ".hidden", "empty"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    for f in [
        "z.png",
        "b/2.JPG",
        "b/1.bmp",
        "a/deep/x.tiff",
        "a/y.png",
        ".hidden/h.png",
        ".dot.png",
        "notes.txt",
        "a/deep/readme.md",
    ] {
        std::fs::write(d.join(f), b"x").unwrap();
    }
    let single = tmp.path().join("single.dat");
    std::fs::write(&single, b"x").unwrap();
    let got = collect_inputs(&[d.clone(), single.clone(), d.join("z.png")]).unwrap();
    let want: Vec<PathBuf> = ["a/deep/x.tiff", "a/y.png", "b/1.bmp", "b/2.JPG", "z.png"]
        .iter()
        .map(|f| d.join(f))
        .chain([single])
        .collect();
    assert_eq!(got, want, "z.png given twice is kept once");

    // A hidden folder given explicitly is walked.
    assert_eq!(
        collect_inputs(&[d.join(".hidden")]).unwrap(),
        vec![d.join(".hidden/h.png")]
    );

    let missing = tmp.path().join("nope.png");
    let err = err_text(collect_inputs(&[d.clone(), missing]));
    assert!(err.contains("nope.png"), "{err}");
    let err = err_text(collect_inputs(&[d.join("empty")]));
    assert!(
        err.contains("no image found") && err.contains("empty"),
        "{err}"
    );
    assert!(collect_inputs(&[]).is_err());
}

#[test]
fn same_stem_in_two_folders_gives_two_files() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    make_run(&run, (64, 64), None);
    for d in ["good", "bad"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    write_rgb(&tmp.path().join("good/000.png"), 70, 60, 1);
    write_gray(&tmp.path().join("bad/000.png"), 60, 70, 2);
    write_rgb(&tmp.path().join("bad/001.png"), 64, 64, 3);
    let inputs = collect_inputs(&[tmp.path().join("good"), tmp.path().join("bad")]).unwrap();
    let out = tmp.path().join("out");
    let opts = PredictOptions {
        out: Some(out.clone()),
        threshold: Some(0.05),
        ..Default::default()
    };
    let r = predict(&run, &inputs, &opts).unwrap();
    let overlays: Vec<&PathBuf> = r.iter().map(|x| x.overlay.as_ref().unwrap()).collect();
    assert_ne!(overlays[0], overlays[1]);
    assert_eq!(
        overlays[2],
        &out.join("001_overlay.png"),
        "a unique stem keeps its plain name"
    );
    for (rec, o) in r.iter().zip(&overlays) {
        let img = image::open(o).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (rec.width, rec.height),
            "{}",
            o.display()
        );
    }
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name(overlays[0]).starts_with("000-") && name(overlays[1]).starts_with("000-"));
    assert_eq!(file_names(&out).len(), 6, "{:?}", file_names(&out));
    // Stable names from one call to the next.
    let again = predict(&run, &inputs, &opts).unwrap();
    assert_eq!(
        again.iter().map(|x| x.overlay.clone()).collect::<Vec<_>>(),
        r.iter().map(|x| x.overlay.clone()).collect::<Vec<_>>()
    );
    assert_eq!(file_names(&out).len(), 6);
}

#[test]
fn stems_never_collide_nor_overwrite_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for f in ["A.png", "a.jpg", "x.png", "x_overlay.png", "sub/A.png"] {
        std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
        std::fs::write(d.join(f), b"x").unwrap();
    }
    let inputs: Vec<PathBuf> = ["A.png", "a.jpg", "x.png", "x_overlay.png", "sub/A.png"]
        .iter()
        .map(|f| d.join(f))
        .collect();
    let stems = output_stems(&inputs, d);
    let lower: std::collections::HashSet<String> = stems.iter().map(|s| s.to_lowercase()).collect();
    assert_eq!(lower.len(), 5, "{stems:?}");
    assert_ne!(
        stems[2], "x",
        "x_overlay.png in the output folder is an input: {stems:?}"
    );
    assert_eq!(stems[3], "x_overlay");
    assert!(
        stems[0].starts_with("A-") && stems[1].starts_with("a-") && stems[4].starts_with("A-"),
        "{stems:?}"
    );
    assert_eq!(output_stems(&inputs, d), stems, "deterministic");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    make_run(&run, (64, 64), None);
    let good = tmp.path().join("good.png");
    write_rgb(&good, 64, 64, 5);
    let corrupt = tmp.path().join("broken_scan.png");
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, b"this is not an image").unwrap();

    // Corrupt image: an error naming it; the images before it were reported; no partial file.
    let out = tmp.path().join("out");
    let mut seen = Vec::new();
    let opts = PredictOptions {
        out: Some(out.clone()),
        batch_size: 1,
        threshold: Some(0.1),
        ..Default::default()
    };
    let later = tmp.path().join("later.png");
    write_gray(&later, 30, 20, 6);
    let res = predict_run(
        &run,
        &[good.clone(), corrupt.clone(), later],
        ComputeDevice::Cpu,
        &opts,
        |r| {
            seen.push(r.path.clone());
            Ok(())
        },
    );
    let err = err_text(res);
    assert!(err.contains("broken_scan.png"), "{err}");
    assert_eq!(seen, vec![good.clone()]);
    assert_eq!(
        file_names(&out),
        vec!["good_mask.png".to_string(), "good_overlay.png".to_string()]
    );
    let err = err_text(predict(&run, &[text], &PredictOptions::default()));
    assert!(err.contains("notes.png"), "{err}");
    // Within one batch too.
    let err = err_text(predict(
        &run,
        &[good.clone(), corrupt.clone()],
        &PredictOptions {
            batch_size: 4,
            ..Default::default()
        },
    ));
    assert!(err.contains("broken_scan.png"), "{err}");

    // Nonexistent input.
    let missing = tmp.path().join("missing.png");
    let err = err_text(predict(&run, &[missing], &PredictOptions::default()));
    assert!(err.contains("missing.png"), "{err}");

    // Unwritable output folder (below a regular file): an error before any image is read.
    let blocker = tmp.path().join("file.txt");
    std::fs::write(&blocker, b"x").unwrap();
    let mut called = false;
    let res = predict_run(
        &run,
        std::slice::from_ref(&good),
        ComputeDevice::Cpu,
        &PredictOptions {
            out: Some(blocker.join("out")),
            ..Default::default()
        },
        |_| {
            called = true;
            Ok(())
        },
    );
    let err = err_text(res);
    assert!(
        err.contains("file.txt") && err.contains("output folder"),
        "{err}"
    );
    assert!(!called);

    // Run folder without checkpoint.
    let empty_run = tmp.path().join("empty_run");
    std::fs::create_dir_all(&empty_run).unwrap();
    let err = err_text(predict(
        &empty_run,
        std::slice::from_ref(&good),
        &PredictOptions::default(),
    ));
    assert!(
        err.contains("no checkpoint") && err.contains("empty_run"),
        "{err}"
    );

    // Invalid options.
    for (opts, want) in [
        (
            PredictOptions {
                batch_size: 0,
                ..Default::default()
            },
            "batch size",
        ),
        (
            PredictOptions {
                alpha: 1.5,
                ..Default::default()
            },
            "alpha",
        ),
        (
            PredictOptions {
                threshold: Some(f64::NAN),
                ..Default::default()
            },
            "threshold",
        ),
    ] {
        let err = err_text(predict(&run, std::slice::from_ref(&good), &opts));
        assert!(err.contains(want), "{err}");
    }
    let err = "tpu".parse::<ComputeDevice>().unwrap_err().to_string();
    assert!(err.contains("tpu"), "{err}");
    // An error of the caller's sink stops the run and is returned.
    let err = err_text(predict_run(
        &run,
        &[good.clone(), good],
        ComputeDevice::Cpu,
        &PredictOptions::default(),
        |_| anyhow::bail!("stdout closed"),
    ));
    assert!(err.contains("stdout closed"), "{err}");
}
