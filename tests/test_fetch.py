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


_BUILD_SLOWLY = """
import sys, time
from pathlib import Path
from edgeq.fetch import cached_step

def build(tmp):
    with open(sys.argv[2], "a") as log:
        log.write("start\\n")
    # Build until the other process has arrived (and then some), so that it finds this one building.
    deadline = time.time() + 30
    while Path(sys.argv[2]).read_text().count("arrived") < 2 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    (tmp / "file").write_text("x")
    with open(sys.argv[2], "a") as log:
        log.write("end\\n")

lines = []
with open(sys.argv[2], "a") as log:
    log.write("arrived\\n")
cached_step(Path(sys.argv[1]), "v1", build, lines.append)
print(lines[0])
"""


def test_two_processes_setting_up_one_step_take_turns(tmp_path):
    """Two test workers (or two terminals) on a fresh machine: one builds, the other waits for it and
    finds the step done, instead of both building and replacing each other's folder."""
    import subprocess
    import sys

    builds = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SLOWLY, str(tmp_path / "step"), str(builds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    firsts = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert builds.read_text().replace("arrived\n", "") == "start\nend\n"  # built once, never twice at once
    assert firsts == ["step: setting up …", "step: waiting for another edgeq process that is setting it up …"]
    assert (tmp_path / "step" / "file").read_text() == "x"
