#!/usr/bin/env bash
# The trainer's device check (issue 4), for a machine with a CUDA GPU and the project's venv active:
# the digits example with CUDA + bf16 autocast, CUDA fp32 and CPU, in one run, printing held-out accuracy
# and training samples/s for each. Not part of pytest (CI has no GPU). About a minute on an H100.
#   bash tests/trainer/gpu_check.sh [output-folder]
set -euo pipefail
out="${1:-${OUT:-/tmp/tandem-gpu-check}}"
mkdir -p "$out"
python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
for batch in 32 1024; do
  for variant in "cuda --amp" "cuda --no-amp" "cpu --no-amp"; do
    read -r device amp <<<"$variant"
    name="$device${amp#--}-b$batch"
    TANDEM_TERMINATION_MESSAGE_PATH="$out/$name.json" python -m tandem.trainer digits \
      --device "$device" "$amp" --batch-size "$batch" --epochs 15 --output "file://$out/$name" \
      >"$out/$name.log" 2>&1 || { tail -20 "$out/$name.log"; exit 1; }
    python - "$out/$name.json" "$name" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
print(f"{sys.argv[2]:>22}: accuracy {m['accuracy']:.4f}, {m['samples_per_second']:,.0f} samples/s, {m['train_seconds']:.2f}s")
PY
  done
done
