"""The per-layer view: SQNR of every layer output of the int8 model against the float model, in
network order, named by the float model's modules; the largest drop is where the error enters."""

from __future__ import annotations

import torch
from torch import nn

from edgeq.config import QuantRecipe
from edgeq.quantize import export_graph, quantize_static
from edgeq.quantize.numerics import layer_errors
from edgeq.report import entry_points
from edgeq.validate import sqnr_db

SHAPE = (1, 3, 16, 16)


def _outlier_channel() -> nn.Module:
    """Layer "2"'s input has one channel 300× the others (undone by layer 2's weights): one scale for
    that whole activation leaves the other channels a level or two, and layer 2's output shows it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        model[0].weight[0] *= 300
        model[0].bias[0] *= 300
        model[2].weight[:, 0] /= 300
    return model.eval()


def test_layer_errors_name_every_layer_in_order_and_find_where_error_enters():
    model = _outlier_channel()
    g = torch.Generator().manual_seed(0)
    calib, check = torch.rand(32, *SHAPE[1:], generator=g).numpy(), torch.rand(16, *SHAPE[1:], generator=g).numpy()
    recipe = QuantRecipe(backend="qnnpack", bias_correction=False)
    quantized = quantize_static("xnnpack", model, SHAPE, recipe, lambda: iter([calib]))
    reference = export_graph(model, SHAPE, dynamic_batch=True).module()
    numerics = layer_errors(reference, quantized, check, "xnnpack")

    assert numerics.images == 16 and numerics.flow == "xnnpack"
    assert [(e.module, e.op) for e in numerics.layers] == [("0", "conv2d"), ("1", "relu"), ("2", "conv2d"),
                                                           ("3", "relu"), ("4", "conv2d")]
    worst, drop = entry_points(numerics)[0]
    assert worst.module == "2" and drop < -10, numerics.layers
    with torch.no_grad():  # the last layer's output is the model's: its SQNR is the logits'
        logits = sqnr_db(model(torch.from_numpy(check)).numpy(), quantized(torch.from_numpy(check)).numpy())
    assert abs(numerics.layers[-1].sqnr_db - logits) < 0.05
