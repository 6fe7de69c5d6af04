#!/usr/bin/env bash
# Runs omniad's and the plain-PyTorch benchmark in one go, on the same machine, and prints the
# ratios. Not part of CI. Needs python3 with bench/requirements.txt (PYTHON=... to choose it).
#
#   bash bench/compare.sh [TEACHER] [DEPTHS] [THREADS]
#   defaults: efficientnet_lite0 3,9,9,7 2
#
# Measured (PyTorch: each phase in its own process; omniad: the epochs in their own processes,
# inference at batch 1, batch 8 and the training step in one, so its peaks are cumulative):
#   inference at batch 1 and 8 (teacher + neck + decoder + anomaly map + blur + score),
#   one training step at batch 16 (teacher, forward, backward, clip, AdamW; random batch),
#   one training epoch (batch 16) over the training images of the synthetic benchmark
#   (`omniad synth` defaults: 6 classes x 40 images): omniad with its teacher-feature cache and
#   without it; PyTorch with a DataLoader (PIL decoding, 2 workers) and the teacher every step.
# ResNet teachers use random weights on both sides (timing only). ITERS (default 2) sets the
# timed repetitions of the inference and step measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-efficientnet_lite0}
depths=${2:-3,9,9,7}
threads=${3:-2}
iters=${ITERS:-2}
py=${PYTHON:-python3}
out=$(mktemp -d)
trap 'echo "raw results: $out" >&2' EXIT
bin=target/release/omniad
cargo build --release -q -p omniad-cli
"$py" -c "import torch, scipy, safetensors, PIL" || {
    echo "error: $py lacks torch/scipy/safetensors/pillow (pip install -r bench/requirements.txt)" >&2
    exit 1
}

"$bin" synth --out "$out/synth" > /dev/null
mkdir -p "$out/train"
for f in "$out"/synth/*/train/good/*.png; do
    class=$(basename "$(dirname "$(dirname "$(dirname "$f")")")")
    ln -s "$f" "$out/train/${class}_$(basename "$f")"
done

echo "[compare] omniad: model" >&2
"$bin" --threads "$threads" bench model --teacher "$teacher" --depths "$depths" --iters "$iters" \
    --json > "$out/omniad_model.json"
for cache in memory none; do
    echo "[compare] omniad: epoch, feature cache $cache" >&2
    "$bin" --threads "$threads" bench epoch --data "$out/synth" --teacher "$teacher" \
        --depths "$depths" --feature-cache "$cache" --json > "$out/omniad_epoch_$cache.json"
done
echo "[compare] PyTorch" >&2
"$py" bench/pytorch_reference.py --teacher "$teacher" --depths "$depths" --threads "$threads" \
    --phases infer_b1,infer_b8,train_step,train_epoch --train-dir "$out/train" --workers 2 \
    --warmup 1 --iters "$iters" --train-iters "$iters" --json "$out/torch.json" > "$out/torch.log" ||
    echo "[compare] PyTorch: some phases failed (see $out/torch.log)" >&2

"$py" - "$out" "$teacher" "$depths" "$threads" <<'PY'
import json, os, platform, sys
out, teacher, depths, threads = sys.argv[1:5]
load = lambda n: json.load(open(os.path.join(out, n)))
om, t = load("omniad_model.json"), load("torch.json")["phases"]
ep = {c: load(f"omniad_epoch_{c}.json")["runs"][0] for c in ("memory", "none")}
failed = {k: v["error"] for k, v in t.items() if "error" in v}
if failed:
    print(f"PyTorch phases failed (no ratio for them): {failed}")
print(f"teacher {teacher}, depths {depths}, {threads} threads, {os.cpu_count()} CPUs ({platform.machine()}), "
      f"torch {load('torch.json')['torch']}")
print(f"{'':40} {'omniad':>9} {'PyTorch':>9} {'ratio':>6} {'omniad MiB':>11} {'PyTorch MiB':>12}")
def row(name, a, b, ma, mb, ratio):
    print(f"{name:40} {a:9.2f} {b:9.2f} {ratio:6.2f} {ma:11.0f} {mb:12.0f}")
ok = lambda name: name in t and "error" not in t[name]
for inf in om["inference"]:
    p = t.get(f"infer_b{inf['batch']}", {})
    if not ok(f"infer_b{inf['batch']}"):
        continue
    row(f"inference batch {inf['batch']} (img/s, ratio = speed-up)", inf["images_per_sec"], p["images_per_s"],
        inf["peak_rss_mib"], p["peak_rss_mb"], inf["images_per_sec"] / p["images_per_s"])
ts, p = om["train_step"][0], t.get("train_step", {})  # one entry per precision; f32 here
if ok("train_step"):
  row(f"training step batch {ts['batch']} (img/s, speed-up)", ts["images_per_sec"], p["images_per_s"],
    om["peak_rss_mib"], p["peak_rss_mb"], ts["images_per_sec"] / p["images_per_s"])
p = t.get("train_epoch", {})
for c, label in (("memory", "feature cache"), ("none", "no cache")):
    e = ep[c]
    if not ok("train_epoch"):
        break
    row(f"epoch, omniad {label} (s, time ratio)", e["seconds"], p["epoch_s"], e["peak_rss_mib_so_far"],
        p["peak_rss_mb"], e["seconds"] / p["epoch_s"])
if ok("train_epoch"):
  print(f"epoch: {p['images']} images, {p['steps']} steps of {p['batch']}; PyTorch data wait {p['data_wait_s']:.1f} s")
PY
