"""Accuracy budget: the search finds the layer that breaks int8, every format leaves the plan's
layers in float, the plan is saved and reused, and `edgeq inspect` shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeq.config import BudgetConfig, DataConfig, ExportConfig, QuantRecipe
from edgeq.errors import EdgeqError
from edgeq.export import onnx as onnx_export, ptl, pte
from edgeq.pipeline import export
from edgeq.quantize import quantize_static
from edgeq.quantize.plan import exported_layers
from edgeq.quantize.weights import ready_for_int8
from edgeq import runner

from tests.quantize.budget_models import BROKEN

MODELS = Path(__file__).parent / "budget_models.py"
SHAPE = (1, 3, 16, 16)


class _Same(nn.Conv2d):
    """A TF-"SAME" conv: F.pad, then a functional conv reading this module's weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.same, self.bn = _Same(8, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu6(self.bn(self.same(self.stem(x)))).mean((2, 3)))


@pytest.mark.parametrize("float_layers", [("same",), ("stem.0", "fc")])
def test_a_plan_leaves_its_layers_float_in_every_format(tmp_path, float_layers):
    """Module and functional convs and a linear, each flow by its own mechanism: the XNNPACK filter
    (a pad before a float conv included), FX qconfig None, onnxruntime nodes_to_exclude."""
    torch.manual_seed(0)
    model = _Net().eval()
    calib = torch.randn(32, *SHAPE[1:])
    recipe = QuantRecipe(backend="qnnpack", float_layers=float_layers)
    source, _ = ready_for_int8(model, recipe, calib)
    x = calib[:4].numpy()
    with torch.no_grad():
        expected = model(calib[:4]).numpy()

    pt2e = quantize_static("xnnpack", source, SHAPE, recipe, lambda: iter([calib.numpy()]))
    # float layers read their weight (get_attr); int8 layers read a dequantized one
    assert set(exported_layers(pt2e).values()) == set(float_layers)
    pte.export(pt2e, SHAPE, tmp_path / "m.pte")
    details = onnx_export.export(pt2e, SHAPE, tmp_path / "m.onnx", quantized=True, float_layers=float_layers)
    assert len(details["float_nodes"]) == len(float_layers)

    fx = quantize_static("fx", source, SHAPE, recipe, lambda: iter([calib.numpy()]))
    float_modules = {name for name, m in fx.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    float_functions = {"same"} if any(n.target is F.conv2d for n in fx.graph.nodes) else set()  # only "same" calls it
    assert float_modules | float_functions == set(float_layers)
    ptl.export(fx, SHAPE, tmp_path / "m.ptl", "qnnpack")

    ort = onnx_export.export_ort_quantized(source, SHAPE, tmp_path / "ort.onnx", calib.numpy(),
                                           QuantRecipe(backend="x86", float_layers=float_layers))
    assert len(ort["float_nodes"]) == len(float_layers)
    proto = onnx.load(str(tmp_path / "ort.onnx"))
    excluded = [n for n in proto.graph.node if n.name in ort["float_nodes"]]
    initializers = {i.name for i in proto.graph.initializer}
    assert all(n.input[1] in initializers for n in excluded)  # a float weight, not a DequantizeLinear's output
    producers = {out: n.op_type for n in proto.graph.node for out in n.output}
    assert all(producers.get(n.input[0]) != "DequantizeLinear" for n in excluded)  # nothing re-quantizes it at load

    for name, fmt in (("m.pte", "pte"), ("m.onnx", "onnx"), ("m.ptl", "ptl"), ("ort.onnx", "onnx")):
        run = runner.load(fmt, str(tmp_path / name), engine="qnnpack")
        out = np.stack([run(x[i:i + 1])[0] for i in range(len(x))])
        assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max(), name  # int8 elsewhere: close, not equal


def _budget_config(**budget) -> ExportConfig:
    return ExportConfig(model=f"{MODELS}:one_bad_layer", formats=("pte", "onnx", "ptl"), precisions=("int8",),
                        validate=False, data=DataConfig(check_samples=500),
                        budget=BudgetConfig(**budget))


@pytest.mark.slow
def test_the_search_finds_the_broken_layer_and_every_format_meets_the_budget(tmp_path):
    out = tmp_path / "dist"
    manifest = export(out, _budget_config(max_agreement_drop=2.0), progress=False)
    plan = manifest.plan
    assert plan.float_layers == [BROKEN] and plan.met and plan.metric == "agreement"
    assert plan.int8_score < 98 - 2 and plan.score >= 98 and plan.steps[0].candidates[BROKEN] == plan.score
    assert plan.steps[0].params == 96 * 32 and plan.steps[0].fp32_macs == 96 * 32 * 4 * 4  # 1×1 on 4×4
    for a in manifest.artifacts:  # the search scored the PT2E model in PyTorch; each runtime rounds a little
        if a.precision == "int8":  # differently (XNNPACK, onnxruntime, QNNPACK): within half a point here
            assert a.host_check.top1_agreement >= 0.975, a.key
    assert json.loads((out / "plan.json").read_text())["float_layers"] == [BROKEN]
    marked = [e.layer for e in manifest.layer_numerics.layers if e.kept_float]
    assert marked == [BROKEN]

    # The plan reused without a search: the same .pte, byte for byte.
    again = export(tmp_path / "again", _budget_config(plan=str(out / "plan.json")).with_values({"formats": ("pte",)}),
                   progress=False)
    assert again.plan.float_layers == [BROKEN] and again.plan.source == str(out / "plan.json")
    assert again.artifact("pte", "int8").sha256 == manifest.artifact("pte", "int8").sha256
    assert "budget_search" not in again.timings_s

    shown = subprocess.run([sys.executable, "-m", "edgeq", "inspect", str(out), "--html", str(tmp_path / "i.html")],
                           capture_output=True, text=True, check=True)
    assert BROKEN in shown.stdout and "float" in shown.stdout and "budget met" in shown.stdout
    assert "data:image/png;base64," in (tmp_path / "i.html").read_text()


def test_a_plan_for_another_model_is_refused(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"float_layers": ["features.99"]}))
    config = ExportConfig(formats=("pte",), validate=False, budget=BudgetConfig(plan=str(plan)))
    with pytest.raises(EdgeqError, match="names layer 'features.99', which this model does not have"):
        export(tmp_path / "out", config, progress=False)
    plan.write_text("{not json")
    with pytest.raises(EdgeqError, match="is not a plan.json"):
        export(tmp_path / "out", config, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("budget, message", [
    ({"max_accuracy_drop": 0.5, "max_agreement_drop": 1.0}, "pass one budget"),
    ({"max_agreement_drop": -1.0}, "percentage points between 0 and 100"),
    ({"max_agreement_drop": 1.0, "plan": "plan.json"}, "pass one of them"),
    ({"max_float_layers": 0}, "at least 1"),
])
def test_budget_options_that_contradict_are_refused(budget, message):
    with pytest.raises(EdgeqError, match=message):
        BudgetConfig(**budget)


def test_a_budget_needs_the_int8_it_budgets():
    """Top-1 budgets search static int8; output budgets (cosine, SQNR) search dynamic or static int8."""
    with pytest.raises(EdgeqError, match="budget static int8: use --method static"):
        ExportConfig(method="qat", budget=BudgetConfig(max_agreement_drop=1.0))
    with pytest.raises(EdgeqError, match="budget static int8: use --method static"):
        ExportConfig(method="dynamic", budget=BudgetConfig(max_accuracy_drop=1.0))
    with pytest.raises(EdgeqError, match="budget dynamic or static int8 of a model of tensors"):
        ExportConfig(method="qat", budget=BudgetConfig(min_sqnr=30.0))
    with pytest.raises(EdgeqError, match="put int8 in --precisions"):
        ExportConfig(precisions=("fp32",), budget=BudgetConfig(max_agreement_drop=1.0))
    with pytest.raises(EdgeqError, match="--plan chooses float layers of static or dynamic int8"):
        ExportConfig(method="qat", budget=BudgetConfig(plan="plan.json"))
    ExportConfig(method="dynamic", budget=BudgetConfig(min_cosine=0.99))  # and these are fine
    ExportConfig(method="static", budget=BudgetConfig(min_sqnr=30.0))  # a model of tensors' static int8
    ExportConfig(method="dynamic", budget=BudgetConfig(plan="plan.json"))


def test_inspect_without_numerics_says_why(tmp_path, builtin_export):
    manifest, folder, _ = builtin_export
    shown = subprocess.run([sys.executable, "-m", "edgeq", "inspect", str(folder)], capture_output=True, text=True)
    assert shown.returncode == 0 and "No float layers" in shown.stdout
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("layer_numerics", None)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    shown = subprocess.run([sys.executable, "-m", "edgeq", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert shown.returncode == 1 and "no per-layer numerics" in shown.stderr and "Traceback" not in shown.stderr
