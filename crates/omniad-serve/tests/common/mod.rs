//! Helpers of the service tests: a tiny run (as in the pipeline's predict tests), a server on
//! 127.0.0.1 port 0 in its own runtime, and a minimal blocking HTTP/1.1 client on raw TCP (so
//! that tests can also send malformed or slow requests).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use image::{ImageBuffer, Rgb, RgbImage};
use omniad_model::checkpoint::{self, Thresholds};
use omniad_model::{OmniAd, OmniAdConfig, TeacherArch};
use omniad_serve::ServeOptions;
use tch::Device;

/// The model's input size `(H, W)` (non-square, so that H/W mix-ups show).
pub const INPUT: (u32, u32) = (64, 96);

/// The calibrated thresholds of the test run.
pub fn thresholds() -> Thresholds {
    Thresholds {
        global: Some(0.05),
        per_class: BTreeMap::from([("bottle".to_string(), 0.02), ("cable".to_string(), 0.5)]),
        method: "test".to_string(),
        score_bounds: Some((0.01, 0.2)),
        ..Default::default()
    }
}

/// A tiny untrained model with the shipped EfficientNet-Lite0 teacher, saved once per test
/// process as a run folder (with [`thresholds`] and a provenance listing two classes).
pub fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let name = exe
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("omniad-serve")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create run folder");
        tch::manual_seed(7);
        let cfg = OmniAdConfig {
            teacher: TeacherArch::EfficientNetLite0,
            depths: [1, 1, 1, 1],
            neck_width: 64,
            num_tokens: 16,
            heads: 8,
            image_size: INPUT,
            ..OmniAdConfig::default_offline()
        };
        let mut model = OmniAd::new(&cfg, Device::Cpu).expect("valid tiny config");
        omniad_pipeline::teacher::load_teacher(&mut model, None).expect("shipped teacher weights");
        checkpoint::save(
            &model,
            &dir,
            "model",
            Some(thresholds()),
            serde_json::json!({"classes": ["bottle", "cable"]}),
        )
        .expect("save checkpoint");
        dir
    })
}

/// Deterministic textured pixels.
fn pattern(x: u32, y: u32, c: u32, seed: u32) -> u8 {
    let mut h =
        x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ c.wrapping_mul(83_492_791) ^ seed;
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    ((x * 255 / 97 + y * 3 + (h % 64)) % 256) as u8
}

/// An RGB image of `w x h` with a seeded texture.
pub fn rgb(w: u32, h: u32, seed: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            pattern(x, y, 0, seed),
            pattern(x, y, 1, seed),
            pattern(x, y, 2, seed),
        ])
    })
}

/// PNG bytes of [`rgb`].
pub fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    rgb(w, h, seed)
        .write_to(&mut buf, image::ImageFormat::Png)
        .expect("encode PNG");
    buf.into_inner()
}

/// Test options: the test run, small limits where a test needs them set by the caller.
pub fn options() -> ServeOptions {
    let mut o = ServeOptions::new(run_dir());
    o.max_wait = Duration::from_millis(2);
    o
}

/// A service on 127.0.0.1 port 0, in its own runtime, ready (model loaded) when returned.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    /// Starts the service and waits (at most 60 s) until `/readyz` answers 200.
    pub fn start(opts: ServeOptions) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let token = opts.token.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(omniad_serve::serve(opts, listener, async {
            let _ = rx.await;
        }));
        let server = Self {
            addr,
            stop: Some(tx),
            task: Some(task),
            rt,
        };
        let start = Instant::now();
        let auth = token.map(|t| format!("Bearer {t}"));
        loop {
            let mut headers = vec![];
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            if let Ok(r) = try_request(addr, "GET", "/readyz", &headers, b"") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server not ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Signals shutdown and returns what `serve` returned (at most 30 s).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.signal_stop();
        self.wait()
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most 30 s) for `serve` to return.
    pub fn wait(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("not waited yet");
        self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task not panicked")
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` text of a JSON error answer (panics if the body is not one).
    pub fn error(&self) -> String {
        let v = self.json();
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string in {v}"))
            .to_string()
    }
}

/// Sends one request (`Connection: close`, `Content-Length` from `body`) and reads the answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, headers, body).expect("HTTP exchange")
}

/// [`request`] returning I/O errors.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = connect(addr)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

/// A connection with 30 s read and write timeouts.
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// Reads one answer until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..eol])
                    .map_err(|_| bad("bad chunk size"))?
                    .trim(),
                16,
            )
            .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A `multipart/form-data` body of `(field name, file name, content type, bytes)` parts, and its
/// `Content-Type` header value.
pub fn multipart(parts: &[(&str, &str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "omniad-test-boundary-7d1f";
    let mut body = Vec::new();
    for (field, file, ct, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: {ct}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
