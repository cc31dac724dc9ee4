"""QAT on the built-in model with a few hundred images: real training steps, real checkpoints."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from conftest import EDGEQ, assert_nothing_written
from edgeq.data import Preprocess, fashion_mnist
from edgeq.errors import EdgeqError
from edgeq.models import load_model
from edgeq.config import QuantRecipe, TrainConfig
from edgeq.qat import Run, TrainSplit, World, train

SMALL = dict(epochs=1, batch_size=32, train_samples=256, val_samples=128, checkpoint_every=4)


@pytest.fixture(scope="module")
def builtin():
    loaded = load_model(None, None, None)
    return loaded, Preprocess.default_for(loaded.input_shape, grayscale_stats=True), fashion_mnist("train")


def _train(builtin, checkpoint: Path, flow: str = "xnnpack", resume: bool = False, **overrides):
    loaded, preprocess, images = builtin
    config = TrainConfig(**{**SMALL, **overrides})
    split = TrainSplit.of(images, config, loaded.num_classes, World())
    bar = Progress(console=Console(file=io.StringIO(), width=200))  # log lines land in the console's file
    run = Run(loaded, QuantRecipe(backend="qnnpack"), config, split, preprocess, resume, World(), bar)
    model, record = train(flow, run, checkpoint)
    lines = [ln for ln in bar.console.file.getvalue().splitlines() if ln.startswith("QAT")]
    return model, record, lines


@pytest.mark.parametrize("flow", ["xnnpack", "fx"])
def test_train_scores_each_epoch_and_returns_a_working_int8_model(builtin, tmp_path, flow):
    model, record, lines = _train(builtin, tmp_path / "ckpt.pt", flow, epochs=2)
    assert [e["epoch"] for e in record.epochs] == [1, 2]
    assert record.best_epoch in (1, 2)
    assert record.best_val_accuracy == max(e["val_accuracy"] for e in record.epochs)
    assert record.best_val_accuracy > 0.7  # from a 92% float model, a few steps must not wreck it
    assert len(lines) == 2 and "(best)" in lines[0]
    x = torch.from_numpy(builtin[2].batch(builtin[1], range(8)))
    with torch.no_grad():
        assert model(x).shape == (8, 10)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["step"] == 2 * (256 // 32) and len(state["history"]) == 2


@pytest.mark.parametrize("flow", ["xnnpack", "fx"])
def test_frozen_batch_norm_keeps_the_float_statistics(builtin, tmp_path, flow):
    """freeze_bn_after=0: running statistics never move; by default they adapt for 60% of training."""
    def first_running_mean(state: dict[str, torch.Tensor]) -> torch.Tensor:  # the stem's; FX renames it
        return next(v for k, v in state.items() if k.endswith("running_mean"))

    float_mean = first_running_mean(builtin[0].module.state_dict())

    def running_mean(**kw) -> torch.Tensor:
        model, _, _ = _train(builtin, tmp_path / f"{len(kw)}.pt", flow, **kw)
        del model
        return first_running_mean(torch.load(tmp_path / f"{len(kw)}.pt", weights_only=True)["model"])

    assert torch.equal(running_mean(freeze_bn_after=0.0), float_mean)
    assert not torch.equal(running_mean(), float_mean)


def test_resume_continues_from_the_checkpoint(builtin, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    _train(builtin, checkpoint, epochs=1)
    with pytest.raises(EdgeqError, match="add --resume"):
        _train(builtin, checkpoint, epochs=2)
    _, record, lines = _train(builtin, checkpoint, epochs=2, resume=True)
    assert record.resumed_at_step == 256 // 32
    assert [e["epoch"] for e in record.epochs] == [1, 2]
    assert "resuming" in lines[0] and "epoch 2, step 1" in lines[0]
    _, again, lines = _train(builtin, checkpoint, epochs=2, resume=True)
    assert again.epochs == record.epochs and "already trained" in lines[0]


@pytest.mark.parametrize("lr, symptom", [(1e20, "the loss became nan"), (1e30, "training failed")])
def test_divergence_stops_with_epoch_and_step(builtin, tmp_path, lr, symptom):
    """lr 1e20: NaN loss at step 2. lr 1e30: the weights overflow and a fake-quant op rejects them."""
    with pytest.raises(EdgeqError, match=rf"{symptom}.* at epoch 1, step \d+: lower --lr"):
        _train(builtin, tmp_path / "ckpt.pt", lr=lr)


def test_checkpoint_of_another_model_is_refused(builtin, tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    _train(builtin, checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    state["fingerprint"]["model"] = "torchvision:resnet18"
    torch.save(state, checkpoint)
    with pytest.raises(EdgeqError, match="made for another model.*torchvision:resnet18"):
        _train(builtin, checkpoint, resume=True)
    state["fingerprint"]["model"] = builtin[0].source
    state["model"] = {k: v[:1] if v.ndim else v for k, v in state["model"].items()}  # same names, other shapes
    torch.save(state, checkpoint)
    with pytest.raises(EdgeqError, match="does not fit this model's architecture"):
        _train(builtin, checkpoint, resume=True)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeqError, match="not a readable QAT checkpoint"):
        _train(builtin, checkpoint, resume=True)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(epochs=0), "--epochs"), (dict(lr=-1.0), "--lr"), (dict(optimizer="lbfgs"), "--optimizer"),
    (dict(schedule="cyclic"), "--schedule"), (dict(freeze_bn_after=-1.0), "--freeze-bn-after"),
    (dict(batch_size=0), "--batch-size")])
def test_bad_config(kwargs, needle):
    with pytest.raises(EdgeqError, match=needle):
        TrainConfig(**kwargs)


def test_split_needs_the_models_classes_and_enough_images(builtin):
    loaded, _, images = builtin
    with pytest.raises(EdgeqError, match="10 classes but the model outputs 5"):
        TrainSplit.of(images, TrainConfig(), 5, World())
    with pytest.raises(EdgeqError, match="fewer than one batch"):
        TrainSplit.of(images, TrainConfig(train_samples=10, batch_size=32), 10, World())
    split = TrainSplit.of(images, TrainConfig(val_samples=100, train_samples=300), 10, World())
    assert len(split.val) == 100 and len(split.train) == 300 and not set(split.val) & set(split.train)


# End to end, as users run it: the installed command, one process and two under torchrun.
# int8 only: a QAT export's fp32 artifacts are the float model's, exported as in every other test.
QAT_FAST = ["--no-validate", "--method", "qat", "--epochs", "1", "--train-samples", "2048", "--val-samples", "512",
            "--check-samples", "1000", "--precisions", "int8"]


def _edgeq(*args: str, launcher: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run([*launcher, *args, "--json"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def qat_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("qat") / "dist"
    return _edgeq(EDGEQ, "export", *QAT_FAST, "--out", str(out)), out


def test_qat_export_trains_each_flow_and_passes_the_checks(qat_export):
    manifest, out = qat_export
    assert manifest["method"] == "qat"
    training = manifest["training"]
    assert [f["flow"] for f in training["flows"]] == ["xnnpack", "fx"]  # PT2E for .pte/.onnx, FX for .ptl
    assert training["processes"] == 1 and training["config"]["epochs"] == 1
    available = len(fashion_mnist("train")) - 512  # the bundled subset has 1,024 training images
    assert manifest["data"]["training"]["images"] == min(2048, available) and manifest["data"]["validation"] == 512
    for flow in training["flows"]:
        assert flow["best_epoch"] == 1 and flow["epochs"][0]["loss"] > 0
        assert (Path(training["checkpoints"]) / f"{flow['flow']}.pt").is_file()
    assert Path(training["checkpoints"]) == out.with_name("dist.qat")
    for a in manifest["artifacts"]:
        assert a["host_check"]["passed"], a
        if a["precision"] == "int8":
            assert a["host_check"]["accuracy"] >= manifest["float_accuracy"] - 0.015, a


def test_ddp_on_two_processes_gives_the_same_quality(qat_export, tmp_path):
    """torchrun, 2 CPU processes on gloo, half the per-process batch: the same global batch and steps."""
    single, _ = qat_export
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    ddp = _edgeq("-m", "edgeq", "export", *QAT_FAST, "--batch-size", "32", "--formats", "ptl",
                 "--out", str(tmp_path / "dist"), launcher=torchrun)
    assert ddp["training"]["processes"] == 2
    one, two = single["training"]["flows"][1], ddp["training"]["flows"][0]
    assert one["flow"] == two["flow"] == "fx"  # the FX flow (.ptl): the same loop as PT2E's, and cheaper
    assert abs(two["best_val_accuracy"] - one["best_val_accuracy"]) <= 0.02, (one, two)
    acc = {m["training"]["processes"]: next(a["host_check"] for a in m["artifacts"] if a["format"] == "ptl")
           for m in (single, ddp)}
    assert acc[2]["passed"] and abs(acc[2]["accuracy"] - acc[1]["accuracy"]) <= 0.02, acc


def test_ctrl_c_keeps_the_last_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "dist"
    checkpoint = tmp_path / "dist.qat" / "fx.pt"  # the FX flow (.ptl): the same loop as PT2E's, and cheaper
    args = [EDGEQ, "export", "--no-validate", "--method", "qat", "--epochs", "2", "--train-samples", "4096", "--val-samples", "256",
            "--checkpoint-every", "10", "--formats", "ptl", "--precisions", "int8", "--check-samples", "300",
            "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert_nothing_written(tmp_path)
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 10 <= step < 2 * min(4096, len(fashion_mnist("train")) - 256) // 64
    resumed = _edgeq(*args, "--resume")
    flow = resumed["training"]["flows"][0]
    assert flow["resumed_at_step"] == step and [e["epoch"] for e in flow["epochs"]] == [1, 2]
    assert resumed["artifacts"][0]["host_check"]["passed"]
