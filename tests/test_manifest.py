from __future__ import annotations

import json

import pytest

from edgeq.errors import EdgeqError
from edgeq.config import ExportConfig, QuantRecipe
from edgeq.data import Preprocess
from edgeq.manifest import (Artifact, CheckImages, DataRecord, HostCheck, Latency, Manifest, Model, TargetRun,
                            sha256_file)
from edgeq.targets import load_target


def _manifest() -> Manifest:
    run = TargetRun(target="arm64", where="emulated", qemu_cpu="neoverse-n1", threads=1, validated="now", passed=True,
                    latency_ms=Latency(1.0, 1.5, 1.1, 20, 3, "emulated: qemu-aarch64 -cpu neoverse-n1, not device time"))
    art = Artifact(format="pte", precision="int8", path="model_int8.pte", bytes=3, sha256="ab",
                   details={"delegated_ops": 5}, host_check=HostCheck(10, 1.0, None, 0.0, 0.9, True),
                   targets={"arm64": run})
    return Manifest(edgeq_version="0", created="now", versions={}, target=load_target("arm64"), method="static",
                    model=Model("builtin:x", None, None, [1, 1, 28, 28], 5, 10), quantization=QuantRecipe("qnnpack"),
                    preprocess=Preprocess.default_for((1, 1, 28, 28), True),
                    data=DataRecord(check=CheckImages("fashion-mnist", 10, 10, "eval data")), artifacts=[art],
                    recipe=ExportConfig(formats=("pte",)))


def test_round_trip(tmp_path):
    m = _manifest()
    m.write(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m
    assert loaded.artifact("pte", "int8").targets["arm64"].latency_ms.median == 1.0
    assert "error" not in json.loads((tmp_path / "manifest.json").read_text())["artifacts"][0]["targets"]["arm64"]
    assert loaded.artifact("pte", "int8").host_check.sqnr_db is None
    json.loads((tmp_path / "manifest.json").read_text())  # strict JSON: no NaN/Infinity


@pytest.mark.parametrize("text", ["{not json", '{"edgeq_version": "0"}', "[]"])
def test_malformed_manifest(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(EdgeqError, match="not an edgeq manifest"):
        Manifest.load(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(EdgeqError, match="no manifest.json"):
        Manifest.load(tmp_path)


def test_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
