"""What a workload's pods may borrow from the user's namespace: an identity, pull secrets and volumes.

A subset of core/v1, not the whole of it: a ServiceAccount (the anchor of IRSA and Workload Identity), image
pull secrets, and volumes from claims, ConfigMaps, Secrets and emptyDirs with their mounts. Each field is
checked by the CRD schema, so a mount that names no volume, a volume that nothing mounts or a mount over the
paths Tandem itself uses is refused by `kubectl apply`; the same rules are checked again when the operator
parses the spec, so no Job the API server would refuse is ever built.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self, cast

from pydantic import ConfigDict, Field, JsonValue, model_validator

from tandem.api.base import ApiModel
from tandem.api.common import DNS_LABEL, DNS_SUBDOMAIN, Quantity

RESERVED_VOLUME_NAMES = ("tmp", "dshm")
"""Volume names Tandem gives its own scratch space; claims named by pvc:// URIs get `pvc-<claim>`."""
RESERVED_MOUNT_PATH = r"^/(tmp|dev/shm)/?$|^/mnt/pvc(/.*)?$"
"""Where Tandem mounts its scratch space and the claims of pvc:// URIs (tandem.storage's mount root)."""
RELATIVE_PATH = r"^[^/](.*[^/])?$"
MAX_VOLUMES = 32
MAX_PULL_SECRETS = 16


class LocalObjectReference(ApiModel):
    """An object in the resource's namespace, by name."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Object name."""


class KeyToPath(ApiModel):
    """One key of a ConfigMap or Secret, as a file at a path inside the volume."""

    key: str = Field(min_length=1, max_length=253)
    """Key to project."""
    path: str = Field(pattern=RELATIVE_PATH, max_length=1024)
    """Relative file path inside the volume."""
    mode: int | None = Field(default=None, ge=0, le=0o777)
    """File mode bits (decimal in JSON, such as 292 for 0444)."""


class PersistentVolumeClaimVolume(ApiModel):
    """A PersistentVolumeClaim in the resource's namespace."""

    claim_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Claim name."""
    read_only: bool = False
    """Mount the claim read-only."""


class ConfigMapVolume(ApiModel):
    """A ConfigMap's keys as files: the way a user's own training script reaches the trainer image."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """ConfigMap name."""
    items: list[KeyToPath] | None = Field(default=None, max_length=64)
    """Keys to project; empty projects every key under its own name."""
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    """File mode bits for the files (decimal in JSON)."""
    optional: bool | None = None
    """Whether the pod may start without the ConfigMap."""


class SecretVolume(ApiModel):
    """A Secret's keys as files (credential files, certificates)."""

    secret_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Secret name."""
    items: list[KeyToPath] | None = Field(default=None, max_length=64)
    """Keys to project; empty projects every key under its own name."""
    default_mode: int | None = Field(default=None, ge=0, le=0o777)
    """File mode bits for the files (decimal in JSON)."""
    optional: bool | None = None
    """Whether the pod may start without the Secret."""


class EmptyDirVolume(ApiModel):
    """Scratch space that lives as long as the pod."""

    medium: Literal["", "Memory"] | None = None
    """Empty for the node's disk, Memory for tmpfs."""
    size_limit: Quantity | None = None
    """Most space the volume may use."""


VOLUME_SOURCES = ("persistentVolumeClaim", "configMap", "secret", "emptyDir")

VOLUME_RULES: list[dict[str, str]] = [
    {
        "rule": "[" + ", ".join(f"has(self.{source})" for source in VOLUME_SOURCES) + "].filter(x, x).size() == 1",
        "message": "a volume needs exactly one of " + ", ".join(VOLUME_SOURCES),
    },
    {
        "rule": "!(self.name in " + repr(list(RESERVED_VOLUME_NAMES)) + ") && !self.name.startsWith('pvc-')",
        "message": "volume names tmp, dshm and pvc-* are Tandem's own (scratch space and the claims of pvc:// URIs)",
        "fieldPath": ".name",
    },
]


class Volume(ApiModel):
    """A volume for the workload's pods, mounted by name through volumeMounts."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(JsonValue, VOLUME_RULES)})

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """Volume name, unique in the list; volumeMounts refer to it."""
    persistent_volume_claim: PersistentVolumeClaimVolume | None = None
    """A claim."""
    config_map: ConfigMapVolume | None = None
    """A ConfigMap."""
    secret: SecretVolume | None = None
    """A Secret."""
    empty_dir: EmptyDirVolume | None = None
    """Scratch space."""

    @model_validator(mode="after")
    def _one_source_and_not_reserved(self) -> Self:
        sources = [self.persistent_volume_claim, self.config_map, self.secret, self.empty_dir]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(VOLUME_RULES[0]["message"])
        if self.name in RESERVED_VOLUME_NAMES or self.name.startswith("pvc-"):
            raise ValueError(VOLUME_RULES[1]["message"])
        return self


MOUNT_RULES: list[dict[str, str]] = [
    {
        "rule": f"!self.mountPath.matches('{RESERVED_MOUNT_PATH}')",
        "message": "mountPath /tmp, /dev/shm and /mnt/pvc are Tandem's own (scratch space and pvc:// claims)",
        "fieldPath": ".mountPath",
    },
]


class VolumeMount(ApiModel):
    """Where a volume from `volumes` appears in the container."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(JsonValue, MOUNT_RULES)})

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    """Name of a volume in `volumes`."""
    mount_path: str = Field(pattern=r"^/", max_length=1024)
    """Absolute path in the container, unique in the list."""
    read_only: bool | None = None
    """Mount read-only."""
    sub_path: str | None = Field(default=None, pattern=RELATIVE_PATH, max_length=1024)
    """Path inside the volume to mount instead of its root."""

    @model_validator(mode="after")
    def _not_reserved(self) -> Self:
        if re.match(RESERVED_MOUNT_PATH, self.mount_path):
            raise ValueError(MOUNT_RULES[0]["message"])
        return self


def _list_map(key: str) -> dict[str, JsonValue]:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


Volumes = Annotated[list[Volume], Field(max_length=MAX_VOLUMES, json_schema_extra=_list_map("name"))]
VolumeMounts = Annotated[list[VolumeMount], Field(max_length=MAX_VOLUMES, json_schema_extra=_list_map("mountPath"))]
PullSecrets = Annotated[list[LocalObjectReference], Field(max_length=MAX_PULL_SECRETS)]

MOUNTS_NAME_VOLUMES_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
        "self.volumes.exists(v, v.name == m.name))",
        "message": "spec.volumeMounts: every mount must name a volume declared in spec.volumes",
        "fieldPath": ".volumeMounts",
    },
    {
        "rule": "!has(self.volumes) || self.volumes.all(v, has(self.volumeMounts) && "
        "self.volumeMounts.exists(m, m.name == v.name))",
        "message": "spec.volumes: every volume must be mounted by an entry of spec.volumeMounts",
        "fieldPath": ".volumes",
    },
]
"""Cross-field rules of a spec that has both `volumes` and `volumeMounts`."""


def check_mounts_name_volumes(volumes: list[Volume], mounts: list[VolumeMount]) -> None:
    """The pydantic side of MOUNTS_NAME_VOLUMES_RULES, with the names that break them."""
    declared = {volume.name for volume in volumes}
    mounted = {mount.name for mount in mounts}
    if missing := sorted(mounted - declared):
        raise ValueError(f"{MOUNTS_NAME_VOLUMES_RULES[0]['message']} (undeclared: {', '.join(missing)})")
    if unmounted := sorted(declared - mounted):
        raise ValueError(f"{MOUNTS_NAME_VOLUMES_RULES[1]['message']} (unmounted: {', '.join(unmounted)})")
    for field, names in (("volumes", [v.name for v in volumes]), ("volumeMounts", [m.mount_path for m in mounts])):
        if len(set(names)) != len(names):
            raise ValueError(f"spec.{field}: duplicate entries")
