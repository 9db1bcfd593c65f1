"""The executor's loop: pods bound to its nodes become local processes, and their status goes back.

One thread owns all state. Each tick lists the pods on the executor's nodes, starts what is new, reaps what
exited, runs due probes (in a small thread pool), starts graceful termination for deleted pods, and patches
pod status when it changed. A watch per node wakes the loop as soon as a pod changes, so a deleted pod gets
its preStop hook and SIGTERM right away; the tick interval bounds the latency when a watch is down.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tandem.devexec import podspec
from tandem.devexec.kubeapi import KubeApi
from tandem.devexec.nodes import NodeKeeper, NodeSpec, now_rfc3339
from tandem.devexec.probes import Prober, check
from tandem.devexec.process import ContainerProcess
from tandem.devexec.runtime import BACKOFF_CAP, BACKOFF_START, ContainerRuntime, PodRuntime
from tandem.devexec.volumes import PodFilesystem

log = logging.getLogger("tandem.devexec")

HEARTBEAT_SECONDS = 10.0
PREPARE_RETRY_SECONDS = 1.0
DEFAULT_GRACE_SECONDS = 30


@dataclass
class ExecutorConfig:
    state_dir: Path
    nodes: list[NodeSpec]
    venv_bin: Path
    network: str = "127.77.0.0/16"
    """Pod addresses come from here: all of 127.0.0.0/8 is loopback on Linux, so each pod gets its own."""
    pod_ip_env: tuple[str, ...] = ("TANDEM_HOST", "POD_IP")
    """Set to the pod's address unless the pod sets them: how a server knows which address to bind."""
    pass_env: tuple[str, ...] = ()
    """Variables copied from the executor's own environment into every container."""
    tick: float = 0.5
    deregister_on_exit: bool = True


class Ipam:
    """Hands out distinct loopback addresses and takes back those of pods that are gone."""

    def __init__(self, network: str) -> None:
        self.network = ipaddress.ip_network(network)
        if not self.network.is_loopback:
            raise ValueError(f"{network} is not a loopback network")
        self.used: set[str] = set()
        self._hosts = (str(ip) for ip in self.network.hosts() if not str(ip).endswith((".0", ".255", ".1")))

    def claim(self, preferred: str | None = None) -> str:
        if preferred and preferred not in self.used and ipaddress.ip_address(preferred) in self.network:
            self.used.add(preferred)
            return preferred
        for ip in self._hosts:
            if ip not in self.used:
                self.used.add(ip)
                return ip
        raise RuntimeError(f"no loopback addresses left in {self.network}")

    def release(self, ip: str) -> None:
        self.used.discard(ip)


@dataclass
class Executor:
    config: ExecutorConfig
    api: KubeApi
    stop: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.nodes = NodeKeeper(self.api, self.config.nodes)
        self.ipam = Ipam(self.config.network)
        self.pods: dict[str, PodRuntime] = {}
        self.probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self.stopper_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prestop")
        self.state_dir = self.config.state_dir.resolve()

    # --- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Register the nodes, serve pods until `stop`, then stop every process and deregister."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.nodes.register()
        watches = [
            threading.Thread(target=self.api.watch_pods_on_node, args=(spec.name, self.wake, self.stop), daemon=True)
            for spec in self.config.nodes
        ]
        for thread in watches:
            thread.start()
        log.info("serving nodes %s; state in %s", ", ".join(s.name for s in self.config.nodes), self.state_dir)
        last_heartbeat = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    self.reconcile()
                except (ApiException, OSError) as exc:  # the API server may be restarting; keep the processes
                    log.warning("reconcile failed, retrying: %s", exc)
                if time.monotonic() - last_heartbeat >= HEARTBEAT_SECONDS:
                    try:
                        self.nodes.heartbeat()
                        last_heartbeat = time.monotonic()
                    except (ApiException, OSError) as exc:
                        log.warning("node heartbeat failed: %s", exc)
                self.wake.wait(self.config.tick)
                self.wake.clear()
        finally:
            self.shutdown()

    def shutdown(self, grace: float = 10.0) -> None:
        """SIGTERM every process, SIGKILL what is left after `grace`, then remove the nodes."""
        for runtime in self.pods.values():
            for container in runtime.containers:
                if container.process is not None:
                    container.process.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            c.process is not None and c.process.popen.poll() is None for r in self.pods.values() for c in r.containers
        ):
            time.sleep(0.1)
        for runtime in self.pods.values():
            for container in runtime.containers:
                if container.process is not None:
                    container.process.kill()
                    container.process.popen.wait(timeout=5)
        self.probe_pool.shutdown(wait=False, cancel_futures=True)
        self.stopper_pool.shutdown(wait=False, cancel_futures=True)
        if self.config.deregister_on_exit:
            try:
                self.nodes.deregister()
            except (ApiException, OSError) as exc:
                log.warning("could not remove nodes: %s", exc)

    # --- reconcile ---------------------------------------------------------------------------------

    def reconcile(self) -> None:
        seen: dict[str, dict[str, Any]] = {}
        for spec in self.config.nodes:
            for pod in self.api.pods_on_node(spec.name):
                seen[pod["metadata"]["uid"]] = pod
        for uid in [uid for uid in self.pods if uid not in seen]:
            self.forget(self.pods.pop(uid), "removed from the API")
        for uid, pod in seen.items():
            runtime = self.pods.get(uid)
            if runtime is None:
                runtime = self.adopt(pod)
                if runtime is None:
                    continue
                self.pods[uid] = runtime
            runtime.pod = pod
            self.step(runtime)
            self.report(runtime)
            if runtime.deleting and not runtime.running:
                meta = pod["metadata"]
                self.api.delete_pod_now(meta["namespace"], meta["name"], uid)
                self.forget(self.pods.pop(uid), "deleted")

    def adopt(self, pod: dict[str, Any]) -> PodRuntime | None:
        """A runtime for a pod seen for the first time, or None when there is nothing to run."""
        meta = pod["metadata"]
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            self.api.delete_pod_now(meta["namespace"], meta["name"], meta["uid"])
            return None
        if status.get("phase") in ("Succeeded", "Failed"):
            return None
        was_running = any("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or [])
        containers = [ContainerRuntime(spec=c) for c in pod["spec"]["containers"]]
        runtime = PodRuntime(
            pod=pod,
            ip=self.ipam.claim(status.get("podIP")),
            fs=PodFilesystem(self.state_dir, pod),
            containers=containers,
            start_time=status.get("startTime") or now_rfc3339(),
        )
        if was_running and runtime.restart_policy == "Never":
            # An earlier executor ran it and is gone, and with it the process: report it lost, as a kubelet
            # reports a container that vanished, rather than running a worker twice.
            runtime.prepared = True
            for container in containers:
                container.done = True
                container.waiting_reason = "ContainerStatusUnknown"
            self.report_lost(runtime)
            return runtime
        if pod["spec"].get("initContainers"):
            for container in containers:
                container.waiting_reason = "CreateContainerConfigError"
                container.waiting_message = "init containers are not supported by the local executor"
            runtime.next_prepare = float("inf")
        return runtime

    def report_lost(self, runtime: PodRuntime) -> None:
        from tandem.devexec.process import Exit

        now = time.time()
        for container in runtime.containers:
            container.last_exit = Exit(137, None, now, now, "the local executor restarted; the process was lost")

    def forget(self, runtime: PodRuntime, why: str) -> None:
        for container in runtime.containers:
            if container.process is not None:
                container.process.kill()
                container.process.popen.wait(timeout=5)
                container.process = None
        self.ipam.release(runtime.ip)
        log.info("%s: %s", runtime.key, why)

    # --- one pod -----------------------------------------------------------------------------------

    def step(self, runtime: PodRuntime) -> None:
        now = time.monotonic()
        if not runtime.prepared:
            if runtime.deleting or now < runtime.next_prepare:
                return
            self.prepare(runtime)
            if not runtime.prepared:
                return
        if runtime.deleting and runtime.stop_deadline is None:
            self.begin_stop(runtime)
        for container in runtime.containers:
            self.step_container(runtime, container, now)
        if runtime.stop_deadline is not None and now >= runtime.stop_deadline:
            for container in runtime.containers:
                if container.process is not None and not container.process.killed:
                    log.info("%s/%s: grace period over, SIGKILL", runtime.key, container.name)
                    container.process.kill()

    def prepare(self, runtime: PodRuntime) -> None:
        """Volumes, env and argv for every container; a missing dependency leaves the pod Pending."""
        pod = runtime.pod
        namespace = pod["metadata"]["namespace"]

        def keys(kind: str, name: str, key: str) -> str | None:
            return self.api.key_of(kind, namespace, name, key)

        def data(kind: str, name: str) -> dict[str, str] | None:
            return self.api.data_of(kind, namespace, name)

        try:
            runtime.fs.prepare(data)
            with_ip = {
                **pod,
                "status": {**(pod.get("status") or {}), "podIP": runtime.ip, "podIPs": [{"ip": runtime.ip}]},
            }
            for container in runtime.containers:
                runtime.fs.mount(container.spec)
                base = self.base_env(runtime, container.spec)
                env = podspec.resolve_env(with_ip, container.spec, base, keys, data)
                env = podspec.resolve_peer_names(env, pod, self.peer_address)
                container.env = runtime.fs.localize_env(container.spec, env)
                container.args = runtime.fs.localize_argv(container.spec, podspec.argv(container.spec, env))
        except podspec.NotYet as exc:
            for container in runtime.containers:
                container.waiting_reason, container.waiting_message = "ContainerCreating", str(exc)
            runtime.next_prepare = time.monotonic() + PREPARE_RETRY_SECONDS
            return
        except (podspec.SpecError, OSError) as exc:
            for container in runtime.containers:
                container.waiting_reason, container.waiting_message = "CreateContainerConfigError", str(exc)
            runtime.next_prepare = time.monotonic() + PREPARE_RETRY_SECONDS
            log.warning("%s: %s", runtime.key, exc)
            return
        runtime.prepared = True

    def base_env(self, runtime: PodRuntime, container: Mapping[str, Any]) -> dict[str, str]:
        """What the image and node give every container before the pod's own env (which may override it)."""
        spec = runtime.pod.get("spec") or {}
        home = runtime.fs.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {name: os.environ[name] for name in self.config.pass_env if name in os.environ}
        env.update(
            PATH=f"{self.config.venv_bin}:/usr/local/bin:/usr/bin:/bin",
            HOME=str(home),
            LANG="C.UTF-8",
            HOSTNAME=str(spec.get("hostname") or runtime.pod["metadata"]["name"]),
            # The Tandem images' ENV (docker/*.Dockerfile): unbuffered logs, no .pyc writes.
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        if any(m.get("mountPath") == "/tmp" for m in container.get("volumeMounts") or []):
            env["TMPDIR"] = str(runtime.fs.root / "tmp")
        env.update({name: runtime.ip for name in self.config.pod_ip_env})
        return env

    def peer_address(self, namespace: str, hostname: str, subdomain: str) -> str | None:
        for runtime in self.pods.values():
            meta, spec = runtime.pod["metadata"], runtime.pod.get("spec") or {}
            if (
                meta["namespace"] == namespace
                and spec.get("hostname") == hostname
                and spec.get("subdomain") == subdomain
            ):
                return runtime.ip
        return None

    def start(self, runtime: PodRuntime, container: ContainerRuntime) -> None:
        log_path = runtime.fs.log_file(container.name, container.restart_count)
        termination = Path(runtime.fs.termination_file(container.spec))
        termination.write_text("")
        try:
            container.process = ContainerProcess(
                container.args,
                container.env,
                runtime.fs.root,
                log_path,
                termination,
                str(container.spec.get("terminationMessagePolicy") or "File"),
            )
        except OSError as exc:
            container.waiting_reason, container.waiting_message = "RunContainerError", str(exc)
            container.next_start = time.monotonic() + BACKOFF_CAP
            log.warning("%s/%s: cannot start: %s", runtime.key, container.name, exc)
            return
        container.waiting_reason, container.waiting_message = "", ""
        container.arm_probes()
        log.info(
            "%s/%s: started pid %d at %s: %s (log %s)",
            runtime.key,
            container.name,
            container.process.pid,
            runtime.ip,
            " ".join(container.args),
            log_path,
        )

    def step_container(self, runtime: PodRuntime, container: ContainerRuntime, now: float) -> None:
        if container.process is None:
            if not container.done and not runtime.deleting and now >= container.next_start:
                self.start(runtime, container)
            return
        exit_ = container.process.poll()
        if exit_ is not None:
            container.process = None
            log.info("%s/%s: exited %d", runtime.key, container.name, exit_.code)
            policy = runtime.restart_policy
            restart = not runtime.deleting and (policy == "Always" or (policy == "OnFailure" and exit_.code != 0))
            if restart:
                delay = min(BACKOFF_CAP, BACKOFF_START * 2**container.restart_count)
                container.previous_exit = exit_
                container.restart_count += 1
                container.next_start = now + delay
                container.waiting_reason = "CrashLoopBackOff" if exit_.code != 0 else "ContainerCreating"
                container.waiting_message = f"restarting in {delay:.0f}s"
            else:
                container.last_exit = exit_
                container.done = True
            return
        self.collect_probes(runtime, container)
        if runtime.deleting:
            return
        for prober in self.due_probers(container, now):
            prober.in_flight = True
            future = self.probe_pool.submit(check, prober.probe, container.spec, runtime.ip, container.env)
            container.futures.append((prober, future))

    def due_probers(self, container: ContainerRuntime, now: float) -> list[Prober]:
        if container.startup is not None and not container.startup.success:
            return [container.startup] if container.startup.due(now) else []
        return [p for p in (container.readiness, container.liveness) if p is not None and p.due(now)]

    def collect_probes(self, runtime: PodRuntime, container: ContainerRuntime) -> None:
        pending = []
        for prober, future in container.futures:
            if not future.done():
                pending.append((prober, future))
                continue
            prober.record(bool(future.result()))
            if prober in (container.liveness, container.startup) and prober.failed and container.process is not None:
                which = "liveness" if prober is container.liveness else "startup"
                log.info("%s/%s: %s probe failed, restarting", runtime.key, container.name, which)
                self.stop_container(runtime, container, grace=self.grace(runtime))
        container.futures = pending

    # --- termination -------------------------------------------------------------------------------

    def grace(self, runtime: PodRuntime) -> float:
        meta, spec = runtime.pod["metadata"], runtime.pod.get("spec") or {}
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        return float(value)

    def begin_stop(self, runtime: PodRuntime) -> None:
        grace = self.grace(runtime)
        runtime.stop_deadline = time.monotonic() + grace
        log.info("%s: deleted; stopping with a %.0fs grace period", runtime.key, grace)
        for container in runtime.containers:
            container.next_start = float("inf")
            if container.process is None:
                container.done = True
            else:
                self.stop_container(runtime, container, grace)

    def stop_container(self, runtime: PodRuntime, container: ContainerRuntime, grace: float) -> None:
        """The preStop hook (in a worker thread, bounded by the grace period), then SIGTERM."""
        process = container.process
        if process is None or process.term_sent_at is not None:
            return
        hook = ((container.spec.get("lifecycle") or {}).get("preStop")) or {}

        def run() -> None:
            try:
                run_hook(hook, container, runtime.ip, grace)
            finally:
                process.terminate()

        if hook:
            self.stopper_pool.submit(run)
        else:
            process.terminate()
        if not runtime.deleting:
            # A probe-driven restart: SIGKILL after the grace period even though the pod stays.
            deadline = time.monotonic() + grace
            threading.Timer(grace, lambda: process.kill() if process.popen.poll() is None else None).start()
            log.debug("%s/%s: kill deadline %.1f", runtime.key, container.name, deadline)

    # --- status ------------------------------------------------------------------------------------

    def report(self, runtime: PodRuntime) -> None:
        status = runtime.status()
        if status == runtime.posted:
            return
        meta = runtime.pod["metadata"]
        try:
            self.api.patch_pod_status(meta["namespace"], meta["name"], status)
        except ApiException as exc:
            if exc.status != 404:
                raise
        runtime.posted = status


def run_hook(hook: Mapping[str, Any], container: ContainerRuntime, pod_ip: str, timeout: float) -> None:
    """A lifecycle handler: sleep, exec or httpGet (its failure only gets logged, as kubelet does)."""
    import subprocess

    if "sleep" in hook:
        time.sleep(min(float(hook["sleep"].get("seconds", 0)), timeout))
    elif "exec" in hook:
        try:
            subprocess.run(hook["exec"]["command"], env=container.env, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("%s: preStop exec failed: %s", container.name, exc)
    elif "httpGet" in hook:
        check({**hook, "timeoutSeconds": timeout}, container.spec, pod_ip, container.env)
