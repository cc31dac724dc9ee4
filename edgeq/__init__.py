"""edgeq: a trained PyTorch vision model → quantized, mobile-ready .pte / .onnx / .ptl, checked.

    import edgeq
    manifest = edgeq.export("dist/", target="arm64")          # the built-in Fashion-MNIST model
    manifest = edgeq.export("dist/", model="torchvision:mobilenet_v2", weights="ckpt.pt",
                            calib_data="images/", eval_data="val/")
    manifest = edgeq.export("dist/", method="qat", training=edgeq.TrainConfig(epochs=3, lr=1e-4))
"""

from edgeq.errors import EdgeqError
from edgeq.manifest import Artifact, HostCheck, Manifest
from edgeq.pipeline import export
from edgeq.qat import TrainConfig

__all__ = ["Artifact", "EdgeqError", "HostCheck", "Manifest", "TrainConfig", "export"]
