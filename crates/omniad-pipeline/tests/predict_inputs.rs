//! Inputs and bad input of `omniad predict`: folder walking, output names, corrupt images
//! (reported, the others scored), missing paths, unwritable output folders, runs without
//! checkpoint, invalid options.
mod predict_common;

use std::path::{Path, PathBuf};

use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::predict::{
    collect_inputs, collect_inputs_reporting, common_ancestor, output_stems, predict_run,
    relative_stem, PredictOptions, PredictRecord,
};
use predict_common::*;

fn err_text(r: anyhow::Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", r.unwrap_err())
}

/// An entry of a folder that cannot be read (a symbolic-link loop, a dangling link) is
/// reported by name and the rest of the folder is still listed; `collect_inputs` stays strict.
#[cfg(unix)]
#[test]
fn unreadable_folder_entries_are_reported_and_the_rest_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("imgs");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::write(d.join("a.png"), b"x").unwrap();
    std::fs::write(d.join("sub/b.png"), b"x").unwrap();
    std::os::unix::fs::symlink("..", d.join("sub/up")).unwrap(); // a loop
    std::os::unix::fs::symlink(d.join("gone.png"), d.join("dangling.png")).unwrap();
    let (found, bad) = collect_inputs_reporting(std::slice::from_ref(&d)).unwrap();
    assert_eq!(found, vec![d.join("a.png"), d.join("sub/b.png")]);
    let mut named: Vec<PathBuf> = bad.iter().map(|f| f.path.clone()).collect();
    named.sort();
    assert_eq!(
        named,
        vec![d.join("dangling.png"), d.join("sub/up")],
        "{bad:?}"
    );
    for f in &bad {
        assert!(
            f.error.contains(&f.path.display().to_string()),
            "{}",
            f.error
        );
    }
    let e = err_text(collect_inputs(&[d]));
    assert!(e.contains("dangling.png") || e.contains("up"), "{e}");
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
    let masks: Vec<&PathBuf> = r.iter().map(|x| x.mask.as_ref().unwrap()).collect();
    // Paths relative to the inputs' common folder (tmp), separators as `__`.
    assert_eq!(
        overlays,
        [
            &out.join("good__000_overlay.png"),
            &out.join("bad__000_overlay.png"),
            &out.join("bad__001_overlay.png"),
        ]
    );
    assert_eq!(masks[1], &out.join("bad__000_mask.png"));
    for (rec, o) in r.iter().zip(&overlays) {
        let img = image::open(o).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (rec.width, rec.height),
            "{}",
            o.display()
        );
    }
    assert_eq!(file_names(&out).len(), 6, "{:?}", file_names(&out));
    // Stable names from one call to the next.
    let again = predict(&run, &inputs, &opts).unwrap();
    assert_eq!(
        again.iter().map(|x| x.overlay.clone()).collect::<Vec<_>>(),
        r.iter().map(|x| x.overlay.clone()).collect::<Vec<_>>()
    );
    assert_eq!(file_names(&out).len(), 6);
}

/// The stems of inputs that need not exist (names are computed from the paths alone).
fn stems_of(inputs: &[&str], out: &Path) -> Vec<String> {
    let inputs: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
    output_stems(&inputs, out)
}

#[test]
fn stems_are_paths_relative_to_the_common_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    assert_eq!(
        stems_of(&["data/a/test/001.png", "data/b/test/001.png"], out),
        ["a__test__001", "b__test__001"]
    );
    // A folder of MVTec test images: relative to that folder.
    assert_eq!(
        stems_of(
            &[
                "data/a/test/crack/001.png",
                "data/a/test/good/001.png",
                "data/a/test/good/002.png",
            ],
            out
        ),
        ["crack__001", "good__001", "good__002"]
    );
    // Files of one folder, or a single file: plain stems; `.` and `x/../` removed lexically
    // (names only: the files are read by the paths as given).
    assert_eq!(stems_of(&["p/q/x.jpeg", "p/q/y.png"], out), ["x", "y"]);
    assert_eq!(stems_of(&["deep/er/scan.v2.tif"], out), ["scan.v2"]);
    assert_eq!(
        stems_of(&["./d/x.png", "d/./y.png", "d/e/../z.png"], out),
        ["x", "y", "z"]
    );
    // Relative and absolute inputs meet at their common folder.
    let here = std::env::current_dir().unwrap();
    let abs = here.join("k/l/m.png");
    let abs = abs.to_str().unwrap();
    assert_eq!(stems_of(&[abs, "k/n.png"], out), ["l__m", "n"]);

    // The pieces: the common folder of the parents, and the stem below it.
    let paths = [PathBuf::from("/r/s/t/u.png"), PathBuf::from("/r/s/v/w.png")];
    assert_eq!(common_ancestor(&paths), PathBuf::from("/r/s"));
    assert_eq!(common_ancestor(&paths[..1]), PathBuf::from("/r/s/t"));
    assert_eq!(common_ancestor(&[]), PathBuf::new());
    assert_eq!(
        relative_stem(Path::new("/r/s/t/u.png"), Path::new("/r/s")),
        "t__u"
    );
    assert_eq!(
        relative_stem(Path::new("/elsewhere/u.png"), Path::new("/r/s")),
        "elsewhere__u",
        "a path not below the folder is taken whole"
    );
    assert_eq!(
        relative_stem(Path::new("/r/s/.png"), Path::new("/r/s")),
        ".png"
    );
    // Very long paths keep the last 200 bytes (the file end of the name).
    let long = format!("/r/{}/é{}/z.png", "a".repeat(150), "b".repeat(150));
    let stem = relative_stem(Path::new(&long), Path::new("/r"));
    assert!(stem.len() <= 200 && stem.len() >= 197, "{}", stem.len());
    assert!(stem.ends_with(&format!("{}__z", "b".repeat(150))), "{stem}");
}

#[test]
fn stems_never_collide_nor_overwrite_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let names = [
        "A.png",
        "a.jpg",
        "x.png",
        "x_overlay.png",
        "sub/A.png",
        "p__q/r.png",
        "p/q__r.png",
        "y.png",
        "y.bmp",
        "y-7.png",
    ];
    for f in names {
        std::fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
        std::fs::write(d.join(f), b"x").unwrap();
    }
    let inputs: Vec<PathBuf> = names.iter().map(|f| d.join(f)).collect();
    let stems = output_stems(&inputs, d);
    assert_eq!(
        stems,
        [
            "A-0",       // A and a collide case-insensitively: both get their index
            "a-1",       //
            "x-2",       // x_overlay.png in the output folder is an input
            "x_overlay", // x_overlay_overlay.png is not
            "sub__A",    // a different relative path
            "p__q__r-5", // p__q/r and p/q__r give the same name
            "p__q__r-6",
            "y-7", // y.png and y.bmp collide...
            "y-8",
            "y-7-9", // ...and y-7.png's plain name is taken: lengthened
        ]
    );
    let lower: std::collections::HashSet<String> = stems.iter().map(|s| s.to_lowercase()).collect();
    assert_eq!(lower.len(), names.len(), "{stems:?}");
    assert_eq!(output_stems(&inputs, d), stems, "deterministic");
}

#[test]
fn bad_images_are_reported_and_the_others_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let model = make_run(&run, (64, 64), None);
    let good = tmp.path().join("good.png");
    write_rgb(&good, 64, 64, 5);
    let corrupt = tmp.path().join("broken_scan.png");
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, b"this is not an image").unwrap();
    let later = tmp.path().join("later.png");
    write_gray(&later, 30, 20, 6);
    let missing = tmp.path().join("missing.png");
    let (good_score, _) = reference(&model, &good);
    let (later_score, _) = reference(&model, &later);

    // Batches of 1 and of 4 (the bad images in the same batch as good ones): every input gets an
    // outcome in order, the failures name the file and the problem, the others are scored as
    // alone (batch of one) or together.
    for batch_size in [1, 4] {
        let out = tmp.path().join(format!("out{batch_size}"));
        let opts = PredictOptions {
            out: Some(out.clone()),
            batch_size,
            threshold: Some(0.1),
            ..Default::default()
        };
        let inputs = [
            good.clone(),
            corrupt.clone(),
            text.clone(),
            later.clone(),
            missing.clone(),
        ];
        let outcomes = predict_outcomes(&run, &inputs, &opts).unwrap();
        let errors: Vec<Option<&str>> = outcomes
            .iter()
            .map(|o| o.failure().map(|f| f.error.as_str()))
            .collect();
        assert!(errors[0].is_none() && errors[3].is_none(), "{errors:?}");
        let e = errors[1].unwrap();
        assert!(
            e.contains("broken_scan.png") && e.contains("cannot decode"),
            "{e}"
        );
        let e = errors[2].unwrap();
        assert!(
            e.contains("notes.png") && e.contains("Invalid PNG signature"),
            "{e}"
        );
        let e = errors[4].unwrap();
        assert!(
            e.contains("missing.png") && e.contains("does not exist"),
            "{e}"
        );
        let scored: Vec<&PredictRecord> = outcomes.iter().filter_map(|o| o.record()).collect();
        assert_eq!(scored.len(), 2);
        for (r, want) in scored.iter().zip([good_score, later_score]) {
            assert!(
                (r.image_score - want).abs() < 1e-5,
                "{} vs {want}",
                r.image_score
            );
        }
        assert_eq!((scored[1].width, scored[1].height), (30, 20));
        assert_eq!(
            file_names(&out),
            [
                "good_mask.png",
                "good_overlay.png",
                "later_mask.png",
                "later_overlay.png"
            ]
        );
        // The failure line `omniad predict` prints.
        let line: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&outcomes[1]).unwrap()).unwrap();
        assert_eq!(line["path"], corrupt.to_str().unwrap());
        assert_eq!(line["error"], errors[1].unwrap());
        assert_eq!(line.as_object().unwrap().len(), 2, "{line}");
    }

    // A batch of bad images only: no forward pass needed, still one outcome each.
    let outcomes = predict_outcomes(
        &run,
        &[corrupt.clone(), text.clone()],
        &PredictOptions::default(),
    )
    .unwrap();
    assert!(outcomes.iter().all(|o| o.failure().is_some()));

    // An output file that cannot be written fails that image only: a folder where its overlay
    // should go.
    let out = tmp.path().join("blocked");
    std::fs::create_dir_all(out.join("later_overlay.png")).unwrap();
    let outcomes = predict_outcomes(
        &run,
        &[good.clone(), later.clone()],
        &PredictOptions {
            out: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(outcomes[0].record().unwrap().overlay.is_some());
    let e = &outcomes[1].failure().expect("unwritable overlay").error;
    assert!(
        e.contains("later.png") && e.contains("later_overlay.png"),
        "{e}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    make_run(&run, (64, 64), None);
    let good = tmp.path().join("good.png");
    write_rgb(&good, 64, 64, 5);

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
