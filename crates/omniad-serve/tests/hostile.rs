//! Bad and hostile input: each a 4xx with a JSON error naming the problem, and the server keeps
//! serving.
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

const PNG: (&str, &str) = ("Content-Type", "image/png");

/// Asserts a JSON error answer with `status` whose message contains every one of `needles`.
fn assert_error(r: &Resp, status: u16, needles: &[&str]) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let e = r.error();
    for n in needles {
        assert!(e.contains(n), "error {e:?} should contain {n:?}");
    }
}

fn still_serving(addr: std::net::SocketAddr) {
    let r = request(addr, "POST", "/v1/predict", &[PNG], &png(30, 20, 9));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["image_score"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_parameters_and_bodies() {
    let mut o = options();
    o.max_body_bytes = 200_000;
    o.decode_limits = omniad_data::DecodeLimits {
        max_width: 120,
        max_height: 120,
    };
    o.max_images = 3;
    let server = TestServer::start(o);
    let a = server.addr;
    let img = png(40, 30, 1);

    // Parameters.
    let r = request(a, "POST", "/v1/predict?class=screw", &[PNG], &img);
    assert_error(&r, 400, &["\"screw\"", "bottle, cable"]);
    for t in ["nan", "NaN", "inf", "-1", "-0.5", "1e999"] {
        let r = request(
            a,
            "POST",
            &format!("/v1/predict?threshold={t}"),
            &[PNG],
            &img,
        );
        assert_error(&r, 400, &["threshold", "finite number >= 0"]);
    }
    let r = request(a, "POST", "/v1/predict?threshold=abc", &[PNG], &img);
    assert_error(&r, 400, &["threshold \"abc\" is not a number"]);
    let r = request(a, "POST", "/v1/predict?return=gif", &[PNG], &img);
    assert_error(
        &r,
        400,
        &["return=\"gif\"", "json, json_images, overlay or mask"],
    );
    let r = request(a, "POST", "/v1/predict?colour=red", &[PNG], &img);
    assert_error(&r, 400, &["colour"]);

    // Content types.
    let r = request(
        a,
        "POST",
        "/v1/predict",
        &[("Content-Type", "text/plain")],
        &img,
    );
    assert_error(&r, 415, &["\"text/plain\"", "multipart/form-data"]);
    let r = request(a, "POST", "/v1/predict", &[], &img);
    assert_error(&r, 415, &["missing Content-Type"]);

    // Undecodable, truncated, empty and oversized images, named.
    let r = request(
        a,
        "POST",
        "/v1/predict?name=junk",
        &[PNG],
        b"\x00\x01 this is not an image",
    );
    assert_error(&r, 400, &["junk: unsupported image format"]);
    // A name with an image extension makes that decoder try (as for files).
    let r = request(
        a,
        "POST",
        "/v1/predict?name=junk.png",
        &[PNG],
        b"\x00\x01 this is not an image",
    );
    assert_error(
        &r,
        400,
        &["junk.png", "cannot decode image", "PNG signature"],
    );
    let r = request(
        a,
        "POST",
        "/v1/predict?name=cut.png",
        &[PNG],
        &img[..img.len() / 2],
    );
    assert_error(&r, 400, &["cut.png", "cannot decode image"]);
    let r = request(a, "POST", "/v1/predict", &[PNG], b"");
    assert_error(&r, 400, &["image", "empty"]);
    let r = request(
        a,
        "POST",
        "/v1/predict?name=big.png",
        &[PNG],
        &png(121, 20, 2),
    );
    assert_error(&r, 413, &["big.png", "121x20", "120x120"]);

    // Bodies over the limit: announced (refused before reading), and chunked without a length.
    let mut s = connect(a).unwrap();
    s.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: 200001\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_error(&r, 413, &["200001 bytes", "limit of 200000 bytes"]);
    let mut s = connect(a).unwrap();
    s.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![7u8; 50_000];
    for _ in 0..5 {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let r = read_response(&mut s).unwrap();
    assert_error(&r, 413, &["limit of 200000 bytes"]);

    // Multipart: truncated, empty, too many parts, a bad part named, PNG answers of several.
    let (ct, body) = multipart(&[
        ("file", "a.png", "image/png", &img),
        ("file", "b.png", "image/png", &img),
    ]);
    let r = request(
        a,
        "POST",
        "/v1/predict",
        &[("Content-Type", &ct)],
        &body[..body.len() - 30],
    );
    assert_error(&r, 400, &["multipart"]);
    let r = request(
        a,
        "POST",
        "/v1/predict",
        &[("Content-Type", "multipart/form-data")],
        &body,
    );
    assert_error(&r, 400, &["multipart", "boundary"]);
    let (ct0, body0) = multipart(&[]);
    let r = request(a, "POST", "/v1/predict", &[("Content-Type", &ct0)], &body0);
    assert_error(&r, 400, &["no part"]);
    let parts: Vec<(&str, &str, &str, &[u8])> = (0..4)
        .map(|_| ("file", "x.png", "image/png", img.as_slice()))
        .collect();
    let (ct4, body4) = multipart(&parts);
    let r = request(a, "POST", "/v1/predict", &[("Content-Type", &ct4)], &body4);
    assert_error(&r, 400, &["more than 3 images"]);
    let (ctb, bodyb) = multipart(&[
        ("file", "good.png", "image/png", &img),
        ("file", "bad.png", "image/png", b"garbage"),
    ]);
    let r = request(a, "POST", "/v1/predict", &[("Content-Type", &ctb)], &bodyb);
    assert_error(&r, 400, &["bad.png"]);
    let r = request(
        a,
        "POST",
        "/v1/predict?return=overlay",
        &[("Content-Type", &ct)],
        &body,
    );
    assert_error(&r, 400, &["one PNG", "got 2"]);
    let r = request(a, "POST", "/v1/predict", &[("Content-Type", &ct)], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    // Unknown endpoints and methods.
    let r = request(a, "GET", "/v2/nothing", &[], b"");
    assert_error(&r, 404, &["GET /v2/nothing"]);
    let r = request(a, "GET", "/v1/predict", &[], b"");
    assert_error(&r, 405, &["GET", "/v1/predict"]);

    still_serving(a);
    server.stop().unwrap();
}

#[test]
fn slow_clients_time_out() {
    let mut o = options();
    // Long enough for a prediction on a busy 2-core machine, short for a test.
    o.request_timeout = Duration::from_secs(3);
    o.header_timeout = Duration::from_millis(800);
    let server = TestServer::start(o);
    let a = server.addr;
    let img = png(40, 30, 1);

    // A body sent too slowly: 408 with a JSON error.
    let mut s = connect(a).unwrap();
    let head = format!(
        "POST /v1/predict HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        img.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&img[..10]).unwrap();
    let start = Instant::now();
    let r = read_response(&mut s).unwrap();
    assert_error(&r, 408, &["request timeout", "within 3 s"]);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(15),
        "answered after {elapsed:?}"
    );

    // Headers sent too slowly: the connection is closed.
    let mut s = connect(a).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(10),
        "closed after {elapsed:?}"
    );
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    still_serving(a);
    server.stop().unwrap();
}

#[test]
fn random_garbage_requests_leave_the_server_serving() {
    let server = TestServer::start(options());
    let a = server.addr;
    let img = png(40, 30, 1);
    // Deterministic pseudo-random bytes (xorshift), 200 requests of several kinds.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        let kind = i % 4;
        let len = (next() % 3000) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let outcome = match kind {
            // Random bytes as an image.
            0 => try_request(a, "POST", "/v1/predict", &[PNG], &junk).map(|r| r.status),
            // A PNG cut at a random length, or with random bytes flipped.
            1 => {
                let mut b = img.clone();
                if i % 8 == 1 {
                    b.truncate(len.min(b.len()));
                } else {
                    for _ in 0..8 {
                        let k = (next() as usize) % b.len();
                        b[k] ^= next() as u8 | 1;
                    }
                }
                try_request(a, "POST", "/v1/predict", &[PNG], &b).map(|r| r.status)
            }
            // A random multipart body.
            2 => try_request(
                a,
                "POST",
                "/v1/predict",
                &[("Content-Type", "multipart/form-data; boundary=xyz")],
                &junk,
            )
            .map(|r| r.status),
            // Raw garbage instead of HTTP.
            _ => connect(a).and_then(|mut s| {
                s.write_all(&junk)?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                Ok(if buf.is_empty() { 0 } else { 1 })
            }),
        };
        let code = outcome.unwrap_or(0);
        // 200 is possible when flipped bytes land in ignored PNG chunks; never a 5xx.
        assert!(code < 500, "request {i} (kind {kind}): status {code}");
        *statuses.entry(code).or_insert(0) += 1;
    }
    assert!(
        statuses.keys().any(|&c| (400..500).contains(&c)),
        "{statuses:?}"
    );
    still_serving(a);
    server.stop().unwrap();
}
