//! `omniad`: multi-class unsupervised anomaly detection with Omni-AD (ICME 2025).
//!
//! Every subcommand ends with a one-line error and a non-zero exit status on bad input.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use omniad_data::DatasetKind;
use omniad_metrics::MetricOptions;
use omniad_model::{Branches, GlobalAttention, OmniAd, OmniAdConfig, Precision, TeacherArch};
use omniad_pipeline::config::{FeatureCache, TrainConfig};
use omniad_pipeline::demo::{run_demo, DemoConfig};
use omniad_pipeline::device::ComputeDevice;
use omniad_pipeline::eval::{dataset_for_run, eval_run, EvalOptions};
use omniad_pipeline::predict::{
    collect_inputs_reporting, predict_run, PredictOptions, PredictOutcome,
};
use omniad_pipeline::{train, TrainOptions};
use omniad_report::{default_output, write_report, ReportOptions};

mod bench;

#[derive(Parser, Debug)]
#[command(
    name = "omniad",
    version,
    about = "Multi-class unsupervised anomaly detection with Omni-AD (ICME 2025)"
)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// CPU threads for libtorch, at least 1 (default: all cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(i32).range(1..))]
    threads: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a synthetic dataset, train one model on all its classes, evaluate (offline, minutes).
    Demo(DemoArgs),
    /// Write the deterministic synthetic multi-class anomaly dataset (MVTec-AD layout).
    Synth(SynthArgs),
    /// Train one Omni-AD model on all classes of a dataset.
    Train(Box<TrainArgs>),
    /// Evaluate a run on a test split: metrics, operating point at the stored thresholds, class recognition.
    Eval(EvalArgs),
    /// Fit a run's image thresholds on labelled test images (f1, fpr:RATE or quantile:Q).
    Calibrate(CalibrateArgs),
    /// Score images with a trained run: JSON lines, heatmap overlays, masks. An image that cannot
    /// be scored gets a line {"path", "error"} and the others are scored; the status is then 1.
    Predict(PredictArgs),
    /// Write the HTML evaluation report of an evaluated run (one self-contained file).
    Report(ReportArgs),
    /// Score anomaly maps produced by any tool (safetensors: anomaly_maps, masks, image_scores, labels).
    Metrics(MetricsArgs),
    /// Architecture summary and parameter counts.
    Info(InfoArgs),
    /// Benchmarks: metrics speed, inference and training throughput.
    Bench(bench::BenchArgs),
    /// HTTP inference service: JSON scores, overlay/mask PNGs, metrics, OpenAPI, a web page.
    Serve(ServeArgs),
    /// Export a run's model as ONNX (whole inference graph) plus a sidecar JSON, for ONNX
    /// Runtime, OpenVINO, TensorRT, tract or `omniad-lite`.
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Folder for the dataset and the run (default: a new folder under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Epochs (default 48).
    #[arg(long)]
    epochs: Option<usize>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
    /// Seed of data and training.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A much smaller run (fewer images and epochs) for smoke tests; lower accuracy.
    #[arg(long)]
    quick: bool,
    /// Precision of training and evaluation: f32, bf16 (mixed), f16 (CUDA only).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Output folder (created; must be empty or a previous synth output).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    #[arg(long, default_value_t = 40)]
    train_per_class: usize,
    #[arg(long, default_value_t = 15)]
    test_good_per_class: usize,
    #[arg(long, default_value_t = 25)]
    test_defect_per_class: usize,
    /// Only these classes (comma separated).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// TOML configuration file (keys as in the run folder's config.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset layout: mvtec, visa, realiad, loco, btad, mpdd, folder [default: detected from
    /// the folders under --data-root; the start-up summary says which].
    #[arg(long)]
    dataset: Option<DatasetKind>,
    /// Dataset root folder (required for a new run).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Train on these classes only (comma separated) [default: every class found].
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Teacher: resnet18, resnet34 (paper), resnet50, wide_resnet50_2, efficientnet_lite0
    /// [default: efficientnet_lite0, shipped, offline].
    #[arg(long)]
    teacher: Option<TeacherArch>,
    /// Teacher ImageNet weights (.safetensors or .pth from timm/torchvision) [default: the
    /// shipped EfficientNet-Lite0 weights; required for ResNets].
    #[arg(long)]
    teacher_weights: Option<PathBuf>,
    /// Run folder (required for a new run unless --config names one; with --resume, the run to
    /// continue).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N [default: cpu].
    #[arg(long)]
    device: Option<ComputeDevice>,
    /// Epochs [default: 100].
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per optimiser step [default: 16].
    #[arg(long)]
    batch_size: Option<usize>,
    /// AdamW learning rate (x0.1 at 80% of the epochs) [default: 0.001].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// AdamW weight decay [default: 0.0001].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Seed of shuffling, initialisation and feature jitter [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Omni-blocks per decoder stage, e.g. 3,9,9,7 (the paper's) [default: 3,9,9,7].
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// Input side in pixels (square; a multiple of 32 in 64..=2048) [default: 256].
    #[arg(long)]
    image_size: Option<u32>,
    /// Ablation: both, global_only, local_only [default: both].
    #[arg(long, value_parser = parse_branches)]
    branches: Option<Branches>,
    /// Ablation: learnable_tokens, self_attention [default: learnable_tokens].
    #[arg(long, value_parser = parse_attention)]
    attention: Option<GlobalAttention>,
    /// Learnable tokens (a perfect square) [default: 64].
    #[arg(long)]
    num_tokens: Option<i64>,
    /// Feature-jitter scale of training (0 = off) [default: 20].
    #[arg(long, allow_negative_numbers = true)]
    jitter_scale: Option<f64>,
    /// Teacher-feature cache: auto (memory if it fits --memory-budget, else a disk file in the
    /// run folder, else none), memory, memory_f16, disk, none [default: auto].
    #[arg(long, value_parser = parse_cache)]
    feature_cache: Option<FeatureCache>,
    /// Memory the automatic feature cache may use, e.g. 8G, 512M (default: half of the memory
    /// available at start). May be given with --resume.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Evaluate every K epochs (0 = off) [default: 0].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Checkpoint every K epochs (0 = only at the end / on Ctrl-C) [default: 10].
    #[arg(long)]
    save_every: Option<usize>,
    /// Also train on the last, incomplete batch of each epoch (by default it is dropped, as the
    /// reference's data loader does, so that every step sees --batch-size images).
    #[arg(long)]
    keep_last_batch: bool,
    /// Share of each class's normal training images held out (never trained on) to fit class
    /// recognition margins and the per-class thresholds at the end of training; at least 3 per
    /// class, at most half; 0 = none. A layout's own validation folder (MVTec LOCO
    /// `validation/good`) is used instead when present [default: 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Quantile of the held-out images' image scores used as each class's image threshold;
    /// the expected false-alarm rate on new normal images is about 1 - Q (with n held-out
    /// images and Q > n/(n+1) the threshold is their maximum: about 1/(n+1)) [default: 0.995].
    #[arg(long)]
    image_quantile: Option<f64>,
    /// Quantile of the held-out images' anomaly-map pixels used as each class's pixel (mask)
    /// threshold [default: 0.999].
    #[arg(long)]
    pixel_quantile: Option<f64>,
    /// Class recognition: an image is of an unknown class when it is farther from its nearest
    /// class than (1 + M) x the largest distance that class's own normal images show. Raise it
    /// when the line's images vary more than the training images (other compression, crops,
    /// orientation), lower it to flag foreign products sooner [default: 1.0].
    #[arg(long)]
    unknown_margin: Option<f64>,
    /// Precision of the training step: f32, or bf16 mixed precision (matrix products and
    /// convolutions in bfloat16; norms, loss, gradients, optimiser state and weights in
    /// float32), f16 on CUDA [default: f32].
    #[arg(long)]
    precision: Option<Precision>,
    /// Continue the run in --out from its last checkpoint (its config.toml is used).
    #[arg(long)]
    resume: bool,
    /// No progress bar and no start-up summary: one line per epoch.
    #[arg(long)]
    quiet: bool,
}

/// Which test split `eval` and `calibrate` read (by default the run's own dataset).
#[derive(Args, Debug)]
struct TestDataArgs {
    /// Dataset layout (default: the one the run was trained on).
    #[arg(long)]
    dataset: Option<DatasetKind>,
    /// Dataset root (default: the run's).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Classes to read (default: the `--classes` the run was trained with; a run trained on
    /// every class of its dataset reads every class of the dataset given here).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
}

impl TestDataArgs {
    /// The dataset for `run`: these flags, else the run's `config.toml`.
    fn open(&self, run: &std::path::Path) -> Result<omniad_data::Dataset> {
        dataset_for_run(
            run,
            self.dataset,
            self.data_root.as_deref(),
            self.classes.as_deref(),
        )
    }
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Run folder (with model.json).
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    data: TestDataArgs,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Precision of the forward passes: f32, bf16 (matrix products and convolutions in
    /// bfloat16, anomaly map in float32; fast on CPUs with AVX512-BF16/AMX and on GPUs), f16
    /// (CUDA only).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Write anomaly maps per class into <run>/maps (readable by `omniad metrics`); the report
    /// needs them, so they are saved unless --no-report.
    #[arg(long)]
    save_maps: bool,
    /// Do not write <run>/report.html (nor the maps it needs, unless --save-maps).
    #[arg(long)]
    no_report: bool,
    /// Report: images per class in the gallery.
    #[arg(long, default_value_t = ReportOptions::default().thumbs_per_class)]
    thumbs: usize,
    /// Also compute the ADer-compatible variants.
    #[arg(long)]
    ader: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    /// Run folder (with model.json); its thresholds are replaced for the classes calibrated.
    #[arg(long)]
    run: PathBuf,
    #[command(flatten)]
    data: TestDataArgs,
    /// f1 (largest F1 on normal and anomalous images), fpr:RATE (false-alarm rate on the normal
    /// images at most RATE, e.g. fpr:0.01) or quantile:Q (quantile Q of the normal scores).
    #[arg(long)]
    method: omniad_pipeline::calibrate::Method,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
}

fn calibrate_cmd(a: CalibrateArgs) -> Result<()> {
    let ds = a.data.open(&a.run)?;
    let opts = EvalOptions {
        batch_size: a.batch_size as usize,
        progress: true,
        ..Default::default()
    };
    let out = omniad_pipeline::eval::calibrate_run(&a.run, &ds, a.device, a.method, &opts)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", serde_json::to_string_pretty(&out.fitted)?);
    eprintln!(
        "fitted by {} on the {}; stored in {}",
        a.method,
        out.fitted.fitted_on,
        a.run.join("model.json").display()
    );
    eprint!("{}", operating_table(&out.points));
    eprintln!("(measured on the images the thresholds were fitted on: an optimistic estimate)");
    Ok(())
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Run folder (with model.json).
    #[arg(long)]
    run: PathBuf,
    /// Export format; only `onnx`.
    #[arg(long, default_value = "onnx")]
    format: String,
    /// The ONNX file to write; the sidecar is written beside it as `<out>.json`.
    #[arg(long)]
    out: PathBuf,
    /// Batch axis: `dynamic` or a fixed size.
    #[arg(long, default_value = "dynamic")]
    batch: omniad_onnx::Batch,
    /// Input size `H` (square) or `HxW` in pixels (default: the run's); multiples of 32.
    #[arg(long)]
    image_size: Option<String>,
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// Run folder (with model.json).
    #[arg(long, required_unless_present = "onnx", conflicts_with = "onnx")]
    run: Option<PathBuf>,
    /// An exported model (`omniad export`, its sidecar beside it): score through tract, without
    /// libtorch, with the same preprocessing and JSON lines (no --out pictures).
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Image files or folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Write heatmap overlays and masks here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decision threshold on the image score and the mask (default: the class's calibrated
    /// thresholds). Not applied to an image of an unknown class (it gets no verdict); pass
    /// --class to judge such images as that class.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f64>,
    /// The class of every image (default: recognised per image from the teacher's features;
    /// an image of no trained class is reported `unknown_class` and gets no decision).
    #[arg(long)]
    class: Option<String>,
    /// Device: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Precision of the forward passes: f32, bf16 (matrix products and convolutions in
    /// bfloat16, anomaly map in float32; fast on CPUs with AVX512-BF16/AMX and on GPUs), f16
    /// (CUDA only).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Run folder (with model.json), read only.
    #[arg(long)]
    run: PathBuf,
    /// Address to listen on; anything but loopback needs --token-file or --insecure-no-auth.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
    /// Device of the inference worker: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    device: ComputeDevice,
    /// Precision of the forward passes: f32, bf16 (matrix products and convolutions in
    /// bfloat16, anomaly map in float32; fast on CPUs with AVX512-BF16/AMX and on GPUs), f16
    /// (CUDA only).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Most images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_batch: u64,
    /// Milliseconds the worker waits for more requests to fill a batch.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    max_wait_ms: u64,
    /// Most prediction requests admitted at once; one more gets 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    queue: u64,
    /// File holding the bearer token clients must send (Authorization: Bearer TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve a non-loopback address without a token.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Largest request body, MiB (default fits a 20-megapixel PNG).
    #[arg(long, default_value_t = omniad_serve::DEFAULT_MAX_BODY_MB as u64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_body_mb: u64,
    /// Most images in one multipart request.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_images: u64,
    /// Largest image side accepted, pixels (checked before decoding).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    max_image_side: u32,
    /// Seconds a whole request may take (408 past it).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_s: u64,
}

#[derive(Args, Debug)]
struct MetricsArgs {
    /// Safetensors file: anomaly_maps f32 [N,H,W], masks u8 [N,H,W], image_scores f32 [N], labels u8 [N], optional class_ids [N].
    file: PathBuf,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Also compute the ADer-compatible variants.
    #[arg(long)]
    ader: bool,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// Teacher backbone [default: efficientnet_lite0, the training default].
    #[arg(long)]
    teacher: Option<TeacherArch>,
    /// Decoder depths.
    #[arg(long, value_delimiter = ',', default_value = "3,9,9,7")]
    depths: Vec<usize>,
    /// Show a run's checkpoint description instead.
    #[arg(long)]
    run: Option<PathBuf>,
}

fn parse_branches(s: &str) -> Result<Branches, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: use both, global_only or local_only"))
}
fn parse_attention(s: &str) -> Result<GlobalAttention, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: use learnable_tokens or self_attention"))
}
fn parse_cache(s: &str) -> Result<FeatureCache, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: use auto, memory, memory_f16, disk or none"))
}
/// A byte count: a number with an optional binary unit K, M, G, T (`8G` = 8 GiB; `B` suffix
/// optional, case-insensitive).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t
        .strip_suffix("IB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 8G, 512M or 1000000"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?}: a size must be a finite number >= 0"));
    }
    let bytes = v * (1u64 << shift) as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("{s:?}: too large"));
    }
    Ok(bytes as u64)
}

fn depths4(v: &[usize]) -> Result<[usize; 4]> {
    match v {
        [a, b, c, d] => Ok([*a, *b, *c, *d]),
        _ => bail!(
            "--depths needs 4 comma-separated numbers (e.g. 3,9,9,7), got {}",
            v.len()
        ),
    }
}

/// Prints a command-line parsing error as one `error: ...` line (clap's usage block and hint
/// dropped) and exits with clap's status (2); help and version requests print as usual.
fn exit_on_clap_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let line = text
        .split("\n\n")
        .filter(|b| {
            let b = b.trim_start();
            !b.starts_with("Usage:") && !b.starts_with("For more information")
        })
        .flat_map(str::lines)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.starts_with("error:") {
        eprintln!("{line} (see --help)");
    } else {
        eprintln!("error: {line} (see --help)");
    }
    std::process::exit(e.exit_code());
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_on_clap_error(e));
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    omniad_pipeline::alloc::tune_allocator();
    omniad_pipeline::device::install_panic_hook();
    if let Some(t) = cli.threads {
        tch::set_num_threads(t);
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<Reported>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", omniad_pipeline::predict::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An outcome already reported on stdout and stderr (e.g. `predict` with images that could not be
/// scored): `main` exits with status 1 without printing another line.
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reported above")
    }
}

impl std::error::Error for Reported {}

fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Demo(a) => demo(a),
        Command::Synth(a) => synth(a),
        Command::Train(a) => train_cmd(*a),
        Command::Eval(a) => eval_cmd(a),
        Command::Calibrate(a) => calibrate_cmd(a),
        Command::Predict(a) => predict_cmd(a),
        Command::Report(a) => report_cmd(a),
        Command::Metrics(a) => metrics_cmd(a),
        Command::Info(a) => info_cmd(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve_cmd(a),
        Command::Export(a) => export_cmd(a),
    }
}

/// `H` or `HxW`.
fn parse_image_size(s: &str) -> Result<(u32, u32)> {
    let bad =
        || anyhow::anyhow!("--image-size {s:?}: expected H or HxW in pixels, e.g. 256 or 256x320");
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let num = |p: &str| p.trim().parse::<u32>().map_err(|_| bad());
    match parts.as_slice() {
        [a] => {
            let v = num(a)?;
            Ok((v, v))
        }
        [a, b] => Ok((num(a)?, num(b)?)),
        _ => Err(bad()),
    }
}

fn export_cmd(a: ExportArgs) -> Result<()> {
    if !a.format.eq_ignore_ascii_case("onnx") {
        bail!("--format {:?}: only `onnx` is supported", a.format);
    }
    let image_size = a.image_size.as_deref().map(parse_image_size).transpose()?;
    let ckpt = omniad_pipeline::runs::checkpoint_of(&a.run)?;
    let opts = omniad_onnx::ExportOptions {
        batch: a.batch,
        image_size,
    };
    let r = omniad_onnx::export_checkpoint(&ckpt, &a.out, &opts)?;
    println!(
        "{}",
        serde_json::json!({
            "model": r.model.to_string_lossy(),
            "sidecar": r.sidecar.to_string_lossy(),
            "bytes": r.bytes,
            "nodes": r.nodes,
            "opset": r.sidecar_content.opset,
            "model_sha256": r.sidecar_content.model_sha256,
        })
    );
    Ok(())
}

/// `predict --onnx`: the exported model through tract (see `omniad_lite`).
fn predict_onnx(a: PredictArgs, model: PathBuf) -> Result<()> {
    if a.out.is_some() {
        bail!("--out (overlay and mask pictures) is not available with --onnx; drop one of them");
    }
    if a.device != ComputeDevice::Cpu {
        bail!("--onnx runs on the CPU (tract); drop --device");
    }
    if a.precision != Precision::F32 {
        bail!("--onnx runs the exported float32 graph; drop --precision");
    }
    let (inputs, unreadable) = collect_inputs_reporting(&a.paths)?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = unreadable.len();
    for f in unreadable {
        writeln!(
            stdout,
            "{}",
            serde_json::to_string(&PredictOutcome::Failed(f))?
        )
        .context("cannot write to stdout")?;
    }
    let mut scored = 0usize;
    if !inputs.is_empty() {
        let session = omniad_lite::Session::load(&model)?;
        let opts = omniad_lite::predict::Options {
            class: a.class,
            threshold: a.threshold,
            batch_size: a.batch_size as usize,
        };
        omniad_lite::predict::predict(&session, &inputs, &opts, |o| {
            match o {
                omniad_lite::predict::Outcome::Scored(_) => scored += 1,
                omniad_lite::predict::Outcome::Failed(_) => failed += 1,
            }
            writeln!(stdout, "{}", serde_json::to_string(o)?).context("cannot write to stdout")?;
            Ok(())
        })?;
    }
    predict_summary(scored, failed)
}

fn serve_cmd(a: ServeArgs) -> Result<()> {
    let mut opts = omniad_serve::ServeOptions::new(a.run);
    opts.bind = a.bind;
    opts.device = a.device;
    opts.precision = a.precision;
    opts.max_batch = a.max_batch as usize;
    opts.max_wait = std::time::Duration::from_millis(a.max_wait_ms);
    opts.queue = a.queue as usize;
    opts.token = match &a.token_file {
        Some(f) => Some(omniad_serve::read_token_file(f)?),
        None => None,
    };
    opts.insecure_no_auth = a.insecure_no_auth;
    opts.max_body_bytes = (a.max_body_mb as usize) << 20;
    opts.max_images = a.max_images as usize;
    opts.decode_limits = omniad_data::DecodeLimits {
        max_width: a.max_image_side,
        max_height: a.max_image_side,
    };
    opts.request_timeout = std::time::Duration::from_secs(a.request_timeout_s);
    omniad_serve::run_blocking(opts, |addr| {
        eprintln!("omniad serve: listening on http://{addr} (Ctrl-C or SIGTERM to stop)");
    })
}

fn demo(a: DemoArgs) -> Result<()> {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("omniad-demo-{}", std::process::id())),
    };
    let mut cfg = DemoConfig::standard(&dir);
    cfg.device = a.device;
    cfg.seed = a.seed;
    cfg.precision = a.precision;
    if a.quick {
        cfg.synth.train_per_class = 16;
        cfg.synth.test_good_per_class = 6;
        cfg.synth.test_defect_per_class = 8;
        cfg.epochs = 8;
    }
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    eprintln!("omniad demo — {}", cfg.describe());
    let out = run_demo(&cfg)?;
    println!("{}", out.eval.report.to_table());
    println!("{}", operating_table(&out.eval.operating_points));
    if let Some(r) = &out.eval.recognition {
        println!("{}", recognition_table(r));
    }
    for w in &out.eval.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "time: data {:.0}s, training {:.0}s ({:.1} img/s, teacher cache {:.0}s), evaluation {:.0}s",
        out.seconds.0,
        out.seconds.1,
        out.train.images_per_sec,
        out.train.cache_seconds,
        out.seconds.2
    );
    println!("dataset:  {}", out.data_dir.display());
    println!(
        "run:      {}  (model.json, config.toml, train_log.jsonl)",
        out.run_dir.display()
    );
    println!(
        "metrics:  {}  and metrics.csv",
        out.run_dir.join("metrics.json").display()
    );
    println!(
        "maps:     {}  (score again with `omniad metrics FILE`)",
        out.maps_dir.display()
    );
    println!(
        "heatmaps: omniad predict --run {} --out {} {}  (each image's class is recognised)",
        out.run_dir.display(),
        out.run_dir.join("heatmaps").display(),
        out.data_dir.join("*/test").display()
    );
    let report = default_output(&out.run_dir);
    report_to(&out.run_dir, &report, &ReportOptions::default())?;
    println!("report:   {}  (open it in a browser)", report.display());
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let cfg = omniad_synth::SynthConfig {
        seed: a.seed,
        size: a.size,
        train_per_class: a.train_per_class,
        test_good_per_class: a.test_good_per_class,
        test_defect_per_class: a.test_defect_per_class,
        classes: a.classes,
    };
    let summary = omniad_synth::generate(&a.out, &cfg)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

impl TrainArgs {
    /// The one mapping of the parsed flags onto the configuration: each flag given replaces its
    /// configuration value. A resumed run keeps its saved configuration; only the device and the
    /// memory budget (where it runs now) may change, and the epochs grow.
    fn apply(self, cfg: &mut TrainConfig) -> Result<()> {
        macro_rules! set {
            ($($flag:expr => $field:expr),* $(,)?) => {
                $(if let Some(v) = $flag { $field = v; })*
            };
        }
        set!(self.device => cfg.device, self.memory_budget.map(Some) => cfg.memory_budget);
        if self.resume {
            // A resumed run keeps its configuration; only --epochs may grow (to extend it). A
            // flag repeating the saved value changes nothing and is accepted.
            fn differs<T: PartialEq>(given: &Option<T>, saved: &T) -> bool {
                given.as_ref().is_some_and(|g| g != saved)
            }
            let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            let depths = self.depths.as_deref().map(depths4).transpose()?;
            let c = &cfg.calibration;
            let changed: Vec<&str> = [
                ("--config", self.config.is_some()),
                ("--dataset", differs(&self.dataset, &cfg.data.dataset)),
                (
                    "--data-root",
                    self.data_root
                        .as_ref()
                        .is_some_and(|p| canon(p) != canon(&cfg.data.data_root)),
                ),
                (
                    "--classes",
                    self.classes
                        .as_ref()
                        .is_some_and(|v| Some(v) != cfg.data.classes.as_ref()),
                ),
                ("--teacher", differs(&self.teacher, &cfg.model.teacher)),
                (
                    "--teacher-weights",
                    self.teacher_weights
                        .as_ref()
                        .is_some_and(|p| Some(canon(p)) != cfg.teacher_weights.as_ref().map(canon)),
                ),
                ("--batch-size", differs(&self.batch_size, &cfg.batch_size)),
                ("--lr", differs(&self.lr, &cfg.optim.lr)),
                (
                    "--weight-decay",
                    differs(&self.weight_decay, &cfg.optim.weight_decay),
                ),
                ("--seed", differs(&self.seed, &cfg.seed)),
                ("--depths", differs(&depths, &cfg.model.depths)),
                (
                    "--image-size",
                    differs(&self.image_size.map(|s| (s, s)), &cfg.model.image_size),
                ),
                ("--branches", differs(&self.branches, &cfg.model.branches)),
                (
                    "--attention",
                    differs(&self.attention, &cfg.model.attention),
                ),
                (
                    "--num-tokens",
                    differs(&self.num_tokens, &cfg.model.num_tokens),
                ),
                (
                    "--jitter-scale",
                    differs(&self.jitter_scale, &cfg.model.jitter_scale),
                ),
                (
                    "--feature-cache",
                    differs(&self.feature_cache, &cfg.feature_cache),
                ),
                ("--eval-every", differs(&self.eval_every, &cfg.eval_every)),
                ("--save-every", differs(&self.save_every, &cfg.save_every)),
                ("--keep-last-batch", self.keep_last_batch && cfg.drop_last),
                (
                    "--val-fraction",
                    differs(&self.val_fraction, &c.val_fraction),
                ),
                (
                    "--image-quantile",
                    differs(&self.image_quantile, &c.image_quantile),
                ),
                (
                    "--pixel-quantile",
                    differs(&self.pixel_quantile, &c.pixel_quantile),
                ),
                (
                    "--unknown-margin",
                    differs(&self.unknown_margin, &c.unknown_margin),
                ),
                ("--precision", differs(&self.precision, &cfg.precision)),
            ]
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect();
            if !changed.is_empty() {
                bail!(
                    "--resume continues the run with its saved config.toml; these flags would change it: {} (only --epochs, to extend the run, --device and --memory-budget may change; flags that repeat the saved values are fine)",
                    changed.join(", ")
                );
            }
            if let Some(e) = self.epochs {
                if e < cfg.epochs {
                    bail!(
                        "--epochs {e} is fewer than the run's {}: a run can be extended, not shortened",
                        cfg.epochs
                    );
                }
                cfg.epochs = e;
            }
            return Ok(());
        }
        set!(
            self.dataset => cfg.data.dataset,
            self.data_root => cfg.data.data_root,
            self.classes.map(Some) => cfg.data.classes,
            self.teacher => cfg.model.teacher,
            self.teacher_weights.map(Some) => cfg.teacher_weights,
            self.out => cfg.out,
            self.epochs => cfg.epochs,
            self.batch_size => cfg.batch_size,
            self.lr => cfg.optim.lr,
            self.weight_decay => cfg.optim.weight_decay,
            self.seed => cfg.seed,
            self.depths.as_deref().map(depths4).transpose()? => cfg.model.depths,
            self.image_size.map(|s| (s, s)) => cfg.model.image_size,
            self.branches => cfg.model.branches,
            self.attention => cfg.model.attention,
            self.num_tokens => cfg.model.num_tokens,
            self.jitter_scale => cfg.model.jitter_scale,
            self.feature_cache => cfg.feature_cache,
            self.eval_every => cfg.eval_every,
            self.save_every => cfg.save_every,
            self.val_fraction => cfg.calibration.val_fraction,
            self.image_quantile => cfg.calibration.image_quantile,
            self.pixel_quantile => cfg.calibration.pixel_quantile,
            self.unknown_margin => cfg.calibration.unknown_margin,
            self.precision => cfg.precision,
        );
        if self.keep_last_batch {
            cfg.drop_last = false;
        }
        Ok(())
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let mut cfg = if a.resume {
        let out = a.out.clone().context("--resume needs --out RUN_DIR")?;
        let path = out.join("config.toml");
        if !path.is_file() {
            bail!("{}: no config.toml, nothing to resume", out.display());
        }
        let mut cfg = TrainConfig::from_toml_file(&path)?;
        // The run is where the user says it is now (config.toml may hold a path relative to
        // another working directory).
        cfg.out = out;
        cfg
    } else if let Some(p) = &a.config {
        TrainConfig::from_toml_file(p)?
    } else {
        TrainConfig::default()
    };
    let (resume, quiet) = (a.resume, a.quiet);
    // No silent defaults for where the data comes from and where the run goes.
    let layout_given = a.dataset.is_some() || a.config.is_some();
    let out_given = a.out.is_some() || a.config.is_some();
    a.apply(&mut cfg)?;
    if !resume {
        if !out_given {
            bail!("--out RUN_DIR is required: the folder the run (checkpoint, logs, metrics) is written to");
        }
        let root = &cfg.data.data_root;
        if root.as_os_str().is_empty() {
            bail!("--data-root is required (or data.data_root in --config)");
        }
        if root.exists() && !root.is_dir() {
            bail!("{}: data root is a file, not a folder", root.display());
        }
        if !root.is_dir() {
            bail!("{}: data root folder not found", root.display());
        }
        // Absolute in config.toml, so that eval and --resume work from any working directory.
        if let Ok(abs) = std::fs::canonicalize(root) {
            cfg.data.data_root = abs;
        }
        if !layout_given {
            let root = &cfg.data.data_root;
            cfg.data.dataset = DatasetKind::detect(root).with_context(|| {
                format!(
                    "{}: cannot tell the dataset layout; pass --dataset",
                    root.display()
                )
            })?;
            if !quiet {
                eprintln!(
                    "dataset layout: {} (detected from the folders of {}; --dataset sets it)",
                    cfg.data.dataset,
                    root.display()
                );
            }
        }
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let signal = stop_signals(interrupt.clone())?;
    let outcome = train(
        &cfg,
        &TrainOptions {
            resume,
            progress: !quiet,
            interrupt: Some(interrupt),
            max_steps: None,
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if !quiet && !outcome.interrupted {
        eprintln!(
            "done: {} epochs, {} steps, last epoch's mean loss {:.5}, {:.1} images/s; checkpoint {}",
            outcome.epochs_done,
            outcome.steps,
            outcome.last_loss,
            outcome.images_per_sec,
            outcome.checkpoint.display(),
        );
        if let Some(t) = &outcome.thresholds {
            eprintln!(
                "thresholds: fitted on {} ({}); class recognition for {} classes",
                t.fitted_on,
                t.method,
                outcome.recognition.len()
            );
        }
        eprintln!(
            "next: omniad eval --run {0}\n      omniad predict --run {0} IMAGES... --out OUT   (the class of each image is recognised)",
            outcome.run_dir.display()
        );
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted: resume with `omniad train --resume --out {}`",
            outcome.run_dir.display()
        );
        // The conventional status of the signal that stopped it (130 SIGINT, 143 SIGTERM,
        // 129 SIGHUP).
        let sig = match signal.load(Ordering::SeqCst) {
            0 => signal_hook::consts::SIGINT,
            s => s,
        };
        std::process::exit(128 + sig);
    }
    Ok(())
}

/// Makes SIGINT (Ctrl-C), SIGTERM (`docker stop`, Kubernetes, batch schedulers) and SIGHUP
/// stop training cleanly: the first sets `flag` (training saves a checkpoint after the current
/// step and returns) and is recorded in the returned number; a second one exits at once with
/// the conventional status `128 + signal`, without saving.
///
/// # Errors
/// The handlers cannot be installed.
fn stop_signals(flag: Arc<AtomicBool>) -> Result<Arc<AtomicI32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let which = Arc::new(AtomicI32::new(0));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the SIGINT/SIGTERM/SIGHUP handlers")?;
    let seen = which.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let name = match sig {
                SIGINT => "Ctrl-C",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond signal ({name}): exiting without saving");
                std::process::exit(128 + sig);
            }
            seen.store(sig, Ordering::SeqCst);
            eprintln!("\n{name}: saving a checkpoint after this step (send it again to abort)");
        }
    });
    Ok(which)
}

fn eval_cmd(a: EvalArgs) -> Result<()> {
    let ds = a.data.open(&a.run)?;
    let opts = EvalOptions {
        metrics: MetricOptions {
            ader: a.ader,
            ..Default::default()
        },
        batch_size: a.batch_size as usize,
        save_maps: (a.save_maps || !a.no_report).then(|| a.run.join("maps")),
        progress: !a.json,
        precision: a.precision,
    };
    let report_opts = ReportOptions {
        thumbs_per_class: a.thumbs,
        ..Default::default()
    };
    report_opts.validate()?;
    let out = eval_run(&a.run, &ds, a.device, &opts)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        let mut json = out.report.to_json();
        json["operating_points"] = serde_json::to_value(&out.operating_points)?;
        json["recognition"] = serde_json::to_value(&out.recognition)?;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{}", out.report.to_table());
        println!("{}", operating_table(&out.operating_points));
        if let Some(r) = &out.recognition {
            println!("{}", recognition_table(r));
        }
        println!(
            "metrics: {} and metrics.csv (thresholds unchanged: `omniad calibrate` fits them on labelled images)",
            a.run.join("metrics.json").display()
        );
    }
    if !a.no_report {
        let path = default_output(&a.run);
        report_to(&a.run, &path, &report_opts)?;
        // stdout stays pure JSON with --json
        if a.json {
            eprintln!("report: {}", path.display());
        } else {
            println!("report:  {}", path.display());
        }
    }
    Ok(())
}

/// The operating point per class at the stored thresholds, as a text table.
fn operating_table(points: &[omniad_pipeline::eval::ClassOperatingPoint]) -> String {
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let mut out = String::from(
        "operating point at the stored thresholds (anomalous = image score >= threshold)\n\
         class                 threshold (source)       TP    FP    TN    FN  precision  recall  false alarms\n",
    );
    if points.is_empty() {
        out.push_str("  (no stored threshold)\n");
    }
    for p in points {
        let o = &p.point;
        out.push_str(&format!(
            "{:<20} {:>10.5} {:<8} {:>8} {:>5} {:>5} {:>5} {:>10} {:>7} {:>13}\n",
            p.class,
            o.threshold,
            format!("({})", p.threshold_source),
            o.tp,
            o.fp,
            o.tn,
            o.fn_,
            pct(o.precision),
            pct(o.recall),
            pct(o.false_alarm_rate)
        ));
    }
    out
}

/// Class recognition per test class, as a text table.
fn recognition_table(
    r: &std::collections::BTreeMap<String, omniad_pipeline::eval::RecognitionCounts>,
) -> String {
    let mut out = String::from(
        "class recognition (without --class)\n\
         class                 images  correct  wrong  unknown  (anomalous: correct/all)\n",
    );
    for (class, c) in r {
        out.push_str(&format!(
            "{:<20} {:>7} {:>8} {:>6} {:>8}  ({}/{}){}\n",
            class,
            c.images,
            c.correct,
            c.wrong,
            c.unknown,
            c.anomalous_correct,
            c.anomalous,
            if c.trained {
                ""
            } else {
                "  not trained: unknown is right"
            }
        ));
    }
    out
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Run folder, evaluated by `omniad eval` (model.json, metrics.json, results.json, maps/).
    #[arg(long)]
    run: PathBuf,
    /// Output file [default: <run>/report.html].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per class in the gallery (worst false negatives, worst false positives, true
    /// positives), each shown as image | ground truth | anomaly map | predicted mask.
    #[arg(long, default_value_t = ReportOptions::default().thumbs_per_class)]
    thumbs: usize,
    /// Side of each thumbnail in pixels.
    #[arg(long, default_value_t = ReportOptions::default().thumb_size)]
    thumb_size: u32,
}

/// Writes the report and prints its warnings on stderr.
fn report_to(run: &std::path::Path, out: &std::path::Path, opts: &ReportOptions) -> Result<()> {
    let report = write_report(run, out, opts)?;
    for w in &report.warnings {
        eprintln!("warning: report: {w}");
    }
    Ok(())
}

fn report_cmd(a: ReportArgs) -> Result<()> {
    let out = a.out.unwrap_or_else(|| default_output(&a.run));
    let opts = ReportOptions {
        thumbs_per_class: a.thumbs,
        thumb_size: a.thumb_size,
    };
    report_to(&a.run, &out, &opts)?;
    println!("report: {}", out.display());
    Ok(())
}

fn predict_cmd(a: PredictArgs) -> Result<()> {
    let run = match (&a.run, &a.onnx) {
        (_, Some(model)) => {
            let model = model.clone();
            return predict_onnx(a, model);
        }
        (Some(run), None) => run.clone(),
        (None, None) => bail!("give --run RUN or --onnx MODEL"),
    };
    let (inputs, unreadable) = collect_inputs_reporting(&a.paths)?;
    let opts = PredictOptions {
        threshold: a.threshold,
        per_class: a.class,
        out: a.out,
        batch_size: a.batch_size as usize,
        alpha: 0.5,
        precision: a.precision,
    };
    let (mut scored, mut failed) = (0usize, unreadable.len());
    let mut stdout = std::io::stdout().lock();
    // folder entries that could not be read: an error line each, first
    for f in unreadable {
        writeln!(
            stdout,
            "{}",
            serde_json::to_string(&PredictOutcome::Failed(f))?
        )
        .context("cannot write to stdout")?;
    }
    if inputs.is_empty() {
        eprintln!("predict: 0 scored, {failed} failed (their lines on stdout have an \"error\")");
        return Err(Reported.into());
    }
    predict_run(&run, &inputs, a.device, &opts, |outcome| {
        match outcome {
            PredictOutcome::Scored(_) => scored += 1,
            PredictOutcome::Failed(_) => failed += 1,
        }
        writeln!(stdout, "{}", serde_json::to_string(outcome)?)
            .context("cannot write to stdout")?;
        Ok(())
    })?;
    predict_summary(scored, failed)
}

/// The last line of `predict` (with `--run` or `--onnx`) on stderr; status 1 when an image failed
/// (its line on stdout has an `error`).
fn predict_summary(scored: usize, failed: usize) -> Result<()> {
    if failed == 0 {
        eprintln!("predict: {scored} scored, 0 failed");
        return Ok(());
    }
    eprintln!(
        "predict: {scored} scored, {failed} failed (their lines on stdout have an \"error\")"
    );
    Err(Reported.into())
}

fn metrics_cmd(a: MetricsArgs) -> Result<()> {
    let opts = MetricOptions {
        ader: a.ader,
        ..Default::default()
    };
    let report = omniad_metrics::evaluate_file(&a.file, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        println!("{}", report.to_table());
    }
    Ok(())
}

fn info_cmd(a: InfoArgs) -> Result<()> {
    if let Some(run) = a.run {
        let ckpt = omniad_pipeline::runs::checkpoint_of(&run)?;
        let meta = omniad_model::checkpoint::read_meta(&ckpt)?;
        println!("{}", serde_json::to_string_pretty(&meta)?);
        return Ok(());
    }
    let mut cfg = OmniAdConfig {
        depths: depths4(&a.depths)?,
        ..OmniAdConfig::default()
    };
    if let Some(t) = a.teacher {
        cfg.teacher = t;
    }
    let model = OmniAd::new(&cfg, tch::Device::Cpu)?;
    print_info(&model);
    Ok(())
}

fn print_info(model: &OmniAd) {
    let cfg = &model.cfg;
    let (trainable, frozen) = model.num_params();
    let [c1, c2, c3] = cfg.teacher.channels();
    let (h, w) = cfg.image_size;
    println!("Omni-AD (ICME 2025)");
    println!("  input           [B, 3, {h}, {w}]");
    println!("  teacher         {} (frozen, BatchNorm eval): [B,{c1},{},{}] [B,{c2},{},{}] [B,{c3},{},{}]", cfg.teacher, h / 4, w / 4, h / 8, w / 8, h / 16, w / 16);
    println!(
        "  neck            RD4AD fusion + 3 Bottlenecks -> [B,{},{},{}]",
        cfg.neck_width,
        h / 32,
        w / 32
    );
    println!(
        "  decoder         Omni-blocks, dims {:?}, depths {:?}, {} heads, {} learnable tokens, branches {:?}, attention {:?}",
        cfg.stage_dims(),
        cfg.depths,
        cfg.heads,
        cfg.num_tokens,
        cfg.branches,
        cfg.attention
    );
    println!("  anomaly map     1 - cos per scale, bilinear to {h}x{w}, mean, Gaussian sigma 4; image score = max");
    println!(
        "  parameters      trainable {} ({:.2} M), frozen teacher {} ({:.2} M), total {}",
        trainable,
        trainable as f64 / 1e6,
        frozen,
        frozen as f64 / 1e6,
        trainable + frozen
    );
}

/// Used by the bench module.
pub(crate) fn info_line(model: &OmniAd) -> String {
    let (t, f) = model.num_params();
    format!(
        "teacher {} depths {:?}: {:.2} M trainable, {:.2} M frozen",
        model.cfg.teacher,
        model.cfg.depths,
        t as f64 / 1e6,
        f as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, Cli};
    use clap::CommandFactory;
    use omniad_pipeline::TrainConfig;

    /// Every `[default: ...]` in `omniad train --help` is the value `TrainConfig::default()` has.
    #[test]
    fn train_help_shows_the_real_defaults() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("train")
            .expect("train subcommand")
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let d = TrainConfig::default();
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let wanted = [
            d.device.to_string(),
            d.epochs.to_string(),
            d.batch_size.to_string(),
            d.optim.lr.to_string(),
            d.optim.weight_decay.to_string(),
            d.seed.to_string(),
            join(&d.model.depths),
            d.model.image_size.0.to_string(),
            d.model.num_tokens.to_string(),
            d.model.jitter_scale.to_string(),
            d.save_every.to_string(),
            d.eval_every.to_string(),
            d.model.teacher.to_string(),
            serde_json::to_value(d.model.branches)
                .expect("name")
                .as_str()
                .expect("str")
                .to_string(),
            serde_json::to_value(d.model.attention)
                .expect("name")
                .as_str()
                .expect("str")
                .to_string(),
            serde_json::to_value(d.feature_cache)
                .expect("name")
                .as_str()
                .expect("str")
                .to_string(),
        ];
        for w in wanted {
            assert!(
                help.contains(&format!("[default: {w}]"))
                    || help.contains(&format!("[default: {w},")),
                "`omniad train --help` lacks [default: {w}]:\n{help}"
            );
        }
        assert_eq!(d.model.image_size.0, d.model.image_size.1, "square default");
    }

    #[test]
    fn sizes_with_binary_units() {
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2kb"), Ok(2048));
        for bad in ["", "G", "-1G", "eight", "nanG", "1e30T"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }
}
