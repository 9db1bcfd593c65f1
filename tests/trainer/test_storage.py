"""Storage as the trainer uses it: pvc:// under the claim mount, atomic replacement, write probes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem import storage
from tandem.trainer.checkpoint import CheckpointStore
from tandem.trainer.failures import OutputUnwritable
from tandem.trainer.publish import check_output_writable


def test_pvc_uris_are_written_under_the_claim_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_PVC_ROOT", str(tmp_path))
    check_output_writable("pvc://models/digits")
    CheckpointStore("pvc://models/digits/checkpoints").save(3, {"step": 3})
    assert (tmp_path / "models" / "digits" / "checkpoints" / "latest.json").is_file()
    assert [p.name for p in (tmp_path / "models" / "digits").iterdir()] == ["checkpoints"], "probe left behind"


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.json"
    storage.write_bytes_atomic(f"file://{target}", b"first version, longer")
    storage.write_bytes_atomic(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_a_pvc_uri_without_a_claim_is_refused_as_unwritable() -> None:
    with pytest.raises(OutputUnwritable, match="claim"):
        check_output_writable("pvc:///no-claim")


def test_reading_a_missing_file_says_not_found_rather_than_unreachable(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageNotFound):
        storage.read_bytes(f"file://{tmp_path}/absent")
