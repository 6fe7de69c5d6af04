#!/usr/bin/env bash
# Load and hostile-input measurement of `omniad serve` against the demo model, and the same
# images through `omniad predict --batch-size 8` (README, "Serving" / "Load"). Not run by CI;
# loopback only, bounded in count and time.
#
#   bash bench/serve_load.sh [WORK_DIR] [REQUESTS]      (default 10000 requests per concurrency)
#
# Needs release builds of omniad and the load generator:
#   cargo build --release -p omniad-cli -p omniad-serve --bins --examples
# (OMNIAD=... and LOADGEN=... pick other binaries). WORK_DIR keeps the demo run between calls.
set -euo pipefail
OMNIAD=${OMNIAD:-target/release/omniad}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
dir=${1:-$(mktemp -d)}
requests=${2:-10000}
threads=${THREADS:-2}
port=${PORT:-18080}
mkdir -p "$dir"
echo "work folder: $dir; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [ ! -f "$dir/demo/run/model.json" ]; then
    echo "== omniad demo (trains the demo model)"
    "$OMNIAD" --threads "$threads" demo --dir "$dir/demo" | tee "$dir/demo.txt"
fi
run="$dir/demo/run"

# 64 test images of the demo data (8 per class where there are that many), as the load images
imgs="$dir/images"
if [ ! -d "$imgs" ]; then
    mkdir -p "$imgs"
    for c in "$dir"/demo/data/*/; do
        find "$c/test" -name '*.png' | sort | head -n 11 | while read -r f; do
            cp "$f" "$imgs/$(basename "$c")_$(basename "$(dirname "$f")")_$(basename "$f")"
        done
    done
fi
n_img=$(ls "$imgs" | wc -l)
echo "load images: $n_img PNGs of $(python3 -c "import struct,sys;d=open(sys.argv[1],'rb').read(24);print('%dx%d'%struct.unpack('>II',d[16:24]))" "$(ls -d "$imgs"/* | head -1)") px"

echo "== omniad predict --batch-size 8 on the same images (x5, 5 copies each), model loading left out"
many="$dir/many"
rm -rf "$many"; mkdir -p "$many"
for k in 1 2 3 4 5; do for f in "$imgs"/*; do cp "$f" "$many/${k}_$(basename "$f")"; done; done
few="$dir/few"; rm -rf "$few"; mkdir -p "$few"; ls -d "$imgs"/* | head -8 | xargs -I{} cp {} "$few/"
t0=$(date +%s.%N); "$OMNIAD" --threads "$threads" predict --run "$run" --batch-size 8 "$few" > /dev/null; t1=$(date +%s.%N)
"$OMNIAD" --threads "$threads" predict --run "$run" --batch-size 8 "$many" > /dev/null; t2=$(date +%s.%N)
n_many=$(ls "$many" | wc -l)
python3 - "$t0" "$t1" "$t2" "$n_many" <<'PY'
import sys
t0, t1, t2, n = map(float, sys.argv[1:])
few, many = t1 - t0, t2 - t1
print(f"predict: 8 images {few:.1f} s, {int(n)} images {many:.1f} s -> {(n - 8) / (many - few):.1f} images/s (batch 8, without model loading)")
PY

echo "== omniad serve, $requests requests at concurrency 1, 8, 64, then 2000 malformed"
"$OMNIAD" --threads "$threads" serve --run "$run" --bind "127.0.0.1:$port" --max-batch 8 \
    --max-wait-ms 5 --queue 64 --request-timeout-s 3 > "$dir/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.2; done
status=0
"$LOADGEN" --addr "127.0.0.1:$port" --images "$imgs" --requests "$requests" \
    --concurrency 1,8,64 --pid "$pid" --malformed 2000 || status=$?
echo "after the load: /v1/model answers $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/model"); a good image scores: $(curl -s -H 'Content-Type: image/png' --data-binary @"$(ls -d "$imgs"/* | head -1)" "http://127.0.0.1:$port/v1/predict" | head -c 200)"
kill -TERM "$pid"
wait "$pid" && echo "serve exited with status 0 after SIGTERM" || echo "serve exited with status $?"
exit $status
