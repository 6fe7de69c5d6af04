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
//! of `POST /v1/predict`, on its own connection. The server's resident memory is read from
//! `/proc/PID/status` after every request; the table gives its mean over the first and the last
//! 1,000 requests (10 % of them when fewer than 10,000 are sent).
//!
//! Malformed requests (16 at a time) cycle through four kinds: random bytes declared as a PNG,
//! a truncated image, a 64 KiB header, and a slow body (slowloris: a declared 4 KiB body
//! dripped at 20 bytes/s, which the server must cut off with its request timeout; start it with
//! a short `--request-timeout-s`). Each must be answered 4xx or have its connection closed.
//!
//! Exits non-zero if any answer is a 5xx other than 503 (queue full), if a well-formed request
//! gets no answer, or if the server does not answer `/healthz` afterwards.
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
        Ok(status_of(&raw))
    };
    attempt().unwrap_or(0)
}

/// Sends `head` and then drips a declared 4 KiB body at 20 bytes/s for at most 30 s, as a
/// slowloris client does; returns the status the server answers with (0 when it just closes).
fn send_slow(addr: SocketAddr, head: &str) -> u16 {
    let attempt = || -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(head.as_bytes())?;
        s.set_nonblocking(true)?;
        let mut raw = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            if !raw.is_empty() {
                // The answer has begun: read the rest of it.
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let _ = s.read_to_end(&mut raw);
                break;
            }
            if s.write_all(&[0x42; 1]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(status_of(&raw))
    };
    attempt().unwrap_or(0)
}

/// The status code of a raw HTTP answer (0 when there is none).
fn status_of(raw: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(&raw[..raw.len().min(20)]).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
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
    println!("| concurrency | requests | 2xx | 503 | other non-2xx | req/s | p50 ms | p99 ms | RSS first / last 1,000 (MiB) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut bad = 0usize;
    let mut rss_growth = Vec::new();
    for &c in &a.concurrency {
        let next = Arc::new(AtomicUsize::new(0));
        // (request index, status, latency ms, server RSS KiB after it)
        let results = Arc::new(Mutex::new(Vec::with_capacity(a.requests)));
        let start = Instant::now();
        let workers: Vec<_> = (0..c)
            .map(|_| {
                let (next, results, images, token) = (
                    next.clone(),
                    results.clone(),
                    images.clone(),
                    a.token.clone(),
                );
                let (n, addr, pid) = (a.requests, a.addr, a.pid);
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let body = &images[i % images.len()];
                    let t = Instant::now();
                    let status = send(
                        addr,
                        &head(&token, body.len(), "application/octet-stream"),
                        body,
                    );
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let rss = rss_kib(pid);
                    if let Ok(mut r) = results.lock() {
                        r.push((i, status, ms, rss));
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let secs = start.elapsed().as_secs_f64();
        let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
        results.sort_by_key(|r| r.0);
        let ok = results.iter().filter(|r| (200..300).contains(&r.1)).count();
        let busy = results.iter().filter(|r| r.1 == 503).count();
        let other = results.len() - ok - busy;
        bad += results
            .iter()
            .filter(|r| r.1 >= 500 && r.1 != 503 || r.1 == 0)
            .count();
        let mut lat: Vec<f64> = results
            .iter()
            .filter(|r| (200..300).contains(&r.1))
            .map(|r| r.2)
            .collect();
        lat.sort_by(f64::total_cmp);
        let window = if results.len() >= 10_000 {
            1000
        } else {
            (results.len() / 10).max(1)
        };
        let mean_rss = |part: &[(usize, u16, f64, Option<u64>)]| -> Option<f64> {
            let v: Vec<u64> = part.iter().filter_map(|r| r.3).collect();
            (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64 / 1024.0)
        };
        let first = mean_rss(&results[..window.min(results.len())]);
        let last = mean_rss(&results[results.len().saturating_sub(window)..]);
        if let (Some(f), Some(l)) = (first, last) {
            rss_growth.push((c, l / f - 1.0));
        }
        let mib = |m: Option<f64>| m.map_or("-".to_string(), |m| format!("{m:.0}"));
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
    for (c, g) in &rss_growth {
        println!(
            "concurrency {c}: resident memory over the last vs the first requests {:+.1} %{}",
            g * 100.0,
            if *g > 0.10 { " (more than 10 %)" } else { "" }
        );
    }
    if a.malformed > 0 {
        let next = Arc::new(AtomicUsize::new(0));
        let counts = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let start = Instant::now();
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let (next, counts, images, token) = (
                    next.clone(),
                    counts.clone(),
                    images.clone(),
                    a.token.clone(),
                );
                let (n, addr) = (a.malformed, a.addr);
                std::thread::spawn(move || {
                    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ (w as u64 + 1);
                    let mut rnd = move || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x
                    };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let kind = [
                            "random bytes",
                            "truncated image",
                            "64 KiB header",
                            "slow body",
                        ][i % 4];
                        let status = match i % 4 {
                            0 => {
                                let junk: Vec<u8> =
                                    (0..(rnd() % 4096) as usize).map(|_| rnd() as u8).collect();
                                send(addr, &head(&token, junk.len(), "image/png"), &junk)
                            }
                            1 => {
                                let img = &images[i % images.len()];
                                let cut = &img[..(rnd() as usize) % img.len()];
                                send(addr, &head(&token, cut.len(), "image/png"), cut)
                            }
                            2 => {
                                let big = format!("X-Junk: {}\r\n", "a".repeat(64 * 1024));
                                let h = head(&token, 0, "image/png").replacen(
                                    "\r\n",
                                    &format!("\r\n{big}"),
                                    1,
                                );
                                send(addr, &h, b"")
                            }
                            _ => send_slow(addr, &head(&token, 4096, "image/png")),
                        };
                        if let Ok(mut c) = counts.lock() {
                            *c.entry((kind, status)).or_insert(0usize) += 1;
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        println!(
            "{} malformed requests in {:.1} s, by kind and status (0 = connection closed):",
            a.malformed,
            start.elapsed().as_secs_f64()
        );
        for ((kind, status), n) in counts.iter() {
            println!("  {kind}: {status} x {n}");
            if !(400..500).contains(status) && *status != 0 {
                bad += n;
            }
        }
    }
    let alive = send(
        a.addr,
        "GET /healthz HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n",
        b"",
    );
    println!("healthz afterwards: {alive}");
    if bad > 0 || alive != 200 {
        bail!("{bad} answers were 5xx (other than 503), missing, or not 4xx for a malformed request; healthz {alive}");
    }
    Ok(())
}
