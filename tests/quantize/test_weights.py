"""The weight steps before int8 (BN fold, equalization, bias correction), the calibration methods and
the FX flow's pad and BN handling, each on a small model built so that the step has something to fix,
quantized for real (PT2E XNNPACK and FX qnnpack) and compared with the float model. The claim on
real pretrained weights is tests/quantize/test_pretrained.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgeq.config import QuantRecipe
from edgeq.data import Preprocess, fashion_mnist
from edgeq.models import load_model
from edgeq.quantize import quantize_static
from edgeq.quantize.fold import fold_batchnorm, trace
from edgeq.quantize.weights import ready_for_int8
from edgeq.runner import quantized_engine
from edgeq.validate import sqnr_db

SHAPE = (1, 3, 16, 16)


def _int8_sqnr(model: nn.Module, recipe: QuantRecipe, flow: str, calib: np.ndarray, check: np.ndarray) -> float:
    source, _ = ready_for_int8(model, recipe, torch.from_numpy(calib))
    quantized = quantize_static(flow, source, SHAPE, recipe, lambda: iter([calib]))
    with torch.no_grad(), quantized_engine("qnnpack"):
        return sqnr_db(model(torch.from_numpy(check)).numpy(), quantized(torch.from_numpy(check)).numpy())


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, *SHAPE[1:], generator=g).numpy(), torch.rand(64, *SHAPE[1:], generator=g).numpy()


class SamePadded(nn.Module):
    """TF-port style: F.pad + functional conv, BatchNorm and F.relu6 after each."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.bn1, self.bn2 = nn.BatchNorm2d(8, eps=1e-3), nn.BatchNorm2d(8, eps=1e-3)
        self.fc = nn.Linear(8, 4)
        for bn in (self.bn1, self.bn2):  # statistics that make folding matter
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.data.uniform_(0.5, 2)
            bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(F.conv2d(F.pad(x, [0, 1, 0, 1]), self.w1, None, 2)))
        x = F.relu6(self.bn2(F.conv2d(F.pad(x, [1, 1, 1, 1]), self.w2, None, 1, 0, 1, 8)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_batchnorm_folds_into_functional_convs_without_changing_the_model(images):
    torch.manual_seed(1)
    model = SamePadded().eval()
    graph = trace(model)
    assert fold_batchnorm(graph) == 2
    assert not [m for m in graph.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.from_numpy(images[1])
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), atol=1e-5, rtol=1e-5)


def test_fx_flow_folds_bn_into_functional_convs_and_pads_keep_their_input_scale(images):
    """The .ptl fix: FX used to quantize each functional conv's output, then the BN's, and to round
    every F.pad's output onto a scale of its own. Now BN is folded, and a pad's output observer is
    its input's (the requantize FX writes around the pad is then exact)."""
    from edgeq.quantize import prepare

    torch.manual_seed(1)
    model = SamePadded().eval()
    calib, check = images
    recipe = QuantRecipe(backend="qnnpack", bias_correction=False)
    prepared = prepare("fx", model, SHAPE, recipe)
    pads = [n for n in prepared.graph.nodes if n.target is F.pad]
    assert len(pads) == 2
    for pad in pads:
        (observer,) = pad.users
        assert prepared.get_submodule(observer.target) is prepared.get_submodule(pad.args[0].target)
    quantized = quantize_static("fx", model, SHAPE, recipe, lambda: iter([calib]))
    assert not [m for m in quantized.modules() if "BatchNorm" in type(m).__name__]
    with torch.no_grad(), quantized_engine("qnnpack"):
        assert sqnr_db(model(torch.from_numpy(check)).numpy(), quantized(torch.from_numpy(check)).numpy()) > 25


def _badly_scaled() -> nn.Module:
    """conv → ReLU → conv whose first conv's output channels span four decades, undone by the second
    conv: the same function as a well-scaled net, hopeless for one scale per tensor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 10, 1))
    scale = torch.logspace(-2, 2, 16)
    with torch.no_grad():
        model[0].weight.mul_(scale.view(-1, 1, 1, 1))
        model[0].bias.mul_(scale)
        model[2].weight.div_(scale.view(1, -1, 1, 1))
    return model.eval()


def test_equalization_rescues_badly_scaled_channels_and_keeps_the_function(images):
    calib, check = images
    model = _badly_scaled()
    recipe = QuantRecipe(backend="qnnpack", per_channel=False, bias_correction=False)
    equalized, steps = ready_for_int8(model, QuantRecipe(equalization=True, bias_correction=False),
                                      torch.from_numpy(calib))
    assert steps.equalized_pairs == 2 and steps.not_equalized == {}
    with torch.no_grad():
        x = torch.from_numpy(check)
        torch.testing.assert_close(equalized(x), model(x), atol=1e-4, rtol=1e-4)
    plain = _int8_sqnr(model, recipe, "xnnpack", calib, check)
    better = _int8_sqnr(model, QuantRecipe(backend="qnnpack", per_channel=False, bias_correction=False,
                                           equalization=True), "xnnpack", calib, check)
    assert better > plain + 20, (plain, better)


def test_equalization_leaves_relu6_pairs_alone_and_says_so():
    loaded = load_model(None, None, None)
    images = fashion_mnist("train").batch(Preprocess.default_for(loaded.input_shape, True), range(8))
    _, steps = ready_for_int8(loaded.module, QuantRecipe(equalization=True, bias_correction=False),
                              torch.from_numpy(images))
    assert steps.equalized_pairs == 0
    assert steps.not_equalized["ReLU6"] > 0 and steps.folded_batchnorms > 0


def _biased_rounding() -> nn.Module:
    """A depthwise conv where one channel sets the per-tensor weight scale and the others' weights, 0.6
    of a step each, all round up to one step; positive inputs turn that into a shifted output mean."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU6(),
                          nn.Conv2d(16, 10, 1))
    with torch.no_grad():
        model[0].weight.abs_()
        model[0].bias.zero_()
        weight = torch.full((16, 1, 3, 3), 0.6 / 127)
        weight[0] = 1.0
        model[2].weight.copy_(weight)
        model[2].bias.zero_()
        model[4].weight.div_(weight.flatten(1).mean(1).view(1, -1, 1, 1) * 10)
    return model.eval()


@pytest.mark.parametrize("flow", ["xnnpack", "fx"])
def test_bias_correction_takes_out_the_rounding_bias(images, flow):
    calib, check = images
    model = _biased_rounding()
    plain = _int8_sqnr(model, QuantRecipe(backend="qnnpack", per_channel=False, bias_correction=False), flow,
                       calib, check)
    corrected = _int8_sqnr(model, QuantRecipe(backend="qnnpack", per_channel=False), flow, calib, check)
    assert corrected > plain + 3, (plain, corrected)


def test_an_untraceable_model_keeps_its_weights_and_says_why():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else -self.conv(x)  # data-dependent: torch.fx cannot trace

    model = Branchy().eval()
    source, steps = ready_for_int8(model, QuantRecipe(), torch.rand(2, *SHAPE[1:]))
    assert source is model and "torch.fx could not trace" in steps.skipped


def _outlier_images(seed: int, outliers: bool) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, *SHAPE[1:], generator=g)
    if outliers:  # one pixel in a thousand, 40× brighter
        x = torch.where(torch.rand(x.shape, generator=g) < 1e-3, x * 40, x)
    return x.numpy()


@pytest.mark.parametrize("flow", ["xnnpack", "fx"])
def test_percentile_calibration_clips_rare_outliers(flow):
    """Calibrated on images with rare outliers, checked on clean ones: min-max spends its levels on
    the outliers; the 99.9th percentile clips them. The histogram's L2 search keeps most of their
    range (40× outliers dominate the squared error it minimises), so it lands near min-max."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    calib, check = _outlier_images(0, True), _outlier_images(1, False)
    sqnr = {method: _int8_sqnr(model, QuantRecipe(backend="qnnpack", calibration=method, percentile=99.9,
                                                  bias_correction=False), flow, calib, check)
            for method in ("minmax", "histogram", "percentile")}
    assert sqnr["percentile"] > max(sqnr["minmax"], sqnr["histogram"]) + 6, sqnr
    assert sqnr["histogram"] > sqnr["minmax"] - 1, sqnr


def test_onnxruntime_flow_uses_the_recipes_calibrator(tmp_path):
    from edgeq.export.onnx import export_ort_quantized

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    calib = _outlier_images(0, False)[:8]
    for method, name in (("minmax", "MinMax"), ("percentile", "Percentile"), ("histogram", "Entropy")):
        details = export_ort_quantized(model, SHAPE, tmp_path / f"{method}.onnx", calib,
                                       QuantRecipe(backend="x86", calibration=method))
        assert details["calibration"] == f"{name} over 8 samples"


def test_adaround_learns_better_rounding_than_nearest_on_real_weights():
    """The built-in model's trained weights, one int8 scale per tensor (depthwise kernels then get
    few levels): AdaRound's learnt rounding beats round-to-nearest in the real int8 model (measured
    here: 26.6 → 31.6 dB on 1,000 test images)."""
    loaded = load_model(None, None, None)
    preprocess = Preprocess.default_for(loaded.input_shape, grayscale_stats=True)
    calib = fashion_mnist("train").batch(preprocess, range(64))
    check = fashion_mnist("test").batch(preprocess, range(500))
    model, shape = loaded.module, loaded.input_shape
    sqnr = {}
    for adaround in (False, True):
        recipe = QuantRecipe(backend="qnnpack", per_channel=False, bias_correction=False, adaround=adaround)
        source, _ = ready_for_int8(model, recipe, torch.from_numpy(calib))
        quantized = quantize_static("xnnpack", source, shape, recipe, lambda: iter([calib]))  # noqa: B023
        with torch.no_grad():
            sqnr[adaround] = sqnr_db(model(torch.from_numpy(check)).numpy(), quantized(torch.from_numpy(check)).numpy())
    assert sqnr[True] > sqnr[False] + 3, sqnr


def test_adaround_leaves_weights_on_the_int8_grid():
    from edgeq.quantize.fold import layers
    from edgeq.quantize.observers import fake_quantize_weight

    model = _biased_rounding()
    graph, steps = ready_for_int8(model, QuantRecipe(adaround=True, bias_correction=False),
                                  torch.rand(16, *SHAPE[1:], generator=torch.Generator().manual_seed(2)))
    assert steps.adarounded_layers == 3 and steps.images == 16
    for layer in layers(graph):  # every format's round-to-nearest keeps the learnt rounding
        torch.testing.assert_close(fake_quantize_weight(layer.weight, True), layer.weight, rtol=0, atol=1e-7)
