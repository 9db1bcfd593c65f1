"""A TCP forwarder on 127.0.0.1 that can stop answering: the hung API server of the fault tests.

`Blackhole(target)` forwards every connection to `target` (TLS passes through untouched, so clients still
verify the real API server's certificate). After `hang()`, connections are still accepted, but nothing
travels in either direction: exactly what a client sees of an API server that is stuck or SIGSTOPped, or of
a network that drops packets. `heal()` closes the stuck connections (clients see a reset) and forwards again.
Without a target it is the plainest hung server: it accepts and never answers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import yaml


class Blackhole:
    def __init__(self, target: tuple[str, int] | None = None) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.hung = threading.Event()
        if target is None:
            self.hung.set()
        self._stuck: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="blackhole-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def hang(self) -> None:
        self.hung.set()

    def heal(self) -> None:
        with self._lock:
            self.hung.clear()
            stuck, self._stuck = self._stuck, []
        for sock in stuck:
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self.heal()

    def _park(self, *socks: socket.socket) -> None:
        with self._lock:
            self._stuck.extend(socks)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.hung.is_set() or self.target is None:
                self._park(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if self.hung.is_set():
                self._park(src, dst)  # what arrived is never delivered; the sockets stay open until heal()
                return
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def kubeconfig_through(kubeconfig: Path, proxy: Blackhole, out: Path) -> Path:
    """A copy of `kubeconfig` whose cluster is reached through `proxy`."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = proxy.url
    out.write_text(yaml.safe_dump(config))
    return out


def api_server(kubeconfig: Path) -> tuple[str, int]:
    """(host, port) of the API server a kubeconfig names."""
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rstrip("/").rpartition(":")
    return host, int(port)
