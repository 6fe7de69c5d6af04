//! `omniad-lite`: scores images with a model exported by `omniad export --format onnx`, through
//! tract (pure Rust, no libtorch). Prints one JSON line per image, as `omniad predict` does.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use omniad_lite::predict::{collect_inputs, predict, Options, Outcome};
use omniad_lite::Session;

/// Score images with an exported omniad model (ONNX + sidecar JSON), without libtorch.
#[derive(Parser, Debug)]
#[command(name = "omniad-lite", version)]
struct Cli {
    /// The exported model (its sidecar `<model>.json` must be beside it).
    #[arg(long)]
    onnx: PathBuf,
    /// Image files or folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Decision threshold overriding the calibrated ones.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f64>,
    /// The class of every image (default: recognised).
    #[arg(long)]
    class: Option<String>,
    /// Images per run of the graph.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
}

fn run(cli: Cli) -> Result<bool> {
    let inputs = collect_inputs(&cli.paths)?;
    let session = Session::load(&cli.onnx)?;
    let opts = Options {
        class: cli.class,
        threshold: cli.threshold,
        batch_size: cli.batch_size as usize,
    };
    let mut stdout = std::io::stdout().lock();
    let (mut scored, mut failed) = (0usize, 0usize);
    predict(&session, &inputs, &opts, |o| {
        match o {
            Outcome::Scored(_) => scored += 1,
            Outcome::Failed(_) => failed += 1,
        }
        writeln!(stdout, "{}", serde_json::to_string(o)?).context("cannot write to stdout")?;
        Ok(())
    })?;
    eprintln!("predict: {scored} scored, {failed} failed");
    Ok(failed == 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
