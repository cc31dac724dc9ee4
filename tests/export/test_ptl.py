from __future__ import annotations

import numpy as np
import torch

from edgeq.runner import load
from edgeq.export import ptl
from edgeq.models import load_model


def test_fp32_ptl_records_its_mobile_passes_and_matches_torch(tmp_path):
    m = load_model()
    details = ptl.export(m.module, m.input_shape, tmp_path / "m.ptl", "qnnpack")
    assert details["mobile_optimization"] in ("optimize_for_mobile", "fallback passes")
    if details["mobile_optimization"] == "fallback passes":
        assert "XNNPACK" in details["reason"] and details["passes"]
    x = np.random.default_rng(0).normal(size=m.input_shape).astype(np.float32)
    out = load("ptl", str(tmp_path / "m.ptl"), "qnnpack")(x)
    np.testing.assert_allclose(out, m.module(torch.from_numpy(x)).detach().numpy(), atol=1e-4)
