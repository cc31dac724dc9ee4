"""Hostile and careless input: names from manifests, target files and flags never lead outside
their folder; no user file is replaced or deleted; signals and crashes leave nothing behind; user
mistakes read as one line, bugs say they are bugs. Real files, real processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EDGEQ, assert_nothing_written, assert_user_error, copy_demo_app, run_cli
from edgeq.fetch import cached_step
from edgeq.paths import remove_stale

DEAD_PID = 4_000_000  # above pid_max's largest allowed value (2^22): never a live process


def _copy_export(builtin_export, dest: Path) -> Path:
    _, dist, _ = builtin_export
    shutil.copytree(dist, dest)
    return dest


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _target_file(path: Path, name: object, thresholds: str = "min_sqnr_db = 15.0", **fields: object) -> Path:
    """A host target file (x86_64); `fields` replace or add top-level keys (JSON values are TOML values)."""
    fields = {"name": name, "arch": "x86_64", "backend": "x86", "runtimes": ["pte", "onnx", "ptl"], **fields}
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()) + f"[thresholds]\n{thresholds}\n")
    return path


def _descendants(pid: int) -> list[int]:
    """Live descendants of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- 1-3: paths built from data -----------------------------------------------------------------

def test_manifest_precision_with_a_path_is_refused_and_nothing_is_written_outside(builtin_export, tmp_path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    pwn = tmp_path / "x" / "PWN"
    _edit_manifest(dist, lambda d: d["artifacts"][0].update(precision=f"../../../..{pwn}"))
    r = run_cli("validate", str(dist), "--target", "x86_64", "-q")
    assert_user_error(r, "artifacts[0]", "unknown artifact")
    assert not (tmp_path / "x").exists()
    assert not list(Path(tempfile.gettempdir()).glob("x/PWN*"))


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.pte"])
def test_manifest_artifact_path_outside_the_folder_is_refused(builtin_export, tmp_path, path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    _edit_manifest(dist, lambda d: d["artifacts"][0].update(path=path))
    assert_user_error(run_cli("validate", str(dist), "--target", "x86_64", "-q"), "not a plain file name")
    app = copy_demo_app(tmp_path / "app")
    assert_user_error(run_cli("android", str(dist), str(app)), "not a plain file name")
    assert not (app / "app" / "src" / "main" / "assets").exists()


def test_an_artifact_that_is_a_link_out_of_the_folder_is_refused(builtin_export, tmp_path):
    """A plain name can still be a symlink: the resolved file must stay in the folder."""
    dist = _copy_export(builtin_export, tmp_path / "dist")
    secret = tmp_path / "secret.pte"
    secret.write_bytes(b"not yours")
    pte = json.loads((dist / "manifest.json").read_text())["artifacts"][0]["path"]
    (dist / pte).unlink()
    (dist / pte).symlink_to(secret)
    assert_user_error(run_cli("validate", str(dist), "--target", "x86_64", "-q"), "points outside")


@pytest.mark.parametrize("name", ["../victim", "/tmp/victim", "a/b", "..", "[bold]x[/]", ""])
def test_target_name_must_be_a_plain_name(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    toml = _target_file(tmp_path / "evil.toml", name)
    r = run_cli("farm", "--out", str(tmp_path / "farm"), "--targets", str(toml), "-q")
    assert_user_error(r, "target name", "plain")
    assert (victim / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "farm").exists()


@pytest.mark.parametrize("fields, needle", [
    ({"runtimes": "pte"}, "runtimes: must be a list"),
    ({"qemu_cpu": 3}, "qemu_cpu: must be text"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"name": 5}, "name: must be text"),
    ({"thresholds": 'min_sqnr_db = "high"'}, "thresholds.min_sqnr_db: must be a finite number"),
    ({"thresholds": "min_sqnr = 3.0"}, "unknown key 'min_sqnr'"),
])
def test_target_file_with_wrong_types_is_one_line(tmp_path, fields, needle):
    toml = _target_file(tmp_path / "t.toml", **{"name": "mine", **fields})
    assert_user_error(run_cli("export", "--target", str(toml), "--out", str(tmp_path / "dist")), needle)
    assert not (tmp_path / "dist").exists()


# --- 4-5: user files are never replaced or deleted ----------------------------------------------

def test_export_refuses_a_folder_with_user_files_and_keeps_them(builtin_export, tmp_path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    (dist / "notes.txt").write_text("my notes")
    (dist / "calib").mkdir()
    (dist / "calib" / "a.png").write_bytes(b"png")
    r = run_cli("export", "--out", str(dist), "--formats", "onnx", "--precisions", "fp32", "-q")
    assert_user_error(r, "holds files edgeq did not write", "calib", "notes.txt")
    assert (dist / "notes.txt").read_text() == "my notes" and (dist / "calib" / "a.png").is_file()


@pytest.mark.parametrize("option", ["--calib-data", "--eval-data", "--weights", "--train-data"])
def test_export_refuses_inputs_inside_the_output_folder(tmp_path, option):
    out = tmp_path / "dist"
    (out / "images" / "cats").mkdir(parents=True)
    r = run_cli("export", option, str(out / "images"), "--out", str(out), "-q")
    assert_user_error(r, option, "inside --out")
    assert (out / "images" / "cats").is_dir()


def test_android_keeps_the_users_assets(builtin_export, tmp_path):
    _, dist, _ = builtin_export
    app = copy_demo_app(tmp_path / "app")
    assets = app / "app" / "src" / "main" / "assets"
    (assets / "fonts").mkdir(parents=True)
    (assets / "fonts" / "mine.ttf").write_bytes(b"font")
    (assets / "terms.html").write_text("mine")
    for _ in range(2):  # the second run replaces what the first wrote
        r = run_cli("android", str(dist), str(app))
        assert r.exit_code == 0, r.output
    assert (assets / "fonts" / "mine.ttf").read_bytes() == b"font" and (assets / "terms.html").read_text() == "mine"
    owned = json.loads((assets / ".edgeq-assets.json").read_text())["files"]
    assert "model.pte" in owned and "golden/golden.json" in owned and "terms.html" not in owned
    assert not [p for p in assets.parent.iterdir() if ".edgeq-" in p.name]
    # A file of the user's where edgeq would write is refused, not replaced.
    (assets / ".edgeq-assets.json").unlink()
    assert_user_error(run_cli("android", str(dist), str(app)), "not written by edgeq android")
    assert (assets / "fonts" / "mine.ttf").is_file()


# --- 6: the output path is checked before any work ----------------------------------------------

@pytest.mark.parametrize("out", [".", "", ".."])
def test_out_that_is_or_holds_the_current_folder(tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    started = time.perf_counter()
    r = run_cli("export", "--out", out, "-q")
    assert_user_error(r, "current folder")
    assert time.perf_counter() - started < 10  # refused before loading a model, not after the work
    assert list(work.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["work"]


def test_out_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_user_error(run_cli("export", "--out", str(tmp_path / "file" / "dist"), "-q"), "not a folder")


# --- 7: signals and crashes leave no stage, no child --------------------------------------------

def test_sigterm_during_export_cleans_up(tmp_path):
    proc = subprocess.Popen([EDGEQ, "export", "--out", str(tmp_path / "dist"), "--no-validate", "-q",
                             "--formats", "onnx,pte", "--check-samples", "1000"], stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: [p for p in tmp_path.iterdir() if ".edgeq-" in p.name], 300, "the staging folder")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "edgeq: stopped by SIGTERM; nothing was written"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_stale_stages_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = tmp_path / f".dist.edgeq-{DEAD_PID}-abc"
    live = tmp_path / f".dist.edgeq-{os.getppid()}-abc"
    foreign = tmp_path / ".dist.edgeq-notapid"
    for d in (dead, live, foreign):
        d.mkdir()
    assert remove_stale(tmp_path, ".dist.edgeq-") == [dead]
    assert not dead.exists() and live.exists() and foreign.exists()


def test_android_removes_a_stage_left_by_a_killed_run(builtin_export, tmp_path):
    _, dist, _ = builtin_export
    app = copy_demo_app(tmp_path / "app")
    stale = app / "app" / "src" / "main" / f".assets.edgeq-{DEAD_PID}-x"
    stale.mkdir(parents=True)
    (stale / "model.pte").write_bytes(b"half")
    assert run_cli("android", str(dist), str(app)).exit_code == 0
    assert not stale.exists()


@pytest.mark.qemu
def test_sigterm_during_emulated_validation_ends_qemu_and_cleans_up(builtin_export, emulated_target, tmp_path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    proc = subprocess.Popen([EDGEQ, "validate", str(dist), "--target", "arm64", "--runs", "5000", "-q"],
                            stderr=subprocess.PIPE, text=True)
    qemu = _wait_for(lambda: [p for p in _descendants(proc.pid) if "qemu-aarch64" in _cmdline(p)], 300, "qemu")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    for pid in qemu:
        _wait_for(lambda: not Path(f"/proc/{pid}").exists() or "qemu" not in _cmdline(pid), 30, f"qemu {pid} to end")
    assert not list(Path(tempfile.gettempdir()).glob(f"edgeq-validate-{proc.pid}-*"))


def test_a_runner_ends_when_edgeq_is_killed(builtin_export, tmp_path):
    """SIGKILL (or a native abort) gives edgeq no chance to clean up: its runner ends by itself."""
    manifest, dist, _ = builtin_export
    onnx = next(a["path"] for a in manifest["artifacts"] if a["format"] == "onnx")
    inputs = tmp_path / "inputs.npy"
    with np.load(dist / "reference.npz") as ref:
        np.save(inputs, ref["inputs"][:1])
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"artifacts": [{"format": "onnx", "path": str(dist / onnx), "outputs": None,
                                              "result": str(tmp_path / "r.json")}],
                               "inputs": [str(inputs)], "warmup": 0, "runs": 10_000_000}))
    # A stand-in for edgeq: it names itself as the runner's parent, starts it, and is then SIGKILLed.
    parent = subprocess.Popen([sys.executable, "-c", """if True:
        import json, os, subprocess, sys, time
        job = json.load(open(sys.argv[2]))
        json.dump({**job, "parent_pid": os.getpid()}, open(sys.argv[2], "w"))
        print(subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]]).pid, flush=True)
        time.sleep(600)""", str(Path(__file__).resolve().parent.parent / "edgeq" / "runner.py"), str(job)],
                              stdout=subprocess.PIPE, text=True)
    runner = int(parent.stdout.readline())
    time.sleep(3)
    assert Path(f"/proc/{runner}").exists()  # still running its 10 M runs
    parent.kill()
    parent.wait()
    _wait_for(lambda: not Path(f"/proc/{runner}").exists() or " Z " in Path(f"/proc/{runner}/stat").read_text(),
              30, "the orphaned runner to exit")


def test_a_crashed_runner_reports_its_signal(builtin_export, tmp_path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    _edit_manifest(dist, lambda d: d.update(artifacts=[a for a in d["artifacts"] if a["format"] == "onnx"
                                                       and a["precision"] == "int8"]))
    stale = Path(tempfile.gettempdir()) / f"edgeq-validate-{DEAD_PID}-x"
    stale.mkdir(exist_ok=True)
    proc = subprocess.Popen([EDGEQ, "validate", str(dist), "--target", "x86_64", "--runs", "10000000", "-q"],
                            stderr=subprocess.PIPE, text=True)
    runner = _wait_for(lambda: [p for p in _descendants(proc.pid) if "runner.py" in _cmdline(p)], 120, "the runner")
    assert not stale.exists()  # removed when this validation started
    time.sleep(2)
    os.kill(runner[0], signal.SIGSEGV)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    result = json.loads((dist / "manifest.json").read_text())["artifacts"][0]["targets"]["x86_64"]
    assert result["passed"] is False and "killed by SIGSEGV" in result["error"], result


# --- 8: user mistakes are one line; bugs say they are bugs --------------------------------------

def test_model_factory_that_raises(tmp_path):
    f = tmp_path / "model.py"
    f.write_text("def build():\n    raise ValueError('no such checkpoint layout')\n")
    assert_user_error(run_cli("export", "--model", f"{f}:build", "--out", str(tmp_path / "dist")),
                      "building", "ValueError: no such checkpoint layout")
    assert_nothing_written(tmp_path)


def test_torchvision_model_with_a_bad_argument(tmp_path):
    assert_user_error(run_cli("export", "--model", "torchvision:resnet18?num_classes=-1", "--out",
                              str(tmp_path / "dist")), "resnet18", "failed")


def test_nan_weights(tmp_path):
    from edgeq.models import fashion_mobilenet

    state = fashion_mobilenet().state_dict()
    name = next(iter(state))
    state[name].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    assert_user_error(run_cli("export", "--weights", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "dist")),
                      name, "NaN")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("flag, value, needle", [("--std", "0", "above 0"), ("--std", "nan", "finite"),
                                                 ("--resize", "0", "at least 1")])
def test_bad_preprocessing(tmp_path, flag, value, needle):
    assert_user_error(run_cli("export", flag, value, "--out", str(tmp_path / "dist")), needle)
    assert_nothing_written(tmp_path)


def test_report_md_given_a_folder(builtin_export, tmp_path):
    _, dist, _ = builtin_export
    assert_user_error(run_cli("report", str(dist), "--md", str(tmp_path)), "is a folder")


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["artifacts"][0].update(bytes="big"), "artifacts[0].bytes: must be a whole number"),
    (lambda d: d.update(artifacts={"a": 1}), "artifacts: must be a list"),
    (lambda d: d["artifacts"][0].update(host_check=[1]), "artifacts[0].host_check: must be a table"),
    (lambda d: d.update(target="arm64"), "target: must be a table"),
    (lambda d: d["reference"].update(sha256=5), "reference.sha256: must be text"),
])
def test_manifest_with_wrong_value_types(builtin_export, tmp_path, edit, needle):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    _edit_manifest(dist, edit)
    for args in (["report", str(dist)], ["validate", str(dist), "--target", "x86_64", "-q"]):
        assert_user_error(run_cli(*args), "not an edgeq manifest", needle)


def test_user_names_with_rich_markup_print_as_they_are(builtin_export, tmp_path):
    dist = _copy_export(builtin_export, tmp_path / "dist")
    _edit_manifest(dist, lambda d: d["model"].update(source="[/]evil[bold]model.py:build"))
    r = run_cli("report", str(dist))
    assert r.exit_code == 0, r.output
    assert "[/]evil[bold]model.py:build" in r.stdout.replace("\n", "")


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "file" / "cache"))
    r = run_cli("targets", "setup", "arm64")
    assert_user_error(r, "not a directory", "EDGEQ_CACHE")


def test_an_internal_bug_says_so_with_its_traceback(builtin_export, monkeypatch):
    """The boundary itself, fed a bug: a stage that fails in a way no user input explains."""
    _, dist, _ = builtin_export

    def broken(manifest, console=None):
        return 1 / 0

    monkeypatch.setattr("edgeq.cli.print_terminal", broken)
    r = run_cli("report", str(dist))
    assert r.exit_code == 70
    assert "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr
    assert "this is a bug in edgeq" in r.stderr.splitlines()[-1]


# --- 9: wrong results ----------------------------------------------------------------------------

NAN_MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (1, 1, 28, 28)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        # Fine on the zero input edgeq's shape check uses; NaN on every real image.
        return self.fc(x.flatten(1)) + torch.sqrt(-x.abs().mean())


def build():
    return Net()
"""


def test_nan_outputs_are_null_in_json_and_fail(tmp_path):
    (tmp_path / "nan_model.py").write_text(NAN_MODEL)
    out = tmp_path / "dist"
    r = run_cli("export", "--model", f"{tmp_path / 'nan_model.py'}:build", "--calib-data", "fashion-mnist",
                "--formats", "onnx", "--precisions", "fp32", "--check-samples", "50", "--no-validate", "--out",
                str(out), "-q")
    assert r.exit_code == 1, r.output
    text = (out / "manifest.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in manifest.json"))
    check = doc["artifacts"][0]["host_check"]
    assert check["passed"] is False and check["nonfinite_outputs"] > 0 and check["sqnr_db"] is None
    assert "outputs are finite" in check["gates"]


def test_validate_after_export_with_a_target_file_and_farm_with_one(builtin_export, tmp_path):
    """The target of a user's .toml is known from the manifest afterwards, and farm passes the file on.
    The board runs no .onnx: the arm64 export's int8 .onnx on this host's x86 kernels is test_farm's."""
    dist = _copy_export(builtin_export, tmp_path / "dist")
    _edit_manifest(dist, lambda d: d.update(target={**d["target"], "name": "my-board", "arch": "x86_64",
                                                    "qemu_cpu": None, "backend": "qnnpack",
                                                    "runtimes": ["pte", "ptl"]}))
    r = run_cli("validate", str(dist), "--samples", "20", "--runs", "2", "-q")
    assert r.exit_code == 0, r.output
    arts = [a for a in json.loads((dist / "manifest.json").read_text())["artifacts"] if a["format"] != "onnx"]
    assert all(a["targets"]["my-board"]["passed"] for a in arts)

    (tmp_path / "elsewhere").mkdir()
    toml = _target_file(tmp_path / "elsewhere" / "board.toml", "my-board", backend="qnnpack", runtimes=["pte", "ptl"])
    r = run_cli("farm", "--out", str(tmp_path / "farm"), "--targets", str(toml), "--from", str(dist),
                "--samples", "20", "--runs", "2", "-q")
    assert r.exit_code == 0, r.output
    farm = json.loads((tmp_path / "farm" / "farm.json").read_text())
    assert farm["passed"] and [t["target"] for t in farm["targets"]] == ["my-board"]


# --- 10: a damaged cache step is rebuilt ---------------------------------------------------------

def test_a_damaged_cache_step_is_rebuilt(tmp_path):
    built, lines = [], []

    def build(tmp):
        built.append(1)
        (tmp / "lib").mkdir()
        (tmp / "lib" / "big.so").write_bytes(b"x" * 1000)

    step = tmp_path / "wheels"
    cached_step(step, "v1", build, lines.append)
    cached_step(step, "v1", build, lines.append)
    assert len(built) == 1
    (step / "lib" / "big.so").write_bytes(b"x" * 10)  # truncated, e.g. a full disk during a copy
    cached_step(step, "v1", build, lines.append)
    assert len(built) == 2 and "damaged (lib/big.so has 10 bytes, not 1000)" in lines[-2]
    (step / "lib" / "big.so").unlink()
    cached_step(step, "v1", build, lines.append)
    assert len(built) == 3 and "lib/big.so is missing" in lines[-2]
    assert (step / "lib" / "big.so").stat().st_size == 1000
