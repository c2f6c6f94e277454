"""built_once: one build per content, complete or absent, even when threads race."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestration.retrieval import built_once, fingerprint


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    builds: list[int] = []
    gate = threading.Barrier(4)
    results: list[Path] = []

    def build(directory: Path) -> None:
        builds.append(1)
        (directory / "data.txt").write_text("built")

    def call() -> None:
        gate.wait()
        results.append(built_once(tmp_path, "key1", build))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert set(results) == {tmp_path / "key1"}
    assert (tmp_path / "key1" / "data.txt").read_text() == "built"


def test_a_failed_build_leaves_nothing_and_is_tried_again(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        (directory / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        built_once(tmp_path, "key2", broken)
    assert not (tmp_path / "key2").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert built_once(tmp_path, "key2", lambda d: (d / "ok").write_text("y")).is_dir()


def test_fingerprints_are_stable_and_tell_contents_apart() -> None:
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint("x")) == 16
