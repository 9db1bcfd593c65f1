"""Point Kueue's upstream webhook and CRD manifests at a manager that runs on this host.

Upstream registers its webhooks through a Service in kueue-system; here the manager is a host process, as
the API server is, so each webhook gets a URL on 127.0.0.1 and the local CA's bundle instead. Only the
webhooks for Kueue's own API and for batch/v1 Jobs (the one integration this cluster enables) are kept:
the others (pods, Deployments, StatefulSets, ...) would put the manager in the path of every pod creation
with failurePolicy Fail, for integrations that are off. Standard library only: kubectl has already turned the
YAML into JSON (stdin: `-o json` output), so this runs before any Python environment exists.

    render.py webhooks PORT CA_FILE < webhooks.json   # the two webhook configurations
    render.py crds PORT CA_FILE CONVERTED < crds.json # the CRDs, those named in CONVERTED with /convert
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

KEPT_GROUPS = {"batch", "kueue.x-k8s.io"}


def client_config(port: str, ca: str, path: str) -> dict[str, Any]:
    return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca}


def webhooks(items: list[dict[str, Any]], port: str, ca: str) -> list[dict[str, Any]]:
    out = []
    for config in items:
        kept = []
        for hook in config.get("webhooks") or []:
            groups = {group for rule in hook.get("rules") or [] for group in rule.get("apiGroups") or []}
            if groups and groups <= KEPT_GROUPS:
                hook["clientConfig"] = client_config(port, ca, hook["clientConfig"]["service"]["path"])
                kept.append(hook)
        # Upstream's kustomize prefix, so the names match the ones Kueue's docs and tools expect.
        config["metadata"] = {"name": "kueue-" + config["metadata"]["name"]}
        config["webhooks"] = kept
        out.append(config)
    return out


def crds(items: list[dict[str, Any]], port: str, ca: str, converted: set[str]) -> list[dict[str, Any]]:
    for crd in items:
        if crd["metadata"]["name"] in converted:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {"clientConfig": client_config(port, ca, "/convert"), "conversionReviewVersions": ["v1"]},
            }
    return items


def read_objects(text: str) -> list[dict[str, Any]]:
    """kubectl's `-o json`: one object per input document, one after another, a List's items unpacked."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        obj, at = decoder.raw_decode(text, at)
        objects.extend(obj.get("items") or [] if obj.get("kind") == "List" else [obj])
    return objects


def main(argv: list[str]) -> None:
    what, port, ca_file = argv[1:4]
    ca = base64.b64encode(Path(ca_file).read_bytes()).decode()
    items = read_objects(sys.stdin.read())
    if what == "webhooks":
        rendered = webhooks(items, port, ca)
    elif what == "crds":
        rendered = crds(items, port, ca, set(Path(argv[4]).read_text().split()))
    else:
        raise SystemExit(f"unknown manifest kind {what!r}")
    json.dump({"apiVersion": "v1", "kind": "List", "items": rendered}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
