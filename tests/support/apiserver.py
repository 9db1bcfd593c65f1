"""What the API server itself counts: requests by verb and resource, from its /metrics.

Tests that claim "no writes" or "no lists" measure them here, not from the operator's own counters.
"""

from __future__ import annotations

from collections import Counter

from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families


def requests(api: k8s.ApiClient) -> Counter[tuple[str, str, str]]:
    """apiserver_request_total by (verb, resource, subresource), scraped from the API server's /metrics."""
    response = api.call_api(*api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    text = response.read().decode()
    counts: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                labels = sample.labels
                counts[(labels["verb"], labels.get("resource", ""), labels.get("subresource", ""))] += int(sample.value)
    return counts
