"""A pod's filesystem view as local directories, and the rewriting of paths that point into it.

Each pod gets a directory `<state>/pods/<namespace>/<name>-<uid8>/` holding `root/`, a tree of symlinks
with one link per volumeMount (`root/mnt/pvc/models -> <state>/pvc/<namespace>/models`), plus its emptyDirs
and logs. Processes are not chrooted, so absolute paths the pod is told about must be rewritten: an env
value or argument that is an absolute path inside, or above, a mount point (`/mnt/pvc/models/x`,
`/mnt/pvc`), or the container's terminationMessagePath, is prefixed with `root/`. A PersistentVolumeClaim
is one shared directory per namespace and claim name, so what the trainer writes to `pvc://models/...`
is what the server reads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tandem.devexec.podspec import SpecError

DataLookup = Callable[[str, str], "dict[str, str] | None"]
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


def pod_dir(state: Path, pod: Mapping[str, Any]) -> Path:
    meta = pod["metadata"]
    return state / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"


def claim_dir(state: Path, namespace: str, claim: str) -> Path:
    return state / "pvc" / namespace / claim


class PodFilesystem:
    """The local directories behind one pod's volumes and the path rewriting that points processes at them."""

    def __init__(self, state: Path, pod: Mapping[str, Any]) -> None:
        self.state = state
        self.pod = pod
        self.dir = pod_dir(state, pod)
        self.root = self.dir / "root"
        self.volumes: dict[str, Path] = {}
        self.mounts: dict[str, list[str]] = {}
        """container name -> its mount paths (absolute, as in the spec)."""

    def prepare(self, data: DataLookup) -> None:
        """Create every volume's directory; ConfigMap and Secret volumes get their keys as files."""
        namespace = self.pod["metadata"]["namespace"]
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        for volume in (self.pod.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                path = claim_dir(self.state, namespace, volume["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in volume:
                path = Path(volume["hostPath"]["path"])
            else:
                path = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if key in volume:
                    source = volume[key]
                    ref = source.get("name") or source.get("secretName", "")
                    found = data(kind, ref)
                    if found is None and not source.get("optional"):
                        raise SpecError(f"{kind} {ref!r} not found (volume {name})")
                    for item_key, value in (found or {}).items():
                        (path / item_key).write_text(value)
            self.volumes[name] = path

    def mount(self, container: Mapping[str, Any]) -> None:
        """Link the container's mounts into root/ and give it a termination message file under root/."""
        self.root.mkdir(parents=True, exist_ok=True)
        paths = []
        for mount in container.get("volumeMounts") or []:
            source = self.volumes.get(mount["name"])
            if source is None:
                raise SpecError(f"volumeMount {mount['name']!r} names no volume")
            if mount.get("subPath"):
                source = source / mount["subPath"]
                source.mkdir(parents=True, exist_ok=True)
            link = self.root / mount["mountPath"].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                if link.is_symlink() and Path(os.readlink(link)) == source:
                    paths.append(mount["mountPath"])
                    continue
                if link.is_dir() and not link.is_symlink():
                    shutil.rmtree(link)
                else:
                    link.unlink()
            link.symlink_to(source, target_is_directory=True)
            paths.append(mount["mountPath"])
        self.mounts[container["name"]] = paths
        termination = Path(self.termination_file(container))
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_text("")

    def termination_file(self, container: Mapping[str, Any]) -> str:
        path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        return str(self.root / path.lstrip("/"))

    def log_file(self, container: str, restart: int) -> Path:
        return self.dir / "logs" / f"{container}.{restart}.log"

    def localize(self, container: Mapping[str, Any], value: str) -> str:
        """`value` rewritten into root/ when it is an absolute path inside or above a mount point, or the
        termination message path; anything else unchanged."""
        if not value.startswith("/") or value.startswith("//"):
            return value
        path = os.path.normpath(value)
        termination = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        for mount in [*self.mounts.get(container["name"], []), termination]:
            mount = os.path.normpath(mount)
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            above = mount.startswith(path.rstrip("/") + "/") and path != "/"
            if inside or above:
                return str(self.root / path.lstrip("/"))
        return value

    def localize_env(self, container: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        return {key: self.localize(container, value) for key, value in env.items()}

    def localize_argv(self, container: Mapping[str, Any], args: list[str]) -> list[str]:
        """Whole arguments and `--flag=/path` arguments."""
        out = []
        for arg in args:
            flag, eq, value = arg.partition("=")
            if eq and flag.startswith("-"):
                out.append(f"{flag}={self.localize(container, value)}")
            else:
                out.append(self.localize(container, arg))
        return out
