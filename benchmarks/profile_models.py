"""`tandem profile` on the digits example model and on ResNet-18, on CPU and (where there is one) on a GPU.

The figures auto placement runs on, measured the way the operator's profile Jobs measure them. ResNet-18 is
built here layer for layer (torchvision is not a dependency) with random weights: the compute, and so the
timing, is the same as the trained model's. Exports both to ONNX with a dynamic batch dimension, then runs
`tandem profile` for each (model, device, batch) and prints one JSON line each and a table.

    python benchmarks/profile_models.py [--out DIR] [--threads N] [--seconds S]

On a machine without a CUDA provider the cuda runs report device "cpu" (that is the point of the field).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from tandem.trainer.digits import DigitsMLP


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.down = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


def resnet18(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
    for inputs, outputs, stride in widths:
        layers += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers).eval()


def export(model: nn.Module, sample: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (sample,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def run_profile(model: Path, device: str, threads: int, batch: int, seconds: float) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "tandem",
        "profile",
        "--model-uri",
        f"file://{model}",
        "--device",
        device,
        "--threads",
        str(threads),
        "--max-batch-size",
        str(batch),
        "--latency-seconds",
        str(seconds),
        "--throughput-seconds",
        str(seconds),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--gpu-batch", type=int, default=64, help="batch for the GPU throughput runs")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="tandem-profile-"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {
        "digits-mlp": export(DigitsMLP(), torch.zeros(1, 64), folder / "digits.onnx"),
        "resnet18": export(resnet18(), torch.zeros(1, 3, 224, 224), folder / "resnet18.onnx"),
    }
    rows = []
    for name, path in models.items():
        for device, batch in (("cpu", 1), ("cuda", 1), ("cuda", args.gpu_batch)):
            result = run_profile(path, device, args.threads, batch, args.seconds)
            print(json.dumps({"model": name, "batch": batch, **result}), flush=True)
            rows.append((name, device, batch, result))
    print(f"\n{'model':<11} {'asked':<5} {'ran on':<6} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>10}")
    for name, device, batch, result in rows:
        if "error" in result:
            print(f"{name:<11} {device:<5} error: {result['error']}")
            continue
        print(
            f"{name:<11} {device:<5} {result['device']!s:<6} {batch:>5} {result['p50LatencyMs']:>8} "
            f"{result['p99LatencyMs']:>8} {result['throughputPerReplica']:>10}"
        )


if __name__ == "__main__":
    main()
