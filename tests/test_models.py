from __future__ import annotations

import torch
import pytest

from edgeq.errors import EdgeqError
from edgeq.models import BUILTIN, load_model


def test_builtin_loads_shipped_weights():
    m = load_model()
    assert m.source == BUILTIN and m.builtin and m.weights_sha256
    assert m.input_shape == (1, 1, 28, 28) and m.num_classes == 10
    assert not m.module.training


def test_torchvision_with_arguments():
    m = load_model("torchvision:shufflenet_v2_x0_5?num_classes=7", input_shape=(1, 3, 64, 64))
    assert m.num_classes == 7 and m.weights is None
    assert load_model("torchvision:mobilenet_v3_small").input_shape == (1, 3, 224, 224)


def test_file_factory_and_input_shape_from_module(tmp_path):
    (tmp_path / "net.py").write_text(
        "from torch import nn\nINPUT_SHAPE = (1, 3, 16, 16)\n"
        "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))\n")
    m = load_model(f"{tmp_path / 'net.py'}:build")
    assert m.input_shape == (1, 3, 16, 16) and m.num_classes == 5


def test_module_factory_and_wrapped_ddp_checkpoint(tmp_path):
    ref = load_model()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.module.state_dict().items()}}, ckpt)
    m = load_model("edgeq.models:fashion_mobilenet", weights=ckpt, input_shape=(1, 1, 28, 28))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m.module(x), ref.module(x))


@pytest.mark.parametrize("source,message", [
    ("torchvision:resnet9000", "unknown torchvision classification model"),
    ("builtin:nope", "unknown built-in model"),
    ("no_colon_here", "not understood"),
    ("edgeq.models:no_such_factory", "no callable"),
    ("not_a_module_xyz:build", "cannot import module"),
])
def test_bad_sources(source, message):
    with pytest.raises(EdgeqError, match=message):
        load_model(source, input_shape=(1, 3, 32, 32))


def test_factory_without_shape_asks_for_one(tmp_path):
    (tmp_path / "n.py").write_text("from torch import nn\ndef build():\n    return nn.Linear(3, 2)\n")
    with pytest.raises(EdgeqError, match="--input-shape"):
        load_model(f"{tmp_path / 'n.py'}:build")


def test_model_that_returns_a_tuple_is_rejected(tmp_path):
    (tmp_path / "n.py").write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                                   "        return x, x\ndef build():\n    return M()\n")
    with pytest.raises(EdgeqError, match="one N×classes tensor"):
        load_model(f"{tmp_path / 'n.py'}:build", input_shape=(1, 1, 4, 4))
