"""Names, labels, owner references and the hardened container settings shared by every child."""

from __future__ import annotations

import hashlib
from typing import Any

from tandem.api.podspec import LocalObjectReference
from tandem.api.resources import API_VERSION

MANAGED_BY = {"app.kubernetes.io/managed-by": "tandem"}
PVC_MOUNT_ROOT = "/mnt/pvc"


def dns_name(*parts: str, limit: int = 63) -> str:
    """Join parts with '-' and keep within a DNS label, shortening with a stable hash when needed.

    Resource and claim names may be DNS subdomains; dots are not allowed in a label (pod hostnames, volume
    and Service names), so a dotted name becomes dashed, with the hash keeping `a.b` and `a-b` apart.
    """
    name = "-".join(parts)
    if len(name) <= limit and "." not in name:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.replace('.', '-')[: limit - 9].rstrip('-')}-{digest}"


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any]
) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [owner]}


def restricted_security_context() -> dict[str, Any]:
    """The Pod Security Standards 'restricted' profile, with a read-only root filesystem."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532}


def env_list(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"name": key, "value": value} for key, value in pairs.items()]


def pvc_volumes(
    claims: list[str], read_only: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for the claims that pvc:// URIs name, at the path tandem.storage resolves.

    Claims in `read_only` are only read (a dataset), so they are mounted read-only and a bug in a training
    script cannot overwrite the data.
    """
    unique = sorted(set(claims))
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for claim in unique:
        name = dns_name("pvc", claim)
        source: dict[str, Any] = {"claimName": claim}
        mount: dict[str, Any] = {"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}"}
        if claim in read_only:
            source["readOnly"] = True
            mount["readOnly"] = True
        volumes.append({"name": name, "persistentVolumeClaim": source})
        mounts.append(mount)
    return volumes, mounts


def pod_identity(service_account: str | None, pull_secrets: list[LocalObjectReference]) -> dict[str, Any]:
    """The pod spec fields that say who the pod is and how its image is pulled.

    The API token stays unmounted even with a ServiceAccount: cloud identity (IRSA, Workload Identity) comes
    through its own projected token or metadata server, and a workload has no business with the API server.
    """
    fields: dict[str, Any] = {"automountServiceAccountToken": False}
    if service_account:
        fields["serviceAccountName"] = service_account
    if pull_secrets:
        fields["imagePullSecrets"] = [secret.to_wire() for secret in pull_secrets]
    return fields
