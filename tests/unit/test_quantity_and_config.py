from __future__ import annotations

from decimal import Decimal

import pytest

from tandem.config import OperatorConfig
from tandem.quantity import format_cpu, format_memory, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        (2, Decimal(2)),
        ("1.5", Decimal("1.5")),
        (".5", Decimal("0.5")),
        ("2Gi", Decimal(2 * 2**30)),
        ("128Mi", Decimal(128 * 2**20)),
        ("1k", Decimal(1000)),
        ("1M", Decimal(10**6)),
        ("1e3", Decimal(1000)),
        ("1E", Decimal(10**18)),
        ("250u", Decimal("0.00025")),
        ("3n", Decimal("3e-9")),
        ("1Ei", Decimal(2**60)),
        (" 4 ", Decimal(4)),
    ],
)
def test_parse_quantity(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Xi", "1.2.3", ".", "--1", "1 Gi"])
def test_parse_quantity_refuses_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(("cores", "text"), [("4", "4"), ("0.5", "500m"), ("7.25", "7250m"), ("0", "0")])
def test_format_cpu(cores: str, text: str) -> None:
    assert format_cpu(Decimal(cores)) == text


@pytest.mark.parametrize(("num_bytes", "text"), [(2**31, "2Gi"), (3 * 2**20, "3Mi"), (1000, "1000"), (0, "0")])
def test_format_memory(num_bytes: int, text: str) -> None:
    assert format_memory(Decimal(num_bytes)) == text


def test_format_memory_round_trips_through_parse() -> None:
    assert parse_quantity(format_memory(parse_quantity("1536Mi"))) == parse_quantity("1536Mi")


def test_config_defaults_from_an_empty_environment() -> None:
    config = OperatorConfig.from_env({})
    assert config == OperatorConfig()
    assert config.namespaces == ()


def test_config_reads_every_setting_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {
            "TANDEM_NAMESPACES": "ml, serving ,",
            "TANDEM_TRAINER_IMAGE": "t:1",
            "TANDEM_SERVER_IMAGE": "s:1",
            "TANDEM_CLUSTER_DOMAIN": "k8s.local",
            "TANDEM_POD_LABELS": "team=ml,cost-center=42,broken",
        }
    )
    assert config.namespaces == ("ml", "serving")
    assert (config.trainer_image, config.server_image) == ("t:1", "s:1")
    assert config.cluster_domain == "k8s.local"
    assert config.extra_pod_labels == {"team": "ml", "cost-center": "42"}


def test_pod_label_values_may_contain_equals_signs() -> None:
    assert OperatorConfig.from_env({"TANDEM_POD_LABELS": "a=b=c"}).extra_pod_labels == {"a": "b=c"}
