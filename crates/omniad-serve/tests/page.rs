//! The web page in a real browser: headless Chromium, driven over the DevTools protocol by
//! `scripts/page_check.mjs` (Node), opens the page of a service on 127.0.0.1, uploads a PNG
//! through the file input and must show the verdict, the original, the overlay and the mask;
//! the score and verdict it shows must be those of `POST /v1/predict` for the same bytes.
//!
//! Runs when Chromium (`/usr/bin/chromium`, or `OMNIAD_CHROMIUM`) and Node >= 20.10 are
//! installed; otherwise it prints a notice and passes. `.ci/run` installs Chromium; Node is part
//! of the build machine.
mod common;

use std::path::Path;
use std::process::Command;

use common::{png, request, TestServer, INPUT};

/// `node` when its version is at least 20.10 (the WebSocket client the script uses).
fn node() -> Option<&'static str> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    let mut parts = v.trim().trim_start_matches('v').split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    (out.status.success() && (major, minor) >= (20, 10)).then_some("node")
}

#[test]
fn page_uploads_an_image_and_shows_verdict_overlay_and_mask() {
    let (Some(chromium), Some(node)) = (omniad_testkit::chromium(), node()) else {
        eprintln!("notice: Chromium or Node >= 20.10 not installed; the page test is skipped");
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("omniad-serve-page");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test folder");
    let image = dir.join("part.png");
    let bytes = png(INPUT.1 + 20, INPUT.0 + 10, 5);
    std::fs::write(&image, &bytes).expect("write image");
    let shot = dir.join("page.png");

    let server = TestServer::start(common::options());
    let url = format!("http://{}/", server.addr);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/page_check.mjs");
    let out = Command::new(node)
        .arg("--experimental-websocket")
        .arg(&script)
        .args([
            url.as_str(),
            &image.to_string_lossy(),
            &shot.to_string_lossy(),
        ])
        .env("OMNIAD_CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "page check failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let state: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .last()
            .expect("the script prints the page state"),
    )
    .unwrap_or_else(|e| panic!("page state is not JSON ({e}): {stdout}"));

    // The same bytes through the API, as the page sends them (no class chosen).
    let api = request(
        server.addr,
        "POST",
        "/v1/predict?name=part.png",
        &[("Content-Type", "image/png")],
        &bytes,
    );
    assert_eq!(api.status, 200, "{}", String::from_utf8_lossy(&api.body));
    let rec = api.json();
    let expected_verdict = match (rec["unknown_class"].as_bool(), rec["anomalous"].as_bool()) {
        (Some(true), _) => "unknown class",
        (_, Some(true)) => "ANOMALOUS",
        (_, Some(false)) => "normal",
        (_, None) => "no threshold",
    };
    assert_eq!(state["verdict"], expected_verdict, "{state}");
    let status = state["status"].as_str().expect("status text");
    let score = rec["image_score"].as_f64().expect("image_score");
    assert!(
        status.contains(&format!("score {score:.4}")),
        "page shows {status:?}, API scored {score}"
    );
    assert!(
        status.contains(&format!("{}x{} px", INPUT.1 + 20, INPUT.0 + 10)),
        "page shows {status:?}"
    );
    let labels: Vec<&str> = state["images"]
        .as_array()
        .expect("image labels")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let want: &[&str] = if rec["anomalous"].is_null() {
        &["original", "overlay"]
    } else {
        &["original", "overlay", "mask"]
    };
    assert_eq!(labels, want, "{state}");
    assert_eq!(state["loaded"], true, "every image decoded: {state}");
    let png_sig = std::fs::read(&shot).expect("screenshot written");
    assert!(png_sig.starts_with(b"\x89PNG"), "screenshot is a PNG");
    server.stop().expect("server stops cleanly");
}
