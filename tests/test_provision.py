"""Provisioning the emulated target: steps are atomic, cached, and named when missing."""

from __future__ import annotations

import time

import pytest

from edgeq.errors import EdgeqError
from edgeq.qemu.provision import Emulator, cache_root, emulator, setup


def test_missing_target_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    with pytest.raises(EdgeqError, match="edgeq targets setup cortex-a53"):
        emulator("cortex-a53")
    assert cache_root() == tmp_path


def test_a_step_without_its_marker_is_not_trusted(tmp_path):
    emu = Emulator(tmp_path / "aarch64")
    (emu.root / "wheels").mkdir(parents=True)  # e.g. copied by hand, or left by an older edgeq
    assert "wheels" in emu.missing()


@pytest.mark.qemu
def test_setup_provisions_once_then_is_cached(emulated_target):
    lines: list[str] = []
    started = time.perf_counter()
    emu = setup(log=lines.append)
    assert time.perf_counter() - started < 30 and emu.missing() == []
    assert [ln.split(":")[0] for ln in lines] == ["qemu", "sysroot", "wheels", "stubs", "native"]
    assert all("cached" in ln for ln in lines)
    assert (emu.root / "qemu" / "qemu-aarch64").is_file() and emu.python.is_file()
    assert "libcudart.so.13" in (emu.root / "stubs" / "STUBS").read_text()  # torch's CUDA build needs it
    assert all((emu.root / "native" / f"{fmt}_run").is_file() for fmt in ("pte", "ptl"))


@pytest.mark.qemu
def test_emulated_python_is_aarch64_with_onnxruntime_on_its_cpu(emulated_target):
    """The emulated Python runs only runner.py's .onnx jobs (.pte/.ptl run natively): what it imports."""
    import subprocess

    argv, env = emulated_target.command("cortex-a53", ["-c", "import platform, onnxruntime; "
                                                      "print(platform.machine(), onnxruntime.get_device())"], 1)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["aarch64", "CPU"]
