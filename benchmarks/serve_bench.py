#!/usr/bin/env python3
"""Inference server benchmark: Tandem's server against KServe and MLServer and the in-process limit.

One run builds two ONNX models (an MLP 784-1024-1024-10 and a small CNN on 3x64x64), starts every server for a
model at once, each wrapping an onnxruntime session with the same intra-op thread count, and drives batch-1 V2
infer requests at each concurrency: REST with wrk (JSON bodies), gRPC with ghz (ModelInferRequest with
raw_input_contents, what tritonclient sends), and measures onnxruntime alone in-process. Ratios come from the
same run, because the machine is shared and absolute numbers drift: each round measures every server at a point
back to back, in an order that rotates from round to round, so servers are compared over seconds rather than
minutes and none always goes first; the report takes the median of the rounds. Prints a markdown table and writes
it to benchmarks/results/serve.md.

Peers live in their own virtual environments (kserve and mlserver conflict) under
$HOME/.cache/tandem/bench-venvs, created here when missing. Needs `wrk` on PATH (apt-get install wrk) and, for
gRPC, `ghz` on PATH or in ~/go/bin (go install github.com/bojand/ghz/cmd/ghz@v0.120.0).

    export PYTHONPATH=operator:tests
    python benchmarks/serve_bench.py                      # everything, 10 s per point
    python benchmarks/serve_bench.py --servers tandem --duration 5 --variant "w1=--workers 1"
    python benchmarks/serve_bench.py --servers tandem,kserve --protocols rest,grpc --concurrency 1,8,64 \
        --variant "tandem+batching=--max-batch-size 32"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from support.cluster import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve.md"
BENCH_VENVS = Path(os.environ.get("TANDEM_BENCH_VENVS", Path.home() / ".cache/tandem/bench-venvs"))
PROTO = ROOT / "operator" / "tandem" / "server" / "proto" / "grpc_predict_v2.proto"
PEER_PACKAGES = {
    # fsspec: for Tandem's own model loader, when asgi_front.py runs Tandem's REST app under uvicorn in this venv
    "kserve": ["kserve==0.21.0", "onnxruntime", "numpy", "fsspec"],
    # mlserver 1.7.1 dies with uvloop >= 0.22 (SeldonIO/MLServer#2286)
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime", "numpy"],
}

KSERVE_MODEL = """
import os, sys, uuid
import numpy as np
import onnxruntime as ort
import kserve
from kserve import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name):
        super().__init__(name)
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ["BENCH_THREADS"])
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as Tandem's session
        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload, headers=None, response_headers=None):
        array = payload.inputs[0].as_numpy()
        (result,) = self.session.run(None, {self.input: array})
        output = InferOutput(name="output", shape=list(result.shape), datatype="FP32")
        output.set_data_from_numpy(result, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    kserve.ModelServer(http_port=int(os.environ["BENCH_PORT"]), grpc_port=int(os.environ["BENCH_GRPC_PORT"]),
                       enable_grpc=True, workers=1).start([OnnxModel(os.environ["BENCH_NAME"])])
"""

MLSERVER_RUNTIME = """
import os
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ["BENCH_THREADS"])
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as Tandem's session
        self.session = ort.InferenceSession(os.environ["BENCH_MODEL"], options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        array = NumpyCodec.decode_input(payload.inputs[0])
        (result,) = self.session.run(None, {self.input: array})
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("output", result)])
"""

WRK_SCRIPT = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


@dataclass
class Point:
    model: str
    server: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_ms: float = 0.0
    """CPU time (all threads, user + system) per request or run: the cost that survives a busy machine."""
    protocol: str = "rest"
    round_no: int = 0
    """The round that measured it (0 for a median over rounds), to pair servers measured seconds apart."""

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What a point measures: the rounds of one key are medianed, and two keys compared round by round."""
        return self.model, self.server, self.concurrency, self.protocol


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# models


def build_models(folder: Path) -> dict[str, tuple[Path, list[int]]]:
    """model name -> (model.onnx, batch-1 input shape). torch is needed here only, never by the server."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    cnn = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    shapes = {"mlp": [1, 784], "cnn": [1, 3, 64, 64]}
    out: dict[str, tuple[Path, list[int]]] = {}
    for name, module in (("mlp", mlp), ("cnn", cnn)):
        path = folder / f"{name}.onnx"
        module.eval()
        sample = torch.randn(*shapes[name])
        kwargs = {
            "input_names": ["input"],
            "output_names": ["output"],
            "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}},
        }
        try:
            torch.onnx.export(module, (sample,), str(path), dynamo=False, **kwargs)
        except (TypeError, RuntimeError):
            torch.onnx.export(module, (sample,), str(path), **kwargs)
        out[name] = (path, shapes[name])
    return out


def request_body(shape: list[int]) -> bytes:
    import numpy as np
    import orjson

    # float32 values in their shortest round-trip form, as a numpy-aware client (orjson) writes them:
    # about 120 KB for the CNN's 12,288 values.
    data = np.random.default_rng(0).standard_normal(int(np.prod(shape))).astype(np.float32)
    document = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def grpc_body(model: str, shape: list[int]) -> bytes:
    """A serialized ModelInferRequest with the same values in raw_input_contents (ghz's --binary-file)."""
    import numpy as np

    from tandem.server import proto

    data = np.random.default_rng(0).standard_normal(int(np.prod(shape))).astype(np.float32)
    request = proto.ModelInferRequest(model_name=model, raw_input_contents=[data.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    return bytes(request.SerializeToString())


def in_process(path: Path, shape: list[int], threads: int, seconds: float) -> Point:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(50):
        session.run(None, feed)
    times: list[float] = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        session.run(None, feed)
        times.append(time.perf_counter() - now)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    times.sort()
    return Point(
        path.stem, f"onnxruntime in-process ({threads} threads)", 1, len(times) / sum(times),
        times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000, cpu_ms=cpu * 1000 / len(times),
    )  # fmt: skip


# servers


def ensure_venv(name: str) -> Path:
    venv = BENCH_VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    if marker.exists():
        return python
    log(f"creating {venv}")
    BENCH_VENVS.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if Path(uv).exists():
        subprocess.run([uv, "venv", "-q", "-p", "python3", str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "-p", str(python), *PEER_PACKAGES[name]], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES[name]], check=True)
    marker.write_text("ok\n")
    return python


@dataclass
class Launch:
    command: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    grpc_port: int | None = None


def tandem_launch(model: Path, name: str, work: Path, extra: str, tree: Path | None = None) -> Launch:
    """Tandem with its own defaults (threads and runs in flight sized from the CPU limit) plus `extra` flags;
    from another checkout's sources when `tree` names one (PYTHONPATH goes before the installed package)."""
    port, grpc_port = free_port(), free_port()
    tandem = Path(sys.executable).parent / "tandem"
    command = [str(tandem), "serve", "--model-name", name, "--model-uri", model.as_uri(), "--http-port",
               str(port), "--metrics-port", str(port), "--grpc-port", str(grpc_port), "--no-access-log",
               *shlex.split(extra)]  # fmt: skip
    return Launch(command, {"PYTHONPATH": str(tree / "operator")} if tree else {}, work, port, grpc_port)


def kserve_launch(model: Path, name: str, threads: int, work: Path) -> Launch:
    python = ensure_venv("kserve")
    script = work / "kserve_model.py"
    script.write_text(KSERVE_MODEL)
    port, grpc_port = free_port(), free_port()
    env = {"BENCH_MODEL": str(model), "BENCH_NAME": name, "BENCH_THREADS": str(threads),
           "BENCH_PORT": str(port), "BENCH_GRPC_PORT": str(grpc_port)}  # fmt: skip
    return Launch([str(python), str(script)], env, work, port, grpc_port)


def uvicorn_launch(model: Path, name: str, threads: int, work: Path) -> Launch:
    """Tandem's REST app behind uvicorn (benchmarks/asgi_front.py), in the KServe venv, which has uvicorn."""
    python = ensure_venv("kserve")
    port = free_port()
    env = {"BENCH_MODEL": str(model), "BENCH_NAME": name, "BENCH_THREADS": str(threads), "BENCH_PORT": str(port),
           "PYTHONPATH": str(ROOT / "operator")}  # fmt: skip
    return Launch([str(python), str(ROOT / "benchmarks" / "asgi_front.py")], env, work, port)


def mlserver_launch(model: Path, name: str, threads: int, work: Path) -> Launch:
    python = ensure_venv("mlserver")
    folder = work / "mlserver"
    model_folder = folder / name
    model_folder.mkdir(parents=True, exist_ok=True)
    (model_folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    (model_folder / "model-settings.json").write_text(
        json.dumps({"name": name, "implementation": "runtime.OnnxRuntime"})
    )
    port = free_port()
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                "parallel_workers": 0, "debug": False}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    env = {"BENCH_MODEL": str(model), "BENCH_THREADS": str(threads)}
    mlserver = python.parent / "mlserver"
    return Launch([str(mlserver), "start", str(folder)], env, folder, port)


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every process in a process group (a server and any workers it forks)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / tick


@contextmanager
def running(launch: Launch, name: str, logfile: Path) -> Iterator[tuple[str, int]]:
    env = {**os.environ, **launch.env}
    with logfile.open("wb") as out:
        process = subprocess.Popen(
            launch.command,
            cwd=launch.cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{launch.port}"
        try:
            deadline = time.time() + 180
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}; see {logfile}")
                try:
                    with urllib.request.urlopen(f"{base}/v2/models/{name}/ready", timeout=2) as reply:
                        if reply.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"server not ready after 180 s; see {logfile}")
                time.sleep(0.3)
            yield base, process.pid
        finally:
            stop_process(process, grace=20, group=True)


def check_answer(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        document = json.loads(reply.read())
    output = document["outputs"][0]
    if output["shape"] != [1, 10] or len(output["data"]) != 10:
        raise RuntimeError(f"unexpected answer from {url}: {str(document)[:300]}")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(
    url: str, body_file: Path, connections: int, seconds: float, work: Path
) -> tuple[float, float, float, int, int]:
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=body_file))
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
         "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses:\s+(\d+)", r"Socket errors:.*?timeout (\d+)"):
        found = re.search(pattern, text)
        if found:
            errors += int(found.group(1))
    return rps, p50, p99, errors, total


def ghz_path() -> str | None:
    found = shutil.which("ghz")
    fallback = Path.home() / "go" / "bin" / "ghz"
    return found or (str(fallback) if fallback.exists() else None)


def wrk_load(
    url: str, body_file: Path, work: Path, connections: int, seconds: float
) -> tuple[float, float, float, int, int]:
    return wrk(url, body_file, connections, seconds, work)


def ghz(port: int, body_file: Path, concurrency: int, seconds: float) -> tuple[float, float, float, int, int]:
    """gRPC ModelInfer load: one connection per 8 concurrent calls, one OS thread (as wrk -t1).

    --duration-stop wait: calls in flight when the time is up finish and count, instead of being cut and
    reported as errors.
    """
    command = [
        str(ghz_path()), "--insecure", "--proto", str(PROTO), "--call", "inference.GRPCInferenceService/ModelInfer",
        "--binary-file", str(body_file), "--metadata", "{}", "-c", str(concurrency),
        "--connections", str(max(1, concurrency // 8)), "-z", f"{max(1, round(seconds))}s", "--timeout", "10s",
        "--duration-stop", "wait",
        "--format", "json", f"127.0.0.1:{port}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GOMAXPROCS": "1"})
    if not result.stdout:
        raise RuntimeError(f"ghz failed: {result.stderr[-500:]}")
    report = json.loads(result.stdout)
    latencies = {entry["percentage"]: entry["latency"] / 1e6 for entry in report.get("latencyDistribution") or []}
    codes = report.get("statusCodeDistribution") or {}
    errors = sum(count for code, count in codes.items() if code != "OK")
    return report["rps"], latencies.get(50, 0.0), latencies.get(99, 0.0), errors, int(report["count"])


def check_grpc_answer(port: int, body: bytes) -> None:
    import grpc

    from tandem.server import proto

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(body, timeout=30)
    response = proto.ModelInferResponse.FromString(reply)
    shape = list(response.outputs[0].shape)
    size = len(response.raw_output_contents[0]) if response.raw_output_contents else 0
    values = len(response.outputs[0].contents.fp32_contents)
    if shape != [1, 10] or (size != 40 and values != 10):
        raise RuntimeError(f"unexpected gRPC answer on port {port}: {str(response)[:300]}")


Load = Callable[[int, float], tuple[float, float, float, int, int]]
"""(concurrency, seconds) -> req/s, p50 ms, p99 ms, errors, requests: one measured window of wrk or ghz."""


@dataclass
class Started:
    """A server that is up and answered correctly, with a load generator per protocol it speaks."""

    label: str
    pgid: int
    loads: dict[str, Load]

    def measure(self, model: str, protocol: str, concurrency: int, seconds: float, round_no: int) -> Point | None:
        """One window at `concurrency`, with the server's CPU time per request; None when it cannot be measured."""
        load = self.loads.get(protocol)
        if load is None:
            return None
        try:
            cpu_before = group_cpu_seconds(self.pgid)
            rps, p50, p99, errors, total = load(concurrency, seconds)
        except Exception as exc:
            log(f"{model} {self.label} {protocol} c={concurrency} failed: {exc}")
            return None
        cpu_ms = (group_cpu_seconds(self.pgid) - cpu_before) * 1000 / max(1, total)
        log(f"{model} {self.label} {protocol} c={concurrency}: {rps:,.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms")
        return Point(model, self.label, concurrency, rps, p50, p99, errors, cpu_ms, protocol, round_no)


def start(
    stack: ExitStack,
    label: str,
    launch: Launch,
    model: str,
    work: Path,
    body_file: Path,
    grpc_file: Path,
    protocols: list[str],
    warmup: tuple[int, float],
) -> Started | None:
    """Start a server for the rest of `stack`, check its answers and warm it up (`warmup`: concurrency, seconds);
    None (logged) if it fails."""
    logfile = work / f"{label}-{model}.log"
    try:
        base, pgid = stack.enter_context(running(launch, model, logfile))
        url = f"{base}/v2/models/{model}/infer"
        loads: dict[str, Load] = {}
        if "rest" in protocols:
            check_answer(url, body_file.read_bytes())
            loads["rest"] = partial(wrk_load, url, body_file, work)
        if "grpc" in protocols and launch.grpc_port is not None:
            check_grpc_answer(launch.grpc_port, grpc_file.read_bytes())
            loads["grpc"] = partial(ghz, launch.grpc_port, grpc_file)
        for load in loads.values():
            load(*warmup)
    except Exception as exc:
        log(f"{model} {label} failed: {exc}")
        print(logfile.read_text(errors="replace")[-2000:] if logfile.exists() else "", file=sys.stderr)
        return None
    log(f"{model} {label}: up")
    return Started(label, pgid, loads)


# report


PROTOCOL_NAMES = {"rest": "REST", "grpc": "gRPC"}


def table(points: list[Point], threads: int, concurrencies: list[int]) -> str:
    lines = [
        "| model | protocol | server | concurrency | req/s | p50 ms | p99 ms | vs KServe | vs in-process "
        "| CPU ms/req | KServe CPU/req ÷ this |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in ("mlp", "cnn"):
        limit = next((p for p in points if p.model == model and p.server.startswith("onnxruntime")), None)
        for protocol in PROTOCOL_NAMES:
            for concurrency in concurrencies:
                kserve = find(points, model, "kserve", concurrency, protocol)
                for point in points:
                    if (point.model, point.concurrency, point.protocol) != (model, concurrency, protocol):
                        continue
                    if point.server.startswith("onnx"):
                        continue
                    vs_kserve = f"{point.rps / kserve.rps:.2f}x" if kserve and kserve.rps else "-"
                    vs_limit = f"{point.rps / limit.rps:.0%}" if limit else "-"
                    errors = f" ({point.errors} errors)" if point.errors else ""
                    cpu_vs = f"{kserve.cpu_ms / point.cpu_ms:.2f}x" if kserve and point.cpu_ms else "-"
                    lines.append(
                        f"| {model} | {PROTOCOL_NAMES[protocol]} | {point.server}{errors} | {concurrency} "
                        f"| {point.rps:,.0f} | {point.p50_ms:.2f} | {point.p99_ms:.2f} | {vs_kserve} | {vs_limit} "
                        f"| {point.cpu_ms:.2f} | {cpu_vs} |"
                    )
        if limit:
            lines.append(
                f"| {model} | - | {limit.server} | - | {limit.rps:,.0f} | {limit.p50_ms:.2f} | {limit.p99_ms:.2f} "
                f"| - | 100% | {limit.cpu_ms:.2f} | - |"
            )
    return "\n".join(lines)


def find(points: list[Point], model: str, server: str, concurrency: int, protocol: str = "rest") -> Point | None:
    return next((p for p in points if p.key == (model, server, concurrency, protocol)), None)


GRID_LABEL = re.compile(r"t(\d+)w(\d+)")
"""Variants named t<threads>w<workers>: the configuration grid the default is judged against."""


def paired(measured: list[Point], a: Point, b: Point) -> str:
    """a/b round by round, each pair measured seconds apart: how far apart the two are beyond the drift."""
    if a.key == b.key:
        return ""
    rounds = {p.round_no: p.rps for p in measured if p.key == b.key}
    ratios = sorted(p.rps / rounds[p.round_no] for p in measured if p.key == a.key and p.round_no in rounds)
    if len(ratios) < 2:
        return ""
    return f"; round by round {ratios[0]:.0%}-{ratios[-1]:.0%}, median {statistics.median(ratios):.1%}"


def baseline_costs(points: list[Point], baselines: list[str]) -> list[str]:
    """CPU time per request of Tandem against each baseline checkout, point by point: the price of what changed
    between them. CPU per request, not req/s, because it barely moves with the machine's other load."""
    out: list[str] = []
    for baseline in baselines:
        for point in points:
            if point.server != "tandem" or not point.cpu_ms:
                continue
            other = find(points, point.model, baseline, point.concurrency, point.protocol)
            if other and other.cpu_ms:
                out.append(
                    f"- {point.model} {PROTOCOL_NAMES[point.protocol]} c={point.concurrency}: CPU per request "
                    f"{point.cpu_ms:.2f} ms vs {other.cpu_ms:.2f} ms for {baseline} "
                    f"({point.cpu_ms / other.cpu_ms - 1:+.1%})"
                )
    return out


def targets(points: list[Point], concurrencies: list[int], measured: list[Point]) -> list[str]:
    """The issue's targets, judged on the medians `points`; `measured` (every round) adds round-by-round ratios."""
    out: list[str] = []
    top = max(concurrencies)
    for model, want_kserve, want_limit in (("mlp", 3.0, None), ("cnn", 2.0, 0.75)):
        limit = next((p for p in points if p.model == model and p.server.startswith("onnxruntime")), None)
        for protocol in PROTOCOL_NAMES:
            tandem, kserve = find(points, model, "tandem", top, protocol), find(points, model, "kserve", top, protocol)
            name = PROTOCOL_NAMES[protocol]
            if tandem and kserve:
                ratio = tandem.rps / kserve.rps
                # the targets are REST's; over gRPC both servers stand on the same grpcio
                verdict = ("met" if ratio >= want_kserve else "NOT met") if protocol == "rest" else "no target"
                target = f"target {want_kserve}x: {verdict}" if protocol == "rest" else verdict
                out.append(f"- {model} {name}: Tandem/KServe at c={top} = {ratio:.2f}x ({target})")
                if tandem.cpu_ms:
                    out.append(
                        f"- {model} {name}: KServe spends {kserve.cpu_ms / tandem.cpu_ms:.2f}x Tandem's CPU time per "
                        f"request at c={top} ({kserve.cpu_ms:.2f} vs {tandem.cpu_ms:.2f} ms)"
                    )
            if tandem and limit and want_limit and protocol == "rest":
                ratio = tandem.rps / limit.rps
                verdict = "met" if ratio >= want_limit else "NOT met"
                out.append(f"- {model}: Tandem/in-process = {ratio:.0%} (target {want_limit:.0%}: {verdict})")
            batched = find(points, model, "tandem+batching", top, protocol)
            if batched and limit and model == "mlp":
                verdict = "met" if batched.rps > limit.rps else "NOT met"
                out.append(
                    f"- {model} {name}: batching on at c={top} serves {batched.rps:,.0f} req/s, "
                    f"{batched.rps / limit.rps:.2f}x the in-process batch-1 limit (target > 1x: {verdict})"
                )
        for protocol, name in PROTOCOL_NAMES.items():
            for concurrency in concurrencies:
                grid = [
                    p
                    for p in points
                    if (p.model, p.concurrency, p.protocol) == (model, concurrency, protocol)
                    and (p.server == "tandem" or GRID_LABEL.fullmatch(p.server))
                ]
                default = find(points, model, "tandem", concurrency, protocol)
                if default and len(grid) > 1:
                    best = max(grid, key=lambda p: p.rps)
                    ratio = default.rps / best.rps
                    verdict = "met" if ratio >= 0.95 else "NOT met"
                    out.append(
                        f"- {model} {name} c={concurrency}: the default configuration serves {ratio:.1%} of the "
                        f"best measured ({best.server}, {best.rps:,.0f} req/s) (target >= 95%: {verdict})"
                        + paired(measured, default, best)
                    )
    return out


def medians(points: list[Point]) -> list[Point]:
    """One point per (model, server, concurrency): the median of the rounds, which shrugs off a noisy one."""
    groups: dict[tuple[str, str, int, str], list[Point]] = {}
    for point in points:
        groups.setdefault(point.key, []).append(point)
    return [
        Point(model, server, concurrency, statistics.median(p.rps for p in group),
              statistics.median(p.p50_ms for p in group), statistics.median(p.p99_ms for p in group),
              sum(p.errors for p in group), statistics.median(p.cpu_ms for p in group), protocol)
        for (model, server, concurrency, protocol), group in groups.items()
    ]  # fmt: skip


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.system()}, "
        f"load average at the end {load} (the machine is shared)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="tandem,kserve,mlserver")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--protocols", default="rest", help="rest, grpc or rest,grpc (gRPC needs ghz)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument(
        "--threads", type=int, default=2, help="onnxruntime intra-op threads of the peers and the in-process limit"
    )
    parser.add_argument("--variant", action="append", default=[], help='extra Tandem run: "label=--flags"')
    parser.add_argument("--tandem-args", default="", help="flags for the main Tandem run")
    parser.add_argument(
        "--baseline-tree", action="append", default=[], metavar="LABEL=DIR",
        help="extra Tandem run from another checkout's sources (git worktree add DIR COMMIT), with the main flags",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything; report medians")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/serve.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    protocols = args.protocols.split(",")
    if "grpc" in protocols and ghz_path() is None:
        print("ghz not found: go install github.com/bojand/ghz/cmd/ghz@v0.120.0", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")
    variants = [("tandem", args.tandem_args)] + [tuple(v.split("=", 1)) for v in args.variant]  # type: ignore[misc]
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        log("building models")
        built = build_models(work)
        for model in args.models.split(","):
            path, shape = built[model]
            body_file = work / f"{model}.json"
            body_file.write_bytes(request_body(shape))
            grpc_file = work / f"{model}.binpb"
            grpc_file.write_bytes(grpc_body(model, shape))
            runs: list[tuple[str, Launch]] = []
            for server in servers:
                if server == "tandem":
                    runs += [(label, tandem_launch(path, model, work, flags)) for label, flags in variants]
                    runs += [
                        (label, tandem_launch(path, model, work, args.tandem_args, Path(tree)))
                        for label, tree in (b.split("=", 1) for b in args.baseline_tree)
                    ]
                elif server == "kserve":
                    runs.append(("kserve", kserve_launch(path, model, args.threads, work)))
                elif server == "tandem-uvicorn":
                    runs.append(("tandem-uvicorn", uvicorn_launch(path, model, args.threads, work)))
                elif server == "mlserver":
                    runs.append(("mlserver", mlserver_launch(path, model, args.threads, work)))
            warmup = (max(concurrencies), args.warmup)
            with ExitStack() as stack:
                started = [
                    up
                    for label, launch in runs
                    if (up := start(stack, label, launch, model, work, body_file, grpc_file, protocols, warmup))
                ]
                for round_ in range(args.rounds):
                    log(f"{model} round {round_ + 1}: in-process onnxruntime, {args.threads} threads")
                    points.append(in_process(path, shape, args.threads, max(3.0, args.duration / 2)))
                    # The order rotates each round, so no server always runs first or right after a given one.
                    order = started[round_ % len(started) :] + started[: round_ % len(started)] if started else []
                    for protocol in protocols:
                        for concurrency in concurrencies:
                            for up in order:
                                point = up.measure(model, protocol, concurrency, args.duration, round_ + 1)
                                if point is not None:
                                    points.append(point)
    measured, points = points, medians(points)
    report = table(points, args.threads, concurrencies)
    verdicts = targets(points, concurrencies, measured) + baseline_costs(
        points, [b.split("=", 1)[0] for b in args.baseline_tree]
    )
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {machine()}; batch-1 V2 requests, REST as JSON from wrk "
        f"(1 thread), gRPC as raw_input_contents from ghz (1 OS thread, a connection per 8 calls), "
        f"{args.duration:g} s per point, median of {args.rounds} round(s), "
        f"onnxruntime with {args.threads} intra-op threads in the peers and the in-process limit; Tandem with its "
        "defaults (sized from the CPU limit), variants t<threads>w<workers> with those settings. "
        "Ratios are from this one run."
    )
    output = f"{header}\n\n{report}\n\n" + "\n".join(verdicts) + "\n"
    print(output)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("# Inference server benchmark\n\n" + output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
