//! Prints, as JSON, the training images of a dataset in the order `omniad train` indexes them
//! (class-major, then by path; no validation share held out) and the shuffled order of every
//! epoch (`shuffled_indices(n, seed, epoch)`), for `bench/train_parity.py`.
//!
//! `cargo run --example train_order -- LAYOUT ROOT SEED EPOCHS`
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layout, root, seed, epochs] = args.as_slice() else {
        eprintln!("usage: train_order LAYOUT ROOT SEED EPOCHS");
        std::process::exit(2);
    };
    let kind: omniad_data::DatasetKind = layout.parse().expect("dataset layout");
    let seed: u64 = seed.parse().expect("seed");
    let epochs: u64 = epochs.parse().expect("epochs");
    let ds = omniad_data::open_dataset(kind, Path::new(root), None, &Default::default())
        .expect("open the dataset");
    let paths: Vec<String> = ds
        .train
        .iter()
        .map(|s| s.image.display().to_string())
        .collect();
    let orders: Vec<Vec<usize>> = (0..epochs)
        .map(|e| omniad_data::shuffled_indices(paths.len(), seed, e))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "paths": paths, "orders": orders })
    );
}
