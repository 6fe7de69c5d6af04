//! `omniad serve` as a user runs it: refused configurations end with one `error:` line, and
//! SIGTERM stops a serving process with status 0.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use omniad_model::{checkpoint, OmniAd, OmniAdConfig, TeacherArch};

/// A tiny untrained model saved as a run folder (as the service tests do).
fn tiny_run(dir: &std::path::Path) {
    tch::manual_seed(7);
    let cfg = OmniAdConfig {
        teacher: TeacherArch::EfficientNetLite0,
        depths: [1, 1, 1, 1],
        neck_width: 64,
        num_tokens: 16,
        heads: 8,
        image_size: (64, 64),
        ..OmniAdConfig::default_offline()
    };
    let mut model = OmniAd::new(&cfg, tch::Device::Cpu).unwrap();
    omniad_pipeline::teacher::load_teacher(&mut model, None).unwrap();
    checkpoint::save(&model, dir, "model", None, serde_json::json!({})).unwrap();
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn refused_configurations() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    fails(
        &["serve", "--run", p(&run), "--bind", "0.0.0.0:0"],
        &["0.0.0.0:0", "not a loopback address", "--token-file"],
    );
    let missing = tmp.path().join("missing");
    fails(
        &["serve", "--run", p(&missing), "--bind", "127.0.0.1:0"],
        &["run folder not found"],
    );
    let token = tmp.path().join("token");
    std::fs::write(&token, " \n").unwrap();
    fails(
        &["serve", "--run", p(&run), "--token-file", p(&token)],
        &["token file", "empty"],
    );
    fails(
        &["serve", "--run", p(&run), "--max-batch", "0"],
        &["--max-batch"],
    );
}

#[test]
fn sigterm_stops_with_status_0() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    tiny_run(&run);
    let mut child = omniad()
        .args(["serve", "--run", p(&run), "--bind", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let start = Instant::now();
    while !get(addr, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not ready in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let model = get(addr, "/v1/model").unwrap();
    assert!(
        model.contains("\"teacher\":\"efficientnet_lite0\""),
        "{model}"
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("omniad serve still running 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(code.code(), Some(0), "stderr: {line}{rest}");
    assert!(
        get(addr, "/healthz").is_err(),
        "nothing listens after the stop"
    );
}
