from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, run_cli
from edgeq.manifest import Manifest, sha256_file
from edgeq.errors import EdgeqError
from edgeq.targets import Thresholds, load_target
from edgeq import schema
from edgeq.config import ValidateConfig
from edgeq.placement import measured, placement
from edgeq.validate import accuracy, compare, length_check, parity, sqnr_db, top1_agreement, validate

TARGETS = Path(__file__).resolve().parent.parent / "targets"


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
    ref = rng.normal(size=(1000, 10))  # the accuracy gate needs ≥ 1000 labelled samples
    labels = ref.argmax(-1)
    retrained = ref * 3 + rng.normal(scale=1e-4, size=ref.shape)  # same decisions, other logit scale
    static, qat = (compare(ref, retrained, labels, "int8", Thresholds(), m) for m in ("static", "qat"))
    assert static.sqnr_db < 0 and not static.passed
    assert qat.top1_agreement == 1.0 and qat.passed
    assert qat.gates == ["top1_agreement >= 0.97", "accuracy >= float - 0.01"]
    worse = retrained.copy()
    worse[:20] = -worse[:20]  # 20 more mistakes (2%) than the float model: agreement 98%, accuracy −2 points
    drop = compare(ref, worse, labels, "int8", Thresholds(), "qat")
    assert drop.top1_agreement == 0.98 and drop.accuracy == 0.98 and not drop.passed
    few = compare(ref[:999], worse[:999], labels[:999], "int8", Thresholds(), "qat")
    assert few.passed and few.gates == ["top1_agreement >= 0.97"]  # 999 images cannot judge one point


# --- on the target ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int8 .pte and .onnx of the built-in model with 300 reference inputs, not yet validated; for the
    host (x86_64), whose host check then runs the very kernels the host target runs."""
    out = tmp_path_factory.mktemp("small") / "dist"
    r = run_cli("export", "--target", "x86_64", "--no-validate", "--formats", "pte,onnx", "--precisions", "int8",
                "--check-samples", "300", "-q", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "dist"))


@pytest.mark.qemu
def test_export_validates_every_artifact_under_qemu(builtin_export):
    manifest, _, _ = builtin_export
    assert manifest["reference"]["samples"] == 256 and manifest["reference"]["host_outputs"]
    for a in manifest["artifacts"]:
        r = a["targets"]["arm64"]
        assert r["where"] == "emulated" and r["machine"] == "aarch64" and r["cpu"].startswith("Neoverse-N1"), r
        # .pte and .ptl through their runtimes' C++ APIs (edgeq.qemu.native), .onnx through onnxruntime's Python
        assert r["runner"] == ("python" if a["format"] == "onnx" else "native"), r
        parity = r["host_parity"]
        assert r["passed"] and r["check"]["samples"] == parity["samples"], r
        if parity["passed"]:  # the same computation as on the host: 32 inputs prove it
            assert parity["samples"] == 32 and parity["max_abs_diff"] <= parity["tolerance"], r
            assert r["gates"][1:] == a["host_check"]["gates"], r
        else:  # another one (onnxruntime's x86 int8 kernels saturate without VNNI): judged on all 256
            assert a["precision"] == "int8" and parity["samples"] == 256 and "judged on its own" in r["gates"][0], r
        if a["precision"] == "fp32":
            assert parity["passed"] and parity["max_abs_diff"] < 1e-4, r
        assert r["latency_ms"]["measured"].startswith("emulated") and r["latency_ms"]["runs"] == 20
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p90"]
    assert manifest["timings_s"]["validate_arm64"] > 0


def test_validate_on_the_host_target(small_export, tmp_path):
    dist = _copy(small_export, tmp_path)
    r = run_cli("validate", str(dist), "--target", "x86_64", "--runs", "5", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)
    assert set(results) == {"int8 .pte", "int8 .onnx"}
    for result in results.values():
        assert result["where"] == "host" and result["latency_ms"]["measured"].startswith("host")
        same = result["host_parity"]  # the same machine: the very same outputs
        assert result["passed"] and same["identical"] == same["samples"] == 32 and same["max_abs_diff"] == 0
    assert schema.dump(Manifest.load(dist).artifact("pte", "int8").targets["x86_64"]) == results["int8 .pte"]


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_damaged_artifact_is_refused(small_export, tmp_path, damage):
    dist = _copy(small_export, tmp_path)
    before = (dist / "manifest.json").read_bytes()
    path = dist / "model_int8.onnx"
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    r = run_cli("validate", str(dist), "--target", "x86_64")
    assert_user_error(r, "model_int8.onnx", "does not match its sha256" if damage == "corrupted" else "is missing")
    assert (dist / "manifest.json").read_bytes() == before


def test_unknown_target_and_missing_manifest(small_export, tmp_path):
    assert_user_error(run_cli("validate", str(small_export), "--target", "pdp11"), "unknown target 'pdp11'")
    assert_user_error(run_cli("validate", str(tmp_path)), "no manifest.json", "edgeq export")


def test_timeout_is_reported_per_artifact(small_export, tmp_path):
    dist = _copy(small_export, tmp_path)
    # 10 ms: less than a Python interpreter needs to start (the .onnx runner can finish within 0.2 s).
    r = run_cli("validate", str(dist), "--target", "x86_64", "--timeout", "0.01", "-q")
    assert r.exit_code == 1
    for a in Manifest.load(dist).artifacts:
        assert "timed out after 0.01 s" in a.targets["x86_64"].error and a.targets["x86_64"].passed is False


@pytest.mark.qemu
@pytest.mark.parametrize("fmt, other, why", [
    ("onnx", "pte", "runner failed on cortex-a53"),
    ("pte", "onnx", "the ExecuTorch runtime refused the model at: program")])
def test_runner_crash_inside_the_emulator_keeps_the_others(small_export, tmp_path, emulated_target, fmt, other, why):
    """A file the runtime cannot load (the manifest agrees with it, so it gets past the sha256 check)."""
    dist = _copy(small_export, tmp_path)
    bad = dist / f"model_int8.{fmt}"
    bad.write_bytes(b"not a model" * 100)
    manifest = Manifest.load(dist)
    entry = manifest.artifact(fmt, "int8")
    entry.bytes, entry.sha256 = bad.stat().st_size, sha256_file(bad)
    manifest.write(dist)
    r = run_cli("validate", str(dist), "--target", "cortex-a53", "--runs", "3")
    assert r.exit_code == 1
    assert f"int8 .{fmt} failed" in r.stderr.strip().splitlines()[-1]
    results = {a.key: a.targets["cortex-a53"] for a in Manifest.load(dist).artifacts}
    assert why in results[f"int8 .{fmt}"].error and not results[f"int8 .{fmt}"].passed
    kept = results[f"int8 .{other}"]
    assert kept.passed and kept.machine == "aarch64" and kept.cpu.startswith("Cortex-A53")
    assert kept.runner == ("native" if other == "pte" else "python")


@pytest.mark.qemu
@pytest.mark.skipif(not all(shutil.which(t) for t in ("cc", "pkg-config")),
                    reason="building QEMU's plugin needs cc and pkg-config (scripts/setup.sh installs them as root)")
def test_instruction_counts_differ_between_cpu_models(small_export, tmp_path, emulated_target):
    """Cortex-A53 has no dot-product instructions; Cortex-A76 runs XNNPACK's SDOT kernels."""
    from edgeq.qemu.provision import setup

    setup(with_plugins=True)
    dist = _copy(small_export, tmp_path)
    counts = {}
    for target in ("cortex-a53", "android-arm64"):
        # The built-in target, running the .pte only: the claim is XNNPACK's kernels per CPU.
        spec = tmp_path / f"{target}.toml"
        spec.write_text(re.sub(r"(?m)^runtimes = .*$", 'runtimes = ["pte"]', (TARGETS / spec.name).read_text()))
        results = validate(dist, spec, ValidateConfig(samples=4, runs=3, count_instructions=True))
        counts[target] = results["int8 .pte"].instructions_per_inference
        assert results["int8 .pte"].passed and results["int8 .pte"].instructions_counted_over >= 10
    assert all(c and c > 100_000 for c in counts.values()), counts
    # Seen: 0.80 M vs 0.45 M, repeatable to 0.2%; far apart, not noise.
    assert counts["cortex-a53"] > 1.3 * counts["android-arm64"], counts


# /proc/cpuinfo as QEMU user mode (-cpu max, binfmt's default) and a Raspberry Pi 4 report it.
QEMU_MAX_CPUINFO = "processor\t: 0\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x00\nCPU part\t: 0x051\n"
RPI4_CPUINFO = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd crc32\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"


def test_latency_under_binfmt_emulation_is_labelled_emulated():
    """Inside `docker run --platform linux/arm64` on an x86 machine the 'host' is QEMU: say so."""
    from edgeq.runner import cpu_model

    arm64 = load_target("arm64")
    on_arm, on_x86 = placement(arm64, host="aarch64"), placement(arm64, host="x86_64")
    assert (on_arm.where, on_x86.where) == ("host", "emulated")
    qemu_cpu, _ = cpu_model(QEMU_MAX_CPUINFO)
    assert qemu_cpu.startswith("QEMU max")
    assert measured(on_arm, {"machine": "aarch64", "cpu": qemu_cpu})[0] == "emulated"
    # An older binfmt QEMU passes the x86 host's cpuinfo through to the aarch64 process.
    assert measured(on_arm, {"machine": "aarch64", "cpu": "Intel(R) Xeon(R) CPU"})[0] == "emulated"
    pi_cpu, _ = cpu_model(RPI4_CPUINFO)
    assert pi_cpu == "Cortex-A72 (implementer 0x41, part 0xd08)"
    assert measured(on_arm, {"machine": "aarch64", "cpu": pi_cpu}) == ("host", "host (aarch64)")
    assert measured(on_x86, {"machine": "aarch64", "cpu": pi_cpu})[1].startswith("emulated: qemu-aarch64 -cpu")


def test_a_host_target_of_another_arch_is_refused(small_export, tmp_path, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(EdgeqError, match="target x86_64 is x86_64 and runs on the host, but this host is aarch64"):
        validate(small_export, "x86_64")


def test_formats_a_target_does_not_run_are_not_its_failures(small_export, tmp_path):
    """A target file with runtimes = ["pte"]: the .onnx is not run there, and that is no failure."""
    dist = _copy(small_export, tmp_path)
    spec = tmp_path / "pte-only.toml"
    spec.write_text('name = "pte-only"\narch = "x86_64"\nbackend = "x86"\nruntimes = ["pte"]\n')
    r = run_cli("validate", str(dist), "--target", str(spec), "--runs", "3", "--json")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)) == {"int8 .pte"}
    assert "pte-only" not in Manifest.load(dist).artifact("onnx", "int8").targets


def test_parity_with_the_host_is_within_the_kernels_rounding():
    rng = np.random.default_rng(2)
    host = rng.normal(size=(32, 10)).astype(np.float32)
    step = np.float32(np.ptp(host) / 255)  # an int8 output grid
    one_step = parity(host, host + step * rng.integers(-1, 2, size=host.shape), "int8")
    assert one_step.passed and one_step.max_abs_diff <= 1.01 * step and one_step.top1_same > 0.8
    assert parity(host, host.copy(), "fp32").identical == 32
    assert not parity(host, host + 1e-2, "fp32").passed  # fp32 may differ in the last bits only
    assert not parity(host, host * 0.5, "int8").passed  # a wrong kernel
    nan = host.copy()
    nan[3, 3] = np.nan
    assert not parity(host, nan, "int8").passed and parity(host, nan, "int8").max_abs_diff is None


def test_outputs_unlike_the_hosts_are_judged_on_every_reference_input(small_export, tmp_path):
    """reference.npz says the host gave other outputs for the int8 .pte: the target cannot take the
    host's figures, so it runs every reference input and is judged on its own outputs."""
    dist = _copy(small_export, tmp_path)
    with np.load(dist / "reference.npz") as ref:
        arrays = {k: ref[k] for k in ref.files}
    arrays["host_int8_pte"] = arrays["host_int8_pte"] + 1.0
    np.savez(dist / "reference.npz", **arrays)
    manifest = Manifest.load(dist)
    manifest.reference.sha256 = sha256_file(dist / "reference.npz")
    manifest.write(dist)
    results = validate(dist, "x86_64", ValidateConfig(runs=2))
    pte, onnx = results["int8 .pte"], results["int8 .onnx"]
    assert not pte.host_parity.passed and pte.host_parity.samples == len(arrays["inputs"]) == 256
    assert pte.check.samples == 256 and "judged on its own outputs on 256 inputs" in pte.gates[0]
    assert pte.passed == pte.check.passed is True  # the artifact itself is fine
    assert onnx.host_parity.passed and onnx.host_parity.identical == onnx.host_parity.samples == 32
    assert onnx.passed and onnx.gates[1:] == Manifest.load(dist).artifact("onnx", "int8").host_check.gates


def test_an_artifact_at_another_length_is_held_to_its_noise_and_direction_or_fails_to_run():
    rng = np.random.default_rng(0)
    expected = [rng.normal(size=(4, 7, 5)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)]
    limits = load_target("arm64").thresholds
    close = [y + 0.01 * rng.normal(size=y.shape).astype(np.float32) for y in expected]
    at, gate = length_check(7, ("tags", "pooled"), expected, close, None, "int8", limits, "dynamic")
    assert at.passed and at.length == 7 and at.samples == 4 and 30 < at.sqnr_db < 50 and at.cosine_min > 0.99
    assert gate.startswith("at length 7 (4 samples): sqnr_db >= ") and "pooled: cosine_min >= 0.95" in gate
    flipped = [close[0], -close[1]]  # one output pointing the other way
    at, _ = length_check(7, ("tags", "pooled"), expected, flipped, None, "int8", limits, "dynamic")
    assert at.passed is False and at.cosine_min < 0
    at, _ = length_check(7, ("tags", "pooled"), expected, close, None, "fp32", limits, "dynamic")
    assert at.passed is False  # fp32 is held to 40 dB
    at, gate = length_check(7, ("tags", "pooled"), expected, None, "RuntimeError: size 7 > 6", "int8", limits, "dynamic")
    assert at.passed is False and at.error == "RuntimeError: size 7 > 6" and gate == "runs at length 7"
    at, _ = length_check(7, ("tags", "pooled"), expected, [close[0][:, :6], close[1]], None, "int8", limits, "dynamic")
    assert at.passed is False and at.error == "outputs of another number or shape"
