"""Intra-op threads follow the container's CPU limit, not the node's core count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem import cgroup


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("200000 100000\n", 2.0), ("150000 100000", 1.5), ("max 100000\n", None), ("50000", 0.5), ("", None)],
)
def test_cpu_max_v2_is_quota_over_period(text: str, cpus: float | None) -> None:
    assert cgroup.parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"), [("400000", "100000", 4.0), ("-1", "100000", None), ("x", "1", None)]
)
def test_cfs_quota_v1_is_quota_over_period_and_minus_one_is_unlimited(
    quota: str, period: str, cpus: float | None
) -> None:
    assert cgroup.parse_cfs(quota, period) == cpus


def test_threads_round_a_fractional_limit_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "available_cpus", lambda: 16)
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup.default_threads(tmp_path) == 2


def test_threads_never_exceed_usable_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "available_cpus", lambda: 2)
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert cgroup.default_threads(tmp_path) == 2


def test_threads_read_cgroup_v1_when_there_is_no_v2_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "available_cpus", lambda: 8)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup.default_threads(tmp_path) == 3


def test_threads_without_a_limit_use_every_usable_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "available_cpus", lambda: 6)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup.default_threads(tmp_path) == 6
    assert cgroup.default_threads(tmp_path / "missing") == 6


@pytest.mark.parametrize(
    ("threads", "workers", "cores", "sized"),
    [
        (None, None, 2, (1, 2)),  # one single-threaded run per core: the fastest under load
        (None, None, 1, (1, 1)),
        (2, None, 2, (2, 1)),  # threads take the cores: one run in flight
        (3, None, 8, (3, 2)),
        (8, None, 2, (8, 1)),  # never fewer than one run
        (None, 5, 2, (1, 5)),  # what is given is kept
        (4, 3, 2, (4, 3)),
    ],
)
def test_threads_times_runs_in_flight_fill_the_cores(
    threads: int | None, workers: int | None, cores: int, sized: tuple[int, int]
) -> None:
    assert cgroup.sized_runtime(threads, workers, cores) == sized


@pytest.mark.parametrize(
    ("text", "limit"),
    [("536870912\n", 512 << 20), ("max\n", None), ("9223372036854771712\n", None), ("0", None), ("", None)],
)
def test_memory_limit_is_bytes_and_max_or_v1s_huge_value_is_none(text: str, limit: int | None) -> None:
    assert cgroup.parse_memory_limit(text) == limit


def test_the_memory_budget_is_half_the_cgroup_v2_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("1073741824\n")
    assert cgroup.default_memory_budget(tmp_path) == 512 << 20


def test_the_memory_budget_reads_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("2147483648\n")
    assert cgroup.default_memory_budget(tmp_path) == 1 << 30


def test_without_a_memory_limit_the_budget_is_half_the_machines_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroup, "physical_memory", lambda: 8 << 30)
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup.default_memory_budget(tmp_path) == 4 << 30
    assert cgroup.default_memory_budget(tmp_path / "absent") == 4 << 30
