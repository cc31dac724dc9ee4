"""Cached fetch steps: atomic, skipped when done; failures read as one line."""

from __future__ import annotations

import pytest

from edgeq.errors import EdgeqError
from edgeq.fetch import building, cached_step, run


def test_an_interrupted_step_leaves_nothing(tmp_path):
    final = tmp_path / "sysroot"
    with pytest.raises(KeyboardInterrupt):
        with building(final, "key") as tmp:
            (tmp / "half-written").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with building(final, "key") as tmp:
        (tmp / "done").write_text("x")
    assert sorted(p.name for p in final.iterdir()) == [".edgeq-step.json", "done"]


def test_a_done_step_is_skipped_and_a_new_key_rebuilds(tmp_path):
    built: list[str] = []

    def build(tmp):
        built.append(tmp.name)
        (tmp / "file").write_text("x")

    cached_step(tmp_path / "step", "v1", build, lambda _: None)
    cached_step(tmp_path / "step", "v1", build, lambda _: None)
    assert len(built) == 1
    cached_step(tmp_path / "step", "v2", build, lambda _: None)
    assert len(built) == 2


def test_a_failing_command_is_one_line_naming_what_failed():
    with pytest.raises(EdgeqError) as e:
        run(["sh", "-c", "echo 'E: Unable to locate package nope' >&2; exit 100"], "download nope", "android")
    assert str(e.value).startswith("android: could not download nope (E: Unable to locate package nope)")
    assert "\n" not in str(e.value)
    with pytest.raises(EdgeqError, match="no-such-tool is not installed"):
        run(["no-such-tool"], "run it", "android")
