#!/usr/bin/env python3
"""Compare omniad-metrics with scikit-learn on the same synthetic pixels.

1. Write the data and the Rust timing (the Rust example generates the
   deterministic MVTec-sized set, scores it, and dumps both):

       cargo run --release -p omniad-metrics --example bench_metrics -- \
           --dump target/omniad_bench.safetensors

   This writes target/omniad_bench.safetensors (tensors anomaly_maps, masks,
   image_scores, labels, class_ids; metadata class_names) and
   target/omniad_bench.safetensors.rust.json (the Rust report with
   "rust_seconds").

2. Time scikit-learn's roc_auc_score + average_precision_score on the same
   pixels and check that the values agree:

       pip install scikit-learn numpy safetensors
       python bench/metrics_sklearn.py target/omniad_bench.safetensors

The Rust time covers *all* image and pixel metrics (exact AUPRO and F1-max
included); the scikit-learn time covers only pixel AUROC and AP, so the ratio
understates the difference. Not part of CI.
"""

import argparse
import json
import sys
import time

import numpy as np
from safetensors import safe_open
from sklearn.metrics import average_precision_score, roc_auc_score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump", help="safetensors file written by bench_metrics --dump")
    ap.add_argument(
        "--rust-json",
        help="Rust report (default: DUMP.rust.json written next to the dump)",
    )
    args = ap.parse_args()

    with safe_open(args.dump, framework="numpy") as f:
        maps = f.get_tensor("anomaly_maps")
        masks = f.get_tensor("masks")
        keys = set(f.keys())
        class_ids = f.get_tensor("class_ids") if "class_ids" in keys else None
        names = json.loads((f.metadata() or {}).get("class_names", "[]"))
    n = maps.shape[0]
    if class_ids is None:
        class_ids = np.zeros(n, dtype=np.int64)
    rust_path = args.rust_json or args.dump + ".rust.json"
    with open(rust_path) as fh:
        rust = json.load(fh)
    rust_classes = {c["class"]: c for c in rust["classes"]}

    print(f"data: {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]} = {maps.size} pixels, "
          f"{masks.mean() * 100:.2f}% anomalous, {len(np.unique(class_ids))} class(es)")
    sk_total = 0.0
    worst = 0.0
    for cid in np.unique(class_ids):
        sel = class_ids == cid
        y = masks[sel].ravel()
        s = maps[sel].ravel()
        t0 = time.perf_counter()
        auroc = roc_auc_score(y, s)
        apv = average_precision_score(y, s)
        dt = time.perf_counter() - t0
        sk_total += dt
        name = names[cid] if cid < len(names) else f"class_{cid}"
        r = rust_classes.get(name)
        line = f"{name}: sklearn {dt:.2f} s  auroc {auroc:.12f}  ap {apv:.12f}"
        if r is not None:
            d1 = abs(r["pixel_auroc"] - auroc)
            d2 = abs(r["pixel_ap"] - apv)
            worst = max(worst, d1, d2)
            line += f"  |rust-sklearn| auroc {d1:.1e} ap {d2:.1e}"
        print(line)
    rust_s = rust.get("rust_seconds")
    print(f"scikit-learn roc_auc_score + average_precision_score (pixels): {sk_total:.2f} s")
    if rust_s:
        cpu = rust.get("rust_cpu_seconds")
        cpu_txt = f", CPU {cpu:.2f} s" if cpu else ""
        print(f"omniad-metrics, all 7 metrics incl. exact AUPRO ({rust.get('rust_mode')}): "
              f"{rust_s:.2f} s wall{cpu_txt}")
        print(f"ratio scikit-learn / omniad-metrics: {sk_total / rust_s:.1f}x")
    print(f"max |difference| in pixel AUROC/AP: {worst:.2e}")
    return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
