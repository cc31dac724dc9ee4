"""Models of any tensors through `edgeq export --method dynamic`: named inputs of any dtype from an
.npz, every output compared with the float model's, the manifest and reports saying so; the user's
mistakes in such data or models are one line with nothing written. Silero VAD's real weights carry
the accuracy claim; the Tagger (random weights) proves the plumbing: a dict out, int64 and bool in."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeq
from edgeq import runner
from conftest import assert_nothing_written, assert_user_error, run_cli
from tests.tensor_models import LONGEST, TOKENS, VOCAB, raw_features_data, tagger_data

MODEL = f"{Path(__file__).parent / 'tensor_models.py'}:tagger"
RAW_FEATURES = f"{Path(__file__).parent / 'tensor_models.py'}:raw_features"
ENCODER = f"{Path(__file__).parent / 'tensor_models.py'}:encoder"


@pytest.fixture(scope="module")
def tagger_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sentences.npz"
    np.savez(path, **tagger_data(24))
    return path


@pytest.mark.slow
@pytest.mark.qemu
def test_dynamic_int8_of_a_model_of_tensors_in_every_format_on_host_and_arm64(tmp_path, tagger_npz, emulated_target):
    """int64 token ids and a bool mask in, a dict out, through every runtime on the host and on the
    emulated arm64 CPU (the native .pte/.ptl runners and onnxruntime under QEMU)."""
    out = tmp_path / "dist"
    manifest = edgeq.export(out, model=MODEL, method="dynamic", calib_data=str(tagger_npz), precisions=("int8",),
                            runs=2, progress=False)
    assert manifest.model.inputs == [f"tokens: int64[N, {TOKENS}]", f"mask: bool[N, {TOKENS}]"]
    assert manifest.model.outputs == ["tags", "pooled"] and manifest.preprocess is None
    assert manifest.data.check.images == 24 and manifest.layer_numerics.flow == "eager"
    units = [e.layer for e in manifest.layer_numerics.layers]  # per unit: the LSTM's layers one by one
    assert {"embed", "lstm.layers.0", "lstm.layers.1", "head"} <= set(units), units
    for a in manifest.artifacts:
        check = a.host_check
        assert [o.name for o in check.outputs] == ["tags", "pooled"] and check.samples == 24, a.key
        assert check.top1_agreement is None and check.accuracy is None  # no labels: no class scores
        assert check.sqnr_db == min(o.sqnr_db for o in check.outputs), a.key
        assert all(0.9 < o.cosine_min <= o.cosine_mean <= 1.0 + 1e-9 for o in check.outputs), a.key
        assert any("cosine_min" in gate for gate in check.gates), check.gates
    details = {a.format: a.details for a in manifest.artifacts}
    assert {"lstm", "head"} <= set(details["ptl"]["int8_modules"])  # and attention's projections
    assert any(name.startswith("attn.") for name in details["ptl"]["int8_modules"]), details["ptl"]
    assert details["onnx"]["int8_ops"].get("DynamicQuantizeLSTM") == 2, details["onnx"]  # an ONNX LSTM a layer
    assert details["pte"]["portable_ops"] == {} or "aten" in json.dumps(details["pte"]["portable_ops"])
    assert "dynamic" in details["pte"]["quantizer"]
    with np.load(out / "reference.npz", allow_pickle=False) as ref:
        assert {"input.tokens", "input.mask", "output.tags", "output.pooled", "host_int8_pte.tags"} <= set(ref.files)
        assert ref["input.tokens"].dtype == np.int64 and ref["input.mask"].dtype == np.bool_
    report = (out / "report.md").read_text()
    assert "min cosine" in report and "pooled" in report
    # onnxruntime's x86 int8 products saturate without VNNI (runner.int8_products_saturate), and a dynamic
    # graph has no QDQ form to check as written: there arm64's outputs are not this host's, and are judged
    # on their own. Every other artifact gives the host's outputs there.
    saturates = runner.int8_products_saturate(platform.machine(), runner.cpu_model()[1])
    for a in manifest.artifacts:
        arm64 = a.targets["arm64"]
        assert arm64.error is None and arm64.where == "emulated", (a.key, arm64.error)
        if a.format == "onnx" and saturates:
            assert "judged on its own outputs" in arm64.gates[0] or arm64.host_parity.passed, arm64.gates
        else:
            assert arm64.host_parity.passed and arm64.host_parity.samples == 24, (a.key, arm64.host_parity)
        assert [o.name for o in arm64.check.outputs] == ["tags", "pooled"], a.key
        assert arm64.runner == ("python" if a.format == "onnx" else "native")


def _user_error(tmp_path, data, *needles, extra=()):
    result = run_cli("export", "--model", MODEL, "--method", "dynamic", "--calib-data", str(data), "--no-validate",
                     "--out", str(tmp_path / "dist"), "-q", *extra)
    line = assert_user_error(result, *needles)
    assert_nothing_written(tmp_path)
    return line


@pytest.mark.parametrize("edit, needles", [
    (lambda d: d.pop("mask"), ("lacks mask",)),
    (lambda d: d.update(extra=d["mask"]), ("has extra, which is not a forward parameter",)),
    (lambda d: d.update(tokens=d["tokens"].astype(np.int32)), ("tokens is int32, the model takes int64",)),
    (lambda d: d.update(tokens=d["tokens"][:, :3]), ("tokens has shape (24, 3)",)),
    (lambda d: d.update(labels=np.zeros(5, np.int64)), ("labels must be 24 whole numbers",)),
    (lambda d: d.update(tokens=d["tokens"] + VOCAB), ("tensor_models.py:tagger failed on tensor file", "IndexError")),
])
def test_bad_tensor_data_is_one_line_and_nothing_is_written(tmp_path, edit, needles):
    data = tagger_data(24)
    edit(data)
    np.savez(tmp_path / "bad.npz", **data)
    _user_error(tmp_path, tmp_path / "bad.npz", *needles)


def test_an_empty_or_damaged_npz_or_images_for_tensors_are_one_line(tmp_path, tagger_npz):
    (tmp_path / "empty.npz").write_bytes(b"")
    _user_error(tmp_path, tmp_path / "empty.npz", "not a readable .npz")
    np.savez(tmp_path / "none.npz")
    _user_error(tmp_path, tmp_path / "none.npz", "is empty")
    (tmp_path / "cut.npz").write_bytes(tagger_npz.read_bytes()[:200])
    _user_error(tmp_path, tmp_path / "cut.npz", "not a readable .npz")
    (tmp_path / "images").mkdir()
    _user_error(tmp_path, tmp_path / "images", "takes tensors", "an .npz with one array per forward parameter")


def test_what_a_model_of_tensors_cannot_be_exported_with_yet_is_said_first(tmp_path, tagger_npz):
    _user_error(tmp_path, tagger_npz, "QAT trains image classifiers", extra=("--method", "qat"))
    _user_error(tmp_path, tagger_npz, "with --method static on such a model", extra=("--dynamic-layers", "head"))
    result = run_cli("export", "--model", MODEL, "--input-shape", "1,3,8,8", "--method", "dynamic",
                     "--calib-data", str(tagger_npz), "--no-validate", "--out", str(tmp_path / "dist"), "-q")
    assert_user_error(result, "drop --input-shape")
    assert_nothing_written(tmp_path)


def test_an_npz_for_an_image_model_is_one_line(tmp_path, tagger_npz):
    result = run_cli("export", "--calib-data", str(tagger_npz), "--no-validate", "--out", str(tmp_path / "dist"), "-q")
    assert_user_error(result, "is an .npz", "this one takes images")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_an_output_budget_for_an_image_model_is_one_line(tmp_path, method):
    result = run_cli("export", "--method", method, "--min-cosine", "0.99", "--no-validate", "--out",
                     str(tmp_path / "dist"), "-q")
    assert_user_error(result, "budget the outputs of a model of tensors", "--max-agreement-drop or --max-accuracy-drop")
    assert_nothing_written(tmp_path)


def test_a_model_that_fails_on_its_own_example_or_returns_no_tensors_is_named(tmp_path):
    source = tmp_path / "models.py"
    source.write_text(
        "import torch\n"
        "class Broken(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x @ torch.ones(5, 2)\n"
        "    def example_inputs(self):\n"
        "        return (torch.ones(1, 3),)\n"
        "class Text(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return 'hello'\n"
        "    def example_inputs(self):\n"
        "        return (torch.ones(1, 3),)\n"
        "def broken(): return Broken()\n"
        "def text(): return Text()\n")
    for factory, needle in (("broken", "failed on its own example_inputs()"), ("text", "returned str")):
        result = run_cli("export", "--model", f"{source}:{factory}", "--method", "dynamic", "--no-validate",
                         "--out", str(tmp_path / "dist"), "-q")
        assert_user_error(result, f"{factory}", needle)
    assert_nothing_written(tmp_path)


@pytest.mark.slow
@pytest.mark.qemu
def test_silero_vad_exports_dynamic_int8_in_every_format_from_the_cli(tmp_path, emulated_target):
    """Real weights, real speech: 3 inputs (audio, h, c), 3 outputs (speech probability, h, c), each
    sample a chunk of speech with the state the float model carried into it; checked on the host on
    every chunk, and on the emulated arm64 CPU, which must give the host's outputs."""
    from tests.realdata import silero, silero_model

    audio = silero.speech("the quick brown fox jumps over the lazy dog", tmp_path)
    samples = silero.streamed_inputs(silero_model(), audio)
    np.savez(tmp_path / "speech.npz", **samples)
    result = run_cli("export", "--model", "tests.realdata:silero_model", "--method", "dynamic", "--precisions", "int8",
                     "--eval-data", str(tmp_path / "speech.npz"), "--out", str(tmp_path / "dist"), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["model"]["inputs"] == ["audio: float32[N, 576]", "h: float32[N, 128]", "c: float32[N, 128]"]
    assert manifest["model"]["outputs"] == ["output_0", "output_1", "output_2"]
    for a in manifest["artifacts"]:
        check = a["host_check"]
        assert check["passed"] and check["samples"] == len(samples["audio"]) > 50, a
        for o in check["outputs"]:  # every output: noise well under the signal, every chunk's direction kept
            assert o["sqnr_db"] >= 25 and o["cosine_min"] >= 0.99, (a["format"], o)
        arm64 = a["targets"]["arm64"]
        assert arm64["passed"] and arm64["host_parity"]["passed"], (a["format"], arm64)
        print(a["format"], [(o["name"], round(o["sqnr_db"], 1), round(o["cosine_min"], 4)) for o in check["outputs"]])


@pytest.mark.slow
@pytest.mark.qemu
def test_g2p_ens_encoder_exports_dynamic_int8_in_every_format_from_the_cli(tmp_path, emulated_target):
    """Real weights (an embedding and a GRUCell unrolled over 16 letter slots), 100 CMUdict words as
    int64 letter ids; the encoder's final state compared in every format, on the host and arm64."""
    from tests.realdata import cmudict_text, g2p

    words = g2p.cmudict_words(cmudict_text(), 100)
    np.savez(tmp_path / "words.npz", letters=g2p.encode(list(words)).numpy())
    result = run_cli("export", "--model", "tests.realdata:g2p_encoder_model", "--method", "dynamic", "--precisions",
                     "int8", "--eval-data", str(tmp_path / "words.npz"), "--runs", "2", "--out", str(tmp_path / "dist"),
                     "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["model"]["inputs"] == [f"letters: int64[N, {g2p.LETTERS}]"]
    saturates = runner.int8_products_saturate(platform.machine(), runner.cpu_model()[1])
    for a in manifest["artifacts"]:
        (o,) = a["host_check"]["outputs"]
        if a["format"] == "onnx" and saturates:  # this host's onnxruntime int8 kernels clip: arm64 judges it
            assert a["host_check"]["passed"] in (True, None), a["host_check"]
        else:
            assert a["host_check"]["passed"] and o["cosine_min"] >= 0.95, (a["format"], o)
        assert a["targets"]["arm64"]["passed"], (a["format"], a["targets"]["arm64"])
        print(a["format"], round(o["sqnr_db"], 1), round(o["cosine_mean"], 4), round(o["cosine_min"], 4))


@pytest.mark.slow
@pytest.mark.qemu
def test_a_pretrained_sentence_encoder_keeps_its_embeddings_in_every_int8_format(tmp_path, emulated_target):
    """all-MiniLM-L6-v2 (real weights; token ids and an attention mask in, a unit-length 384-d sentence
    embedding out) with default options: every int8 format keeps each sentence's direction (mean
    cosine to the float model ≥ 0.99, minimum ≥ 0.95) over 100 real sentences, at a quarter of the
    float weights' size with its vocabulary table int8; and computes on emulated arm64 what it does here
    or is judged there on its own outputs."""
    from tests.realdata import minilm, minilm_parts

    model, tokenizer = minilm_parts()
    np.savez(tmp_path / "sentences.npz", **minilm.inputs(minilm.sentences(100, tokenizer), tokenizer))
    out = tmp_path / "dist"
    result = run_cli("export", "--model", "tests.realdata:minilm_model", "--method", "dynamic", "--precisions", "int8",
                     "--eval-data", str(tmp_path / "sentences.npz"), "--no-validate", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["model"]["inputs"] == ["tokens: int64[N, ≤128]", "mask: int64[N, ≤128]"]
    float_bytes = 4 * sum(p.numel() for p in model.parameters())  # the fp32 files are this within 1%
    details = {}
    for a in manifest["artifacts"]:
        check = a["host_check"]
        (o,) = check["outputs"]
        assert check["passed"] and check["samples"] == 100 and check["top1_agreement"] is None, a
        assert o["cosine_mean"] >= 0.99 and o["cosine_min"] >= 0.95, (a["format"], o)
        assert a["bytes"] <= 0.35 * float_bytes, (a["format"], a["bytes"] / float_bytes)
        # any length up to its bound: [CLS] alone, and 128 slots (the sentences repeated)
        assert [(at["length"], at["samples"], at["passed"]) for at in check["lengths"]] == [(1, 8, True), (128, 8, True)]
        assert all(at["cosine_min"] >= 0.95 for at in check["lengths"]), check["lengths"]
        details[a["format"]] = a["details"]
        print(a["format"], round(a["bytes"] / float_bytes, 3), round(o["cosine_mean"], 4), round(o["cosine_min"], 4),
              [(at["length"], round(at["sqnr_db"], 1), round(at["cosine_min"], 4)) for at in check["lengths"]])
    tables = ["word_embeddings", "position_embeddings"]
    assert details["pte"]["int8_embeddings"] == tables and "word_embeddings" in details["onnx"]["int8_embeddings"]
    linears = [f"layers.{i}.{n}" for i in range(6) for n in ("query", "key", "value", "attention_out", "intermediate",
                                                               "output")]
    assert sorted(details["ptl"]["int8_modules"]) == sorted(tables + linears)
    assert details["onnx"]["int8_ops"]["MatMulInteger"] == len(linears), details["onnx"]["int8_ops"]

    result = run_cli("validate", str(out), "--target", "arm64", "--samples", "12", "--runs", "2", "--warmup", "1",
                     "--json", "-q")
    assert result.exit_code == 0, result.output[-3000:]
    runs = json.loads(result.stdout)
    assert set(runs) == {"int8 .pte", "int8 .onnx", "int8 .ptl"}
    for key, arm64 in runs.items():
        assert arm64["passed"] and arm64["where"] == "emulated", (key, arm64)
        assert arm64["check"]["samples"] == 12 and arm64["check"]["outputs"][0]["cosine_min"] >= 0.95, arm64["check"]
        assert [(at["length"], at["samples"], at["passed"]) for at in arm64["lengths"]] == [(1, 3, True), (128, 3, True)]
        print(key, arm64["host_parity"]["passed"], round(arm64["check"]["outputs"][0]["cosine_mean"], 4),
              [(at["length"], round(at["sqnr_db"], 1), round(at["cosine_min"], 4), at["same_as_host"])
               for at in arm64["lengths"]])


@pytest.mark.slow
@pytest.mark.qemu
def test_an_output_budget_keeps_exactly_the_damaging_recurrent_layer_float_in_every_format(tmp_path, emulated_target):
    """--min-cosine on a model built to have one damaging layer (raw features into a 3-layer LSTM,
    tests/tensor_models.py): the search returns its first layer, and only it, to float; every format
    applies the plan and meets the budget as its own runtime runs it, on the host and on emulated
    arm64; the plan applies again with --plan."""
    np.savez(tmp_path / "frames.npz", **raw_features_data(48))
    out = tmp_path / "dist"
    result = run_cli("export", "--model", RAW_FEATURES, "--method", "dynamic", "--min-cosine", "0.99", "--precisions",
                     "int8", "--calib-data", str(tmp_path / "frames.npz"), "--runs", "2", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    plan = manifest["plan"]
    assert plan["float_layers"] == ["lstm.layers.0"] and plan["met"] and plan["metric"] == "cosine", plan
    assert plan["int8_score"] < 0.5 and plan["score"] >= 0.99 and plan["images"] == 48, plan
    assert set(plan["steps"][0]["candidates"]) == {"lstm.layers.0", "lstm.layers.1", "lstm.layers.2", "head"}
    assert all(score < 0.5 for layer, score in plan["steps"][0]["candidates"].items() if layer != "lstm.layers.0")
    saturates = runner.int8_products_saturate(platform.machine(), runner.cpu_model()[1])
    for a in manifest["artifacts"]:
        check, arm64 = a["host_check"], a["targets"]["arm64"]
        assert a["details"]["float_layers"] == ["lstm.layers.0"], a["details"]
        assert "every output's mean cosine >= 0.99 (output budget)" in check["gates"], check
        if a["format"] == "onnx" and saturates:  # this host's onnxruntime int8 kernels clip: arm64 judges it
            assert check["passed"] in (True, None), check
        else:
            assert check["passed"] and check["outputs"][0]["cosine_mean"] >= 0.99, (a["format"], check)
        assert arm64["passed"] and arm64["check"]["outputs"][0]["cosine_mean"] >= 0.99, (a["format"], arm64)
    assert json.loads((out / "plan.json").read_text())["float_layers"] == ["lstm.layers.0"]
    assert "Output budget (every output's mean cosine at least 0.9900)" in (out / "report.md").read_text()

    again = run_cli("export", "--model", RAW_FEATURES, "--method", "dynamic", "--plan", str(out / "plan.json"),
                    "--precisions", "int8", "--formats", "ptl", "--calib-data", str(tmp_path / "frames.npz"),
                    "--no-validate", "--out", str(tmp_path / "again"), "--json")
    assert again.exit_code == 0, again.output[-3000:]
    (ptl,) = json.loads(again.stdout)["artifacts"]
    assert ptl["details"]["float_layers"] == ["lstm.layers.0"] and ptl["host_check"]["passed"], ptl


@pytest.mark.parametrize("flags, needles", [
    (("--method", "qat", "--min-cosine", "0.99"), ("budget dynamic or static int8 of a model of tensors",)),
    (("--method", "static", "--max-agreement-drop", "1"), ("budgeted with --min-cosine or --min-sqnr",)),
    (("--method", "dynamic", "--max-agreement-drop", "1"), ("budget static int8", "--min-cosine")),
    (("--method", "dynamic", "--min-cosine", "0.99", "--min-sqnr", "30"), ("--min-cosine and --min-sqnr both given",)),
    (("--method", "dynamic", "--min-cosine", "1.5"), ("--min-cosine 1.5", "at most 1")),
])
def test_an_output_budget_the_method_cannot_take_is_one_line(tmp_path, flags, needles):
    np.savez(tmp_path / "frames.npz", **raw_features_data(8))
    result = run_cli("export", "--model", RAW_FEATURES, "--calib-data", str(tmp_path / "frames.npz"), "--no-validate",
                     "--out", str(tmp_path / "dist"), "-q", *flags)
    assert_user_error(result, *needles)
    assert_nothing_written(tmp_path)


@pytest.mark.slow
@pytest.mark.qemu
def test_static_and_hybrid_int8_of_a_model_of_tensors_on_host_and_arm64(tmp_path, tagger_npz, emulated_target):
    """--method static calibrates on the .npz; --dynamic-layers makes one LSTM layer dynamic inside it
    (hybrid). Every format on the host and on emulated arm64. Layer 1 stays static: its gates are
    chunked from a quantized add, the slices XNNPACK computed wrong (edgeq.export.delegable), which
    took the pooled output to 8 dB."""
    out = tmp_path / "dist"
    result = run_cli("export", "--model", MODEL, "--method", "static", "--calib-data", str(tagger_npz),
                     "--dynamic-layers", "lstm.layers.0", "--precisions", "int8", "--runs", "2", "--out", str(out),
                     "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["method"] == "static" and manifest["data"]["calibration"]["images"] > 0
    assert manifest["layer_numerics"]["flow"] == "eager"
    details = {a["format"]: a["details"] for a in manifest["artifacts"]}
    assert all("static" in d["quantizer"] and d["dynamic_layers"] == ["lstm.layers.0"] for d in details.values())
    onnx_ops = details["onnx"]["ops"]  # layer 0's two products at each of the 6 steps dynamic, the rest QDQ
    assert onnx_ops.get("MatMulInteger") == 2 * TOKENS and onnx_ops["QuantizeLinear"] > 0, onnx_ops
    assert details["onnx"]["int8_embeddings"] == ["embed"] and details["pte"]["int8_embeddings"] == ["embed"]
    assert {"lstm.layers.0.ih", "lstm.layers.1.hh", "head", "embed"} <= set(details["ptl"]["int8_modules"])
    for a in manifest["artifacts"]:
        check = a["host_check"]
        assert check["passed"] and [o["name"] for o in check["outputs"]] == ["tags", "pooled"], a["details"]
        assert all(o["cosine_min"] > 0.99 for o in check["outputs"]), check["outputs"]
        arm64 = a["targets"]["arm64"]
        assert arm64["passed"] and arm64["where"] == "emulated", (a["format"], arm64)


@pytest.mark.slow
@pytest.mark.qemu
def test_a_dynamic_length_runs_at_every_length_up_to_its_bound_in_every_format(tmp_path, tagger_npz,
                                                                            emulated_target):
    """The Encoder declares one dynamic length (tokens and mask, up to LONGEST): every artifact, fp32
    and static int8, runs the data's length on the host, and also length 1 and the bound there and on
    emulated arm64 (the .pte's planned memory at its bound; the .onnx's symbolic dimension; the
    .ptl's trace), against the float model at each length."""
    out = tmp_path / "dist"
    result = run_cli("export", "--model", ENCODER, "--method", "static", "--calib-data", str(tagger_npz), "--runs", "2",
                     "--out", str(out), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["model"]["inputs"] == [f"tokens: int64[N, ≤{LONGEST}]", f"mask: bool[N, ≤{LONGEST}]"]
    assert manifest["reference"]["lengths"] == [1, LONGEST]
    for a in manifest["artifacts"]:
        for where, run in (("host", a["host_check"]), ("arm64", a["targets"]["arm64"])):
            assert run["passed"], (a["precision"], a["format"], where, run)
            assert [(at["length"], at["passed"]) for at in run["lengths"]] == [(1, True), (LONGEST, True)], run
            assert all(at["cosine_min"] > 0.99 for at in run["lengths"]), run["lengths"]
        assert all(at["same_as_host"] for at in a["targets"]["arm64"]["lengths"]), a["targets"]["arm64"]["lengths"]
    onnx = __import__("onnx").load(str(out / "model_int8.onnx"))
    assert [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.graph.input] == \
        [["batch", "length"]] * 2
    with np.load(out / "reference.npz", allow_pickle=False) as ref:
        n = min(8, manifest["data"]["check"]["images"])  # the first check samples, at most 8
        assert ref[f"at{LONGEST}.input.tokens"].shape == (n, LONGEST) and ref["at1.host_int8_pte.pooled"].shape == (n, 32)
    assert f"{LONGEST} ok" in (out / "report.md").read_text()


@pytest.mark.parametrize("factory, needles", [
    ("fixed_length", ("cannot keep the model's dynamic length variable from 1 to 16",
                      "a step of the model fixes it at 6", "drop dynamic_axes")),
    ("tagger_any_length", ("lstm (LSTM) runs over the model's dynamic length",
                           "int8 writes recurrent layers one step at a time", "export a step model")),
])
def test_a_dynamic_length_the_model_or_int8_cannot_keep_is_one_line(tmp_path, tagger_npz, factory, needles):
    result = run_cli("export", "--model", f"{Path(__file__).parent / 'tensor_models.py'}:{factory}", "--method",
                     "dynamic", "--calib-data", str(tagger_npz), "--no-validate", "--out", str(tmp_path / "dist"), "-q")
    assert_user_error(result, *needles)
    assert_nothing_written(tmp_path)


def test_static_int8_output_budget_finds_the_damaging_layer(tmp_path):
    """The output budget with static int8: calibrated ranges are no kinder than run-time ones to the
    raw features' first layer, and the search leaves exactly that layer float."""
    np.savez(tmp_path / "frames.npz", **raw_features_data(48))
    out = tmp_path / "dist"
    result = run_cli("export", "--model", RAW_FEATURES, "--method", "static", "--min-cosine", "0.99", "--precisions",
                     "int8", "--formats", "onnx,ptl", "--calib-data", str(tmp_path / "frames.npz"), "--no-validate",
                     "--out", str(out), "--json")
    assert result.exit_code == 0, result.output[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["float_layers"] == ["lstm.layers.0"] and plan["met"] and plan["int8_score"] < 0.5, plan
    for a in json.loads(result.stdout)["artifacts"]:
        assert a["host_check"]["passed"] and a["details"]["float_layers"] == ["lstm.layers.0"], a


class _StateHead(torch.nn.Module):
    """Silero VAD's shape in small: a state that is an output and, through a ReLU and an unsqueeze,
    a Conv1d's input."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.head = torch.nn.Linear(16, 32), torch.nn.Conv1d(32, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(x)
        return torch.sigmoid(self.head(torch.relu(h).unsqueeze(-1))).squeeze(-1), h

    @staticmethod
    def example_inputs() -> tuple[torch.Tensor]:
        return (torch.zeros(1, 16),)


def test_a_static_pte_whose_int8_state_is_unsqueezed_loads_and_matches_torch(tmp_path):
    """Without edgeq.quantize.patterns.share_through_unsqueeze the unsqueeze sat between two int8
    grids and ExecuTorch failed to load the program (error 0x1)."""
    from edgeq.config import QuantRecipe
    from edgeq.export import pte
    from edgeq.quantize.static_tensors import quantize_pt2e

    torch.manual_seed(0)
    model = _StateHead().eval()
    x = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    int8 = quantize_pt2e(model, model.example_inputs(), QuantRecipe(backend="qnnpack"), lambda: iter([(x,)]))
    pte.export(int8, model.example_inputs(), tmp_path / "m.pte")
    got = runner.load_batched("pte", str(tmp_path / "m.pte"))([x[:8]])  # batch 1: a call per sample
    with torch.no_grad():
        want = [t.numpy() for t in int8(torch.from_numpy(x[:8]))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=0.02)
