"""Model sources: the built-in Fashion-MNIST net, torchvision classifiers, and user factories.

    builtin:fashion-mobilenet                the default; weights ship with edgeq
    torchvision:NAME[?key=value&...]         any torchvision classification model, random init
    path/to/file.py:factory                  a function in a Python file that returns an nn.Module
    package.module:factory                   the same, from an importable module
"""

from __future__ import annotations

import hashlib
import importlib
import io
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from edgeq.errors import EdgeqError, first_line
from edgeq.tensors import Example, Signature, output_names, signature_of

BUILTIN = "builtin:fashion-mobilenet"
BUILTIN_WEIGHTS = Path(__file__).parent / "builtin" / "fashion_mobilenet.pt"
BUILTIN_INPUT_SHAPE = (1, 1, 28, 28)
TORCHVISION_INPUT_SIZES = {"inception_v3": 299}  # the few classifiers that want another size


@dataclass
class LoadedModel:
    """An image classifier (one N×C×H×W float input, N×classes logits out: `input_shape`,
    `num_classes`) or a model of any tensors (`example`, `signature`: its factory's module defines
    example_inputs())."""

    module: nn.Module  # in eval mode, on the CPU
    source: str
    input_shape: tuple[int, ...] | None  # image models
    weights: str | None  # path, or None for random initialisation
    weights_sha256: str | None
    num_classes: int | None  # image models: the classes its logits score
    builtin: bool = False
    example: Example | None = None  # tensor models: example_inputs(), batch 1, and the dynamic length
    signature: Signature | None = None  # tensor models

    @property
    def spec(self) -> tuple[int, ...] | tuple[torch.Tensor, ...]:
        """What the exporters trace at: the example inputs, or the image input shape."""
        return self.example if self.example is not None else self.input_shape

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.signature.names if self.signature else ("input",)

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "parameters": sum(p.numel() for p in self.module.parameters()),
                "num_classes": self.num_classes,
                "inputs": [s.describe() for s in self.signature.inputs] if self.signature else None,
                "outputs": list(self.signature.outputs) if self.signature else None}


def fashion_mobilenet(num_classes: int = 10) -> nn.Sequential:
    """A MobileNetV2-style net for 1×28×28 inputs: inverted residuals, ReLU6, ~96k parameters."""
    layers: list[nn.Module] = [Conv2dNormActivation(1, 16, stride=2, activation_layer=nn.ReLU6)]
    cin = 16
    # (expansion, out channels, repeats, first stride), as in MobileNetV2's table
    for t, c, n, s in [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2)]:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(Conv2dNormActivation(cin, 256, kernel_size=1, activation_layer=nn.ReLU6))
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(256, num_classes))


def load_model(source: str | None = None, weights: str | Path | None = None,
               input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Build the model named by `source`, load `weights` (a state_dict, weights_only), check the shape."""
    source = source or BUILTIN
    builtin = source == BUILTIN
    module, default_shape = _build(source)
    if weights is None and builtin:
        weights = BUILTIN_WEIGHTS
    digest = None
    if weights is not None:
        digest = load_weights(module, Path(weights))
    module.eval()
    bad = next((name for name, t in (*module.named_parameters(), *module.named_buffers())
                if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise EdgeqError(f"{source}: {bad} holds NaN or infinite values"
                         f"{f' (from {weights})' if weights is not None else ''}: use a checkpoint from a healthy run")
    if callable(getattr(module, "example_inputs", None)):
        if input_shape:
            raise EdgeqError(f"--input-shape is for image models; {source} defines example_inputs(), which fixes "
                             "its inputs: drop --input-shape")
        example, signature = check_example_inputs(module, source)
        return LoadedModel(module=module, source=source, input_shape=None,
                           weights=str(weights) if weights is not None else None, weights_sha256=digest,
                           num_classes=None, example=example, signature=signature)
    shape = tuple(input_shape) if input_shape else default_shape
    if shape is None:
        raise EdgeqError(f"model {source} has no default input shape: pass --input-shape N,C,H,W "
                         "(or give the factory's module an INPUT_SHAPE)")
    num_classes = check_input_shape(module, shape, source)
    return LoadedModel(module=module, source=source, input_shape=shape,
                       weights=str(weights) if weights is not None else None,
                       weights_sha256=digest, num_classes=num_classes, builtin=builtin)


def _build(source: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    if source == BUILTIN:
        return fashion_mobilenet(), BUILTIN_INPUT_SHAPE
    if source.startswith("torchvision:"):
        return _torchvision(source.removeprefix("torchvision:"))
    if source.startswith("builtin:"):
        raise EdgeqError(f"unknown built-in model {source}: the built-in model is {BUILTIN}")
    if ":" not in source:
        raise EdgeqError(f"model source {source!r} is not understood: use torchvision:NAME, "
                         "path/to/file.py:factory or package.module:factory")
    where, factory_name = source.rsplit(":", 1)
    module_obj = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    factory = getattr(module_obj, factory_name, None)
    if not callable(factory):
        raise EdgeqError(f"{where} has no callable {factory_name!r}: name a function that returns an nn.Module")
    model = _call_factory(factory, source)
    shape = getattr(model, "input_shape", None) or getattr(module_obj, "INPUT_SHAPE", None)
    return model, tuple(shape) if shape else None


def _torchvision(spec: str) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision

    name, _, query = spec.partition("?")
    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in known:
        close = [k for k in known if name.split("_")[0] in k][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise EdgeqError(f"unknown torchvision classification model {name!r}{hint}: "
                         "see torchvision.models.list_models(module=torchvision.models)")
    kwargs = {k: _literal(v) for k, v in parse_qsl(query, strict_parsing=False)}
    model = _call_factory(lambda: torchvision.models.get_model(name, weights=None, **kwargs), f"torchvision:{spec}")
    size = TORCHVISION_INPUT_SIZES.get(name, 224)
    return model, (1, 3, size, size)


def _literal(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _call_factory(factory: Callable[[], Any], source: str) -> nn.Module:
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's code or arguments: one line, naming the fix
        first = first_line(e)
        raise EdgeqError(f"building {source} failed ({type(e).__name__}: {first}): fix the factory or the "
                         "model's arguments") from None
    if not isinstance(model, nn.Module):
        raise EdgeqError(f"{source} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise EdgeqError(f"model file {path} does not exist: check the path in --model")
    name = f"edgeq_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EdgeqError(f"cannot import {path}: is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it as a user error, in one line
        raise EdgeqError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise EdgeqError(f"cannot import module {name!r} ({e}): install it or use path/to/file.py:factory") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise EdgeqError(f"importing {name} failed: {type(e).__name__}: {e}") from None


def load_weights(module: nn.Module, path: Path) -> str:
    """Load a state_dict with weights_only=True (never unpickle code); returns the file's sha256."""
    if not path.is_file():
        raise EdgeqError(f"weights file {path} does not exist: check --weights")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EdgeqError(f"cannot read weights file {path}: {e.strerror}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # the bytes hashed below
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):  # a class or function: pickled code
            raise EdgeqError(f"weights file {path} holds pickled objects other than tensors and was refused "
                             "(loaded with weights_only=True): save it with torch.save(model.state_dict(), path)") from None
        raise EdgeqError(f"weights file {path} is not a PyTorch checkpoint (unpickling failed): "
                         "save it with torch.save(model.state_dict(), path)") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... on garbage files
        raise EdgeqError(f"weights file {path} is not a PyTorch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeqError(f"weights file {path} is not a state_dict of tensors: save torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP checkpoints
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing = [k for k in module.state_dict() if k not in state]
        unexpected = [k for k in state if k not in module.state_dict()]
        detail = (f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected
                  else str(e).splitlines()[-1].strip())
        raise EdgeqError(f"weights {path} do not fit the model ({detail}): "
                         "use the checkpoint of this architecture, or the matching --model") from None
    return hashlib.sha256(data).hexdigest()


def check_example_inputs(module: nn.Module, source: str) -> tuple[Example, Signature]:
    """The factory module's example_inputs() (and its optional `dynamic_axes`, {parameter: {axis:
    largest}}), run once through the model: its signature, outputs included."""
    try:
        example = module.example_inputs()
    except Exception as e:  # noqa: BLE001 - the user's code
        raise EdgeqError(f"{source}: example_inputs() raised {type(e).__name__}: {first_line(e)}: fix it") from None
    example = example if isinstance(example, tuple) else (example,)
    signature = signature_of(module, example, source, getattr(module, "dynamic_axes", None))
    try:
        with torch.no_grad():
            out = module(*example)
    except Exception as e:  # noqa: BLE001 - the user's model
        raise EdgeqError(f"{source} failed on its own example_inputs() ({type(e).__name__}: {first_line(e)}): "
                         "fix the model or example_inputs()") from None
    return Example(example, tuple(s.dynamic for s in signature.inputs)), \
        Signature(signature.inputs, output_names(out, source))


def check_input_shape(module: nn.Module, shape: tuple[int, ...], source: str) -> int:
    """Run one forward pass so a wrong shape fails here, with a clear message, not deep in export.
    Returns the number of classes the model outputs."""
    if len(shape) != 4 or any(d <= 0 for d in shape):
        raise EdgeqError(f"input shape {','.join(map(str, shape))} is not N,C,H,W with positive sizes: "
                         "pass --input-shape like 1,3,224,224")
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
    except Exception as e:  # noqa: BLE001 - any failure here means the shape does not fit
        first = first_line(e) or type(e).__name__
        raise EdgeqError(f"input shape {','.join(map(str, shape))} does not fit {source} ({first}): "
                         "pass the --input-shape the model was built for") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise EdgeqError(f"{source} must return one N×classes tensor of logits, got "
                         f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else tuple(out.shape)}")
    if out.shape[-1] < 1:
        raise EdgeqError(f"{source} outputs no class scores (shape {tuple(out.shape)}): build it with at least one "
                         "class (e.g. ?num_classes=10)")
    return int(out.shape[-1])

