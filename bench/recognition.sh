#!/usr/bin/env bash
# Class recognition and unknown-class flags on the synthetic benchmark (README, "Decisions on a
# line"). Not run by CI.
#
#   bash bench/recognition.sh [WORK_DIR]        (OMNIAD=path/to/omniad to pick the binary)
#
# 1. `omniad synth` (6 classes, 40 training, 15 good + 25 defective test images each, 256 px).
# 2. Trains on all 6 classes and evaluates all test images: `omniad eval` prints class
#    recognition per class (correct / wrong / unknown, and correct among the defective images).
# 3. Trains on 4 classes and evaluates the test images of all 6: the 2 untrained classes should
#    be `unknown`, the 4 trained ones recognised.
# Recognition depends on the frozen teacher only (not on the decoder), so 1 epoch is enough for
# these numbers; the demo's input size (128 px) and teacher (EfficientNet-Lite0) are used.
set -euo pipefail
OMNIAD=${OMNIAD:-target/release/omniad}
dir=${1:-$(mktemp -d)}
mkdir -p "$dir"
echo "work folder: $dir" >&2
common=(--image-size 128 --depths 1,1,1,1 --epochs 1 --quiet)
[ -d "$dir/data" ] || "$OMNIAD" synth --out "$dir/data" > /dev/null
rm -rf "$dir/all6" "$dir/four"
"$OMNIAD" train --data-root "$dir/data" --out "$dir/all6" "${common[@]}" > /dev/null
echo "== trained on all 6 classes, every test image without --class"
"$OMNIAD" eval --run "$dir/all6" --no-report | sed -n '/^class recognition/,/^$/p'
"$OMNIAD" train --data-root "$dir/data" --classes woven,grained,flange,screw --out "$dir/four" "${common[@]}" > /dev/null
echo "== trained on woven, grained, flange, screw; test images of all 6"
"$OMNIAD" eval --run "$dir/four" --classes woven,grained,tiled,flange,screw,label --no-report \
    | sed -n '/^class recognition/,/^$/p'
