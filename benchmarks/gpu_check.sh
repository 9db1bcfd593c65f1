#!/usr/bin/env bash
# The device check of issues 4 and 15, for a machine with a CUDA GPU and the project's venv (hack/python-env.sh).
# One run, a few minutes on an H100/H200, from the repository root:
#
#   bash benchmarks/gpu_check.sh            # results under $OUT when set, else /tmp/tandem-gpu-check
#
#   1. training: the digits example through Tandem's trainer on CUDA with bf16 autocast, against a plain torch
#      loop on the same model, data, optimizer and batch (samples/s each, and the ratio), at batch 32 and 1024;
#   2. serving: `tandem serve` on CUDA against CPU for the digits MLP (the model step 1 trained) and ResNet-18
#      (random weights; the compute is the trained model's), each measured by `tandem profile` through the
#      server's HTTP front: one request at a time (batch 1) and 64 in flight with dynamic batching on;
#      `tandem profile` reads the provider the server really ran on from its metrics, so a CUDA row that fell
#      back to CPU says so.
#
# The CUDA server runs with exactly the server-gpu image's packages (docker/requirements-serve-gpu.txt), put
# into a folder of their own beside the venv (the venv keeps the CPU onnxruntime): from uv's cache, or PyPI.
# Not part of pytest: CI has no GPU. Every step has a time limit; the whole run stays under 8 minutes.
set -euo pipefail
python="${PYTHON:-python}"
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || {
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing to measure" >&2
  exit 1
}
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-/tmp/tandem-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$root/operator${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
say() { printf '\n== %s\n' "$*"; }
"$python" - <<'PY'
import onnxruntime, platform, torch
print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"Python {platform.python_version()}, venv onnxruntime {onnxruntime.__version__}")
PY

# --- 1. training: Tandem's trainer against a plain torch loop ----------------------------------------------
say "training digits on CUDA with bf16: Tandem's trainer against a plain torch loop (15 epochs each)"
for batch in 32 1024; do
  name="trainer-cuda-bf16-b$batch"
  TANDEM_TERMINATION_MESSAGE_PATH="$out/$name.json" timeout 180 "$python" -m tandem.trainer digits \
    --device cuda --amp --batch-size "$batch" --epochs 15 --output "file://$out/$name" \
    >"$out/$name.log" 2>&1 || { echo "the trainer failed:"; tail -20 "$out/$name.log"; exit 1; }
  timeout 180 "$python" - "$out/$name.json" "$batch" <<'PY'
"""The same steps as tandem.trainer.digits.train, without the SDK: no distributed wrapper, no per-step loss
check (a device-to-host sync), no checkpoints, no per-epoch held-out evaluation."""
import json, sys, time
import torch
from torch import nn
from tandem.trainer.digits import DigitsMLP, load_split

batch, epochs = int(sys.argv[2]), 15
torch.manual_seed(0)
split = load_split(None)
model = DigitsMLP(128)
model.standardize.fit(split.train_x)
model = model.cuda()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
x, y = split.train_x.cuda(), split.train_y.cuda()
steps_per_epoch = -(-len(y) // batch)
torch.cuda.synchronize()
started = time.perf_counter()
for epoch in range(epochs):
    order = torch.randperm(len(y), device="cuda")
    for step in range(steps_per_epoch):
        chosen = order[step * batch:(step + 1) * batch]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            logits = model(x[chosen])
        loss = nn.functional.cross_entropy(logits.float(), y[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
torch.cuda.synchronize()
seconds = time.perf_counter() - started
plain = epochs * steps_per_epoch * batch / seconds
tandem = json.load(open(sys.argv[1]))["metrics"]
print(f"batch {batch:>5}: Tandem trainer {tandem['samples_per_second']:>10,.0f} samples/s "
      f"(accuracy {tandem['accuracy']:.4f}), plain torch loop {plain:>10,.0f} samples/s, "
      f"Tandem/plain {tandem['samples_per_second'] / plain:.2f}")
PY
done

# --- 2. serving: tandem serve on CUDA against CPU, measured by tandem profile ------------------------------
say "models: the digits MLP trained above, and ResNet-18 exported with random weights"
digits="$out/trainer-cuda-bf16-b32/model.onnx"
timeout 120 "$python" - "$out/resnet18.onnx" <<'PY'
import sys
from pathlib import Path
import torch
sys.path.insert(0, "benchmarks")
from resnet import export, resnet18

torch.manual_seed(0)
export(resnet18(), torch.zeros(1, 3, 224, 224), Path(sys.argv[1]))
print(f"{sys.argv[1]}: {Path(sys.argv[1]).stat().st_size / 1e6:.0f} MB")
PY

say "the server-gpu packages (onnxruntime-gpu and NVIDIA's CUDA wheels) for the CUDA server"
gpu_site="$CACHE/serve-gpu-site"
uv="$CACHE/uv/bin/uv"
if [ ! -f "$gpu_site/.lock-$(sha256sum docker/requirements-serve-gpu.txt | cut -c1-12)" ]; then
  rm -rf "$gpu_site"
  if [ -x "$uv" ] && timeout 300 "$uv" pip install --quiet --target "$gpu_site" --python "$(command -v "$python")" \
      --no-deps --require-hashes -r docker/requirements-serve-gpu.txt; then
    touch "$gpu_site/.lock-$(sha256sum docker/requirements-serve-gpu.txt | cut -c1-12)"
  else
    echo "could not install docker/requirements-serve-gpu.txt (no uv at $uv, or neither its cache nor PyPI has"
    echo "the wheels): the CUDA rows below will run on the venv's CPU onnxruntime and say so"
    rm -rf "$gpu_site"
  fi
fi

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
server=""
stop_server() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; server=""; }
trap stop_server EXIT

# One server per row: model, provider, batching, then `tandem profile` against it at that concurrency.
measure() {  # label, model file, provider, concurrency, extra serve flags...
  local label=$1 model=$2 provider=$3 concurrency=$4 port metrics site=""
  shift 4
  port=$(free_port); metrics=$(free_port)
  [ "$provider" = cuda ] && [ -d "$gpu_site" ] && site="$gpu_site:"
  PYTHONPATH="$site$PYTHONPATH" timeout 200 "$python" -m tandem serve --model-name m --model-uri "file://$model" \
    --execution-provider "$provider" --host 127.0.0.1 --http-port "$port" --grpc-port "$(free_port)" \
    --metrics-port "$metrics" --no-access-log "$@" >"$out/serve-$label.log" 2>&1 &
  server=$!
  if timeout 180 "$python" -m tandem profile --url "http://127.0.0.1:$port" \
      --metrics-url "http://127.0.0.1:$metrics/metrics" --model-name m --device "$provider" \
      --concurrency "$concurrency" --latency-seconds 3 --throughput-seconds 5 --ready-seconds 120 \
      >"$out/profile-$label.json" 2>"$out/profile-$label.err"; then
    "$python" - "$out/profile-$label.json" "$label" "$*" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<26} ran on {r['device']:<4} one at a time p50 {r['p50LatencyMs']:>8.2f} ms "
      f"p99 {r['p99LatencyMs']:>8.2f} ms | {r['concurrency']:>3} in flight {r['throughputPerReplica']:>9,.0f} req/s "
      f"p99 {r['loadedP99LatencyMs']:>8.2f} ms  [{sys.argv[3] or 'defaults'}]")
PY
  else
    echo "$label: the profile failed: $(tail -c 600 "$out/profile-$label.err")"
    tail -5 "$out/serve-$label.log"
  fi
  grep '"execution provider fallback"' "$out/serve-$label.log" | head -2 || true
  stop_server
}

say "tandem serve, measured by tandem profile over HTTP (JSON requests, as the profile sends them)"
for model in digits resnet18; do
  file="$digits"; [ "$model" = resnet18 ] && file="$out/resnet18.onnx"
  measure "$model-cpu-batch1" "$file" cpu 1
  measure "$model-cuda-batch1" "$file" cuda 1
  measure "$model-cpu-batching" "$file" cpu 64 --max-batch-size 32
  measure "$model-cuda-batching" "$file" cuda 64 --max-batch-size 64 --max-batch-delay-ms 2 --workers 2
done
say "done: logs and JSON under $out"
