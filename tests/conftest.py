"""Shared fixtures: one real export of the built-in model (through the installed `edgeq` command),
reused by the tests that read its artifacts and manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgeq.cli import main
from edgeq.fetch import locked

# The console script of the interpreter running the tests (its venv's bin/ may not be on PATH).
_BESIDE = Path(sys.executable).parent / "edgeq"
EDGEQ = str(_BESIDE) if _BESIDE.exists() else shutil.which("edgeq")


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder all test workers of this run share (pytest-xdist gives each worker its own basetemp,
    one level below it); the session's own basetemp when the tests run in one process."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def builtin_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """`edgeq export --target arm64 --out DIR --json` on the built-in default, as a user runs it: once
    per run, whichever worker asks first; the others wait for it and read the same folder."""
    assert EDGEQ, "the edgeq console script is not installed: pip install -e ."
    root = shared_root(tmp_path_factory) / "builtin"
    out, done = root / "dist", root / "export.json"
    args = [EDGEQ, "export", "--target", "arm64", "--out", str(out), "--json"]
    with locked(root.with_name("builtin.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed here before
            root.mkdir()
            proc = subprocess.run(args, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done.write_text(json.dumps({"stdout": proc.stdout, "stderr": proc.stderr}))
    run = json.loads(done.read_text())
    return json.loads(run["stdout"]), out, subprocess.CompletedProcess(args, 0, run["stdout"], run["stderr"])


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


# The modules that take longest, longest first (measured with --durations=0, summed per file). The
# README's test command runs the suite in two pytest-xdist workers, a module at a time each
# (--dist loadscope, in this order): a long module started last would leave one core idle at the end.
LONGEST_FIRST = ("tests/quantize/test_pretrained.py", "tests/quantize/test_budget.py", "tests/test_qat.py",
                 "tests/test_pipeline.py", "tests/quantize/test_dynamic.py", "tests/test_tensor_models.py",
                 "tests/test_validate.py",
                 "tests/export/test_pte.py", "tests/quantize/test_weights.py", "tests/test_hostile_input.py",
                 "tests/test_apk.py", "tests/export/test_onnx.py", "tests/test_cli.py", "tests/test_config.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    root = Path(__file__).resolve().parent.parent
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))  # stable
