from __future__ import annotations

import numpy as np
import torch

from edgeq.runner import load
from edgeq.export import pte
from edgeq.models import load_model


def test_fp32_pte_is_delegated_and_matches_torch(tmp_path):
    m = load_model()
    details = pte.export(m.module, m.input_shape, tmp_path / "m.pte")
    assert details["delegate"] == "XnnpackBackend" and details["delegated_ops"] > 20
    assert details["portable_ops"] == {}
    x = np.random.default_rng(0).normal(size=m.input_shape).astype(np.float32)
    out = load("pte", str(tmp_path / "m.pte"))(x)
    np.testing.assert_allclose(out, m.module(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_ops_xnnpack_does_not_take_are_listed_as_portable(tmp_path):
    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x.flatten(1), 1)[:, :10]  # no XNNPACK kernel for cumsum

    details = pte.export(Net().eval(), (1, 1, 4, 4), tmp_path / "m.pte")
    assert any("cumsum" in op for op in details["portable_ops"])
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    np.testing.assert_allclose(load("pte", str(tmp_path / "m.pte"))(x)[0], np.cumsum(x.ravel())[:10])
