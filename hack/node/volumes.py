#!/usr/bin/env python3
"""The local cluster's volume provisioner: claims of StorageClass tandem-shared get a directory both real nodes see.

On a real cluster a ReadWriteMany claim is served by NFS, CephFS or an object store's CSI driver. Here every
node is on this machine, so a directory under the cluster's state dir, mounted by hostPath, is the shared
filesystem. For each Pending claim of the class this creates the directory (owned by 65532, the user Tandem's
workloads run as) and a PersistentVolume pre-bound to the claim; when a claim is deleted its Released volume
and directory are deleted too (reclaim policy Delete). Standard library and kubectl only: it runs with the
machine's python3 beside the control plane (hack/nodes.sh starts it), not in the project's environment.

    volumes.py --kubectl BIN/kubectl --kubeconfig KUBECONFIG --root DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STORAGE_CLASS = "tandem-shared"
PROVISIONER = "tandem.dev/local-shared"
OWNER = 65532
RESYNC_SECONDS = 30.0


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} volumes: {message}", flush=True)


class Kubectl:
    def __init__(self, binary: str, kubeconfig: str) -> None:
        self.base = [binary, "--kubeconfig", kubeconfig]

    def json(self, *args: str) -> dict[str, Any]:
        out = subprocess.run([*self.base, *args, "-o", "json"], capture_output=True, text=True, check=True).stdout
        found: dict[str, Any] = json.loads(out)
        return found

    def apply(self, obj: dict[str, Any]) -> None:
        subprocess.run(
            [*self.base, "apply", "--server-side", "--field-manager", "tandem-volumes", "-f", "-"],
            input=json.dumps(obj),
            capture_output=True,
            text=True,
            check=True,
        )

    def delete_volume(self, name: str) -> None:
        subprocess.run(
            [*self.base, "delete", "pv", name, "--ignore-not-found", "--wait=false"],
            capture_output=True,
            text=True,
            check=True,
        )

    def watch(self, kind: str, changed: threading.Event) -> None:
        """Set `changed` whenever anything of `kind` changes (kubectl's watch; restarted if it ends)."""
        while True:
            proc = subprocess.Popen(
                [*self.base, "get", kind, "-A", "--watch", "-o", "name"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert proc.stdout is not None
            for _ in proc.stdout:
                changed.set()
            proc.wait()
            time.sleep(1.0)


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_for(claim: dict[str, Any], path: Path) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
        },
    }


def reconcile(kubectl: Kubectl, root: Path) -> None:
    claims = kubectl.json("get", "pvc", "-A")["items"]
    volumes = kubectl.json("get", "pv")["items"]
    have = {v["metadata"]["name"] for v in volumes}
    for claim in claims:
        meta, spec = claim["metadata"], claim["spec"]
        if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
            continue
        if f"pvc-{meta['uid']}" in have or meta.get("deletionTimestamp"):
            continue
        path = root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, OWNER, OWNER)
        kubectl.apply(volume_for(claim, path))
        log(f"claim {meta['namespace']}/{meta['name']}: volume pvc-{meta['uid']} at {path}")
    for volume in volumes:
        ours = (volume["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        if ours and (volume.get("status") or {}).get("phase") in ("Released", "Failed"):
            path = Path(volume["spec"]["hostPath"]["path"])
            if path.parent == root:
                shutil.rmtree(path, ignore_errors=True)
            kubectl.delete_volume(volume["metadata"]["name"])
            log(f"volume {volume['metadata']['name']}: released, deleted with {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    args = parser.parse_args()
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    kubectl = Kubectl(args.kubectl, args.kubeconfig)
    kubectl.apply(storage_class())
    changed = threading.Event()
    for kind in ("pvc", "pv"):
        threading.Thread(target=kubectl.watch, args=(kind, changed), daemon=True).start()
    log(f"StorageClass {STORAGE_CLASS} (default) provisions directories under {root}")
    while True:
        changed.clear()
        try:
            reconcile(kubectl, root)
        except (subprocess.CalledProcessError, json.JSONDecodeError, OSError) as exc:
            log(f"pass failed, retrying: {exc}")
            time.sleep(1.0)
            changed.set()
        changed.wait(RESYNC_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
