"""edgeq: a trained PyTorch vision model → quantized, mobile-ready .pte / .onnx / .ptl, checked.

    import edgeq
    manifest = edgeq.export("dist/", target="arm64")          # the built-in Fashion-MNIST model
    manifest = edgeq.export("dist/", model="torchvision:mobilenet_v2", weights="ckpt.pt",
                            calib_data="images/", eval_data="val/")
"""

from edgeq.errors import EdgeqError
from edgeq.manifest import Artifact, HostCheck, Manifest
from edgeq.pipeline import export

__all__ = ["Artifact", "EdgeqError", "HostCheck", "Manifest", "export"]
