from __future__ import annotations

import json

import pytest

from edgeq.errors import EdgeqError
from edgeq.manifest import Artifact, HostCheck, Manifest, sha256_file


def _manifest() -> Manifest:
    art = Artifact(format="pte", precision="int8", path="model_int8.pte", bytes=3, sha256="ab",
                   details={"delegated_ops": 5}, host_check=HostCheck(10, 1.0, None, 0.0, 0.9, True))
    return Manifest(edgeq_version="0", created="now", versions={}, model={}, target={}, method="static",
                    quantization={}, preprocess={}, data={}, artifacts=[art])


def test_round_trip(tmp_path):
    m = _manifest()
    m.write(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m
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
