from __future__ import annotations

import numpy as np

from edgeq.targets import Thresholds
from edgeq.validate import accuracy, compare, sqnr_db, top1_agreement


def test_sqnr_of_known_noise():
    ref = np.ones((10, 4))
    assert abs(sqnr_db(ref, ref + 0.1) - 20.0) < 1e-9  # signal 1, noise 0.01 → 100× → 20 dB
    assert sqnr_db(ref, ref.copy()) is None  # identical


def test_agreement_and_accuracy():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = np.array([[0.9, 0.1], [0.6, 0.4], [1.0, 0.0]])
    assert top1_agreement(ref, out) == 2 / 3
    assert accuracy(out, np.array([0, 1, 0])) == 2 / 3
    assert accuracy(out, None) is None


def test_compare_applies_thresholds():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(100, 10))
    close = compare(ref, ref + rng.normal(scale=0.01, size=ref.shape), None, "int8", Thresholds())
    far = compare(ref, rng.normal(size=ref.shape), None, "int8", Thresholds())
    assert close.passed and close.top1_agreement > 0.97 and close.max_abs_err < 0.1
    assert not far.passed
    assert not compare(ref, ref + 0.01, None, "fp32", Thresholds()).passed  # fp32 must match ≥ 40 dB
