//! The service's endpoints, its scores against `omniad predict`, authentication, the full
//! queue and graceful shutdown.
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::predict::{predict_run, PredictOptions};

const PNG: (&str, &str) = ("Content-Type", "image/png");

/// Writes `n` test PNGs of different sizes into `dir` and returns their paths.
fn write_images(dir: &std::path::Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("img{i}.png"));
            std::fs::write(&p, png(70 + 13 * i, 50 + 7 * i, i)).expect("write PNG");
            p
        })
        .collect()
}

#[test]
fn scores_are_bit_identical_to_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_images(tmp.path(), 3);
    let server = TestServer::start(options());
    for class in [None, Some("bottle")] {
        let opts = PredictOptions {
            per_class: class.map(str::to_string),
            batch_size: 8,
            ..PredictOptions::default()
        };
        // One file alone: batch of one on both sides.
        for f in &files {
            let expected = predict_run(
                run_dir(),
                std::slice::from_ref(f),
                ComputeDevice::Cpu,
                &opts,
                |_| Ok(()),
            )
            .unwrap();
            let name = f.to_string_lossy();
            let mut path = format!("/v1/predict?name={}", urlencode(&name));
            if let Some(c) = class {
                path.push_str(&format!("&class={c}"));
            }
            let bytes = std::fs::read(f).unwrap();
            let r = request(server.addr, "POST", &path, &[PNG], &bytes);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            // The same JSON text as the line `omniad predict` prints: same fields, same score bits.
            assert_eq!(
                String::from_utf8(r.body.clone()).unwrap(),
                serde_json::to_string(&expected[0]).unwrap()
            );
        }
        // Three files in one multipart request: one batch of three, as predict --batch-size 3.
        let opts3 = PredictOptions {
            batch_size: 3,
            ..opts.clone()
        };
        let expected =
            predict_run(run_dir(), &files, ComputeDevice::Cpu, &opts3, |_| Ok(())).unwrap();
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        let parts: Vec<(&str, &str, &str, &[u8])> = names
            .iter()
            .zip(&bytes)
            .map(|(n, b)| ("file", n.as_str(), "image/png", b.as_slice()))
            .collect();
        let (ct, body) = multipart(&parts);
        let path = match class {
            Some(c) => format!("/v1/predict?class={c}"),
            None => "/v1/predict".to_string(),
        };
        let r = request(server.addr, "POST", &path, &[("Content-Type", &ct)], &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            String::from_utf8(r.body.clone()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
        let v = r.json();
        let t = thresholds();
        let want_t = class.map_or(t.global, |c| t.per_class.get(c).copied());
        for rec in v.as_array().unwrap() {
            assert_eq!(rec["threshold"].as_f64(), want_t);
            let score = rec["image_score"].as_f64().unwrap();
            assert!(score > 0.0 && score < 2.0, "score {score}");
            assert_eq!(rec["anomalous"].as_bool(), Some(score >= want_t.unwrap()));
        }
    }
    server.stop().unwrap();
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn overlay_and_mask_match_predict_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_images(tmp.path(), 1);
    let out = tmp.path().join("out");
    let opts = PredictOptions {
        out: Some(out.clone()),
        ..PredictOptions::default()
    };
    predict_run(run_dir(), &files, ComputeDevice::Cpu, &opts, |_| Ok(())).unwrap();
    let want_overlay = image::open(out.join("img0_overlay.png")).unwrap().to_rgb8();
    let want_mask = image::open(out.join("img0_mask.png")).unwrap().to_luma8();
    let server = TestServer::start(options());
    let bytes = std::fs::read(&files[0]).unwrap();

    let r = request(
        server.addr,
        "POST",
        "/v1/predict?return=overlay",
        &[PNG],
        &bytes,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert!(
        r.header("x-omniad-image-score")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    let overlay = image::load_from_memory(&r.body).unwrap().to_rgb8();
    assert_eq!(overlay.dimensions(), (70, 50));
    assert_eq!(overlay.as_raw(), want_overlay.as_raw());

    let r = request(
        server.addr,
        "POST",
        "/v1/predict?return=mask",
        &[PNG],
        &bytes,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mask = image::load_from_memory(&r.body).unwrap().to_luma8();
    assert_eq!(mask.as_raw(), want_mask.as_raw());
    assert!(mask.as_raw().iter().all(|&v| v == 0 || v == 255));

    let r = request(
        server.addr,
        "POST",
        "/v1/predict?return=json_images",
        &[PNG],
        &bytes,
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let o = b64
        .decode(v["overlay_png_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::load_from_memory(&o).unwrap().to_rgb8().as_raw(),
        want_overlay.as_raw()
    );
    let m = b64.decode(v["mask_png_base64"].as_str().unwrap()).unwrap();
    assert_eq!(
        image::load_from_memory(&m).unwrap().to_luma8().as_raw(),
        want_mask.as_raw()
    );
    assert!(v["image_score"].as_f64().unwrap() > 0.0);
    server.stop().unwrap();
}

#[test]
fn info_endpoints() {
    let server = TestServer::start(options());
    let a = server.addr;
    let r = request(a, "GET", "/healthz", &[], b"");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = request(a, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200);

    let meta = omniad_model::checkpoint::read_meta(&run_dir().join("model.json")).unwrap();
    let r = request(a, "GET", "/v1/model", &[], b"");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        v["weights_sha256"].as_str(),
        Some(meta.weights_sha256.as_str())
    );
    assert_eq!(v["weights_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(v["classes"], serde_json::json!(["bottle", "cable"]));
    assert_eq!(v["precision"].as_str(), Some("f32"));
    assert_eq!(
        (v["input_height"].as_u64(), v["input_width"].as_u64()),
        (Some(64), Some(96))
    );
    assert_eq!(v["teacher"].as_str(), Some("efficientnet_lite0"));
    assert_eq!(v["thresholds"]["global"].as_f64(), Some(0.05));
    assert_eq!(v["thresholds"]["per_class"]["cable"].as_f64(), Some(0.5));
    assert_eq!(
        v["omniad_version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );

    let r = request(a, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("type=\"file\"") && html.contains("/v1/predict"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resource"
    );

    let r = request(a, "GET", "/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    for p in [
        "/healthz",
        "/readyz",
        "/v1/model",
        "/v1/predict",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from /openapi.json"
        );
    }
    let params: Vec<&str> = doc["paths"]["/v1/predict"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["class", "threshold", "name", "return"]);
    // The documented record has exactly the fields of a real one.
    let tmp = tempfile::tempdir().unwrap();
    let files = write_images(tmp.path(), 1);
    let rec = predict_run(
        run_dir(),
        &files,
        ComputeDevice::Cpu,
        &PredictOptions::default(),
        |_| Ok(()),
    )
    .unwrap();
    let mut real: Vec<String> = serde_json::to_value(&rec[0])
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut documented: Vec<String> = doc["components"]["schemas"]["PredictRecord"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    real.sort();
    documented.sort();
    assert_eq!(real, documented);

    // A prediction, then the metrics count it.
    let r = request(a, "POST", "/v1/predict", &[PNG], &png(40, 30, 1));
    assert_eq!(r.status, 200);
    let r = request(a, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for m in [
        "omniad_requests_total{endpoint=\"/v1/predict\",status=\"200\"}",
        "omniad_request_duration_seconds_bucket",
        "omniad_batch_size_bucket",
        "omniad_queue_depth",
    ] {
        assert!(text.contains(m), "{m} not in /metrics:\n{text}");
    }
    server.stop().unwrap();
}

#[test]
fn token_is_required_and_checked() {
    // Off loopback without a token: refused before anything is bound.
    let mut o = options();
    o.bind = "0.0.0.0:0".parse().unwrap();
    let err = omniad_serve::run_blocking(o.clone(), |_| panic!("must not listen")).unwrap_err();
    assert!(err.to_string().contains("--token-file"), "{err}");
    o.insecure_no_auth = true;
    o.validate(o.bind).unwrap();
    o.insecure_no_auth = false;
    o.token = Some("s3cret".into());
    o.validate(o.bind).unwrap();

    // The token file: trimmed, an empty one refused.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("token");
    std::fs::write(&f, "  s3cret-token\n").unwrap();
    assert_eq!(omniad_serve::read_token_file(&f).unwrap(), "s3cret-token");
    std::fs::write(&f, "\n").unwrap();
    let err = omniad_serve::read_token_file(&f).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");

    let mut o = options();
    o.token = Some("s3cret-token".into());
    let server = TestServer::start(o);
    let a = server.addr;
    let r = request(a, "GET", "/v1/model", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.error().contains("missing Authorization"), "{}", r.error());
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for wrong in [
        "Bearer s3cret-toke",
        "Bearer s3cret-token2",
        "Basic s3cret-token",
        "s3cret-token",
    ] {
        let r = request(a, "GET", "/v1/model", &[("Authorization", wrong)], b"");
        assert_eq!(r.status, 401, "{wrong}");
        assert!(r.error().contains("invalid bearer token"), "{}", r.error());
    }
    let r = request(a, "POST", "/v1/predict", &[PNG], &png(20, 20, 0));
    assert_eq!(r.status, 401);
    let good = [("Authorization", "Bearer s3cret-token")];
    assert_eq!(request(a, "GET", "/v1/model", &good, b"").status, 200);
    assert_eq!(request(a, "GET", "/metrics", &good, b"").status, 200);
    let r = request(a, "POST", "/v1/predict", &[good[0], PNG], &png(20, 20, 0));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Probes and the page stay open.
    assert_eq!(request(a, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(request(a, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(request(a, "GET", "/", &[], b"").status, 200);
    server.stop().unwrap();
}

/// Sends the head and the first half of a PNG upload; the rest is sent by [`finish`].
fn start_upload(addr: std::net::SocketAddr, body: &[u8]) -> std::net::TcpStream {
    let mut s = connect(addr).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    s.flush().unwrap();
    s
}

fn finish(mut s: std::net::TcpStream, body: &[u8]) -> Resp {
    s.write_all(&body[body.len() / 2..]).unwrap();
    read_response(&mut s).unwrap()
}

#[test]
fn full_queue_answers_503_at_once() {
    let mut o = options();
    o.queue = 1;
    let server = TestServer::start(o);
    let body = png(60, 40, 3);
    // A slow upload holds the only slot.
    let slow = start_upload(server.addr, &body);
    // Wait until it holds the slot (the gauge is read from this server's queue when rendered).
    let start = Instant::now();
    loop {
        let m = request(server.addr, "GET", "/metrics", &[], b"");
        if String::from_utf8_lossy(&m.body).contains("omniad_queue_depth 1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the slow upload was not admitted within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A small probe: a refused request's unread body could reset the connection.
    let start = Instant::now();
    let busy = request(server.addr, "POST", "/v1/predict", &[PNG], &png(8, 8, 5));
    assert!(start.elapsed() < Duration::from_secs(2), "503 at once");
    assert_eq!(busy.status, 503, "{}", String::from_utf8_lossy(&busy.body));
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(busy.error().contains("--queue"), "{}", busy.error());
    let r = finish(slow, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The slot is free again.
    let r = request(server.addr, "POST", "/v1/predict", &[PNG], &body);
    assert_eq!(r.status, 200);
    server.stop().unwrap();
}

#[test]
fn shutdown_finishes_requests_in_flight() {
    let mut server = TestServer::start(options());
    let addr = server.addr;
    let body = png(60, 40, 4);
    let slow = start_upload(addr, &body);
    // Let the request reach the handler, then stop.
    std::thread::sleep(Duration::from_millis(200));
    server.signal_stop();
    // New connections are refused once the listener is closed.
    let start = Instant::now();
    while try_request(addr, "GET", "/healthz", &[], b"").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still accepting 10 s after stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight still gets its answer.
    let r = finish(slow, &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["image_score"].as_f64().unwrap() > 0.0);
    server.wait().unwrap();
}

#[test]
fn unloadable_model_stops_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(run_dir().join(f), run.join(f)).unwrap();
    }
    let weights = run.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut o = options();
            o.run = run.clone();
            tokio::time::timeout(
                Duration::from_secs(60),
                omniad_serve::serve(o, listener, std::future::pending()),
            )
            .await
            .expect("serve returns when the model cannot be loaded")
        })
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

/// `--precision bf16`: `/v1/model` says so, and the worker's scores are those of `omniad
/// predict --precision bf16` bit for bit (same scoring path), within 2% of the float32 scores.
#[test]
fn bfloat16_worker_matches_predict_in_bfloat16() {
    let tmp = tempfile::tempdir().unwrap();
    let files = write_images(tmp.path(), 2);
    let mut opts = options();
    opts.precision = omniad_model::Precision::Bf16;
    let server = TestServer::start(opts);
    let r = request(server.addr, "GET", "/v1/model", &[], b"");
    assert_eq!(r.json()["precision"].as_str(), Some("bf16"));
    let pred = |precision| {
        let o = PredictOptions {
            batch_size: 1,
            precision,
            ..PredictOptions::default()
        };
        predict_run(run_dir(), &files, ComputeDevice::Cpu, &o, |_| Ok(())).unwrap()
    };
    let (bf16, f32) = (
        pred(omniad_model::Precision::Bf16),
        pred(omniad_model::Precision::F32),
    );
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let r = request(server.addr, "POST", "/v1/predict", &[PNG], &bytes);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let got = r.json()["image_score"].as_f64().unwrap();
        let want = bf16[i].record().unwrap().image_score;
        let full = f32[i].record().unwrap().image_score;
        assert_eq!(got, want, "image {i}");
        assert!(
            (got - full).abs() <= 0.02 * full && got != full,
            "bf16 {got} vs f32 {full}"
        );
    }
    server.stop().unwrap();
}
