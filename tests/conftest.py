"""Shared fixtures: one real export of the built-in model (through the installed `edgeq` command),
reused by the tests that read its artifacts and manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgeq.cli import main

# The console script of the interpreter running the tests (its venv's bin/ may not be on PATH).
_BESIDE = Path(sys.executable).parent / "edgeq"
EDGEQ = str(_BESIDE) if _BESIDE.exists() else shutil.which("edgeq")


@pytest.fixture(scope="session")
def builtin_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """`edgeq export --target arm64 --out DIR --json` on the built-in default, as a user runs it."""
    out = tmp_path_factory.mktemp("builtin") / "dist"
    assert EDGEQ, "the edgeq console script is not installed: pip install -e ."
    proc = subprocess.run([EDGEQ, "export", "--target", "arm64", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out, proc


@pytest.fixture(scope="session")
def emulated_target():
    """The emulated aarch64 target, set up in EDGEQ_CACHE (~/.cache/edgeq) on first use, as users do."""
    from edgeq.qemu.provision import setup

    return setup()


def run_cli(*args: str) -> Result:
    """The CLI in-process (no new interpreter per call: torch imports once)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_user_error(result: Result, *needles: str) -> str:
    """Exit code ≠ 0, one line on stderr naming the problem, no traceback."""
    assert result.exit_code != 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeq: error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(parent: Path, out_name: str = "dist") -> None:
    assert not (parent / out_name).exists()
    leftovers = [p.name for p in parent.iterdir() if ".edgeq-" in p.name]
    assert not leftovers, leftovers


ANDROID_DEMO = Path(__file__).resolve().parent.parent / "android_demo"


def copy_demo_app(dest: Path) -> Path:
    """A copy of android_demo/ without build output or assets, as a fresh checkout has it."""
    shutil.copytree(ANDROID_DEMO, dest, ignore=shutil.ignore_patterns("build", ".gradle", "assets"))
    return dest


@pytest.fixture(scope="session")
def installed_demo(builtin_export, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(app folder, export folder, CLI output) after `edgeq android DIST APP` on the built-in export."""
    _, dist, _ = builtin_export
    app = copy_demo_app(tmp_path_factory.mktemp("android") / "android_demo")
    proc = subprocess.run([EDGEQ, "android", str(dist), str(app)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return app, dist, proc.stdout
