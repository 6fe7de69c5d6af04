//! A bounded load generator for `omniad serve` (loopback only): N requests at each of several
//! concurrencies, then optionally malformed requests; prints throughput, p50/p99 latency,
//! status counts and the server's resident memory.
//!
//! ```text
//! cargo run --release -p omniad-serve --example loadgen -- \
//!     --addr 127.0.0.1:8080 --images DIR --requests 2000 --concurrency 1,8,64 \
//!     [--token-file F] [--pid SERVER_PID] [--malformed 2000]
//! ```
//! Each request is one image of `--images` (PNG/JPEG files, used in turn) sent as the raw body
//! of `POST /v1/predict`, on its own connection. Exits non-zero if any answer is a 5xx other
//! than 503 (queue full) or if the server does not answer `/healthz` afterwards.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

struct Args {
    addr: SocketAddr,
    images: PathBuf,
    requests: usize,
    concurrency: Vec<usize>,
    token: Option<String>,
    pid: Option<u32>,
    malformed: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse()?,
        images: PathBuf::new(),
        requests: 1000,
        concurrency: vec![1, 8, 64],
        token: None,
        pid: None,
        malformed: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value()?.parse().context("--addr: expected HOST:PORT")?,
            "--images" => a.images = PathBuf::from(value()?),
            "--requests" => a.requests = value()?.parse().context("--requests: a count")?,
            "--concurrency" => {
                a.concurrency = value()?
                    .split(',')
                    .map(|c| c.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--concurrency: comma-separated counts")?
            }
            "--token-file" => a.token = Some(std::fs::read_to_string(value()?)?.trim().to_string()),
            "--pid" => a.pid = Some(value()?.parse().context("--pid: a process id")?),
            "--malformed" => a.malformed = value()?.parse().context("--malformed: a count")?,
            other => bail!("unknown flag {other}"),
        }
    }
    if !a.addr.ip().is_loopback() {
        bail!("--addr {}: this tool only loads loopback addresses", a.addr);
    }
    if a.requests == 0 || a.concurrency.contains(&0) {
        bail!("--requests and every --concurrency must be at least 1");
    }
    Ok(a)
}

/// Sends one request on a new connection; returns the status (0 when no answer came back).
fn send(addr: SocketAddr, head: &str, body: &[u8]) -> u16 {
    let attempt = || -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let line = String::from_utf8_lossy(&raw[..raw.len().min(20)]).into_owned();
        Ok(line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    };
    attempt().unwrap_or(0)
}

fn head(token: &Option<String>, len: usize, content_type: &str) -> String {
    let auth = token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/predict HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Resident memory of `pid`, KiB (Linux).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let mut images = Vec::new();
    for e in
        std::fs::read_dir(&a.images).with_context(|| format!("--images {}", a.images.display()))?
    {
        let p = e?.path();
        if omniad_data::has_image_extension(&p) {
            images.push(std::fs::read(&p).with_context(|| format!("{}", p.display()))?);
        }
    }
    if images.is_empty() {
        bail!("--images {}: no image file", a.images.display());
    }
    let images = Arc::new(images);
    println!("| concurrency | requests | 2xx | 503 | other non-2xx | req/s | p50 ms | p99 ms | RSS first/last 10% (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut bad = 0usize;
    for &c in &a.concurrency {
        let next = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::with_capacity(a.requests)));
        let rss = Arc::new(Mutex::new((None, None)));
        let start = Instant::now();
        let workers: Vec<_> = (0..c)
            .map(|_| {
                let (next, results, rss, images, token) = (
                    next.clone(),
                    results.clone(),
                    rss.clone(),
                    images.clone(),
                    a.token.clone(),
                );
                let (n, addr, pid) = (a.requests, a.addr, a.pid);
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if i == n / 10 {
                        rss.lock().unwrap().0 = rss_kib(pid);
                    }
                    if i == n - n / 10 - 1 {
                        rss.lock().unwrap().1 = rss_kib(pid);
                    }
                    let body = &images[i % images.len()];
                    let t = Instant::now();
                    let status = send(
                        addr,
                        &head(&token, body.len(), "application/octet-stream"),
                        body,
                    );
                    results
                        .lock()
                        .unwrap()
                        .push((status, t.elapsed().as_secs_f64() * 1e3));
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let secs = start.elapsed().as_secs_f64();
        let results = results.lock().unwrap();
        let ok = results.iter().filter(|r| (200..300).contains(&r.0)).count();
        let busy = results.iter().filter(|r| r.0 == 503).count();
        let other = results.len() - ok - busy;
        bad += results
            .iter()
            .filter(|r| r.0 >= 500 && r.0 != 503 || r.0 == 0)
            .count();
        let mut lat: Vec<f64> = results
            .iter()
            .filter(|r| (200..300).contains(&r.0))
            .map(|r| r.1)
            .collect();
        lat.sort_by(f64::total_cmp);
        let (first, last) = *rss.lock().unwrap();
        let mib =
            |k: Option<u64>| k.map_or("-".to_string(), |k| format!("{:.0}", k as f64 / 1024.0));
        println!(
            "| {c} | {} | {ok} | {busy} | {other} | {:.1} | {:.1} | {:.1} | {} / {} |",
            results.len(),
            ok as f64 / secs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            mib(first),
            mib(last)
        );
    }
    if a.malformed > 0 {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..a.malformed {
            let status = match i % 3 {
                0 => {
                    let junk: Vec<u8> = (0..(rnd() % 4096) as usize).map(|_| rnd() as u8).collect();
                    send(a.addr, &head(&a.token, junk.len(), "image/png"), &junk)
                }
                1 => {
                    let img = &images[i % images.len()];
                    let cut = &img[..(rnd() as usize) % img.len()];
                    send(a.addr, &head(&a.token, cut.len(), "image/png"), cut)
                }
                _ => {
                    let big = format!("X-Junk: {}\r\n", "a".repeat(64 * 1024));
                    let h =
                        head(&a.token, 0, "image/png").replacen("\r\n", &format!("\r\n{big}"), 1);
                    send(a.addr, &h, b"")
                }
            };
            *counts.entry(status).or_insert(0usize) += 1;
            if status >= 500 {
                bad += 1;
            }
        }
        println!("malformed requests by status (0 = connection closed): {counts:?}");
    }
    let alive = send(
        a.addr,
        "GET /healthz HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n",
        b"",
    );
    println!("healthz afterwards: {alive}");
    if bad > 0 || alive != 200 {
        bail!("{bad} answers were 5xx (other than 503) or missing; healthz {alive}");
    }
    Ok(())
}
