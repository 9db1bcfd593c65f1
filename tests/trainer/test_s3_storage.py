"""s3:// output and checkpoints, through moto's S3-compatible server started by the test.

The endpoint and credentials reach the trainer the standard AWS way (AWS_ENDPOINT_URL_S3 and key
variables), as they would for MinIO or Ceph in a cluster.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from trainer_support import TrainerRun

from support.cluster import free_port
from tandem import storage
from tandem.trainer.checkpoint import CheckpointStore
from tandem.trainer.failures import OutputUnwritable
from tandem.trainer.publish import check_output_writable

BUCKET = "tandem-models"
RunTrainer = Callable[..., TrainerRun]


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A moto S3 server on a free loopback port with one bucket, and the environment that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


@pytest.fixture
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 client for the test server, with the same environment set for in-process code."""
    import boto3

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"])


@pytest.mark.slow
def test_the_trainer_publishes_and_checkpoints_to_s3(run_trainer: RunTrainer, s3_env: dict[str, str], s3: Any) -> None:
    output, checkpoints = f"s3://{BUCKET}/runs/digits", f"s3://{BUCKET}/checkpoints/digits"
    run = run_trainer(["--epochs", "1", "--output", output, "--checkpoint-uri", checkpoints], env=s3_env)
    assert run.returncode == 0, run.log
    assert run.termination is not None
    assert run.termination["uri"] == f"{output}/model.onnx"
    model = s3.get_object(Bucket=BUCKET, Key="runs/digits/model.onnx")["Body"].read()
    assert run.termination["sha256"] == hashlib.sha256(model).hexdigest()
    metadata = json.loads(s3.get_object(Bucket=BUCKET, Key="runs/digits/metadata.json")["Body"].read())
    assert metadata == run.termination
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key="checkpoints/digits/latest.json")["Body"].read())
    assert pointer["step"] == run.termination["metrics"]["steps"]
    leftovers = s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/digits/.tandem-write-probe").get("KeyCount")
    assert leftovers == 0


def test_checkpoints_round_trip_through_s3_and_old_ones_are_pruned(s3: Any) -> None:
    store = CheckpointStore(f"s3://{BUCKET}/unit-checkpoints", keep=2)
    assert store.load_latest() is None
    for step in (7, 8, 9):
        store.save(step, {"weight": torch.full((2,), float(step))})
    latest = store.load_latest()
    assert latest is not None and latest.step == 9
    assert torch.equal(latest.state["weight"], torch.full((2,), 9.0))
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="unit-checkpoints/")["Contents"]}
    assert keys == {
        "unit-checkpoints/latest.json",
        "unit-checkpoints/step-000000008.pt",
        "unit-checkpoints/step-000000009.pt",
    }


def test_a_missing_bucket_is_reported_as_an_unwritable_output(s3: Any) -> None:
    with pytest.raises(OutputUnwritable, match="s3://no-such-bucket/models"):
        check_output_writable("s3://no-such-bucket/models")


def test_an_unreachable_endpoint_is_reported_as_an_unwritable_output(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(OutputUnwritable, match=f"s3://{BUCKET}/models"):
        check_output_writable(f"s3://{BUCKET}/models")


def test_the_s3_endpoint_comes_from_the_standard_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert storage.default_storage_options("s3://b/k") == {"client_kwargs": {"endpoint_url": "http://minio:9000"}}
    assert storage.default_storage_options("file:///tmp/x") == {}
