//! Times all metrics on a deterministic MVTec-sized synthetic set
//! (default: 1725 maps of 256x256 = 113M pixels, one class, ~3 % anomalous
//! pixels in blob-shaped regions) and reports wall time and peak memory.
//!
//! ```text
//! cargo run --release -p omniad-metrics --example bench_metrics -- \
//!     [--maps 1725] [--size 256] [--classes 1] [--seed 0] [--ader] [--streaming] \
//!     [--dump OUT.safetensors]
//! ```
//! `--dump` also writes the data (for `bench/metrics_sklearn.py`) and
//! `OUT.safetensors.rust.json` with the Rust timing and results.

use std::process::ExitCode;
use std::time::Instant;

use omniad_metrics::{evaluate_arrays, write_safetensors, MetricOptions, SyntheticSet};

/// Peak resident set size (VmHWM) in MiB, Linux only.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds (user + system, all threads) used by this process so far, Linux only.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ
}

fn run() -> Result<(), String> {
    let (mut n, mut size, mut classes, mut seed) = (1725usize, 256usize, 1usize, 0u64);
    let (mut ader, mut streaming, mut dump) = (false, false, None::<std::path::PathBuf>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--maps" => n = num("--maps")? as usize,
            "--size" => size = num("--size")? as usize,
            "--classes" => classes = num("--classes")? as usize,
            "--seed" => seed = num("--seed")?,
            "--ader" => ader = true,
            "--streaming" => streaming = true,
            "--dump" => dump = Some(args.next().ok_or("--dump needs a path")?.into()),
            s => return Err(format!("unknown argument {s}")),
        }
    }
    let t0 = Instant::now();
    let set = SyntheticSet::generate(n, size, size, classes, seed);
    let gen_s = t0.elapsed().as_secs_f64();
    let rss_input = peak_rss_mib();
    let opts = MetricOptions {
        ader,
        ..MetricOptions::default()
    };
    let cpu0 = cpu_seconds();
    let t1 = Instant::now();
    let report = if streaming {
        set.evaluate_streaming(&opts)
    } else {
        evaluate_arrays(&set.as_arrays(), &opts)
    }
    .map_err(|e| e.to_string())?;
    let eval_s = t1.elapsed().as_secs_f64();
    let eval_cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let rss_peak = peak_rss_mib();
    let input_mib = set.input_bytes() as f64 / (1 << 20) as f64;
    println!(
        "data: {n} maps of {size}x{size} = {} pixels, {classes} class(es), {:.2}% anomalous pixels; generated in {gen_s:.2} s",
        n * size * size,
        100.0 * set.anomalous_pixel_fraction()
    );
    println!(
        "mode: {}{}, threads: {}",
        if streaming {
            "streaming (Accumulator)"
        } else {
            "whole arrays (evaluate_arrays)"
        },
        if ader { " + ADer variants" } else { "" },
        rayon::current_num_threads()
    );
    match eval_cpu {
        Some(c) => println!("metrics wall time: {eval_s:.3} s (CPU time {c:.2} s)"),
        None => println!("metrics wall time: {eval_s:.3} s"),
    }
    if let (Some(a), Some(b)) = (rss_input, rss_peak) {
        println!(
            "peak RSS: {b:.0} MiB (input maps+masks {input_mib:.0} MiB; peak before scoring {a:.0} MiB; peak beyond input {:.0} MiB)",
            b - input_mib
        );
    }
    print!("{}", report.to_table());
    if let Some(path) = dump {
        let t = Instant::now();
        write_safetensors(&path, &set.as_arrays()).map_err(|e| e.to_string())?;
        let mut j = report.to_json();
        j["rust_seconds"] = serde_json::json!(eval_s);
        j["rust_cpu_seconds"] = serde_json::json!(eval_cpu);
        j["rust_mode"] = serde_json::json!(if streaming { "streaming" } else { "arrays" });
        let mut jp = path.clone().into_os_string();
        jp.push(".rust.json");
        let text = serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?;
        let tmp = {
            let mut p = jp.clone();
            p.push(".tmp");
            p
        };
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.to_string_lossy()))?;
        std::fs::rename(&tmp, &jp).map_err(|e| format!("{}: {e}", jp.to_string_lossy()))?;
        println!(
            "wrote {} and {} in {:.1} s",
            path.display(),
            jp.to_string_lossy(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
