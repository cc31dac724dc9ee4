from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from edgeq.data import (FASHION_MNIST_CLASSES, Preprocess, fashion_mnist, image_folder, load_fashion_mnist_arrays,
                        open_images)
from edgeq.errors import EdgeqError


def test_preprocess_grayscale_is_scale_then_normalize():
    pre = Preprocess(size=(4, 4), channels=1, resize=None, mean=(0.5,), std=(0.25,))
    img = Image.fromarray(np.array([[0, 255, 51, 102]] * 4, np.uint8), mode="L")
    x = pre.apply(img)
    assert x.shape == (1, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (np.array([0, 255, 51, 102]) / 255 - 0.5) / 0.25, rtol=1e-6)


def test_preprocess_resize_then_center_crop_rgb():
    pre = Preprocess(size=(8, 8), channels=3, resize=10, mean=(0, 0, 0), std=(1, 1, 1))
    img = Image.new("RGB", (40, 20), (255, 0, 0))  # wide: shorter side → 10, then crop 8×8
    x = pre.apply(img)
    assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1:], 0.0)


def test_preprocess_round_trips_through_dict():
    pre = Preprocess.default_for((1, 3, 224, 224), grayscale_stats=False)
    assert pre.resize == 256 and pre.mean == (0.485, 0.456, 0.406)
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_preprocess_rejects_mismatched_mean():
    with pytest.raises(EdgeqError, match="3 channels"):
        Preprocess(size=(8, 8), channels=3, resize=None, mean=(0.5,), std=(0.5, 0.5, 0.5))


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    for k, cls in enumerate(["dog", "cat"]):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("L", (5, 5), k * 100).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    images = image_folder(tmp_path)
    assert images.classes == ("cat", "dog") and len(images) == 4
    assert list(images.labels) == [0, 0, 1, 1]
    assert np.asarray(images.load(2)).max() == 0  # dog images are black


def test_flat_folder_has_no_labels(tmp_path):
    Image.new("RGB", (5, 5)).save(tmp_path / "a.jpg")
    images = open_images(tmp_path, "train")
    assert len(images) == 1 and images.labels is None


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(EdgeqError, match="does not exist"):
        image_folder(tmp_path / "nope")


def test_fashion_mnist_test_split():
    images = fashion_mnist("test")
    assert len(images) in (1000, 10000)
    assert images.classes == FASHION_MNIST_CLASSES
    assert images.load(0).size == (28, 28)
    assert "fashion-mnist test" in images.description


def test_bundled_subset_is_used_without_the_debian_package(tmp_path):
    images, labels, origin = load_fashion_mnist_arrays("train", root=tmp_path)
    assert origin == "edgeq bundled subset"
    assert images.shape == (1024, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1024,) and set(np.unique(labels)) == set(range(10))


# --- every mode PIL reads, scaled by its own depth ------------------------------------------------

def _gradient() -> np.ndarray:
    """An 8-bit RGB gradient with every value 0..255 in it."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return np.stack([ramp, ramp.T, 255 - ramp], axis=-1)


def _saved_modes(folder) -> dict[str, Image.Image]:
    """The gradient in the modes PIL writes, each saved and read back; the ones whose values are the
    same 8-bit picture (or its gray levels) after scaling by their own depth."""
    rgb = _gradient()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    files = {
        "rgb.png": Image.fromarray(rgb),
        "gray.png": Image.fromarray(gray),
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),  # PIL reads it as I;16
        "gray16.tif": Image.fromarray(gray.astype(np.uint16) * 257),
        "float.tif": Image.fromarray(gray.astype(np.float32) / 255),  # mode F, 0..1
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        "la.png": Image.fromarray(gray).convert("LA"),
        "palette.png": Image.fromarray(rgb).quantize(256, dither=Image.Dither.NONE),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    folder.mkdir()
    for name, image in files.items():
        image.save(folder / name, **({"quality": 100} if name.endswith(".jpg") else {}))
    return files


def test_every_image_mode_reads_as_its_own_picture(tmp_path):
    files = _saved_modes(tmp_path / "modes")
    images = image_folder(tmp_path / "modes")
    names = sorted(files)
    modes = {name: Image.open(tmp_path / "modes" / name).mode for name in names}
    assert modes["gray16.png"] == "I;16" and modes["float.tif"] == "F" and modes["palette.png"] == "P"
    pre = Preprocess(size=(16, 16), channels=1, resize=None, mean=(0.0,), std=(1.0,))
    expected = pre.apply(Image.open(tmp_path / "modes" / "gray.png"))
    for i, name in enumerate(names):
        x = images.batch(pre, [i])[0]
        tolerance = 3 / 255 if name in ("cmyk.jpg", "palette.png") else 1 / 255  # lossy colour round trips
        assert np.abs(x - expected).max() <= tolerance, (name, modes[name], np.abs(x - expected).max())
    rgb = Preprocess(size=(16, 16), channels=3, resize=None, mean=(0.0,) * 3, std=(1.0,) * 3)
    x = images.batch(rgb, [names.index("gray16.png")])[0]
    assert np.abs(x - expected).max() <= 1 / 255  # gray replicated into each channel


@pytest.mark.parametrize("name, image, needle", [
    ("over.tif", Image.fromarray(np.full((8, 8), 2.5, np.float32)), "(mode F) with values from 2.5 to 2.5"),
    ("nan.tif", Image.fromarray(np.full((8, 8), np.nan, np.float32)), "no finite value and NaN/inf"),
    ("int32.tif", Image.fromarray(np.full((8, 8), 70000, np.int32)), "32-bit integer image (mode I)"),
])
def test_images_without_a_known_white_level_are_refused_by_name(tmp_path, name, image, needle):
    (tmp_path / "data").mkdir()
    image.save(tmp_path / "data" / name)
    pre = Preprocess(size=(8, 8), channels=1, resize=None, mean=(0.0,), std=(1.0,))
    with pytest.raises(EdgeqError, match=re.escape(needle)) as e:
        image_folder(tmp_path / "data").batch(pre, [0])
    assert name in str(e.value) and "\n" not in str(e.value)
