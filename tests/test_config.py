"""Recipes as data: ExportConfig from flags, from TOML (flags override it), from the older keyword
API; recorded in the manifest; and the commands that need no model importing no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_user_error, run_cli
from edgeq.config import DataConfig, ExportConfig, PreprocessOverrides, QuantRecipe, TrainConfig
from edgeq.manifest import Manifest


def test_a_recipe_round_trips_through_toml(tmp_path):
    config = ExportConfig(model="torchvision:resnet18?num_classes=10", input_shape=(1, 3, 64, 64), target="x86_64",
                          formats=("onnx", "pte"), quantization=QuantRecipe(per_channel=False, calib_samples=64),
                          data=DataConfig(calib="images/", check_samples=20),
                          preprocess=PreprocessOverrides(mean=(0.5, 0.5, 0.5)), training=TrainConfig(epochs=3, lr=1e-4),
                          validate=False)
    (tmp_path / "recipe.toml").write_text(config.to_toml())
    assert ExportConfig.load(tmp_path / "recipe.toml") == config


def test_the_keyword_api_is_a_shim_over_the_config():
    old = ExportConfig.from_keywords(ExportConfig(), dict(model="m.py:build", calib_data=Path("imgs"), per_channel=False,
                                                          formats=["pte"], training=TrainConfig(epochs=4),
                                                          validate_on_target=False, runs=5))
    assert old == ExportConfig(model="m.py:build", data=DataConfig(calib="imgs"),
                               quantization=QuantRecipe(per_channel=False), formats=("pte",),
                               training=TrainConfig(epochs=4), validate=False,
                               validation=old.validation.__class__(runs=5))
    with pytest.raises(TypeError, match="calib_dta"):
        ExportConfig.from_keywords(ExportConfig(), {"calib_dta": "x"})


def test_export_with_a_recipe_and_a_flag_over_it(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('formats = ["onnx"]\nprecisions = ["fp32"]\nvalidate = false\n'
                      "[data]\ncheck_samples = 40\n[quantization]\nper_channel = false\n")
    out = tmp_path / "dist"
    r = run_cli("export", "--config", str(recipe), "--precisions", "int8", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output
    m = Manifest.load(out)
    assert [a.key for a in m.artifacts] == ["int8 .onnx"]  # the flag beat the recipe's precisions
    assert m.artifacts[0].host_check.samples == 40 and m.quantization.per_channel is False
    assert m.recipe.formats == ("onnx",) and m.recipe.precisions == ("int8",) and m.recipe.validate is False
    saved = json.loads((out / "manifest.json").read_text())["recipe"]
    assert saved["data"]["check_samples"] == 40 and saved["quantization"]["backend"] is None


@pytest.mark.parametrize("text, needle", [("formats = \"pte\"\n", "formats: must be a list"),
                                          ("[quantization]\nper_chanel = false\n", "unknown key 'per_chanel'"),
                                          ("method = \"magic\"\n", "unknown --method 'magic'")])
def test_a_bad_recipe_is_one_line(tmp_path, text, needle):
    (tmp_path / "r.toml").write_text(text)
    assert_user_error(run_cli("export", "--config", str(tmp_path / "r.toml"), "--out", str(tmp_path / "dist")), needle)
    assert not (tmp_path / "dist").exists()


def _imported(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgeq", *args], capture_output=True, text=True,
                          timeout=120)
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--help"], ["targets", "list"], ["export", "--help"]])
def test_commands_without_a_model_do_not_import_torch(args):
    modules = _imported(*args)
    assert "edgeq.cli" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}, "torch imported"


def test_report_does_not_import_torch(builtin_export):
    _, dist, _ = builtin_export
    modules = _imported("report", str(dist))
    assert "edgeq.report" in modules and "torch" not in modules


def test_edgeq_export_stays_the_verb_after_the_exporters_are_imported():
    """edgeq/export/ (the exporters) and edgeq.export (the verb) share a name: the verb must win."""
    import edgeq
    import edgeq.export.onnx  # noqa: F401

    assert callable(edgeq.export) and edgeq.export.__module__ == "edgeq"
