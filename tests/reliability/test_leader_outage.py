"""Two leader-elected operator replicas through an API server outage (connections accepted, no answers).

Expected outcome: both replicas reach the API server through one Blackhole that is made to hang. The leader
cannot renew its Lease: within its renew deadline it stops acting (its writes are fenced, kopf is stopped)
and exits with status 1, so its pod restarts and queues for the Lease again; it does not exit on the first
failed renewal (tests/reliability/test_hung_apiserver.py). The follower cannot reach the API server either,
so nobody acts during the outage. Once the API server answers again the follower takes the Lease, but only
after the old leader has stopped (the log timestamps on this one machine order the two), and it reconciles a
TrainingJob created during the outage; each TrainingJob has exactly one Job.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from reliability.blackhole import Blackhole, api_server, kubeconfig_through
from support.cluster import stop_process, wait_until
from support.tandem import REPO, body, create
from tandem.api.resources import TRAINING_JOB

pytestmark = pytest.mark.cluster

SPEC = {
    "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
    "model": {"output": "s3://models/outage"},
    "podMetadata": {"annotations": {"tandem.dev/fake-duration": "600s"}},
}
LEASE = ["--lease-duration", "15", "--renew-deadline", "5", "--retry-period", "1"]
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?(leading as|stopped acting)", re.MULTILINE)


def _operator(kubeconfig: Path, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tandem", "operator", "--leader-election", "--lease-namespace", namespace,
               "--namespace", namespace, "--metrics-port", "0", "--health-port", "0", *LEASE]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "TANDEM_RESYNC_SECONDS": "3"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _moments(log: Path, what: str) -> list[datetime]:
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f") for stamp, kind in STAMP.findall(log.read_text())
            if kind == what]


def _owners(api: k8s.ApiClient, namespace: str) -> list[str]:
    jobs = k8s.BatchV1Api(api).list_namespaced_job(namespace).items
    return sorted(job.metadata.labels["tandem.dev/trainingjob"] for job in jobs if not job.metadata.deletion_timestamp)


@pytest.fixture
def outage(cluster: object, tmp_path: Path) -> Iterator[tuple[Blackhole, Path]]:
    kubeconfig = Path(os.environ["KUBECONFIG"])
    proxy = Blackhole(api_server(kubeconfig))
    yield proxy, kubeconfig_through(kubeconfig, proxy, tmp_path / "kubeconfig")
    proxy.close()


def test_two_replicas_through_an_api_server_outage_never_act_at_once(
    tandem_api: k8s.ApiClient, namespace: str, tmp_path: Path, outage: tuple[Blackhole, Path]
) -> None:
    proxy, kubeconfig = outage
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_operator(kubeconfig, namespace, log) for log in logs]
    coordination = k8s.CoordinationV1Api(tandem_api)
    try:

        def holder() -> str | None:
            try:
                return str(coordination.read_namespaced_lease("tandem-operator", namespace).spec.holder_identity)
            except ApiException:
                return None

        first = wait_until(holder, timeout=60, what="a lease holder")
        leader = next(i for i, p in enumerate(procs) if first.endswith(f"-{p.pid}"))
        follower = 1 - leader
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "before", SPEC))
        wait_until(lambda: _owners(tandem_api, namespace) == ["before"], timeout=60, what="the first Job")

        proxy.hang()
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "during", SPEC))
        assert procs[leader].wait(timeout=60) == 1, logs[leader].read_text()[-3000:]
        assert _owners(tandem_api, namespace) == ["before"]  # nobody acted during the outage
        proxy.heal()

        wait_until(lambda: holder() == f"{first.rsplit('-', 1)[0]}-{procs[follower].pid}", timeout=60,
                   what="the follower leading")
        wait_until(lambda: _owners(tandem_api, namespace) == ["before", "during"], timeout=60,
                   what="the Job of the TrainingJob created during the outage")
        assert procs[follower].poll() is None
        stopped = min(_moments(logs[leader], "stopped acting"))
        (took_over,) = _moments(logs[follower], "leading as")
        assert stopped < took_over, (stopped, took_over)
        assert "Traceback" not in logs[leader].read_text(), logs[leader].read_text()[-3000:]
    finally:
        for proc in procs:
            stop_process(proc)
