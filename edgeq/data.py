"""Data: image sets (ImageFolder or the built-in Fashion-MNIST) and explicit preprocessing.

Preprocessing is a frozen dataclass recorded in the manifest, so that the validator and the
Android app reproduce exactly what the model saw during calibration and checks.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgeq.errors import EdgeqError

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# The Debian package dataset-fashion-mnist installs the full 70k images here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_FASHION_MNIST = Path(__file__).parent / "builtin" / "fashion_mnist_subset.npz"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Image → float tensor, step by step: mode, resize, center crop, scale, normalize, CHW."""

    size: tuple[int, int]  # model input height, width
    channels: int  # 1: grayscale ("L"), 3: RGB
    resize: int | None  # shorter side resized to this, then center crop; None: resize to size
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0 / 255.0
    interpolation: str = "bilinear"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise EdgeqError(f"input has {self.channels} channels; images give 1 (grayscale) or 3 (RGB): fix --input-shape")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise EdgeqError(f"--{name} has {len(values)} values but the input has {self.channels} channels: give one per channel")
            if not all(math.isfinite(v) for v in values):
                raise EdgeqError(f"--{name} {','.join(map(str, values))} has a value that is not a finite number")
        if not all(v > 0 for v in self.std):
            raise EdgeqError(f"--std {','.join(map(str, self.std))}: every std must be above 0 (inputs are divided by it)")
        if self.resize is not None and self.resize < 1:
            raise EdgeqError(f"--resize {self.resize}: must be at least 1 (the shorter side's length in pixels)")

    @staticmethod
    def default_for(input_shape: tuple[int, ...], grayscale_stats: bool) -> "Preprocess":
        """ImageNet-style (resize 256/224 then crop) or Fashion-MNIST-style (straight resize)."""
        if len(input_shape) != 4:
            raise EdgeqError(f"input shape {input_shape} is not N,C,H,W: pass --input-shape like 1,3,224,224")
        _, c, h, w = input_shape
        if grayscale_stats:
            return Preprocess(size=(h, w), channels=c, resize=None,
                              mean=FASHION_MNIST_MEAN * c, std=FASHION_MNIST_STD * c)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
        return Preprocess(size=(h, w), channels=c, resize=round(min(h, w) * 256 / 224), mean=mean, std=std)

    def apply(self, image: Image.Image) -> np.ndarray:
        image = image.convert("L" if self.channels == 1 else "RGB")
        h, w = self.size
        if self.resize is None:
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
        else:
            iw, ih = image.size
            ratio = self.resize / min(iw, ih)
            image = image.resize((max(w, round(iw * ratio)), max(h, round(ih * ratio))), Image.Resampling.BILINEAR)
            iw, ih = image.size
            left, top = (iw - w) // 2, (ih - h) // 2
            image = image.crop((left, top, left + w, top + h))
        x = np.asarray(image, dtype=np.float32) * np.float32(self.scale)
        x = x.reshape(h, w, self.channels)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Preprocess":
        """From a manifest's record, every value checked."""
        from edgeq import schema

        try:
            return schema.build(Preprocess, d, "preprocess")
        except schema.SchemaError as e:
            raise EdgeqError(f"the manifest's {e}: re-export") from None


@dataclass
class ImageSet:
    """A sequence of images, with labels when the source has them. Images load on demand."""

    description: str  # what was used, as recorded in the manifest
    load: Callable[[int], Image.Image]
    count: int
    labels: np.ndarray | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return self.count

    def batch(self, preprocess: Preprocess, indices: range | list[int]) -> np.ndarray:
        return np.stack([preprocess.apply(self.load(i)) for i in indices])

    def info(self, used: int | None = None) -> dict[str, Any]:
        return {"source": self.description, "images": self.count if used is None else used,
                "classes": len(self.classes) if self.classes else None}


def open_images(spec: str | Path, split: str) -> ImageSet:
    """`fashion-mnist` (split: train for calibration, test for evaluation) or an image folder."""
    if str(spec) == FASHION_MNIST:
        return fashion_mnist(split)
    return image_folder(Path(spec))


def image_folder(root: Path) -> ImageSet:
    """ImageFolder layout (root/CLASS/*.jpg, labels = sorted class names) or a flat folder of images."""
    if not root.is_dir():
        raise EdgeqError(f"data folder {root} does not exist: pass an image folder or '{FASHION_MNIST}'")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).rglob("*")) if _is_image(f)]
    else:
        files = [(f, -1) for f in sorted(root.iterdir()) if _is_image(f)]
    if not files:
        raise EdgeqError(f"data folder {root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                         "point it at a folder of images, one subfolder per class")

    def load(i: int) -> Image.Image:
        path = files[i][0]
        try:
            with Image.open(path) as im:
                im.load()
                return eight_bit(im, path)
        except Image.DecompressionBombError as e:
            raise EdgeqError(f"image {path} is too large to decode safely ({e}): shrink it, or remove it "
                             "from the folder") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise EdgeqError(f"cannot read image {path}: {e}; remove or replace the file") from None

    labels = np.array([k for _, k in files]) if classes else None
    return ImageSet(description=f"image folder {root}", load=load, count=len(files), labels=labels,
                    classes=tuple(classes) if classes else None)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PREPROCESSED = ("1", "L", "P", "RGB")  # modes Preprocess.apply converts to "L" and "RGB" as they are


def eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """The image in 8 bits per channel, which preprocessing (and the app, from a Bitmap) works in,
    each value scaled by its own depth: 16-bit integer images by 65535 (PIL would clip them at
    255), float images by 1 (they must hold 0 to 1; PIL would read 0.8 as 0). Alpha is dropped, as
    torchvision's loader drops it. A 32-bit integer image (mode I) has no known white level: refused."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        x = np.asarray(image, dtype=np.float64) / (65535.0 if mode in _SIXTEEN_BIT else 1.0)
        if mode == "F" and x.size and not (np.isfinite(x).all() and 0 <= x.min() and x.max() <= 1):
            finite = x[np.isfinite(x)]
            values = (f"values from {finite.min():g} to {finite.max():g}" if finite.size else "no finite value") + \
                (" and NaN/inf" if finite.size < x.size else "")
            raise EdgeqError(f"image {path} is a 32-bit float image (mode F) with {values}: edgeq reads float images "
                             "as 0 (black) to 1 (white); save it in that range, or as an 8- or 16-bit image")
        return Image.fromarray(np.round(x * 255).astype(np.uint8), mode="L")
    if mode == "I":
        raise EdgeqError(f"image {path} is a 32-bit integer image (mode I), whose white level is not known: "
                         "save it as an 8- or 16-bit image")
    if mode in _PREPROCESSED:
        return image
    try:  # with alpha (RGBA, LA, PA), CMYK, YCbCr, LAB, HSV: their colours, alpha dropped
        return image.convert("L" if mode in ("LA", "La") else "RGB")
    except ValueError:
        raise EdgeqError(f"image {path} has mode {mode}, which PIL cannot convert to grayscale or RGB: save it as an 8-bit "
                         "RGB or grayscale image") from None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def fashion_mnist(split: str) -> ImageSet:
    """Full Fashion-MNIST from Debian's dataset-fashion-mnist when installed, else the bundled subset."""
    images, labels, origin = load_fashion_mnist_arrays(split)
    return ImageSet(description=f"{FASHION_MNIST} {split} ({origin}, {len(images)} images)",
                    load=lambda i: Image.fromarray(images[i], mode="L"), count=len(images),
                    labels=labels, classes=FASHION_MNIST_CLASSES)


def load_fashion_mnist_arrays(split: str, root: Path = DEBIAN_FASHION_MNIST) -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 N×28×28, labels int64 N, where they came from)."""
    if split not in ("train", "test"):
        raise ValueError(split)
    prefix = "train" if split == "train" else "t10k"
    images_gz, labels_gz = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if images_gz.exists() and labels_gz.exists():
        return read_idx(images_gz), read_idx(labels_gz).astype(np.int64), "Debian dataset-fashion-mnist"
    with np.load(BUNDLED_FASHION_MNIST) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64), "edgeq bundled subset"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): big-endian header of dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise EdgeqError(f"{path} is not a uint8 IDX file: reinstall dataset-fashion-mnist")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def one_per_class_first(labels: np.ndarray | None, available: int, limit: int) -> list[int]:
    """Positions of `limit` samples: the first of each class (where there are labels), then the next
    ones in order."""
    first = [] if labels is None else sorted(np.unique(labels[:available], return_index=True)[1].tolist())[:limit]
    taken = set(first)
    rest = [i for i in range(available) if i not in taken][:limit - len(first)]
    return sorted(first + rest)
