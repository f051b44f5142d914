#!/usr/bin/env bash
# The SST-2 sweep of configs/sst2_sweep.yaml through `kdistill compare`, its report copied to benchmarks/results.
#
#   benchmarks/sst2_sweep.sh [extra kdistill compare flags]
#
# e.g. to reuse a teacher fine-tuned on all of train.tsv by `kdistill run --config configs/sst2_minilm.yaml`:
#   benchmarks/sst2_sweep.sh --teacher_train false --teacher_model runs/sst2_minilm/teacher
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/sst2_sweep
kdistill compare --config configs/sst2_sweep.yaml --output_dir "$out" "$@"
dest=benchmarks/results/sst2_sweep
mkdir -p "$dest"
cp "$out"/report.md "$out"/report.html "$out"/results.json "$out"/*.png "$dest"/
echo "copied the report to $dest"
