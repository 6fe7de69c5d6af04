//! The report in a real browser: headless Chromium opens it from a file, without network
//! access (the host resolver maps every name to nothing), and must render it — every class
//! section, chart and thumbnail in the DOM — with no console message (a blocked request would be
//! one: the page's Content-Security-Policy refuses every load that is not inline). A screenshot
//! is saved in the target folder.
//!
//! Runs when Chromium is installed (`/usr/bin/chromium`, or the binary named by
//! `OMNIAD_CHROMIUM`); otherwise it prints a notice and passes. `.ci/run` installs Chromium.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use omniad_report::{write_report, ReportOptions};

/// Runs Chromium headless on `page` with `extra` flags; returns (stdout, stderr).
fn headless(bin: &Path, page: &Path, profile: &Path, extra: &[&str]) -> (String, String) {
    let url = format!("file://{}", page.display());
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Console messages and refused loads in Chromium's log.
fn console_problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Refused to"))
        .collect()
}

#[test]
fn report_renders_in_headless_chromium_without_requests() {
    let Some(bin) = omniad_testkit::chromium() else {
        println!(
            "notice: Chromium not found (/usr/bin/chromium, OMNIAD_CHROMIUM): browser test skipped"
        );
        return;
    };
    let f = common::make_run(&[("bolt", 12, 14), ("fabric", 9, 11)], true);
    let page = f.dir.path().join("report.html");
    write_report(&f.run, &page, &ReportOptions::default()).unwrap();
    let profile = f.dir.path().join("chromium-profile");

    // the rendered DOM holds the table, every chart and every thumbnail
    let (dom, stderr) = headless(&bin, &page, &profile, &["--dump-dom"]);
    assert!(dom.contains("<table id=\"metrics\""), "{dom}");
    assert_eq!(dom.matches("<section class=\"class\"").count(), 2);
    assert_eq!(
        dom.matches("<svg").count(),
        1 + 2 * 4,
        "loss + 4 charts per class"
    );
    assert_eq!(
        dom.matches("<img ").count(),
        2 * 4 * 6,
        "6 images x 4 thumbnails per class"
    );
    let problems = console_problems(&stderr);
    assert!(problems.is_empty(), "console messages: {problems:#?}");

    // screenshot
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("omniad-report-browser.png");
    let _ = std::fs::remove_file(&shot);
    let (_, stderr) = headless(
        &bin,
        &page,
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
    );
    assert!(console_problems(&stderr).is_empty(), "{stderr}");
    let img = image::open(&shot).expect("screenshot written");
    assert_eq!((img.width(), img.height()), (1280, 2000));
    // not a blank page: many distinct colours (charts, thumbnails)
    let rgb = img.to_rgb8();
    let mut colours: Vec<[u8; 3]> = rgb.pixels().step_by(7).map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(colours.len() > 200, "{} colours", colours.len());
    println!("screenshot: {}", shot.display());

    // control: a page that tries to load something is caught by this test's checks
    let bad = f.dir.path().join("bad.html");
    let html = std::fs::read_to_string(&page).unwrap().replacen(
        "<h1>",
        "<img src=\"https://example.invalid/x.png\"><h1>",
        1,
    );
    std::fs::write(&bad, html).unwrap();
    let (_, stderr) = headless(&bin, &bad, &profile, &["--dump-dom"]);
    assert!(
        !console_problems(&stderr).is_empty(),
        "a blocked request must show in the log:\n{stderr}"
    );
}
