"""Soak: `tandem serve` under concurrent load for a few minutes, on loopback only.

Starts the server on a tiny ONNX model (tests/support/server_models.py), drives it with N client threads
sending V2 infer requests (keep-alive connections) for --seconds, and reports requests served, errors
(anything but 200, or a connection failure: must be 0) and the server's resident memory at the start, the
middle and the end (flat means no leak). Not a test.

    PYTHONPATH=operator:tests python benchmarks/server_soak.py --seconds 180 --clients 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from support import server_models, server_procs
from support.cluster import stop_process

BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def client(port: int, stop: threading.Event, counts: dict[str, int], lock: threading.Lock) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ok = errors = 0
    while not stop.is_set():
        try:
            connection.request(
                "POST", "/v2/models/linear/infer", body=BODY, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.close()
    with lock:
        counts["ok"] += ok
        counts["errors"] += errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tandem-soak-"))
    model = server_models.linear_model(folder / "linear.onnx")
    with (folder / "server.log").open("wb") as log:  # a file, not a pipe: an unread pipe blocks the server
        server, port = server_procs.start(model, output=log)
    try:
        server_procs.wait_ready(server, port)
        counts = {"ok": 0, "errors": 0}
        lock, stop = threading.Lock(), threading.Event()
        threads = [threading.Thread(target=client, args=(port, stop, counts, lock)) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        time.sleep(min(10.0, args.seconds / 10))  # warm-up: memory after the first requests, not before
        samples = [("start", rss_mib(server.pid))]
        time.sleep(args.seconds / 2)
        samples.append(("middle", rss_mib(server.pid)))
        time.sleep(args.seconds / 2)
        samples.append(("end", rss_mib(server.pid)))
        stop.set()
        for thread in threads:
            thread.join()
        alive = server.poll() is None
    finally:
        stop_process(server)
    total = counts["ok"] + counts["errors"]
    print(f"| soak: {args.clients} clients, {args.seconds:.0f} s | value |")
    print("|---|---|")
    print(f"| requests | {total} ({counts['ok'] / args.seconds:.0f}/s ok) |")
    print(f"| errors (non-200 or connection) | {counts['errors']} |")
    print(f"| server alive at the end | {alive} |")
    print("| RSS start / middle / end | " + " / ".join(f"{mib:.1f} MiB" for _, mib in samples) + " |")
    if counts["errors"] or not alive:
        sys.exit(1)


if __name__ == "__main__":
    main()
