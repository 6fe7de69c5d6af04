#!/usr/bin/env bash
# Accuracy cost of bfloat16 (issue 19), on the demo benchmark and synthetic variants (other
# seeds: other images, other defects, other initialisation). Not run by CI.
#
#   bash bench/precision.sh WORK_DIR [SEED ...]        (default seeds: 42 7)
#
# THREADS (default 1: on a machine shared with other jobs libtorch's OpenMP threads spin-wait;
# precision is compared at the same thread count) and QUICK=1 (`omniad demo --quick`: 16 training
# images per class, 8 epochs) are read from the environment.
#
# For each seed: `omniad demo` in float32 (train + eval), the same run evaluated with
# `--precision bf16` (bf16 inference of an f32-trained model), `omniad demo --precision bf16`
# (mixed-precision training, evaluated in bf16) and that run evaluated in f32. Prints mean
# I-AUROC / P-AUROC / AUPRO of each, the differences, and the Spearman rank correlation of the
# image scores of the f32 and bf16 inference of the same model. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bench/precision.sh WORK_DIR [SEED ...]}
shift
seeds=("$@")
[ ${#seeds[@]} -eq 0 ] && seeds=(42 7)
bash scripts/setup.sh
cargo build --release -q
bin="${CARGO_TARGET_DIR:-target}/release/omniad"
threads=${THREADS:-1}
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
mkdir -p "$work"
for seed in "${seeds[@]}"; do
    d="$work/seed$seed"
    for p in f32 bf16; do
        echo "[precision] seed $seed: demo trained in $p" >&2
        start=$(date +%s)
        "$bin" --threads "$threads" demo --dir "$d/$p" --seed "$seed" --precision "$p" "${quick[@]}" \
            > "$d.$p.demo.log" 2>&1
        echo "$(( $(date +%s) - start ))" > "$d.$p.seconds"
        cp "$d/$p/run/metrics.json" "$d.$p-trained.$p-eval.metrics.json"
        cp "$d/$p/run/results.json" "$d.$p-trained.$p-eval.results.json"
        other=$([ "$p" = f32 ] && echo bf16 || echo f32)
        echo "[precision] seed $seed: $p-trained model evaluated in $other" >&2
        "$bin" --threads "$threads" eval --run "$d/$p/run" --precision "$other" --no-report --json \
            > /dev/null
        cp "$d/$p/run/metrics.json" "$d.$p-trained.$other-eval.metrics.json"
        cp "$d/$p/run/results.json" "$d.$p-trained.$other-eval.results.json"
    done
done
python3 - "$work" "${seeds[@]}" <<'PY'
import json, sys
work, seeds = sys.argv[1], sys.argv[2:]
def load(seed, trained, ev, kind):
    return json.load(open(f"{work}/seed{seed}.{trained}-trained.{ev}-eval.{kind}.json"))
def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)
keys = [("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("pixel_aupro", "AUPRO")]
print(f"{'seed':>4} {'trained':>7} {'eval':>5} " + " ".join(f"{k[1]:>8}" for k in keys) + f" {'spearman vs f32 eval':>21} {'max |d score|':>14}")
for seed in seeds:
    for trained in ("f32", "bf16"):
        base = load(seed, trained, "f32", "results")["images"]
        for ev in ("f32", "bf16"):
            m = load(seed, trained, ev, "metrics")["mean"]
            imgs = load(seed, trained, ev, "results")["images"]
            assert [i["image"] for i in imgs] == [i["image"] for i in base]
            a, b = [i["score"] for i in base], [i["score"] for i in imgs]
            rho = spearman(a, b)
            dmax = max(abs(x - y) for x, y in zip(a, b))
            print(f"{seed:>4} {trained:>7} {ev:>5} " + " ".join(f"{100 * m[k]:8.2f}" for k, _ in keys) + f" {rho:21.5f} {dmax:14.2e}")
PY
