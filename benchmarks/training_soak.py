"""Soak: multi-worker digits training, run after run, on the local cluster's real nodes. Not a test.

Every run is a new TrainingJob (two workers, or four with a smaller CPU request so the gang fits the GPU
node's two cores) writing to its own output. A run counts as:
- ok: Succeeded, and every pod of its Job exited 0 (no teardown crash hidden behind a published model);
- failed: Failed, or Succeeded with a pod that exited non-zero (its reason and message are printed);
- hung: neither within --timeout (the defect this soak exists to catch: a gang waiting for a peer).

Needs a running cluster with real nodes and Tandem installed, as `make demo` leaves them with --keep:

    hack/demo.sh --keep
    export PYTHONPATH=operator:tests KUBECONFIG=.tandem/cluster/kubeconfig
    python benchmarks/training_soak.py --runs 20 --workers 2 --workers 4
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import click
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from support.digits import MODEL_CLAIM, bound_directory, model_claim, training_spec
from tandem.api.resources import GROUP, TRAINING_JOB, VERSION

CPU_PER_WORKER = {2: "1", 4: "400m"}
"""What each worker asks, so that the gang fits the real GPU node (two cores) with room for nothing else."""


def spec(workers: int, run: str) -> dict[str, Any]:
    built = training_spec(workers=workers)
    built["resources"]["cpu"] = CPU_PER_WORKER.get(workers, "250m")
    built["resources"]["memory"] = "1Gi"
    built["model"]["output"] = f"pvc://{MODEL_CLAIM}/soak/{run}"
    return built


def pod_exits(core: k8s.CoreV1Api, namespace: str, job: str) -> list[tuple[str, int | None]]:
    """Each pod of the run's Job and the exit code of its container (None while it has not ended)."""
    exits = []
    for pod in core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items:
        state = (pod.status.container_statuses or [None])[0]
        ended = state.state.terminated if state is not None and state.state is not None else None
        exits.append((pod.metadata.name, ended.exit_code if ended is not None else None))
    return exits


def one_run(api: k8s.ApiClient, namespace: str, run: str, workers: int, timeout: float) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of one TrainingJob, deleted afterwards."""
    custom, core = k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": TRAINING_JOB.kind, "metadata": {"name": run},
            "spec": spec(workers, run)}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, body)
    started = time.monotonic()
    try:
        while True:
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, run).get(
                "status"
            ) or {}
            phase = status.get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            if time.monotonic() - started > timeout:
                return "hung", f"phase {phase}: {status.get('conditions')}", time.monotonic() - started
            time.sleep(2)
        seconds = time.monotonic() - started
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        if phase == "Failed":
            return "failed", f"{ready.get('reason')}: {ready.get('message')}", seconds
        exits = pod_exits(core, namespace, status.get("jobName") or "")
        bad = [(pod, code) for pod, code in exits if code != 0]
        if bad:
            return "failed", f"Succeeded, but pods ended {bad}", seconds
        return "ok", f"{len(exits)} pods exited 0", seconds
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, TRAINING_JOB.plural, run)


@click.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", required=True)
@click.option("--namespace", default="tandem-soak", show_default=True)
@click.option("--runs", default=20, show_default=True, help="Runs of each worker count.")
@click.option("--workers", "worker_counts", type=int, multiple=True, default=(2, 4), show_default=True)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds before a run counts as hung.")
def main(kubeconfig: str, namespace: str, runs: int, worker_counts: tuple[int, ...], timeout: float) -> None:
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    core = k8s.CoreV1Api(api)
    for create in (
        lambda: core.create_namespace({"metadata": {"name": namespace}}),
        lambda: core.create_namespaced_persistent_volume_claim(namespace, model_claim()),
    ):
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:
                raise
    bound_directory(api, namespace)
    tally: Counter[tuple[int, str]] = Counter()
    for index in range(runs):
        for workers in worker_counts:
            run = f"soak-w{workers}-{index}-{int(time.time())}"
            outcome, detail, seconds = one_run(api, namespace, run, workers, timeout)
            tally[(workers, outcome)] += 1
            print(f"{run:32} {outcome:7} {seconds:6.0f}s  {detail}", flush=True)
    print("\n=== training soak ===")
    for workers in worker_counts:
        counts = {outcome: tally[(workers, outcome)] for outcome in ("ok", "failed", "hung")}
        print(f"{workers} workers: {runs} runs, " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
    sys.exit(0 if all(outcome == "ok" for (_, outcome) in tally) else 1)


if __name__ == "__main__":
    main()
