"""Scale: 1,000 TrainingJobs and 200 InferenceServices on the local cluster (kwok nodes), one operator.

Measures, in one run on one machine: the time until every resource has its children (a Job per
TrainingJob; a Deployment per InferenceService) and a current status (status.observedGeneration ==
metadata.generation and status.phase set); the operator's peak resident memory (VmHWM of its process); and
the same number of raw Job and Deployment creates against the same API server, for the ratio. Not a test.

TrainingJobs are created suspended: their Jobs exist (phase Queued) but no worker pods, so the figure is the
operator's reconcile cost, not the scheduler's with a thousand GPU pods pending on 16 fake GPUs. Services
run one 50m replica each on the kwok CPU nodes.

    export PYTHONPATH=operator:tests
    python benchmarks/scale_bench.py                              # private cluster, started and stopped
    python benchmarks/scale_bench.py --kubeconfig /tmp/c/kubeconfig --jobs 200 --services 40
    python benchmarks/scale_bench.py --jobs 10000 --services 0 --idle 0 --restart   # catch-up after a restart

After convergence (`--idle SECONDS`, default 45, with the operator's resync every RESYNC seconds) it waits for
every InferenceService to be Ready and counts, from the API server's apiserver_request_total, the reads and
writes of an idle window: what each resync pass costs. With `--restart` it then starts a second operator and
times how long it takes to have reconciled every resource once (its tandem_reconcile_total), and its memory.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from operator_bench import (
    REPO,
    WRITES,
    apiserver_requests,
    create_all,
    memory_kib,
    raw_job,
    request_table,
    start_cluster,
    stop_cluster,
    wait_for_operator,
)
from prometheus_client.parser import text_string_to_metric_families

from support.cluster import free_port, stop_process
from support.tandem import body, create, ensure_pools, install_crds
from tandem.api.resources import GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION

TRAINING: dict[str, Any] = {
    "model": {"output": "s3://models/bench"},
    "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
    "suspend": True,
}
SERVING: dict[str, Any] = {
    "model": {"uri": "s3://models/bench/model.onnx"},
    "resources": {"cpu": "50m", "memory": "64Mi"},
}


def raw_deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"tandem.dev/pool": "cpu"},
                    "containers": [
                        {
                            "name": "server",
                            "image": "tandem-server",
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                        }
                    ],
                },
            },
        },
    }


def current(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("phase")) and status.get("observedGeneration") == obj["metadata"].get("generation")


def converged(api: k8s.ApiClient, namespace: str, jobs: int, services: int) -> tuple[int, int]:
    custom, batch, apps = k8s.CustomObjectsApi(api), k8s.BatchV1Api(api), k8s.AppsV1Api(api)
    tjs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural)["items"]
    iss = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, INFERENCE_SERVICE.plural)["items"]
    job_owners = {
        (j.metadata.labels or {}).get("tandem.dev/trainingjob")
        for j in batch.list_namespaced_job(namespace, label_selector="tandem.dev/trainingjob").items
    }
    deployed = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
    tj_done = sum(1 for o in tjs if current(o) and o["metadata"]["name"] in job_owners)
    is_done = sum(1 for o in iss if current(o) and o["metadata"]["name"] in deployed)
    return tj_done, is_done


RESYNC = 15
"""Seconds between the benchmarked operator's resync passes."""


def start_operator(kubeconfig: Path, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", str(metrics_port), "--health-port", "0"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "TANDEM_RESYNC_SECONDS": str(RESYNC)},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def reconciled(port: int) -> dict[str, float]:
    """tandem_reconcile_total by kind, from an operator's own /metrics (successes and errors)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tandem_reconcile":
            for sample in family.samples:
                if sample.name == "tandem_reconcile_total":
                    counts[sample.labels["kind"]] = counts.get(sample.labels["kind"], 0) + sample.value
    return counts


def all_ready(api: k8s.ApiClient, namespace: str) -> bool:
    items = k8s.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                    INFERENCE_SERVICE.plural)["items"]
    return all((o.get("status") or {}).get("phase") == "Ready" for o in items)


def idle_window(api: k8s.ApiClient, namespace: str, seconds: float) -> list[str]:
    """Reads and writes per resync pass of a converged, idle cluster, by the API server's count."""
    deadline = time.perf_counter() + 600
    while not all_ready(api, namespace):
        if time.perf_counter() > deadline:
            raise TimeoutError("InferenceServices not all Ready")
        time.sleep(2)
    before = apiserver_requests(api)
    time.sleep(seconds)
    after = apiserver_requests(api)
    passes = seconds / RESYNC
    delta = after - before
    writes = sum(n for (verb, resource, _), n in delta.items() if verb in WRITES and resource in TOUCHED_IDLE)
    rows = request_table(before, after, passes, f"idle, per resync pass ({passes:.1f} passes in {seconds:.0f} s)")
    return [f"writes per pass to Tandem's resources and children: {writes / passes:.1f}", "", *rows]


TOUCHED_IDLE = ("trainingjobs", "inferenceservices", "computepools", "jobs", "services", "deployments",
                "poddisruptionbudgets", "horizontalpodautoscalers", "events")


def catch_up(kubeconfig: Path, jobs: int, services: int) -> dict[str, float]:
    """A fresh operator on the converged cluster: seconds until it has reconciled every resource once."""
    port = free_port()
    started = time.perf_counter()
    operator = start_operator(kubeconfig, port)
    try:
        while True:
            if operator.poll() is not None:
                raise RuntimeError(f"restarted operator exited with {operator.returncode}")
            try:
                counts = reconciled(port)
            except OSError:
                counts = {}
            if counts.get("TrainingJob", 0) >= jobs and counts.get("InferenceService", 0) >= services:
                break
            if time.perf_counter() - started > 3600:
                raise TimeoutError(f"restarted operator reconciled only {counts}")
            time.sleep(1)
        seconds = time.perf_counter() - started
        rss, hwm = memory_kib(operator.pid)
    finally:
        stop_process(operator, grace=60)
    return {"catch_up_seconds": seconds, "restart_rss_mib": rss / 1024, "restart_peak_mib": hwm / 1024}


def run(
    api: k8s.ApiClient, kubeconfig: Path, jobs: int, services: int, idle: float = 45, restart: bool = False
) -> dict[str, Any]:
    install_crds(api)
    ensure_pools(api)
    core, batch, apps = k8s.CoreV1Api(api), k8s.BatchV1Api(api), k8s.AppsV1Api(api)
    raw_ns, ns = f"scale-raw-{uuid.uuid4().hex[:6]}", f"scale-{uuid.uuid4().hex[:6]}"
    for namespace in (raw_ns, ns):
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))

    print(f"[scale] raw API: {jobs} Jobs and {services} Deployments", flush=True)
    suspended = raw_job("x")
    suspended["spec"]["suspend"] = True

    def make_raw(i: int) -> None:
        if i < jobs:
            job = copy.deepcopy(suspended)
            job["metadata"]["name"] = f"raw-{i}"
            batch.create_namespaced_job(raw_ns, job)
        else:
            apps.create_namespaced_deployment(raw_ns, raw_deployment(f"raw-{i}"))

    raw_seconds = create_all(jobs + services, make_raw)
    core.delete_namespace(raw_ns)

    operator = start_operator(kubeconfig)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            try:
                peak[0] = max(peak[0], memory_kib(operator.pid)[1])
            except (FileNotFoundError, ProcessLookupError):
                return

    threading.Thread(target=sample, daemon=True).start()
    try:
        wait_for_operator(api)
        print(f"[scale] operator: {jobs} TrainingJobs and {services} InferenceServices", flush=True)
        requests_before = apiserver_requests(api)
        started = time.perf_counter()

        def make(i: int) -> None:
            if i < jobs:
                create(api, TRAINING_JOB, ns, body(TRAINING_JOB, f"tj-{i}", TRAINING))
            else:
                create(api, INFERENCE_SERVICE, ns, body(INFERENCE_SERVICE, f"is-{i}", SERVING))

        create_seconds = create_all(jobs + services, make)
        progress = (0, 0)
        deadline = time.perf_counter() + 3600
        while progress != (jobs, services):
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited with {operator.returncode}")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"converged only {progress}")
            time.sleep(2)
            progress = converged(api, ns, jobs, services)
            print(
                f"[scale] {time.perf_counter() - started:6.1f}s: {progress[0]}/{jobs} TrainingJobs, "
                f"{progress[1]}/{services} InferenceServices",
                flush=True,
            )
        total = time.perf_counter() - started
        requests_after = apiserver_requests(api)
        rss, hwm = memory_kib(operator.pid)
        idle_rows = idle_window(api, ns, idle) if idle else []
        stop_process(operator, grace=60)
        restarted = catch_up(kubeconfig, jobs, services) if restart else {}
    finally:
        stop.set()
        stop_process(operator, grace=60)
        core.delete_namespace(ns)
    count = jobs + services
    return {
        "jobs": jobs,
        "services": services,
        "raw_seconds": raw_seconds,
        "create_seconds": create_seconds,
        "converged_seconds": total,
        "raw_per_s": count / raw_seconds,
        "operator_per_s": count / total,
        "rss_mib": rss / 1024,
        "peak_rss_mib": max(peak[0], hwm) / 1024,
        "requests": request_table(requests_before, requests_after, count, "per new resource (all clients)"),
        "idle": idle_rows,
        **restarted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--idle", type=float, default=45, help="seconds of idle window to measure; 0: none")
    parser.add_argument("--restart", action="store_true", help="also time a restarted operator's catch-up")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tandem-scale-"))
    kubeconfig = args.kubeconfig or start_cluster(state)
    try:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        r = run(api, kubeconfig, args.jobs, args.services, args.idle, args.restart)
    finally:
        if args.kubeconfig is None:
            stop_cluster(state)
    print()
    print(f"| {r['jobs']:.0f} TrainingJobs + {r['services']:.0f} InferenceServices | value |")
    print("|---|---|")
    print(f"| raw API: same number of Jobs + Deployments created | {r['raw_seconds']:.1f} s ({r['raw_per_s']:.1f}/s) |")
    print(f"| Tandem resources created (client side) | {r['create_seconds']:.1f} s |")
    print(
        f"| until every one has children and a current status | {r['converged_seconds']:.1f} s "
        f"({r['operator_per_s']:.1f}/s) |"
    )
    print(f"| ratio operator / raw API | {r['operator_per_s'] / r['raw_per_s']:.2f} |")
    print(f"| operator memory at the end (peak VmHWM) | {r['rss_mib']:.0f} MiB ({r['peak_rss_mib']:.0f} MiB) |")
    if "catch_up_seconds" in r:
        print(f"| restarted operator: every resource reconciled once | {r['catch_up_seconds']:.1f} s |")
        print(f"| restarted operator memory then (peak) | {r['restart_rss_mib']:.0f} MiB "
              f"({r['restart_peak_mib']:.0f} MiB) |")
    print()
    print("API requests from the first create until convergence, per resource created, by the API server's")
    print("apiserver_request_total (every client: the benchmark's creates and polling lists, the operator, the")
    print("controllers and kwok; watches left out):")
    print()
    print("\n".join(r["requests"]))
    if r["idle"]:
        print()
        print("\n".join(r["idle"]))


if __name__ == "__main__":
    main()
