"""`tandem operator`: the operator process with metrics, optional leader election and kopf."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable

import click
import kopf
from prometheus_client import start_http_server

from tandem.config import OperatorConfig
from tandem.controller.kube import load_config


def run_kopf(
    namespaces: tuple[str, ...],
    stop: threading.Event,
    liveness: str | None,
    fence: Callable[[], bool] | None = None,
) -> None:
    """Run kopf until `stop` is set or a signal arrives; the handlers register on import. Writes are sent only
    while `fence()` is true (the leader's lease check): kopf's memo carries it to the startup handler."""
    import tandem.controller.handlers  # noqa: F401

    async def operate() -> None:
        try:
            await kopf.operator(
                clusterwide=not namespaces,
                namespaces=list(namespaces),
                standalone=True,
                stop_flag=stop,
                liveness_endpoint=liveness,
                memo=kopf.Memo(fence=fence),
            )
        finally:
            # kopf waits for a threading.Event in an executor thread; asyncio.run() joins that thread
            # on exit, so after a SIGTERM the event must be set or the process never ends.
            stop.set()

    asyncio.run(operate())


@click.command("operator")
@click.option("--namespace", "namespaces", multiple=True, envvar="TANDEM_NAMESPACES",
              help="Namespace to watch (repeat, or comma-separated in TANDEM_NAMESPACES); none: all.")
@click.option("--metrics-port", envvar="TANDEM_METRICS_PORT", type=int, default=8000, show_default=True,
              help="Port of the Prometheus endpoint; 0 turns it off.")
@click.option("--leader-election/--no-leader-election", envvar="TANDEM_LEADER_ELECTION", default=False,
              show_default=True, help="Act only while holding a Lease, so several replicas can run.")
@click.option("--lease-name", envvar="TANDEM_LEASE_NAME", default="tandem-operator", show_default=True)
@click.option("--lease-namespace", envvar="POD_NAMESPACE", default="default", show_default=True,
              help="Namespace of the Lease (the chart passes the operator's own).")
@click.option("--lease-duration", envvar="TANDEM_LEASE_DURATION", type=int, default=20, show_default=True,
              help="Seconds a follower waits after the last renewal it saw before taking the Lease.")
@click.option("--renew-deadline", envvar="TANDEM_RENEW_DEADLINE", type=float, default=10, show_default=True,
              help="Seconds the leader keeps retrying a renewal; past it, it stops acting and exits.")
@click.option("--retry-period", envvar="TANDEM_RETRY_PERIOD", type=float, default=2, show_default=True,
              help="Seconds between attempts to acquire or renew the Lease.")
@click.option("--health-port", envvar="TANDEM_HEALTH_PORT", type=int, default=8080, show_default=True,
              help="Port of kopf's /healthz liveness endpoint; 0 turns it off.")
@click.option("--verbose", is_flag=True, envvar="TANDEM_VERBOSE", help="Debug logging.")
def operator_command(
    namespaces: tuple[str, ...],
    metrics_port: int,
    leader_election: bool,
    lease_name: str,
    lease_namespace: str,
    lease_duration: int,
    renew_deadline: float,
    retry_period: float,
    health_port: int,
    verbose: bool,
) -> None:
    """Run the Tandem operator.

    Configuration from the environment: TANDEM_TRAINER_IMAGE and TANDEM_SERVER_IMAGE (default workload
    images), TANDEM_CLUSTER_DOMAIN (for status.url), TANDEM_POD_LABELS (k=v,... added to workload pods).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    split = tuple(part for value in namespaces for part in value.split(",") if part)
    os.environ["TANDEM_NAMESPACES"] = ",".join(split)
    config = OperatorConfig.from_env()
    if metrics_port:
        start_http_server(metrics_port)
    load_config()
    stop = threading.Event()
    leadership = None
    if leader_election:
        from tandem.controller.leader import Leadership

        identity = os.environ.get("POD_NAME") or socket.gethostname()
        leadership = Leadership(
            lease_name, lease_namespace, f"{identity}-{os.getpid()}", lease_duration, renew_deadline, retry_period
        )
        leadership.start()
        if not leadership.wait_for_leadership(stop):
            sys.exit(1)
        # Writes are fenced by the lease from here on; kopf is stopped as soon as the fence closes.
        threading.Thread(target=leadership.watch, args=(stop,), name="tandem-lease-watch", daemon=True).start()
    liveness = f"http://0.0.0.0:{health_port}/healthz" if health_port else None
    run_kopf(config.namespaces, stop, liveness, leadership.leading if leadership is not None else None)
    if leadership is not None and leadership.lost.is_set():
        exit_now(1)  # leadership lost: exit so the pod restarts and queues for the Lease again


def exit_now(code: int) -> None:
    """Exit without the interpreter's finalisation, logs flushed first.

    Leadership is lost while the API server hangs: daemon threads (the lease's, the child watches') sit in
    socket reads that never return, and finalising the interpreter under them was seen to abort the process
    (SIGABRT, exit -6) instead of exiting 1, which a pod's restart policy and the tests tell apart.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
