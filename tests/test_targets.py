from __future__ import annotations

import pytest

from edgeq.errors import EdgeqError
from edgeq.targets import list_targets, load_target


def test_builtin_targets():
    names = {t.name: t for t in list_targets()}
    assert {"arm64", "android-arm64", "rpi4", "cortex-a53", "x86_64"} <= set(names)
    assert names["arm64"].qemu_cpu == "neoverse-n1" and names["arm64"].backend == "qnnpack"
    assert names["x86_64"].qemu_cpu is None and names["x86_64"].backend == "x86"
    assert names["cortex-a53"].thresholds.min_top1_agreement == 0.97


def test_user_toml(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\narch = "aarch64"\nqemu_cpu = "cortex-a55"\nbackend = "qnnpack"\n'
                    'runtimes = ["pte"]\n[thresholds]\nmin_top1_agreement = 0.9\n')
    t = load_target(path)
    assert t.runtimes == ("pte",) and t.thresholds.min_top1_agreement == 0.9 and t.thresholds.min_sqnr_db == 15.0


@pytest.mark.parametrize("text,message", [
    ('name = "x"\narch = "aarch64"\n', "lacks the key 'backend'"),
    ('name = "x"\narch = "riscv64"\nbackend = "qnnpack"\n', "arch must be"),
    ('name = "x"\narch = "aarch64"\nbackend = "tflite"\n', "backend must be"),
    ('name = "x\n', "not valid TOML"),
    ('name = "x"\narch = "aarch64"\nbackend = "x86"\n[thresholds]\nmax_speed = 1\n', "unknown key 'max_speed'"),
])
def test_bad_toml(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EdgeqError, match=message):
        load_target(path)
