"""Scale: 1,000 TrainingJobs and 200 InferenceServices on the local cluster (kwok nodes), one operator.

Measures, in one run on one machine: the time until every resource has its children (a Job per
TrainingJob; a Deployment per InferenceService) and a current status (status.observedGeneration ==
metadata.generation and status.phase set); the operator's peak resident memory (VmHWM of its process); and
the same number of raw Job and Deployment creates against the same API server, for the ratio. Not a test.

TrainingJobs are created suspended: their Jobs exist (phase Queued) but no worker pods, so the figure is the
operator's reconcile cost, not the scheduler's with a thousand GPU pods pending on 16 fake GPUs. Services
run one 50m replica each on the kwok CPU nodes.

    python benchmarks/scale_bench.py                              # private cluster, started and stopped
    python benchmarks/scale_bench.py --kubeconfig /tmp/c/kubeconfig --jobs 200 --services 40
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operator_bench import (
    REPO,
    create_all,
    memory_kib,
    raw_job,
    start_cluster,
    stop_cluster,
)

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


def run(api: k8s.ApiClient, kubeconfig: Path, jobs: int, services: int) -> dict[str, float]:
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

    env = {"KUBECONFIG": str(kubeconfig), "TANDEM_RESYNC_SECONDS": "60"}
    import os

    operator = subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
        time.sleep(5)  # let the operator connect and list before the burst
        print(f"[scale] operator: {jobs} TrainingJobs and {services} InferenceServices", flush=True)
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
        rss, hwm = memory_kib(operator.pid)
    finally:
        stop.set()
        operator.terminate()
        operator.wait(timeout=60)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--kubeconfig", type=Path)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="tandem-scale-"))
    kubeconfig = args.kubeconfig or start_cluster(state)
    try:
        api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        r = run(api, kubeconfig, args.jobs, args.services)
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


if __name__ == "__main__":
    main()
