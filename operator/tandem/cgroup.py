"""How many CPUs and how much memory this container may use, read from its cgroup limits.

onnxruntime sizes its intra-op pool from the host's core count; in a pod limited to 2 CPUs on a 64-core
node that means 64 threads fighting for 2 CPUs of quota, and throttling. The quota is the right number.
Likewise the memory the server lets requests hold follows the container's memory limit, past which the
kernel kills it, not the node's memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMORY_BUDGET_SHARE = 1 / 2
"""Share of the memory limit the server's requests may hold: the other half is the interpreter, onnxruntime,
the model's sessions, and the slack between what Python frees and what the kernel sees freed."""
_V1_UNLIMITED = 1 << 60
"""cgroup v1 reports no memory limit as a page-rounded LONG_MAX; anything this large is no limit."""


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("<quota> <period>" or "max <period>"); None if unlimited."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; None if unlimited (-1)."""
    try:
        quota = int(quota_text.strip())
        period = int(period_text.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of this cgroup (v2 first, then v1); None when there is none or it is unreadable."""
    try:
        return parse_cpu_max((root / "cpu.max").read_text())
    except OSError:
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            return parse_cfs((folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())
        except OSError:
            continue
    return None


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, or os.cpu_count() where there is none."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(root: Path = CGROUP_ROOT) -> int:
    """Intra-op threads: the cgroup limit rounded up (a 1.5-CPU limit gets 2), capped by usable CPUs."""
    cpus = available_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(limit)))


def sized_runtime(threads: int | None, workers: int | None, cores: int) -> tuple[int, int]:
    """(onnxruntime intra-op threads, runs in flight) for a container of `cores` CPUs; given values are kept.

    Threads times runs should fill the cores and no more: more threads than cores only queue for the CPU
    quota, and every busy thread takes time from the event loop that parses the next request. So threads
    default to 1 and runs in flight to the cores left per run: with one thread a run, one run per core, the
    fastest configuration under load measured on 2 CPUs (benchmarks/README.md: 12-15% more requests/s at
    concurrency 8 than 2 threads x 2 runs, equal at 64). A request that finds the server idle still gets every
    core: `lone_run_threads` gives such a run a second session with a thread per core. Setting threads to the
    core count instead gives every run every core, with one run in flight.
    """
    chosen_threads = threads or 1
    return chosen_threads, workers or max(1, cores // chosen_threads)


def parse_memory_limit(text: str) -> int | None:
    """Bytes allowed by cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`; None for "max" or no limit."""
    value = text.strip()
    if not value.isdigit():
        return None
    limit = int(value)
    return limit if 0 < limit < _V1_UNLIMITED else None


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The memory limit of this cgroup (v2 first, then v1); None when there is none or it is unreadable."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes", root / "memory.limit_in_bytes"):
        try:
            return parse_memory_limit(path.read_text())
        except OSError:
            continue
    return None


def physical_memory() -> int:
    """Bytes of memory of the machine: the bound where no cgroup sets one."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_memory_budget(root: Path = CGROUP_ROOT) -> int:
    """Bytes the server's requests may hold: MEMORY_BUDGET_SHARE of the cgroup memory limit, or of the
    machine's memory where the container has no limit."""
    limit = cgroup_memory_limit(root)
    return int((limit if limit is not None else physical_memory()) * MEMORY_BUDGET_SHARE)


def lone_run_threads(threads: int | None, cores: int) -> int:
    """Intra-op threads for a run that starts while the server is idle: every core unless threads are given.

    The default of one thread a run leaves cores idle while a request runs alone; the server gives such a run a
    second session with a thread per core (tandem.server.lonerun). 0 when `threads` is given, so an explicit
    --threads is what every run gets, and when there is only one core to give.
    """
    if threads is not None or cores <= 1:
        return 0
    return cores
