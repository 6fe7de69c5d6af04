//! Generates the synthetic dataset and prints the wall-clock time.
//!
//! Usage: `cargo run --release -p omniad-synth --example synth_generate -- OUT [SEED]`

use omniad_synth::{generate, SynthConfig};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: synth_generate OUT [SEED]")?);
    let seed = match args.next() {
        Some(s) => s
            .parse::<u64>()
            .map_err(|e| format!("invalid seed '{s}': {e}"))?,
        None => 0,
    };
    let cfg = SynthConfig {
        seed,
        ..SynthConfig::default()
    };
    let t = Instant::now();
    let summary = generate(&out, &cfg)?;
    println!(
        "wrote {} images of {} classes to {} in {:.2} s ({} rayon threads)",
        summary.total_images,
        summary.classes.len(),
        summary.out.display(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    Ok(())
}
