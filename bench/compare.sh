#!/usr/bin/env bash
# Runs omniad's and the plain-PyTorch benchmark in one go, on the same machine, and prints the
# ratios (omniad / PyTorch throughput; > 1 means omniad is faster). Not part of CI.
#
#   bash bench/compare.sh [TEACHER] [DEPTHS] [THREADS]
#   defaults: efficientnet_lite0 3,9,9,7 1     (needs python3 with bench/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-efficientnet_lite0}
depths=${2:-3,9,9,7}
threads=${3:-1}
py=${PYTHON:-python3}
out=$(mktemp -d)
cargo build --release -q -p omniad-cli
target/release/omniad --threads "$threads" bench model --teacher "$teacher" --depths "$depths" \
    --iters "${ITERS:-2}" --json > "$out/omniad.json"
"$py" bench/pytorch_reference.py --teacher "$teacher" --depths "$depths" --threads "$threads" \
    --phases infer_b1,infer_b8,train_step --warmup 1 --iters "${ITERS:-2}" --train-iters "${ITERS:-2}" \
    --json "$out/torch.json" > "$out/torch.log"
"$py" - "$out/omniad.json" "$out/torch.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); t = json.load(open(sys.argv[2]))
def torch_phase(name):
    for k, v in (t.get("phases") or t).items():
        if k == name:
            return v
    return None
rows = []
for inf in o["inference"]:
    p = torch_phase(f"infer_b{inf['batch']}")
    if p and p.get("images_per_s"):
        rows.append((f"inference batch {inf['batch']} (img/s)", inf["images_per_sec"], p["images_per_s"], inf.get("peak_rss_mib"), p.get("peak_rss_mb")))
p = torch_phase("train_step")
if p and p.get("images_per_s"):
    ts = o["train_step"]
    rows.append((f"training step batch {ts['batch']} (img/s)", ts["images_per_sec"], p["images_per_s"], o.get("peak_rss_mib"), p.get("peak_rss_mb")))
print(f"{'':34} {'omniad':>10} {'PyTorch':>10} {'ratio':>7} {'omniad MiB':>11} {'PyTorch MiB':>12}")
for name, a, b, ma, mb in rows:
    print(f"{name:34} {a:10.2f} {b:10.2f} {a / b:7.2f} {ma or 0:11.0f} {mb or 0:12.0f}")
PY
echo "raw results: $out"
