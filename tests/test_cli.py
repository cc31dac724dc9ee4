"""The main job end to end, and every bad input the CLI must turn into one clear line."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_nothing_written, assert_user_error, run_cli
from edgeq.manifest import Manifest


def test_builtin_export_writes_every_artifact_and_agrees(builtin_export):
    manifest, out, proc = builtin_export
    got = {(a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert got == {(f, p) for f in ("pte", "onnx", "ptl") for p in ("int8", "fp32")}
    for a in manifest["artifacts"]:
        path = out / a["path"]
        assert path.stat().st_size == a["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"]
        check = a["host_check"]
        assert check["samples"] >= 1000
        if a["precision"] == "int8":
            assert check["top1_agreement"] >= 0.97, a
            assert check["sqnr_db"] > 10
        else:
            assert check["top1_agreement"] >= 0.999, a
        assert check["accuracy"] is not None
    assert manifest["float_accuracy"] > 0.85
    assert manifest["model"]["source"] == "builtin:fashion-mobilenet"
    assert manifest["target"]["name"] == "arm64" and manifest["method"] == "static"
    assert manifest["preprocess"]["size"] == [28, 28] and manifest["preprocess"]["channels"] == 1
    assert {"torch", "executorch", "onnxruntime", "torchao"} <= set(manifest["versions"])
    assert manifest == Manifest.load(out).to_dict()  # --json prints exactly manifest.json


def test_builtin_int8_is_smaller_and_fully_delegated(builtin_export):
    manifest, _, _ = builtin_export
    arts = {(a["format"], a["precision"]): a for a in manifest["artifacts"]}
    for fmt in ("pte", "onnx", "ptl"):
        assert arts[fmt, "int8"]["bytes"] < 0.5 * arts[fmt, "fp32"]["bytes"]
    pte = arts["pte", "int8"]["details"]
    assert pte["delegated_ops"] > 50 and pte["portable_ops"] == {}
    onnx = arts["onnx", "int8"]["details"]
    assert onnx["quantize_linear"] > 10 and onnx["dequantize_linear"] > 10


def test_progress_goes_to_stderr_only(builtin_export):
    _, _, proc = builtin_export
    assert proc.stdout.lstrip().startswith("{")  # nothing but the JSON on stdout


def test_summary_table(tmp_path):
    result = run_cli("export", "--no-validate", "--out", str(tmp_path / "dist"), "--formats", "onnx", "--precisions", "int8",
                     "--check-samples", "300", "-q")
    assert result.exit_code == 0, result.output
    assert "int8 .onnx" in result.stdout and "Float model accuracy" in result.stdout


def test_reexport_into_own_folder_replaces_it(tmp_path):
    out = tmp_path / "dist"
    for _ in range(2):
        result = run_cli("export", "--no-validate", "--out", str(out), "--formats", "ptl", "--precisions", "fp32",
                         "--check-samples", "50", "-q")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model_fp32.ptl", "reference.npz", "report.html",
                                                     "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["dist"]


# --- bad input: one line, exit code ≠ 0, nothing written -------------------------------------

def test_missing_model_file(tmp_path):
    r = run_cli("export", "--model", str(tmp_path / "nope.py") + ":build", "--out", str(tmp_path / "dist"))
    assert_user_error(r, "does not exist")
    assert_nothing_written(tmp_path)


def test_missing_weights(tmp_path):
    r = run_cli("export", "--weights", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "nope.pt", "does not exist")
    assert_nothing_written(tmp_path)


def test_garbage_weights(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    r = run_cli("export", "--weights", str(bad), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "not a PyTorch checkpoint")
    assert_nothing_written(tmp_path)


class _Payload:
    """Unpickling this would run code (touch a file); weights_only must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_weights_with_pickled_code_are_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": _Payload(str(marker))}, evil)
    r = run_cli("export", "--weights", str(evil), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "refused", "weights_only")
    assert not marker.exists()
    assert_nothing_written(tmp_path)


def test_weights_of_another_architecture(tmp_path):
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    r = run_cli("export", "--weights", str(other), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "do not fit the model")
    assert_nothing_written(tmp_path)


def test_wrong_input_shape(tmp_path):
    r = run_cli("export", "--input-shape", "1,3,28,28", "--out", str(tmp_path / "dist"))
    assert_user_error(r, "1,3,28,28", "--input-shape")
    assert_nothing_written(tmp_path)


def test_empty_data_folder(tmp_path):
    (tmp_path / "images").mkdir()
    r = run_cli("export", "--calib-data", str(tmp_path / "images"), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "has no images")
    assert_nothing_written(tmp_path)


def test_non_image_data_folder(tmp_path):
    folder = tmp_path / "notes"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "readme.txt").write_text("not an image")
    r = run_cli("export", "--eval-data", str(folder), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "has no images")
    assert_nothing_written(tmp_path)


def test_corrupt_image_file(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(np.full((28, 28), i * 20, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    r = run_cli("export", "--calib-data", str(folder), "--out", str(tmp_path / "dist"), "--check-samples", "2")
    assert_user_error(r, "broken.png")
    assert_nothing_written(tmp_path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height 1-bit pixels and holds none (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_image(tmp_path):
    """400 M pixels declared: more than twice PIL's limit, so PIL refuses to decode it."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((28, 28), i * 50, np.uint8)).save(folder / f"{i}.png")
    (folder / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    r = run_cli("export", "--calib-data", str(folder), "--out", str(tmp_path / "dist"), "--check-samples", "2")
    assert_user_error(r, "bomb.png", "too large to decode safely")
    assert_nothing_written(tmp_path)


def test_model_without_classes(tmp_path):
    r = run_cli("export", "--model", "torchvision:mobilenet_v2?num_classes=0", "--input-shape", "1,3,32,32",
                "--out", str(tmp_path / "dist"))
    assert_user_error(r, "outputs no class scores", "num_classes")
    assert_nothing_written(tmp_path)


def test_eval_data_with_other_classes(tmp_path):
    folder = tmp_path / "val"
    for c in ("a", "b", "c"):
        (folder / c).mkdir(parents=True)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / c / "x.png")
    r = run_cli("export", "--eval-data", str(folder), "--out", str(tmp_path / "dist"))
    assert_user_error(r, "3 classes", "outputs 10")
    assert_nothing_written(tmp_path)


def test_unknown_target(tmp_path):
    r = run_cli("export", "--target", "pdp11", "--out", str(tmp_path / "dist"))
    assert_user_error(r, "unknown target 'pdp11'", "arm64")
    assert_nothing_written(tmp_path)


def test_unknown_model_name(tmp_path):
    r = run_cli("export", "--model", "torchvision:mobilenet_v9", "--out", str(tmp_path / "dist"))
    assert_user_error(r, "mobilenet_v9", "mobilenet_v2")
    assert_nothing_written(tmp_path)


UNSUPPORTED = '''
import torch
from torch import nn

class Histogram(nn.Module):
    def forward(self, x):
        return torch.histc(x, bins=10).unsqueeze(0)

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)
        self.hist = Histogram()

    def forward(self, x):
        y = self.conv(x)
        return self.fc(self.pool(y).flatten(1)) + self.hist(y)

def build():
    return Net()

INPUT_SHAPE = (1, 1, 28, 28)
'''


@pytest.mark.parametrize("fmt", ["pte", "onnx"])
def test_op_the_exporter_cannot_handle_names_op_and_layer(tmp_path, fmt):
    model = tmp_path / "odd.py"
    model.write_text(UNSUPPORTED)
    r = run_cli("export", "--no-validate", "--model", f"{model}:build", "--formats", fmt, "--precisions", "fp32",
                "--out", str(tmp_path / "dist"), "--check-samples", "20")
    assert_user_error(r, "aten.histc", "layer hist")
    assert_nothing_written(tmp_path)


def test_output_folder_that_is_not_edgeqs(tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    r = run_cli("export", "--out", str(out))
    assert_user_error(r, "not an edgeq export")
    assert (out / "thesis.tex").read_text() == "precious"
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_unknown_format(tmp_path):
    r = run_cli("export", "--formats", "tflite", "--out", str(tmp_path / "dist"))
    assert_user_error(r, "tflite", "pte,onnx,ptl")
    assert_nothing_written(tmp_path)


def _labelled_folder(root: Path, classes: tuple[str, ...]) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), i * 40, np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["missing", "other classes", "no labels", "user model without data"])
def test_qat_bad_training_data(tmp_path, case):
    args = ["export", "--method", "qat", "--out", str(tmp_path / "dist")]
    if case == "missing":
        r, needles = run_cli(*args, "--train-data", str(tmp_path / "nope")), ("nope", "does not exist")
    elif case == "other classes":
        folder = _labelled_folder(tmp_path / "train", ("a", "b", "c"))
        r, needles = run_cli(*args, "--train-data", str(folder)), ("3 classes", "outputs 10")
    elif case == "no labels":
        (tmp_path / "flat").mkdir()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "flat" / "x.png")
        r, needles = run_cli(*args, "--train-data", str(tmp_path / "flat")), ("no labels", "one subfolder per class")
    else:
        r = run_cli(*args, "--model", "torchvision:resnet18?num_classes=10", "--input-shape", "1,3,32,32")
        needles = ("--method qat needs --train-data",)
    assert_user_error(r, *needles)
    assert_nothing_written(tmp_path)
    assert not (tmp_path / "dist.qat").exists()


@pytest.mark.parametrize("args, needle", [
    (("--epochs", "0"), "--epochs must be at least 1"),
    (("--lr", "nan"), "--lr must be a positive number"),
    (("--device", "tpu"), "--device 'tpu' not understood"),
])
def test_qat_bad_options(tmp_path, args, needle):
    r = run_cli("export", "--method", "qat", "--train-samples", "64", "--val-samples", "32", *args,
                "--out", str(tmp_path / "dist"))
    assert_user_error(r, needle)
    assert_nothing_written(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_qat_cuda_without_a_gpu(tmp_path):
    r = run_cli("export", "--method", "qat", "--device", "cuda", "--train-samples", "64", "--val-samples", "32",
                "--out", str(tmp_path / "dist"))
    assert_user_error(r, "sees no CUDA GPU", "--device cpu")
    assert_nothing_written(tmp_path)
