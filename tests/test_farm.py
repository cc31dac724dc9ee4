"""`edgeq farm`: the CI matrix on one machine; a failed threshold fails the farm (and so CI)."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_cli
from edgeq.farm import _groups, default_targets
from edgeq.runner import cpu_model, int8_products_saturate
from edgeq.targets import load_target

ROOT = Path(__file__).resolve().parent.parent


def test_farm_passes_then_the_gate_fails_it(builtin_export, tmp_path):
    _, dist, _ = builtin_export
    out = tmp_path / "farm"
    common = ["farm", "--from", str(dist), "--targets", "x86_64", "--out", str(out), "--samples", "200", "--runs", "3",
              "-q"]
    result = run_cli(*common)
    farm = json.loads((out / "farm.json").read_text())
    assert farm["targets"][0]["exported_for"] == "arm64"
    assert farm["targets"][0]["measured"] == "host (x86_64)" and farm["targets"][0]["int8_pte_ms"] > 0
    validated = {f"{a['precision']} .{a['format']}": a["targets"]["x86_64"]
                 for a in json.loads((out / "x86_64" / "manifest.json").read_text())["artifacts"]}
    onnx = validated.pop("int8 .onnx")
    assert all(r["passed"] for r in validated.values()), validated
    # arm64's int8 .onnx (full-range weights) on onnxruntime's x86 kernels: on a CPU without VNNI its
    # products saturate, its outputs are not the host check's, and it is judged on its own (and says why).
    if int8_products_saturate(platform.machine(), cpu_model()[1]):
        assert not onnx["host_parity"]["passed"] and "without VNNI" in onnx["gates"][0], onnx
    else:
        assert onnx["passed"] and onnx["host_parity"]["passed"], onnx
    assert farm["passed"] == onnx["passed"] and result.exit_code == (0 if onnx["passed"] else 1), result.output
    assert ("✓ passed" if onnx["passed"] else "✗ FAILED: int8 .onnx") in (out / "farm.md").read_text()

    # The same matrix with a threshold no int8 artifact can meet: exit code 1, named failures.
    line = assert_user_error(run_cli(*common, "--min-agreement", "1.01"), "x86_64 failed", "farm.md")
    farm = json.loads((out / "farm.json").read_text())
    assert not farm["passed"] and farm["targets"][0]["exit_code"] == 1
    assert set(farm["targets"][0]["failed"]) == {"int8 .pte", "int8 .onnx", "int8 .ptl"}, line
    assert "✗ FAILED" in (out / "farm.md").read_text()


@pytest.mark.slow
@pytest.mark.qemu
def test_farm_takes_a_model_of_tensors(tmp_path, emulated_target):
    """Named inputs and outputs through the matrix: static int8 of the Tagger (token ids and a mask
    in, a dict of two outputs), exported once per backend and validated on each target."""
    from tests.tensor_models import tagger_data

    np.savez(tmp_path / "sentences.npz", **tagger_data(48))
    out = tmp_path / "farm"
    result = run_cli("farm", "--targets", "arm64,x86_64", "--out", str(out), "--runs", "2", "-q", "--",
                     "--model", f"{ROOT / 'tests' / 'tensor_models.py'}:tagger", "--method", "static",
                     "--calib-data", str(tmp_path / "sentences.npz"), "--precisions", "int8", "--formats", "onnx,ptl")
    assert result.exit_code == 0, result.output[-3000:]
    farm = json.loads((out / "farm.json").read_text())
    assert farm["passed"] and [t["exported_for"] for t in farm["targets"]] == ["arm64", "x86_64"], farm
    for target in ("arm64", "x86_64"):
        manifest = json.loads((out / target / "manifest.json").read_text())
        assert manifest["method"] == "static" and manifest["model"]["outputs"] == ["tags", "pooled"]
        for a in manifest["artifacts"]:
            ran = a["targets"][target]
            assert ran["passed"] and [o["name"] for o in ran["check"]["outputs"]] == ["tags", "pooled"], ran


def test_bad_farm_input_is_one_line(tmp_path):
    assert_user_error(run_cli("farm", "--targets", "nope", "--out", str(tmp_path / "f")), "unknown target 'nope'")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert_user_error(run_cli("farm", "--out", str(tmp_path / "busy")), "not an edgeq farm")  # default: all targets
    assert_user_error(run_cli("farm", "--from", str(tmp_path / "none"), "--targets", "x86_64", "--out",
                              str(tmp_path / "f2")), "no manifest.json")


def test_targets_that_quantize_alike_share_an_export():
    groups = _groups([load_target(t) for t in default_targets()])
    names = sorted(sorted(t.name for t in g) for g in groups)
    assert names == [["android-arm64", "arm64", "cortex-a53", "rpi4"], ["x86_64"]]


def test_ci_runs_the_whole_matrix_and_fails_with_it():
    """.ci/run: the test suite, then `edgeq farm` over every target; `set -e` makes a failed farm fail CI."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    farm = next(line for line in script.splitlines() if re.search(r"\bedgeq farm\b", line))
    assert "--targets" not in farm or all(t in farm for t in default_targets())
    assert script.index("pytest") < script.index("edgeq farm")
