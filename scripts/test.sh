#!/usr/bin/env bash
# Runs omniad's test suite (the README's test command). Prepares libtorch first if needed.
# Reference fixtures are read from ../shared/fixtures beside the repository (override with
# OMNIAD_FIXTURES or, for the model parity test, OMNIAD_PARITY_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace "$@"
