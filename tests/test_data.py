from __future__ import annotations

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
