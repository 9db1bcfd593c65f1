"""The canary's request figures, read from its servers' own /metrics (tandem.server.metrics).

Each canary pod counts from its start, so the sum over the canary's pods is what the canary has served;
no Prometheus is needed. p99 comes from the summed latency histogram, interpolated within its bucket as
PromQL's histogram_quantile does.
"""

from __future__ import annotations

import logging
import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

from tandem.build.serving import METRICS_PORT
from tandem.canary import CanaryMetrics

log = logging.getLogger(__name__)

REQUESTS = "tandem_inference_requests"
LATENCY = "tandem_inference_request_duration_seconds"
SCRAPE_TIMEOUT_SECONDS = 2.0


def parse(texts: Iterable[str]) -> CanaryMetrics:
    """Requests, server errors (5xx) and p99 latency summed over the expositions of several servers."""
    requests = errors = 0
    buckets: dict[float, float] = defaultdict(float)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{REQUESTS}_total":
                    requests += int(sample.value)
                    if sample.labels.get("code", "").startswith("5"):
                        errors += int(sample.value)
                elif sample.name == f"{LATENCY}_bucket":
                    buckets[float(sample.labels["le"])] += sample.value
    return CanaryMetrics(requests=requests, errors=errors, p99_latency_ms=quantile(0.99, buckets))


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile, in milliseconds, of cumulative buckets {upper bound in seconds: count}; None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000  # above the highest finite bucket: its bound, as histogram_quantile does
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, count
    return lower * 1000


def scrape(pod_ips: Iterable[str]) -> CanaryMetrics | None:
    """The canary's figures from each pod's metrics port; None when any pod cannot be read."""
    texts = []
    for ip in pod_ips:
        url = f"http://{ip}:{METRICS_PORT}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
                texts.append(response.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.info("canary metrics at %s could not be read: %s", url, exc)
            return None
    return parse(texts)
