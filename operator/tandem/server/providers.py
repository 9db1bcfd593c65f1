"""Which onnxruntime execution provider runs a model: CUDA (TensorRT first where it loads) on a GPU, else CPU.

One image serves both kinds of replica: the GPU image carries onnxruntime's CUDA build, and a replica of it
that lands on a node without a GPU (or whose GPU the runtime cannot open) must still serve, on CPU, and say
so. So nothing here raises: every way a GPU provider can fail ends on CPU with a WARNING naming the cause.

Three steps, the first pure so that its table is tested without a GPU:

1. `plan_providers`: from the requested provider, the providers this onnxruntime build offers and whether the
   container sees a GPU device, the providers to ask onnxruntime for, in priority order, always ending on CPU.
2. `open_session`: asks for them; a provider that fails to load is dropped and the next tried.
3. It then compares what the session runs on (`session.get_providers()`) with what was asked for, because
   onnxruntime may also drop a provider at session creation without raising.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("tandem.server.providers")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so")
"""TensorRT 10's runtime, which onnxruntime's TensorRT provider links; the PyPI onnxruntime-gpu wheel lists the
provider as available whether or not TensorRT is installed, so only a loadable libnvinfer makes it usable."""
HIDDEN_DEVICES = {"", "void", "none"}
"""NVIDIA_VISIBLE_DEVICES values with which the NVIDIA container runtime gives a container no GPU."""


class ExecutionProvider(StrEnum):
    """The `--execution-provider` choices; also the `provider` label of tandem_model_execution_provider."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


_ORT_NAMES = {ExecutionProvider.CPU: CPU, ExecutionProvider.CUDA: CUDA, ExecutionProvider.TENSORRT: TENSORRT}


@dataclass(frozen=True)
class ProviderPlan:
    """What to ask onnxruntime for, and why a forced provider is not on the list."""

    providers: tuple[str, ...]
    """onnxruntime provider names in priority order; the last is always CPUExecutionProvider."""
    warning: str | None = None
    """Set when the requested provider cannot be had: the replica will run on what `providers` starts with."""


def plan_providers(requested: ExecutionProvider, available: Collection[str], gpu_visible: bool) -> ProviderPlan:
    """The providers to ask for: `auto` uses the GPU only when both onnxruntime and the container have one (and
    warns when only the container has one: a GPU paid for and idle); a forced `cuda` or `tensorrt` is tried
    whenever onnxruntime has the provider (the device check is a heuristic the user may know better than), and
    falls back, with a warning, when it has not."""
    cuda = (CUDA,) if CUDA in available else ()
    tensorrt = (TENSORRT,) if TENSORRT in available else ()
    if requested is ExecutionProvider.CPU:
        return ProviderPlan((CPU,))
    if requested is ExecutionProvider.AUTO:
        if cuda and gpu_visible:
            return ProviderPlan((*tensorrt, *cuda, CPU))
        if gpu_visible:  # a GPU the replica holds and cannot use: the CPU image on a GPU node, most likely
            return ProviderPlan((CPU,), "a GPU is visible but this onnxruntime has no CUDAExecutionProvider "
                                        "(the CPU server image on a GPU node?); running on CPU")  # fmt: skip
        return ProviderPlan((CPU,))
    if requested is ExecutionProvider.CUDA and cuda:
        return ProviderPlan((*cuda, CPU))
    if requested is ExecutionProvider.TENSORRT and tensorrt:
        return ProviderPlan((*tensorrt, *cuda, CPU))
    offered = ", ".join(sorted(available)) or "none"
    if requested is ExecutionProvider.TENSORRT and cuda:
        return ProviderPlan((*cuda, CPU), f"tensorrt requested but this onnxruntime cannot load {TENSORRT} "
                                          f"(it offers: {offered}); trying CUDA")  # fmt: skip
    return ProviderPlan(
        (CPU,), f"{requested.value} requested but this onnxruntime has no {_ORT_NAMES[requested]} "
        f"(it offers: {offered}); running on CPU"
    )  # fmt: skip


def gpu_visible(environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> bool:
    """Whether the container was given an NVIDIA GPU: a /dev/nvidiaN device node, or NVIDIA_VISIBLE_DEVICES
    naming devices (the device plugin and the NVIDIA container runtime set it for a pod that requests GPUs)."""
    environ = os.environ if environ is None else environ
    if environ.get("NVIDIA_VISIBLE_DEVICES", "").strip().lower() not in HIDDEN_DEVICES:
        return True
    return any(path.name[len("nvidia") :].isdigit() for path in dev.glob("nvidia[0-9]*"))


def usable_providers(ort: Any) -> list[str]:
    """The providers this onnxruntime build offers, less TensorRT when its runtime library cannot be loaded."""
    available = list(ort.get_available_providers())
    if TENSORRT in available and not _loadable(TENSORRT_LIBRARIES):
        available.remove(TENSORRT)
    return available


def _loadable(names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def short_name(provider: str) -> str:
    """CUDAExecutionProvider -> cuda: the name the option, the logs and the metrics use."""
    for choice, name in _ORT_NAMES.items():
        if provider == name:
            return choice.value
    return provider.removesuffix("ExecutionProvider").lower()


def _preload_cuda(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of the NVIDIA wheels (nvidia/cu13/lib, ...) before a CUDA session.

    onnxruntime-gpu's CUDA provider has no RPATH to them; `preload_dlls` (onnxruntime >= 1.21) finds them in
    site-packages. It reports failures with print(); those become one warning line instead of stray stdout.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # a failed preload only means the CUDA provider will fail to load below
        printed.write(f"{type(exc).__name__}: {exc}")
    if printed.getvalue().strip():
        log.warning("CUDA library preload", extra={"output": printed.getvalue().strip()[:2000]})


def open_session(ort: Any, data: bytes, options: Any, requested: ExecutionProvider, model: str) -> Any:
    """An onnxruntime session on the best provider the plan allows; never raises for a provider that fails.

    Errors that are the model's own (a CPU session that cannot open it) propagate to the caller.
    """
    plan = plan_providers(requested, usable_providers(ort), gpu_visible())
    if plan.warning:
        log.warning("execution provider fallback", extra={"model": model, "reason": plan.warning})
    providers = list(plan.providers)
    if providers != [CPU]:
        _preload_cuda(ort)
    while True:
        try:
            # enable_fallback=0: onnxruntime's own fallback print()s to stdout and hides the cause from our log.
            session = ort.InferenceSession(data, options, providers=providers, enable_fallback=0)
        except Exception as exc:
            if providers == [CPU]:
                raise
            log.warning(
                "execution provider fallback",
                extra={"model": model, "reason": f"{short_name(providers[0])} failed to load: {_first_line(exc)}",
                       "next": short_name(providers[1])},
            )  # fmt: skip
            providers = providers[1:]
            continue
        break
    running = list(session.get_providers())
    if running and running[0] != providers[0]:
        dropped = short_name(providers[0])
        reason = f"onnxruntime dropped {dropped} at session creation (its own error line before this one says why)"
        log.warning("execution provider fallback", extra={"model": model, "reason": reason, "providers": running})
    return session


def running_provider(session: Any) -> str:
    """The short name of the provider a session runs on first (cpu when it reports none)."""
    providers = list(session.get_providers())
    return short_name(providers[0]) if providers else ExecutionProvider.CPU.value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]
