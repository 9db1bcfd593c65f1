"""A run that starts while no other is in progress gets a thread per CPU; overlapping runs one thread each.

Explicit --threads are what every run gets, and a GPU session stays the only session.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from support.clock import Clock
from tandem import cgroup
from tandem.server import model as model_module
from tandem.server.config import ServerConfig
from tandem.server.dataplane import DataPlane
from tandem.server.lonerun import HOLD_S, LoneRunSessions
from tandem.server.model import OnnxModel, SessionSettings

NARROW, WIDE = object(), object()


def test_a_run_alone_gets_the_wide_session() -> None:
    sessions = LoneRunSessions(NARROW, WIDE)
    with sessions.session() as session:
        assert session is WIDE


def test_a_run_that_starts_while_another_is_in_progress_gets_the_narrow_session() -> None:
    sessions = LoneRunSessions(NARROW, WIDE)
    with sessions.session() as first, sessions.session() as second, sessions.session() as third:
        assert (first, second, third) == (WIDE, NARROW, NARROW)
        assert sessions.running == 3
    assert sessions.running == 0


def test_a_run_while_another_request_is_admitted_gets_the_narrow_session() -> None:
    admitted, clock = 2, Clock()  # this run's request and one being decoded or waiting for a run
    sessions = LoneRunSessions(NARROW, WIDE, lambda: admitted, clock)
    with sessions.session() as session:
        assert session is NARROW
    admitted, clock.now = 1, clock.now + HOLD_S
    with sessions.session() as session:
        assert session is WIDE


def test_runs_stay_narrow_for_a_moment_after_a_request_ran_beside_another() -> None:
    """Under gRPC load the next calls wait inside grpcio, unseen: a gap between two runs is not idleness."""
    admitted, clock = 2, Clock()
    sessions = LoneRunSessions(NARROW, WIDE, lambda: admitted, clock)
    crowded_at = clock.now
    with sessions.session():
        pass
    admitted = 1
    for step in (0.25, 0.5, 0.9):
        clock.now = crowded_at + HOLD_S * step
        with sessions.session() as session:
            assert session is NARROW
    clock.now = crowded_at + HOLD_S
    with sessions.session() as session:
        assert session is WIDE


def test_a_lone_client_keeps_the_wide_session_run_after_run() -> None:
    clock = Clock()
    sessions = LoneRunSessions(NARROW, WIDE, lambda: 1, clock)
    for _ in range(5):
        clock.now += 0.001
        with sessions.session() as session:
            assert session is WIDE


def test_runs_outside_any_request_do_not_hold_the_next_request_narrow() -> None:
    """The load-time warm-up runs once alone and once beside itself, with no request admitted."""
    admitted, clock = 0, Clock()
    sessions = LoneRunSessions(NARROW, WIDE, lambda: admitted, clock)
    with sessions.session(), sessions.session() as second:
        assert second is NARROW
    admitted = 1
    with sessions.session() as session:
        assert session is WIDE


def test_the_data_plane_tells_its_models_the_requests_it_admitted(model_dir: Path) -> None:
    dataplane = DataPlane(ThreadPoolExecutor(1))
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
    dataplane.add(model)
    dataplane.in_flight = 3
    assert model.requests_admitted() == 3


def test_the_server_idle_again_gives_the_next_run_the_wide_session() -> None:
    sessions = LoneRunSessions(NARROW, WIDE)
    with sessions.session(), sessions.session():
        pass
    with sessions.session() as session:
        assert session is WIDE


def test_a_run_that_fails_is_no_longer_counted() -> None:
    sessions = LoneRunSessions(NARROW, WIDE)
    with pytest.raises(RuntimeError), sessions.session():
        raise RuntimeError("the model failed")
    assert sessions.running == 0


def test_without_a_wide_session_every_run_gets_the_narrow_one() -> None:
    sessions = LoneRunSessions(NARROW)
    with sessions.session() as first, sessions.session() as second:
        assert (first, second) == (NARROW, NARROW)


def test_runs_counted_from_many_threads_end_at_zero() -> None:
    sessions = LoneRunSessions(NARROW, WIDE)

    def hammer() -> None:
        for _ in range(2000):
            with sessions.session():
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sessions.running == 0


class Recording:
    """A session wrapper that records that a run went through it."""

    def __init__(self, session: Any, runs: list[str], name: str) -> None:
        self.session, self.runs, self.name = session, runs, name

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs.append(self.name)
        return self.session.run(*args, **kwargs)


def intra_op_threads(session: Any) -> int:
    return int(session.get_session_options().intra_op_num_threads)


def load(model_dir: Path, settings: SessionSettings) -> OnnxModel:
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri(), session=settings)
    model.load()
    return model


def test_the_model_opens_a_wide_cpu_session_for_lone_runs(model_dir: Path) -> None:
    model = load(model_dir, SessionSettings(intra_op_threads=1, lone_run_threads=2))
    assert model.sessions is not None and model.sessions.wide is not None
    assert (intra_op_threads(model.sessions.narrow), intra_op_threads(model.sessions.wide)) == (1, 2)


def test_predict_runs_alone_on_the_wide_session_and_beside_another_on_the_narrow_one(model_dir: Path) -> None:
    model = load(model_dir, SessionSettings(intra_op_threads=1, lone_run_threads=2))
    assert model.sessions is not None
    runs: list[str] = []
    model.sessions.narrow = Recording(model.sessions.narrow, runs, "narrow")
    model.sessions.wide = Recording(model.sessions.wide, runs, "wide")
    feeds = {"input": np.ones((1, 4), dtype=np.float32)}
    lone = model.predict(feeds, None)
    with model.sessions.session():  # another run in progress
        beside = model.predict(feeds, None)
    model.requests_admitted = lambda: 2  # another request admitted
    model.predict(feeds, None)
    assert runs == ["wide", "narrow", "narrow"]
    np.testing.assert_array_equal(lone[0], beside[0])


@pytest.mark.parametrize("lone_run_threads", [0, 1])
def test_lone_runs_off_or_no_wider_keep_one_session(model_dir: Path, lone_run_threads: int) -> None:
    model = load(model_dir, SessionSettings(intra_op_threads=1, lone_run_threads=lone_run_threads))
    assert model.sessions is not None and model.sessions.wide is None


def test_a_gpu_session_stays_the_only_session(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_open = OnnxModel._open

    def counting_open(self: OnnxModel, data: bytes, threads: int, provider: Any) -> Any:
        opened.append(threads)
        return real_open(self, data, threads, provider)

    monkeypatch.setattr(OnnxModel, "_open", counting_open)
    monkeypatch.setattr(model_module, "running_provider", lambda session: "cuda")
    model = load(model_dir, SessionSettings(intra_op_threads=1, lone_run_threads=2))
    assert opened == [1]
    assert model.sessions is not None and model.sessions.wide is None


@pytest.mark.parametrize(
    ("threads", "cores", "lone"),
    [
        (None, 2, 2),  # the default: a lone run takes every core
        (None, 8, 8),
        (None, 1, 0),  # one core: nothing to widen to
        (1, 2, 0),  # explicit threads are what every run gets
        (2, 2, 0),
    ],
)
def test_lone_runs_get_every_core_unless_threads_are_given(threads: int | None, cores: int, lone: int) -> None:
    assert cgroup.lone_run_threads(threads, cores) == lone


def serve_config(monkeypatch: pytest.MonkeyPatch, *flags: str) -> ServerConfig:
    """The ServerConfig `tandem serve` builds from these flags on a 2-CPU container (nothing is served)."""
    from tandem.server import app, cli, logs

    seen: list[ServerConfig] = []

    class Captured:
        def __init__(self, config: ServerConfig) -> None:
            seen.append(config)

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(cgroup, "default_threads", lambda: 2)
    monkeypatch.setattr(app, "InferenceServer", Captured)
    monkeypatch.setattr(cli, "_install_loop", lambda: None)
    monkeypatch.setattr(cli, "_raise_open_files_limit", lambda: None)
    monkeypatch.setattr(logs, "configure_logging", lambda level: None)
    result = CliRunner().invoke(cli.serve, ["--model-name", "m", "--model-uri", "file:///m.onnx", *flags])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_serve_defaults_to_one_thread_per_run_and_every_core_for_a_lone_run(monkeypatch: pytest.MonkeyPatch) -> None:
    config = serve_config(monkeypatch)
    assert (config.threads, config.workers, config.lone_run_threads) == (1, 2, 2)


@pytest.mark.parametrize(
    ("flags", "sized"),
    [
        (("--threads", "1", "--workers", "2"), (1, 2, 0)),
        (("--threads", "2", "--workers", "2"), (2, 2, 0)),
        (("--threads", "2"), (2, 1, 0)),
        (("--workers", "1"), (1, 1, 2)),  # threads not given: a lone run still gets every core
    ],
)
def test_serve_honours_explicit_threads_and_workers_exactly(
    monkeypatch: pytest.MonkeyPatch, flags: tuple[str, ...], sized: tuple[int, int, int]
) -> None:
    config = serve_config(monkeypatch, *flags)
    assert (config.threads, config.workers, config.lone_run_threads) == sized


def test_the_server_opens_its_model_with_the_lone_run_threads_it_was_given() -> None:
    from tandem.server.app import InferenceServer

    server = InferenceServer(ServerConfig("m", "file:///m.onnx", threads=1, workers=2, lone_run_threads=2))
    try:
        assert (server.model.settings.intra_op_threads, server.model.settings.lone_run_threads) == (1, 2)
    finally:
        server.executor.shutdown()
