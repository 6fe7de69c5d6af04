//! Scores a safetensors file of anomaly maps, as `omniad metrics` will:
//! `cargo run --release -p omniad-metrics --example score_file -- FILE.safetensors [--json] [--ader]`
//!
//! File format: see `omniad_metrics::evaluate_safetensors`.

use std::path::PathBuf;
use std::process::ExitCode;

use omniad_metrics::{evaluate_file, MetricOptions};

fn main() -> ExitCode {
    let mut path: Option<PathBuf> = None;
    let mut json = false;
    let mut opts = MetricOptions::default();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--json" => json = true,
            "--ader" => opts.ader = true,
            s if s.starts_with("--") => {
                eprintln!(
                    "unknown option {s}; usage: score_file FILE.safetensors [--json] [--ader]"
                );
                return ExitCode::from(2);
            }
            s => path = Some(PathBuf::from(s)),
        }
    }
    let Some(path) = path else {
        eprintln!("usage: score_file FILE.safetensors [--json] [--ader]");
        return ExitCode::from(2);
    };
    match evaluate_file(&path, &opts) {
        Ok(r) if json => {
            match serde_json::to_string_pretty(&r.to_json()) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{}", r.to_table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
