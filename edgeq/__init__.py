"""edgeq: a trained PyTorch vision model → quantized, mobile-ready .pte / .onnx / .ptl, checked.

    import edgeq
    manifest = edgeq.export("dist/")                                   # the built-in Fashion-MNIST model
    config = edgeq.ExportConfig(model="torchvision:mobilenet_v2", weights="ckpt.pt",
                                data=edgeq.DataConfig(calib="images/", eval="val/"))
    manifest = edgeq.export("dist/", config)
    manifest = edgeq.export("dist/", edgeq.ExportConfig.load("recipe.toml"))

`export` is imported on first use: `import edgeq` (and the CLI's --help) stays free of torch.
"""

from typing import Any

from edgeq.config import DataConfig, ExportConfig, PreprocessOverrides, QuantRecipe, TrainConfig, ValidateConfig
from edgeq.errors import EdgeqError
from edgeq.manifest import Artifact, HostCheck, Manifest, TargetRun

__all__ = ["Artifact", "DataConfig", "EdgeqError", "ExportConfig", "HostCheck", "Manifest", "PreprocessOverrides",
           "QuantRecipe", "TargetRun", "TrainConfig", "ValidateConfig", "export", "validate"]


def __getattr__(name: str) -> Any:
    if name == "export":
        from edgeq.pipeline import export

        return export
    if name == "validate":
        from edgeq.validate import validate

        return validate
    raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
