"""From a pod's container spec to the argv and environment of a local process. Pure functions.

Kubelet semantics kept: env entries are resolved in order, each `$(VAR)` in a value referring to variables
defined before it; command and args are expanded against the full environment; `$$` escapes a `$`; an
unknown `$(VAR)` stays as written. Downward API fields come from the pod object, ConfigMap and Secret keys
through a lookup the caller supplies (the API server, in the executor).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tandem.quantity import parse_quantity

KeyLookup = Callable[[str, str, str], "str | None"]
"""(kind ConfigMap|Secret, name, key) -> the value, or None when the object or key is missing."""
DataLookup = Callable[[str, str], "dict[str, str] | None"]
"""(kind, name) -> all keys of a ConfigMap or Secret, or None when it is missing."""

IMAGE_ENTRYPOINT = ["tandem"]
"""What a container without `command` runs: the ENTRYPOINT of every Tandem image (docker/*.Dockerfile)."""

_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class SpecError(ValueError):
    """The pod asks for something the executor cannot provide; becomes the container's waiting message."""


class NotYet(Exception):
    """A value depends on something not there yet (a peer pod's address); try again on a later tick."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubelet's $(VAR) expansion: `$$` -> `$`, `$(NAME)` -> env[NAME] when defined, else unchanged."""
    out: list[str] = []
    i = 0
    while i < len(value):
        char = value[i]
        if char == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = value.find(")", i + 2)
                if end != -1:
                    name = value[i + 2 : end]
                    out.append(env[name] if name in env else value[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward API fieldRef, as kubelet supports them."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_KEY.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise SpecError(f"fieldRef {path!r} is not supported by the local executor")


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """A resourceFieldRef (limits.cpu, requests.memory, ...), rounded up to the divisor as kubelet does."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    amounts = resources.get(kind) or {}
    if name not in amounts and kind == "limits":
        amounts = resources.get("requests") or {}  # no limit: kubelet reports node allocatable; requests are closer
    if name not in amounts:
        raise SpecError(f"resourceFieldRef {resource!r}: the container sets no such resource")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(amounts[name]) / divisor))


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    base: Mapping[str, str],
    keys: KeyLookup,
    data: DataLookup,
) -> dict[str, str]:
    """The container's environment over `base` (the node's defaults): envFrom first, then env in order."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_name in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(ref_name)
            if ref is None:
                continue
            found = data(kind, ref["name"])
            if found is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"{kind} {ref['name']!r} not found (envFrom)")
            env.update({f"{prefix}{k}": v for k, v in found.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            kind, ref = (
                ("ConfigMap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("Secret", source["secretKeyRef"])
            )
            value = keys(kind, ref["name"], ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise SpecError(f"{kind} {ref['name']!r} has no key {ref['key']!r} (env {name})")
            env[name] = value
    return env


def argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args, expanded; a container without a command runs the Tandem images' entrypoint."""
    command = list(container.get("command") or IMAGE_ENTRYPOINT)
    args = list(container.get("args") or [])
    return [expand(str(part), env) for part in command + args]


@dataclass(frozen=True)
class PeerName:
    """A pod DNS name `<hostname>.<subdomain>[.<namespace>[.svc[.<domain>]]]`, split."""

    hostname: str
    subdomain: str
    namespace: str | None


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_PEER = re.compile(rf"^(?P<host>{_DNS_LABEL})\.(?P<sub>{_DNS_LABEL})(\.(?P<ns>{_DNS_LABEL})(\.svc(\.[a-z0-9.-]+)?)?)?$")


def peer_name(value: str) -> PeerName | None:
    match = _PEER.match(value)
    if match is None:
        return None
    return PeerName(match.group("host"), match.group("sub"), match.group("ns"))


def resolve_peer_names(
    env: dict[str, str],
    pod: Mapping[str, Any],
    peers: Callable[[str, str, str], str | None],
) -> dict[str, str]:
    """Replace env values that are pod DNS names (`<hostname>.<subdomain>`, as a headless Service gives
    an indexed Job's pods) with that pod's loopback address, since nothing resolves those names here.

    `peers(namespace, hostname, subdomain)` returns the address or None. A name in this pod's own subdomain
    that has no address yet raises NotYet: its peer pod exists in the API but has not started, and a real
    cluster's DNS would not answer for it either (the trainer would only retry until it does).
    """
    meta = pod.get("metadata") or {}
    own_subdomain = (pod.get("spec") or {}).get("subdomain")
    resolved = dict(env)
    for key, value in env.items():
        name = peer_name(value)
        if name is None:
            continue
        namespace = name.namespace or meta.get("namespace", "")
        address = peers(namespace, name.hostname, name.subdomain)
        if address is not None:
            resolved[key] = address
        elif name.subdomain == own_subdomain and namespace == meta.get("namespace"):
            raise NotYet(f"{key}={value}: no pod with that name has an address yet")
    return resolved
