"""Operator throughput on the local control plane: N TrainingJobs created at once.

Prints, from one run on one machine: time from TrainingJob create to child Job created (p50, p99), the
operator's throughput, the raw API server rate for creating the same number of Jobs directly, their
ratio, and the operator's resident memory at the end (and its peak). Not a test: numbers vary with the
machine; ratios from the same run are what to compare.

    export PYTHONPATH=operator:tests
    python benchmarks/operator_bench.py --count 500            # starts and stops a private cluster
    python benchmarks/operator_bench.py --kubeconfig ~/.kube/x # uses a running one
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from prometheus_client.parser import text_string_to_metric_families

from support.cluster import stop_process
from support.tandem import body, create, ensure_pools, install_crds
from tandem.api.resources import TRAINING_JOB

REPO = Path(__file__).resolve().parents[1]

CLIENTS = 16
WRITES = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
TOUCHED = (
    "trainingjobs", "inferenceservices", "computepools", "jobs", "services", "deployments", "pods",
    "poddisruptionbudgets", "horizontalpodautoscalers", "events", "nodes",
)
"""Resources whose requests the benchmarks report (the operator's, and its children's controllers')."""


def apiserver_requests(api: k8s.ApiClient) -> Counter[tuple[str, str, str]]:
    """apiserver_request_total by (verb, resource, subresource): the API server's own count of requests."""
    response = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(response.read().decode()):
        if family.name == "apiserver_request":
            for sample in family.samples:
                if sample.name == "apiserver_request_total":
                    labels = sample.labels
                    key = (labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))
                    counts[key] += int(sample.value)
    return counts


def request_table(before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]], per: float,
                  title: str) -> list[str]:
    """Markdown rows: requests by verb and resource between two scrapes, divided by `per`."""
    rows = [f"| {title} | verb | requests each |", "|---|---|---|"]
    for (verb, resource, sub), count in sorted((after - before).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if resource in TOUCHED and verb not in ("WATCH",) and count:
            name = f"{resource}/{sub}" if sub else resource
            rows.append(f"| {name} | {verb} | {count / per:.2f} |")
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_cluster(state: Path) -> Path:
    """A private control plane with kwok nodes only: the figures are the operator's, not the real nodes'."""
    env = {**os.environ, "TANDEM_CLUSTER_DIR": str(state), "TANDEM_REAL_NODES": "0"}
    subprocess.run([str(REPO / "hack" / "cluster.sh"), "up"], env=env, check=True)
    return state / "kubeconfig"


def stop_cluster(state: Path) -> None:
    env = {**os.environ, "TANDEM_CLUSTER_DIR": str(state)}
    subprocess.run([str(REPO / "hack" / "cluster.sh"), "down"], env=env, check=False)


def raw_job(name: str) -> dict[str, Any]:
    """A Job like the operator's single-worker run, created directly: the API server's own pace."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": 1,
            "parallelism": 1,
            "template": {
                "metadata": {"annotations": {"tandem.dev/fake-duration": "3600s"}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"tandem.dev/pool": "gpu"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "tandem-trainer",
                            "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def create_all(count: int, make: Any) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(make, range(count)))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok")
"""Process names (/proc/PID/comm, at most 15 characters) whose CPU time the benchmarks report."""


def cpu_by_process(operator_pid: int) -> Counter[str]:
    """CPU seconds so far of the control plane's processes by name, the operator's and this benchmark's."""
    found: Counter[str] = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            pid = int(entry.name)
            if pid == operator_pid:
                found["operator"] += cpu_seconds(pid)
            elif pid == os.getpid():
                found["benchmark clients"] += cpu_seconds(pid)
            elif name.startswith(CONTROL_PLANE):
                found[name] += cpu_seconds(pid)
        except (OSError, ValueError):
            continue
    return found


NO_OPERATOR = -1
"""The pid to pass to `cpu_by_process` while no operator runs."""


def cpu_bound(raw: Counter[str], burst: Counter[str]) -> float:
    """The operator / raw ratio an operator that cost no CPU of its own could reach, if CPU is what binds.

    On a machine whose cores are all busy in both windows, rates go as the inverse of the CPU spent per object:
    raw, every process's CPU per Job; through the operator, every process's CPU per TrainingJob but the
    operator's own (the API server's work for the TrainingJob create, its status write and the child Job, the
    watches that carry them, the benchmark's clients, the controllers).
    """
    others = sum(burst.values()) - burst["operator"]
    return sum(raw.values()) / others if others > 0 else float("inf")


def cpu_table(before: Counter[str], after: Counter[str], seconds: float) -> list[str]:
    """Markdown rows: CPU seconds of each process between two readings, and its share of the window's cores."""
    rows = ["| process | CPU seconds | cores busy (of the window) |", "|---|---:|---:|"]
    for name in sorted(after, key=lambda n: -(after[n] - before[n])):
        used = after[name] - before[name]
        rows.append(f"| {name} | {used:.1f} | {used / seconds:.2f} |")
    total = sum(after.values()) - sum(before.values())
    rows.append(f"| all of them | {total:.1f} | {total / seconds:.2f} |")
    return rows


def deleted(core: k8s.CoreV1Api, namespace: str) -> None:
    """Delete a namespace and wait until it is gone: its objects' clean-up must not overlap what follows."""
    core.delete_namespace(namespace)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(1)
    raise TimeoutError(f"namespace {namespace} still there after 600 s")


def wait_for_operator(api: k8s.ApiClient) -> None:
    """Wait until the operator reconciles: a TrainingJob in a namespace of its own gets its Job.

    The operator's start (imports, kopf's and the child watches' first lists) takes seconds, more on a loaded
    machine; a burst sent before it is up would time the start, not the operator.
    """
    core, batch = k8s.CoreV1Api(api), k8s.BatchV1Api(api)
    namespace = f"bench-warmup-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    started = time.perf_counter()
    create(api, TRAINING_JOB, namespace, body(TRAINING_JOB, "warmup", {"model": {"output": "pvc://models/w"}}))
    while not batch.list_namespaced_job(namespace, label_selector="tandem.dev/trainingjob=warmup").items:
        if time.perf_counter() - started > 600:
            raise TimeoutError("the operator reconciled nothing within 600 s")
        time.sleep(0.5)
    print(f"[bench] operator reconciling after {time.perf_counter() - started:.1f} s", flush=True)
    core.delete_namespace(namespace)


def memory_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def run(api: k8s.ApiClient, kubeconfig: Path, count: int) -> dict[str, Any]:
    install_crds(api)
    ensure_pools(api)
    core, batch = k8s.CoreV1Api(api), k8s.BatchV1Api(api)
    raw_ns, tj_ns = f"bench-raw-{uuid.uuid4().hex[:6]}", f"bench-tj-{uuid.uuid4().hex[:6]}"
    for namespace in (raw_ns, tj_ns):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))

    print(f"[bench] raw API: creating {count} Jobs with {CLIENTS} clients", flush=True)
    raw_processes_before = cpu_by_process(NO_OPERATOR)
    raw_seconds = create_all(count, lambda i: batch.create_namespaced_job(raw_ns, raw_job(f"raw-{i}")))
    raw_processes_after = cpu_by_process(NO_OPERATOR)
    print(f"[bench] raw API: {count / raw_seconds:.1f} Jobs/s; deleting them before the operator's turn", flush=True)
    deleted(core, raw_ns)

    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "TANDEM_RESYNC_SECONDS": "60"}
    operator = subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch_jobs() -> None:
        stream = watch.Watch()
        for event in stream.stream(batch.list_namespaced_job, tj_ns, timeout_seconds=1800):
            owner = (event["object"].metadata.labels or {}).get("tandem.dev/trainingjob")
            if owner and owner not in seen:
                seen[owner] = time.perf_counter()
                if len(seen) == count:
                    break
        done.set()

    try:
        wait_for_operator(api)
        watcher = threading.Thread(target=watch_jobs, daemon=True)
        watcher.start()
        created: dict[str, float] = {}
        spec = {
            "model": {"output": "pvc://models/bench"},
            "podMetadata": {"annotations": {"tandem.dev/fake-duration": "3600s"}},
        }

        def make(index: int) -> None:
            name = f"tj-{index}"
            created[name] = time.perf_counter()
            create(api, TRAINING_JOB, tj_ns, body(TRAINING_JOB, name, spec))

        print(f"[bench] operator: creating {count} TrainingJobs with {CLIENTS} clients", flush=True)
        requests_before = apiserver_requests(api)
        burst_start = time.perf_counter()
        cpu_before = cpu_seconds(operator.pid)
        processes_before = cpu_by_process(operator.pid)
        create_seconds = create_all(count, make)
        if not done.wait(timeout=1800):
            raise TimeoutError(f"only {len(seen)} of {count} TrainingJobs got a Job")
        total = max(seen.values()) - burst_start
        requests_after = apiserver_requests(api)
        latencies = [seen[name] - created[name] for name in created]
        rss, peak = memory_kib(operator.pid)
        operator_cpu = cpu_seconds(operator.pid) - cpu_before
        processes_after = cpu_by_process(operator.pid)
        burst_seconds = time.perf_counter() - burst_start
    finally:
        stop_process(operator, grace=60)
        core.delete_namespace(tj_ns)
    return {
        "count": count,
        "raw_create_per_s": count / raw_seconds,
        "tj_create_per_s": count / create_seconds,
        "operator_children_per_s": count / total,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "rss_mib": rss / 1024,
        "peak_rss_mib": peak / 1024,
        "cpu_ms_each": 1000 * operator_cpu / count,
        "processes": cpu_table(processes_before, processes_after, burst_seconds),
        "raw_processes": cpu_table(raw_processes_before, raw_processes_after, raw_seconds),
        "bound": cpu_bound(raw_processes_after - raw_processes_before, processes_after - processes_before),
        "requests": request_table(requests_before, requests_after, count, "per new TrainingJob (all clients)"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--kubeconfig", type=Path)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    kubeconfig = args.kubeconfig or start_cluster(state)
    try:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        result = run(api, kubeconfig, args.count)
    finally:
        if args.kubeconfig is None:
            stop_cluster(state)
    ratio = result["operator_children_per_s"] / result["raw_create_per_s"]
    print()
    print(f"| {result['count']:.0f} TrainingJobs at once | value |")
    print("|---|---|")
    print(f"| raw API server: Jobs created per second | {result['raw_create_per_s']:.1f} |")
    print(f"| TrainingJobs created per second | {result['tj_create_per_s']:.1f} |")
    print(f"| operator: child Jobs created per second (end to end) | {result['operator_children_per_s']:.1f} |")
    print(f"| ratio operator / raw API | {ratio:.2f} |")
    print(f"| create -> child Job, p50 | {result['p50_s']:.2f} s |")
    print(f"| create -> child Job, p99 | {result['p99_s']:.2f} s |")
    print(f"| operator memory at the end (peak) | {result['rss_mib']:.0f} MiB ({result['peak_rss_mib']:.0f} MiB) |")
    print(f"| operator CPU time per TrainingJob until the last child Job | {result['cpu_ms_each']:.1f} ms |")
    print()
    print("API requests from the first TrainingJob create until the last child Job exists, per TrainingJob, by")
    print("the API server's apiserver_request_total (every client: the benchmark's creates, the operator, the")
    print("Job controller, the scheduler and kwok for the worker pods; watches left out):")
    print()
    print("\n".join(result["requests"]))
    print()
    print("CPU time of each process from the first TrainingJob create until the last child Job exists (and the")
    print("scrape after it):")
    print()
    print("\n".join(result["processes"]))
    print()
    print("The same for the raw API server's window (the benchmark creating Jobs directly):")
    print()
    print("\n".join(result["raw_processes"]))
    print()
    print(f"ratio an operator costing no CPU could reach here (CPU per object, raw / everything but the operator):"
          f" {result['bound']:.2f}")


if __name__ == "__main__":
    main()
