"""A serving replica on the real CPU node, in a real container with a memory limit, under the abuse suite's
heaviest attacks through its Service: it is never OOM-killed and keeps serving.

tests/server/test_abuse.py holds a server process to its budget by sampling its RSS; here the kernel holds
it to the pod's limit. The server sizes its budget from the limit its cgroup says (half of it), so what the
attacks can make it hold stays under the limit, whatever the attacker sends: large bodies from many
connections at once, requests pipelined and never read, and a flood of large gRPC calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import Load, ModelVolume, Release, service_address
from support.attacks import attack_for
from support.cluster import wait_until
from support.digits import CPU_POOL
from support.models import tiny_model
from support.tandem import body, condition, create, wait_for
from tandem.api.resources import INFERENCE_SERVICE
from tandem.render.serving import GRPC_PORT, METRICS_PORT
from tandem.server import proto

pytestmark = pytest.mark.timeout(600)

MiB = 1 << 20
LIMIT = 512 * MiB
NAME = "attacked"
ATTACK_S = 5.0
ROWS = 8192
"""Rows of 64 features in one large request: about 2 MiB of JSON, 2 MiB of raw gRPC tensor."""


def serve(kube: k8s.ApiClient, namespace: str, models: ModelVolume) -> tuple[str, k8s.V1Pod]:
    """One replica of the tiny model with a 512 MiB memory limit, Ready: its Service address and its pod."""
    data = tiny_model()
    (models.path / "tiny.onnx").write_bytes(data)
    spec = {
        "model": {"uri": f"pvc://{models.claim}/tiny.onnx", "sha256": hashlib.sha256(data).hexdigest()},
        "pool": CPU_POOL,
        "resources": {"cpu": "1", "memory": "512Mi"},
    }
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, NAME, spec))
    wait_for(kube, INFERENCE_SERVICE, namespace, NAME, lambda o: (condition(o, "Ready") or {}).get("status") == "True",
             "Ready", 180)
    address = service_address(kube, namespace, NAME)
    selector = f"tandem.dev/inferenceservice={NAME}"
    (pod,) = k8s.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return address, pod


def metric(pod_ip: str, name: str) -> float:
    """One sample of the replica's own metrics, read from its metrics port as Prometheus would."""

    async def scrape() -> bytes:
        reader, writer = await asyncio.open_connection(pod_ip, METRICS_PORT)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return answer.partition(b"\r\n\r\n")[2]

    text = asyncio.run(asyncio.wait_for(scrape(), 10)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not among the replica's metrics")


def large_bodies(host: str, port: int, answers: list[int]) -> None:
    """32 connections send 2 MiB JSON bodies as fast as they can; each answer's status is kept."""
    large = orjson.dumps({"inputs": [{"name": "input", "shape": [ROWS, 64], "datatype": "FP32",
                                      "data": [0.5] * (ROWS * 64)}]})
    head = b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (NAME.encode(), len(large))

    async def one(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head + large)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        answers.append(int(answer.split(b" ", 2)[1]))
        writer.transport.abort()

    attack_for(ATTACK_S, 32, one)


def pipelined_never_read(host: str, port: int) -> int:
    """16 connections pipeline small infer requests and never read an answer: bytes they got the server to take."""
    request = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
    one_request = b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        NAME.encode(), len(request), request)
    sent: list[int] = []

    async def connection() -> None:
        _, writer = await asyncio.open_connection(host, port)
        total, deadline = 0, time.monotonic() + ATTACK_S
        try:
            while time.monotonic() < deadline:
                writer.write(one_request * 64)
                await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                total += 64 * len(one_request)
        except (TimeoutError, ConnectionError):
            pass  # the server stopped reading (back-pressure) or cut the connection off: what it should do
        sent.append(total)
        writer.transport.abort()

    async def main() -> None:
        await asyncio.gather(*(connection() for _ in range(16)))

    asyncio.run(main())
    return max(sent)


def grpc_flood(host: str, codes: list[grpc.StatusCode]) -> None:
    """64 calls at a time of 2 MiB raw tensors over one channel; each call's status is kept."""
    message = proto.ModelInferRequest(model_name=NAME)
    message.inputs.add(name="input", datatype="FP32", shape=[ROWS, 64])
    message.raw_input_contents.append(np.full((ROWS, 64), 0.5, np.float32).tobytes())
    payload = message.SerializeToString()
    options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
    with grpc.insecure_channel(f"{host}:{GRPC_PORT}", options=options) as channel:
        infer = channel.unary_unary(f"/{proto.SERVICE}/ModelInfer")
        deadline = time.monotonic() + ATTACK_S
        while time.monotonic() < deadline:
            calls = [infer.future(payload, timeout=60) for _ in range(64)]
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())


def container_state(kube: k8s.ApiClient, namespace: str, pod: str) -> tuple[int, Any]:
    """The server container's restart count and its last termination (None if it never ended)."""
    status = k8s.CoreV1Api(kube).read_namespaced_pod(pod, namespace).status
    (server,) = status.container_statuses
    return server.restart_count, server.last_state.terminated if server.last_state else None


def test_a_replica_with_a_memory_limit_is_never_oom_killed_by_the_abuse_suites_attacks_and_keeps_serving(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    address, pod = serve(kube, namespace, models)
    host, port = address.split(":")
    pod_ip = pod.status.pod_ip
    assert metric(pod_ip, "tandem_server_memory_budget_bytes") == LIMIT // 2  # read from the container's cgroup

    answers: list[int] = []
    codes: list[grpc.StatusCode] = []
    with Load(address, NAME, workers=1) as load:
        wait_until(lambda: load.answered, timeout=60, what="the well-behaved client served")
        large_bodies(host, int(port), answers)
        taken = pipelined_never_read(host, int(port))
        grpc_flood(host, codes)
        served_before = load.answered
        wait_until(lambda: load.answered > served_before, timeout=60, what="the well-behaved client served after")
    print(
        f"\nlarge bodies: {len(answers)} answers {sorted(set(answers))}; pipelining: at most {taken / MiB:.1f} MiB "
        f"taken from one connection; gRPC: {len(codes)} calls {sorted({c.name for c in codes})}; well-behaved "
        f"client: {load.answered} answered, {len(load.failures)} failed {load.failure_kinds()}"
    )

    restarts, terminated = container_state(kube, namespace, pod.metadata.name)
    assert (restarts, terminated) == (0, None), f"the replica ended: {terminated}"
    assert set(answers) <= {200, 413, 503} and answers
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
    assert metric(pod_ip, "tandem_server_memory_refused_total") > 0  # the budget, not the limit, said no
    assert load.failures == []
