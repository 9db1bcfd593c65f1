"""A pod that looks like worker 0 but was not made by the run's Job publishes nothing, on a real control plane.

`kubectl debug --copy-to`, a pod made by hand or by another controller can carry a worker's labels and
annotations; only the owner reference the Job controller sets (the Job's uid, as controller) says who made it.
Here the forged copy ends first, with a model of its own in its termination message (kwok reports it), while
the real worker 0 is still training: the TrainingJob must keep running and then publish the real model.
"""

from __future__ import annotations

from kopf.testing import KopfRunner
from kubernetes import client as k8s

from integration.test_operator import SHA_1, phase_is, pods_of, training_spec
from support.cluster import wait_until
from support.tandem import artifact_message, body, create, get, wait_for
from tandem.api.resources import TRAINING_JOB

FORGED = "f" * 64


def test_a_copy_of_worker_0_with_its_own_model_publishes_nothing(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "target", training_spec(SHA_1, duration="20s")))
    wait_for(tandem_api, TRAINING_JOB, namespace, "target", phase_is("Running"), "Running")
    job = get(tandem_api, TRAINING_JOB, namespace, "target")["status"]["jobName"]
    core = k8s.CoreV1Api(tandem_api)
    (worker,) = pods_of(tandem_api, namespace, f"job-name={job}")

    forged = core.api_client.sanitize_for_serialization(worker)
    metadata = forged["metadata"]
    forged["metadata"] = {
        "name": "forged",
        # Without the controller-uid labels the Job's selector matches on, or the Job controller would adopt
        # the copy and delete it as one pod too many: the forgery keeps what a reader by label would trust.
        "labels": {k: v for k, v in metadata["labels"].items() if not k.endswith("controller-uid")},
        "annotations": {
            **metadata.get("annotations", {}),
            "tandem.dev/fake-duration": "1s",
            "tandem.dev/fake-termination-message": artifact_message("s3://evil/model.onnx", FORGED),
        },
    }
    forged["spec"].pop("nodeName", None)
    forged.pop("status", None)
    core.create_namespaced_pod(namespace, forged)
    wait_until(
        lambda: core.read_namespaced_pod("forged", namespace).status.phase == "Succeeded",
        timeout=60,
        what="the forged pod done, its model in its termination message",
    )
    assert get(tandem_api, TRAINING_JOB, namespace, "target")["status"]["phase"] == "Running"

    done = wait_for(tandem_api, TRAINING_JOB, namespace, "target", phase_is("Succeeded", "Failed"), "done", timeout=120)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["model"]["sha256"] == SHA_1
