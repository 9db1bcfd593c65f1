"""An in-memory stand-in for `tandem.controller.kube.Kube`, for unit tests of reconcile: what it stores, it answers.

It does as much of the API server as the reconciles rely on (server-side apply's ownership of spec.replicas,
409 on a create that exists, 422 for a kind marked invalid, label-selected lists, owner-driven garbage
collection on request) and records every call, so tests assert on writes as well as on results.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from tandem.api.resources import Resource
from tandem.controller.kube import FIELD_MANAGER, Kube

Key = tuple[str, str, str, str]


class FakeKube(Kube):
    """Objects in memory, keyed by (apiVersion, kind, namespace, name); `calls` lists every write and read."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.custom: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self.node_list: list[dict[str, Any]] = []
        self.calls: list[tuple[str, ...]] = []
        self.preconditions: list[str | None] = []
        self.deleted: set[tuple[str, str | None, str]] = set()
        self.invalid: dict[str, str] = {}
        """Kinds the API server refuses (422), with its message."""

    def writes(self, verb: str, kind: str | None = None) -> list[tuple[str, ...]]:
        return [call for call in self.calls if call[0] == verb and (kind is None or call[1] == kind)]

    def apply(self, obj: dict[str, Any], manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
        """Server-side apply as far as spec.replicas goes: each manager owns the replicas it applies, and a count
        that no manager owns any more falls to the Deployment's default of 1."""
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        self.calls.append(("apply", obj["kind"], meta["name"], *([manager] if manager != FIELD_MANAGER else [])))
        self._validate(obj)
        before = self.objects.get(key)
        owners = [entry for entry in ((before or {}).get("metadata") or {}).get("managedFields") or []
                  if entry["manager"] != manager]
        if "replicas" in obj.get("spec", {}):
            owners.append({"manager": manager, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}})
        if manager != FIELD_MANAGER:  # a partial apply: only its fields change
            assert before is not None
            stored = copy.deepcopy(before)
            stored["spec"].update(obj["spec"])
        else:
            stored = copy.deepcopy(obj)
            stored["status"] = (before or {}).get("status", {})
        if obj["kind"] == "Deployment" and "replicas" not in stored["spec"]:
            stored["spec"]["replicas"] = before["spec"]["replicas"] if before and owners else 1
        stored["metadata"]["managedFields"] = owners
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def _validate(self, obj: dict[str, Any]) -> None:
        if obj["kind"] in self.invalid:
            refused = ApiException(status=422, reason="Unprocessable Entity")
            refused.body = json.dumps({"message": self.invalid[obj["kind"]]})
            raise refused

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        self.calls.append(("create", obj["kind"], meta["name"]))
        self._validate(obj)
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", f"uid-{obj['kind'].lower()}-{meta['name']}")
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("merge_patch", kind, name))
        stored = self.objects[(api_version, kind, namespace, name)]
        for section, fields in patch.items():
            stored.setdefault(section, {}).update(fields)
        return copy.deepcopy(stored)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        stored = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(stored) if stored is not None else None

    read = get  # no watch stores: every read is a GET, as Kube.read without them

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, str(sorted(selector.items()))))
        return [
            copy.deepcopy(obj)
            for (version, object_kind, object_namespace, _), obj in self.objects.items()
            if (version, object_kind, object_namespace) == (api_version, kind, namespace)
            and selector.items() <= (obj["metadata"].get("labels") or {}).items()
        ]

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))
        self.objects.pop((api_version, kind, namespace, name), None)

    def nodes(self, selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.calls.append(("nodes", str(sorted((selector or {}).items()))))
        return [
            copy.deepcopy(node)
            for node in self.node_list
            if (selector or {}).items() <= (node["metadata"].get("labels") or {}).items()
        ]

    def live_pods(self) -> list[dict[str, Any]]:
        self.calls.append(("live_pods",))
        return [
            copy.deepcopy(obj)
            for (_, kind, _, _), obj in self.objects.items()
            if kind == "Pod" and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def get_custom(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        body = self.custom.get((resource.kind, namespace, name))
        return copy.deepcopy(body) if body is not None else None

    def patch_status(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("patch_status", resource.kind, name))
        if (resource.kind, namespace, name) in self.deleted:
            raise ApiException(status=404, reason="Not Found")
        self.preconditions.append(resource_version)
        following = str(int(resource_version) + 1) if resource_version else None
        return {"metadata": {"resourceVersion": following}, "status": status}

    def delete_unannounced(self, kind: str, name: str) -> None:
        """A Tandem object deleted, and its children with it by the garbage collector; a body kept of it lives on."""
        self.custom.pop((kind, "ml", name))
        self.deleted.add((kind, "ml", name))
        uid = f"uid-{name}"
        for key, obj in list(self.objects.items()):
            if any(owner.get("uid") == uid for owner in obj["metadata"].get("ownerReferences") or []):
                del self.objects[key]

    def holds(self, body: dict[str, Any]) -> dict[str, Any]:
        """Keep a Tandem object (the same dict, as the reconciles change it), as the API server would; returns it."""
        self.custom[(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])] = body
        return body

    def set_status(self, api_version: str, kind: str, name: str, status: dict[str, Any]) -> None:
        """What a controller would write: the status the next read or apply returns."""
        self.objects[(api_version, kind, "ml", name)]["status"] = status

    def add_pod(
        self,
        job: str,
        phase: str,
        message: str | None = None,
        seconds: int | None = None,
        index: int = 0,
        exit_code: int = 0,
        attempt: str = "abcde",
    ) -> None:
        """A worker (0 unless `index` says) of `job`, made by that Job; with `seconds`, it ran that long and
        finished."""
        terminated: dict[str, Any] = {"exitCode": exit_code, "message": message}
        if seconds is not None:
            terminated["finishedAt"] = f"2024-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"
        state = {"terminated": terminated} if message or seconds is not None else {}
        pod_status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
        if seconds is not None:
            pod_status["startTime"] = "2024-01-01T00:00:00Z"
        owner = self.objects.get(("batch/v1", "Job", "ml", job), {}).get("metadata", {}).get("uid")
        name = f"{job}-{index}-{attempt}"
        self.objects[("v1", "Pod", "ml", name)] = {
            "metadata": {
                "name": name,
                "labels": {"job-name": job},
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                "ownerReferences": [{"kind": "Job", "name": job, "uid": owner, "controller": True}],
            },
            "spec": {"containers": [{"name": "trainer", "resources": {"requests": {"cpu": "2"}}}]},
            "status": pod_status,
        }
