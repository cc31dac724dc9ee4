"""edgeq: a trained PyTorch vision model → quantized, mobile-ready .pte / .onnx / .ptl, checked.

    import edgeq
    manifest = edgeq.export("dist/")                                   # the built-in Fashion-MNIST model
    config = edgeq.ExportConfig(model="torchvision:mobilenet_v2", weights="ckpt.pt",
                                data=edgeq.DataConfig(calib="images/", eval="val/"))
    manifest = edgeq.export("dist/", config)
    manifest = edgeq.export("dist/", edgeq.ExportConfig.load("recipe.toml"))

The pipeline is imported on the first call: `import edgeq` (and the CLI's --help) stays free of torch.
"""

from pathlib import Path
from typing import Any

# The exporters' subpackage edgeq/export/ shares its name with the verb below. Importing a
# submodule binds its name in the parent package, so it is imported first (it is tiny: its
# modules load on demand) and the verb is bound after it and wins.
import edgeq.export as _exporters  # noqa: F401
from edgeq.config import DataConfig, ExportConfig, PreprocessOverrides, QuantRecipe, TrainConfig, ValidateConfig
from edgeq.errors import EdgeqError
from edgeq.manifest import Artifact, HostCheck, Manifest, TargetRun

__all__ = ["Artifact", "DataConfig", "EdgeqError", "ExportConfig", "HostCheck", "Manifest", "PreprocessOverrides",
           "QuantRecipe", "TargetRun", "TrainConfig", "ValidateConfig", "export"]


def export(out: str | Path, config: ExportConfig | None = None, *, progress: bool = True,
           **keywords: Any) -> Manifest | None:
    """See edgeq.pipeline.export (imported here on first call: `import edgeq` stays free of torch)."""
    from edgeq.pipeline import export as run

    return run(out, config, progress=progress, **keywords)

