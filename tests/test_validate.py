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


def test_qat_is_held_to_agreement_and_accuracy_not_sqnr():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 10))
    labels = ref.argmax(-1)
    retrained = ref * 3 + rng.normal(scale=1e-4, size=ref.shape)  # same decisions, other logit scale
    static, qat = (compare(ref, retrained, labels, "int8", Thresholds(), m) for m in ("static", "qat"))
    assert static.sqnr_db < 0 and not static.passed
    assert qat.top1_agreement == 1.0 and qat.passed
    assert qat.gates == ["top1_agreement >= 0.97", "accuracy >= float - 0.01"]
    worse = retrained.copy()
    worse[:4] = -worse[:4]  # four more mistakes (2%) than the float model: agreement 98%, accuracy −2 points
    drop = compare(ref, worse, labels, "int8", Thresholds(), "qat")
    assert drop.top1_agreement == 0.98 and drop.accuracy == 0.98 and not drop.passed
