"""Quantization-aware training: fine-tune a fake-quantized model, then convert it to int8.

The standard recipe: start from the float weights at a low learning rate, freeze batch-norm
statistics part-way, then freeze the observers (the quantization ranges) for the rest;
evaluate the fake-quantized model on held-out training images after every epoch and keep the
best epoch. One process, or data-parallel under `torchrun` (DDP: gloo on CPU, nccl on CUDA).
A checkpoint is written atomically after every epoch and every `checkpoint_every` steps, so
Ctrl-C loses little and `resume` picks up where the last checkpoint left off.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeq.config import QuantRecipe, TrainConfig
from edgeq.data import ImageSet, Preprocess
from edgeq.errors import EdgeqError
from edgeq.manifest import QatFlow, write_atomic
from edgeq.models import LoadedModel
from edgeq.progress import log_lines
from edgeq.quantize import convert, prepare, quiet
from edgeq.quantize.qat_patterns import fast_pattern_rewrites

CHECKPOINT_FORMAT = "edgeq-qat-checkpoint/1"


@dataclass(frozen=True)
class World:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class TrainSplit:
    """Training images split once, with a fixed seed: trained on, and held out for per-epoch scoring."""

    images: ImageSet
    train: np.ndarray
    val: np.ndarray

    @staticmethod
    def of(images: ImageSet, config: TrainConfig, num_classes: int, world: World) -> "TrainSplit":
        if images.labels is None or images.classes is None:
            raise EdgeqError(f"{images.description} has no labels: QAT needs one subfolder per class")
        if len(images.classes) != num_classes:
            raise EdgeqError(f"{images.description} has {len(images.classes)} classes but the model outputs "
                             f"{num_classes}: train on data with the model's classes")
        order = np.random.default_rng(config.seed).permutation(len(images))
        n_val = config.val_samples or min(5000, max(1, len(images) // 10))
        val, train = order[:n_val], order[n_val:][:config.train_samples]
        if len(train) < config.batch_size * world.size:
            raise EdgeqError(f"{images.description}: {len(train)} training images after holding out {len(val)} "
                             f"are fewer than one batch ({config.batch_size} × {world.size} processes): "
                             "add images or lower --batch-size / --val-samples")
        return TrainSplit(images, train, val)


@dataclass(frozen=True)
class Run:
    """What every flow's QAT shares: the model, the recipes, the data, and where this process stands."""

    loaded: LoadedModel
    recipe: QuantRecipe
    config: TrainConfig
    data: TrainSplit
    preprocess: Preprocess
    resume: bool
    world: World
    bar: Any  # rich Progress


@contextlib.contextmanager
def process_group(device: str) -> Iterator[World]:
    """Join torchrun's process group for the block when launched by it (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        yield World()
        return
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)
    finally:
        dist.destroy_process_group()


def resolve_device(spec: str, world: World) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgeqError(f"--device {spec}: this torch build sees no CUDA GPU: use --device cpu")
        return torch.device(spec if ":" in spec else f"cuda:{world.local_rank}")
    if spec != "cpu":
        raise EdgeqError(f"--device {spec!r} not understood: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def train(flow: str, run: Run, checkpoint: Path) -> tuple[nn.Module, QatFlow]:
    """Prepare `flow` for QAT, fine-tune, keep the best epoch; return the converted int8 model (on CPU)."""
    loaded, recipe, config, data, preprocess = run.loaded, run.recipe, run.config, run.data, run.preprocess
    resume, world, bar, log = run.resume, run.world, run.bar, log_lines(run.bar)
    label = f"FX {recipe.backend}" if flow == "fx" else f"PT2E {flow}"
    started = time.perf_counter()
    device = resolve_device(config.device, world)
    model = prepare(flow, loaded.module, loaded.input_shape, recipe, qat=True)
    fingerprint = _fingerprint(flow, loaded, recipe)
    state = _load_checkpoint(checkpoint, fingerprint, model) if resume else None
    if state is None and checkpoint.exists():
        raise EdgeqError(f"{checkpoint} holds an earlier QAT run: add --resume to continue it, "
                         "or delete it to start over")
    model.to(device)
    optimizer = _optimizer(config, model)
    steps_per_epoch = len(data.train) // (config.batch_size * world.size)
    total = steps_per_epoch * config.epochs
    record = QatFlow(flow)
    step, best = 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step, record.epochs = state["step"], state["history"]
        best = state["best"]
        record.resumed_at_step = step
        log(f"QAT {label}: resuming from {checkpoint} at epoch {step // steps_per_epoch + 1}, "
            f"step {step % steps_per_epoch + 1}" if step < total else f"QAT {label}: already trained ({checkpoint})")
    net = model if world.size == 1 else nn.parallel.DistributedDataParallel(model)

    def save(done_epochs: list[dict[str, float]]) -> None:
        if world.main:
            _save_checkpoint(checkpoint, {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "step": step,
                                          "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "history": done_epochs, "best": best, "config": config.to_dict()})
        _barrier(world)

    bn_step, observer_step = round(config.bn_epoch * steps_per_epoch), round(config.observer_epoch * steps_per_epoch)
    try:
        while step < total:
            epoch, first = divmod(step, steps_per_epoch)
            epoch_started, losses = time.perf_counter(), []
            set_mode(flow, model, train=True)
            _freeze(flow, model, bn=step >= bn_step, observers=step >= observer_step)
            order = np.random.default_rng([config.seed, epoch]).permutation(data.train)
            task = bar.add_task(f"QAT {label} · epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch,
                                completed=first)
            for i in range(first, steps_per_epoch):
                if step in (bn_step, observer_step):  # freezes hold until the next set_mode(train) above
                    _freeze(flow, model, bn=step >= bn_step, observers=step >= observer_step)
                lr = _lr_at(config, step, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rows = order[(i * world.size + world.rank) * config.batch_size:][:config.batch_size]
                x = torch.from_numpy(data.images.batch(preprocess, rows)).to(device)
                y = torch.from_numpy(data.images.labels[rows]).to(device)
                where = f"at epoch {epoch + 1}, step {i + 1}: lower --lr (now {lr:g}) or check the training data"
                try:
                    loss = F.cross_entropy(net(x), y)
                    mean_loss = _mean(loss.detach(), world)
                    if not math.isfinite(mean_loss):
                        raise EdgeqError(f"QAT {label}: the loss became {mean_loss} {where}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                except RuntimeError as e:  # fake-quant ops reject the inf/NaN ranges of diverged weights
                    first = str(e).strip().splitlines()[0]
                    raise EdgeqError(f"QAT {label}: training failed ({first}) {where}") from None
                step += 1
                losses.append(mean_loss)
                bar.update(task, advance=1, description=f"QAT {label} · epoch {epoch + 1}/{config.epochs} · "
                                                        f"loss {np.mean(losses[-50:]):.3f}")
                if step % config.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                    save(record.epochs)
            accuracy = evaluate(flow, model, run, device)
            record.epochs.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                                  "val_accuracy": accuracy, "lr_end": lr, "seconds": time.perf_counter() - epoch_started})
            is_best = best is None or accuracy > best["val_accuracy"]
            if is_best:
                best = {"epoch": epoch + 1, "val_accuracy": accuracy,
                        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            bar.remove_task(task)
            log(f"QAT {label} · epoch {epoch + 1}/{config.epochs}: loss {record.epochs[-1]['loss']:.4f}, "
                f"fake-quant accuracy on {len(data.val)} held-out training images {accuracy:.2%}"
                f"{' (best)' if is_best else ''}, {record.epochs[-1]['seconds']:.0f} s")
            save(record.epochs)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the same exception, with where to resume
        e.args = (f"interrupted; no artifacts were written; the last QAT checkpoint is {checkpoint}: "
                  "run the same command with --resume to continue",)
        raise

    model.cpu().load_state_dict(best["model"])
    record.best_epoch, record.best_val_accuracy = best["epoch"], best["val_accuracy"]
    record.seconds = time.perf_counter() - started
    set_mode(flow, model, train=False)
    _freeze(flow, model, bn=True, observers=True)
    return convert(flow, model, recipe), record


def evaluate(flow: str, model: nn.Module, run: Run, device: torch.device) -> float:
    """Top-1 accuracy of the fake-quantized model on the held-out images (each process scores a shard).
    Observers are paused: scoring must not move the quantization ranges."""
    data, preprocess, batch_size, world = run.data, run.preprocess, run.config.batch_size, run.world
    set_mode(flow, model, train=False)
    fake_quants = [m for m in model.modules() if _is_fake_quant(m)]
    observing = [bool(m.observer_enabled[0]) for m in fake_quants]
    for m in fake_quants:
        m.disable_observer()
    shard = data.val[world.rank::world.size]
    correct = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(shard), batch_size * 4):
            rows = shard[start:start + batch_size * 4]
            logits = model(torch.from_numpy(data.images.batch(preprocess, rows)).to(device))
            correct += torch.tensor([float((logits.argmax(1).cpu().numpy() == data.images.labels[rows]).sum()), len(rows)],
                                    dtype=torch.float64)
    if world.size > 1:
        torch.distributed.all_reduce(correct)
    for m, was in zip(fake_quants, observing):
        if was:
            m.enable_observer()
    return float(correct[0] / correct[1])


def set_mode(flow: str, model: nn.Module, train: bool) -> None:
    """Train/eval mode. An exported (PT2E) graph ignores .train()/.eval(): its batch-norm and dropout
    ops are rewritten instead."""
    if flow == "fx":
        model.train(train)
        return
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    with quiet(), fast_pattern_rewrites():
        (move_exported_model_to_train if train else move_exported_model_to_eval)(model)


def _freeze(flow: str, model: nn.Module, bn: bool, observers: bool) -> None:
    if bn:
        if flow == "fx":
            from torch.ao.nn.intrinsic.qat import freeze_bn_stats

            model.apply(freeze_bn_stats)
        else:  # batch norm with training=False: running statistics, no more updates
            changed = False
            for node in model.graph.nodes:
                if node.target == torch.ops.aten.batch_norm.default and node.args[5]:
                    node.args = (*node.args[:5], False, *node.args[6:])
                    changed = True
            if changed:
                model.recompile()
    if observers:
        for m in model.modules():
            if _is_fake_quant(m):
                m.disable_observer()


def _is_fake_quant(m: nn.Module) -> bool:
    # torch.ao (FX) and torchao (PT2E) each have their own FakeQuantize classes; both have these.
    return hasattr(m, "observer_enabled") and hasattr(m, "disable_observer")


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)


def _lr_at(config: TrainConfig, step: int, total: int) -> float:
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    if config.schedule == "step":
        return config.lr * (0.1 if step >= total * 2 / 3 else 1.0)
    return config.lr


def _mean(value: torch.Tensor, world: World) -> float:
    if world.size > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world.size
    return float(value)


def _barrier(world: World) -> None:
    if world.size > 1:
        torch.distributed.barrier()


def _fingerprint(flow: str, loaded: LoadedModel, recipe: QuantRecipe) -> dict[str, Any]:
    return {"model": loaded.source, "weights_sha256": loaded.weights_sha256, "input_shape": list(loaded.input_shape),
            "flow": flow, "backend": recipe.backend, "per_channel": recipe.per_channel}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """The saved state, loaded into `model`; None when there is no checkpoint yet."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise EdgeqError(f"{path} is not a readable QAT checkpoint ({type(e).__name__}): delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise EdgeqError(f"{path} is not an edgeq QAT checkpoint: delete it or pass another --checkpoint-dir")
    theirs = state["fingerprint"]
    diff = [k for k in fingerprint if theirs.get(k) != fingerprint[k]]
    if diff:
        raise EdgeqError(f"{path} was made for another model or recipe ({', '.join(f'{k}: {theirs.get(k)}' for k in diff)}): "
                         "pass the same --model/--weights, or delete it to start over")
    try:
        model.load_state_dict(copy.copy(state["model"]))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise EdgeqError(f"{path} does not fit this model's architecture ({first}): delete it to start over") from None
    return state
