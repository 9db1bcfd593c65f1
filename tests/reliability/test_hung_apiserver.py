"""A hung API server (connections accepted, no answers) and leadership through it.

Expected outcomes:
* every API call of the operator ends within its deadline against a server that never answers, and a resync
  pass ends with a transport error that the resync loop logs and survives;
* a leader cut off from the API server stops acting (its fence closes) within its renew deadline, and
  another replica can take the Lease only a lease duration after it last saw a renewal: later than the
  fence closed by more than the longest write the old leader could still have in flight;
* a renewal that fails once (a short hang) is retried within the renew deadline: the leader keeps leading.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from reliability.blackhole import Blackhole, api_server, kubeconfig_through
from support.cluster import wait_until
from tandem.api.resources import TRAINING_JOB
from tandem.config import OperatorConfig
from tandem.controller.controller import Controller
from tandem.controller.kube import TIMEOUT, Kube, api_client
from tandem.controller.leader import Leadership

DEADLINE = sum(TIMEOUT) + 2.0
"""The longest one call may take (connect + read timeouts), plus scheduling slack on a loaded machine."""


@pytest.fixture
def hung() -> Iterator[Blackhole]:
    server = Blackhole()
    yield server
    server.close()


def _client_for(url: str) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = url
    configuration.verify_ssl = False
    return api_client(configuration)


def test_a_call_to_an_api_server_that_never_answers_ends_within_its_deadline(hung: Blackhole) -> None:
    kube = Kube(_client_for(hung.url))
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        kube.get_custom(TRAINING_JOB, "ml", "digits")
    assert time.monotonic() - started < DEADLINE


def test_a_resync_pass_against_a_hung_api_server_ends_and_the_loop_survives(
    hung: Blackhole, caplog: pytest.LogCaptureFixture
) -> None:
    controller = Controller(_client_for(hung.url), OperatorConfig())
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):
        controller.resync_once()
    assert time.monotonic() - started < DEADLINE

    stop = threading.Event()
    loop = threading.Thread(target=controller.resync_forever, args=(stop, 0.1))
    with caplog.at_level(logging.WARNING, logger="tandem.controller.controller"):
        loop.start()
        wait_until(
            lambda: sum("API server unavailable" in r.message for r in caplog.records) >= 2,
            timeout=3 * DEADLINE,
            what="two failed resync passes",
        )
        assert loop.is_alive()
        stop.set()
        loop.join(DEADLINE)
    assert not loop.is_alive()


# ---- leadership on the local control plane ---------------------------------------------------------

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15, 5.0, 1.0


@pytest.fixture
def cut_off(cluster: object, tmp_path: Path) -> Iterator[tuple[Blackhole, k8s.ApiClient]]:
    """An ApiClient that reaches the session's API server through a Blackhole."""
    kubeconfig = Path(os.environ["KUBECONFIG"])
    proxy = Blackhole(api_server(kubeconfig))
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(
        config_file=str(kubeconfig_through(kubeconfig, proxy, tmp_path / "kc")), client_configuration=configuration
    )
    api = api_client(configuration)  # as the operator's own: no request retried behind the caller's back
    yield proxy, api
    proxy.close()


@pytest.fixture
def campaigns() -> Iterator[list[Leadership]]:
    """Leaderships started by a test, stopped (their threads ended) after it."""
    started: list[Leadership] = []
    yield started
    for leadership in started:
        leadership.stop()


def _lead(
    campaigns: list[Leadership],
    name: str,
    namespace: str,
    api: k8s.ApiClient,
    lease: int = LEASE_DURATION,
    renew: float = RENEW_DEADLINE,
    wait: bool = True,
) -> Leadership:
    leadership = Leadership("tandem-test", namespace, name, lease, renew, RETRY_PERIOD, api)
    campaigns.append(leadership)
    leadership.start()
    if wait:
        wait_until(leadership.leading, timeout=30, what=f"{name} leading")
    return leadership


@pytest.mark.cluster
def test_a_leader_cut_off_stops_acting_before_another_replica_can_lead(
    kube: k8s.ApiClient, namespace: str, cut_off: tuple[Blackhole, k8s.ApiClient], campaigns: list[Leadership]
) -> None:
    proxy, through_proxy = cut_off
    first = _lead(campaigns, "first", namespace, through_proxy)
    second = _lead(campaigns, "second", namespace, kube, wait=False)
    assert not second.leading()

    proxy.hang()
    hung_at = time.monotonic()
    wait_until(lambda: not first.leading(), timeout=30, interval=0.05, what="the cut-off leader's fence closing")
    fenced_at = time.monotonic()
    wait_until(second.leading, timeout=60, interval=0.05, what="the other replica leading")
    second_at = time.monotonic()

    assert fenced_at - hung_at <= RENEW_DEADLINE + 0.5
    assert first.lost.is_set()
    # Never both: by the time the second leads, the first's fence has been closed longer than any write lasts.
    assert second_at - fenced_at > sum(TIMEOUT)
    lease = k8s.CoordinationV1Api(kube).read_namespaced_lease("tandem-test", namespace)
    assert lease.spec.holder_identity == "second"


@pytest.mark.cluster
def test_a_renewal_that_fails_once_does_not_end_leadership(
    namespace: str,
    cut_off: tuple[Blackhole, k8s.ApiClient],
    caplog: pytest.LogCaptureFixture,
    campaigns: list[Leadership],
) -> None:
    proxy, through_proxy = cut_off
    with caplog.at_level(logging.WARNING, logger="tandem.controller.leader"):
        # A call caught by the hang costs up to a whole read timeout (3 s) before the retry: a renew deadline
        # of 10 s leaves room for that, as the operator's default does.
        leader = _lead(campaigns, "only", namespace, through_proxy, lease=20, renew=10.0)
        proxy.hang()
        hung_at = time.monotonic()
        wait_until(lambda: leader.lock.attempt_started > hung_at, timeout=10, what="a renewal sent into the hang")
        proxy.heal()
        wait_until(lambda: (leader.lock.confirmed or 0) > hung_at, timeout=15, what="a renewal after the hang")
    assert any("lease" in record.getMessage() and "failed" in record.getMessage() for record in caplog.records)
    assert leader.leading()
    assert not leader.lost.is_set()
