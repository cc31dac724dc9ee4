"""Int8 accuracy: edgeq's quantization against the plain flows, on real pretrained networks.

    .venv/bin/python -m bench.int8_accuracy            # Lite1, Lite2, the built-in model (~40 min here)
    .venv/bin/python -m bench.int8_accuracy --models builtin
    .venv/bin/python -m bench.train_fashion && .venv/bin/python -m bench.int8_accuracy --models fashion-mbv3

For each model: the float model, the plain flows a user would write from the docs, and edgeq's export
with its default and with each method switched, per int8 format. Every artifact is run with its own
runtime on the host on the same held-out images: logit SQNR and top-1 agreement against the float
model, and top-1 accuracy on labelled images (20 foolbox ImageNet photos; 2,000 Fashion-MNIST test
images for the Fashion-MNIST nets). Calibration: 12 natural photos (Lite), 256 Fashion-MNIST training
images (Fashion-MNIST nets: the built-in model and a torchvision mobilenet_v3_small trained by
bench.train_fashion, with hardswish and squeeze-excite).

Plain flows: .pte: torch.export → stock XNNPACKQuantizer (per-channel) → convert →
to_edge_transform_and_lower; .onnx: the same converted graph through the dynamo ONNX exporter;
.ptl: FX prepare_fx with torch's default qnnpack mapping → convert_fx → TorchScript lite.
Results: bench/results/int8_accuracy.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgeq import runner
from edgeq.config import DataConfig, ExportConfig, PreprocessOverrides, QuantRecipe
from edgeq.data import Preprocess, fashion_mnist, image_folder
from edgeq.models import load_model
from edgeq.validate import sqnr_db

RESULTS = Path(__file__).parent / "results" / "int8_accuracy.json"
FACTORY = Path(__file__).resolve().parents[1] / "tests" / "realdata" / "efficientnet_lite.py"
VARIANTS = {  # edgeq recipe changes from the default
    "edgeq default": {},
    "edgeq no bias correction": {"bias_correction": False},
    "edgeq min-max calibration": {"calibration": "minmax"},
    "edgeq percentile 99.99": {"calibration": "percentile"},
    "edgeq equalization on": {"equalization": True},
    "edgeq adaround": {"adaround": True},  # slow on the Lites (300 steps × 65 layers at 240 px)
}


def model_setups(names: list[str], work: Path) -> list[dict]:
    from tests.realdata import calibration_photos, efficientnet_lite_weights, foolbox_labels, foolbox_photos
    from tests.realdata.efficientnet_lite import VERSIONS

    setups = []
    calib, check = calibration_photos(work / "calib"), foolbox_photos(work / "check")
    labels = foolbox_labels(check)
    for name in names:
        if name == "fashion-mbv3":  # trained by bench.train_fashion
            from bench.train_fashion import SHAPE, SOURCE, WEIGHTS

            loaded = load_model(SOURCE, WEIGHTS, SHAPE)
            preprocess = Preprocess.default_for(SHAPE, grayscale_stats=False)
            test = fashion_mnist("test")
            setups.append(dict(name="torchvision mobilenet_v3_small (Fashion-MNIST, trained here)", source=SOURCE,
                               weights=str(WEIGHTS), input_shape=SHAPE, loaded=loaded, preprocess=preprocess,
                               calib_data="fashion-mnist", calib_samples=256, eval_data=None,
                               check_images=test.batch(preprocess, range(2000)), labels=test.labels[:2000],
                               overrides=PreprocessOverrides()))
            continue
        if name == "builtin":
            loaded = load_model(None)
            preprocess = Preprocess.default_for(loaded.input_shape, grayscale_stats=True)
            test = fashion_mnist("test")
            setups.append(dict(name="built-in (Fashion-MNIST)", source=None, weights=None, loaded=loaded,
                               preprocess=preprocess, calib_data="fashion-mnist", calib_samples=256, eval_data=None,
                               check_images=test.batch(preprocess, range(2000)), labels=test.labels[:2000],
                               overrides=PreprocessOverrides()))
            continue
        version = int(name.removeprefix("lite"))
        size = VERSIONS[version][2]
        source, weights = f"{FACTORY}:lite{version}", str(efficientnet_lite_weights(version))
        loaded = load_model(source, weights)
        mean, std = (127 / 255,) * 3, (128 / 255,) * 3
        preprocess = Preprocess(size=(size, size), channels=3, resize=round(size / 0.875), mean=mean, std=std)
        photos = image_folder(check)
        files = sorted(check.glob("*.jpg"))
        setups.append(dict(name=f"EfficientNet-Lite{version} (ImageNet)", source=source, weights=weights,
                           loaded=loaded, preprocess=preprocess, calib_data=str(calib), calib_samples=256,
                           eval_data=str(check),
                           check_images=photos.batch(preprocess, range(len(photos))),
                           labels=np.array([labels[f.name] for f in files]),
                           overrides=PreprocessOverrides(resize=round(size / 0.875), mean=mean, std=std)))
    return setups


def score(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    return {"sqnr_db": round(sqnr_db(reference, outputs), 2),
            "agreement": round(float((outputs.argmax(1) == reference.argmax(1)).mean()), 4),
            "accuracy": round(float((outputs.argmax(1) == labels).mean()), 4)}


def run_artifact(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    run = runner.load(fmt, str(path), engine="qnnpack")
    return np.concatenate([run(images[i:i + 1]) for i in range(len(images))])


def calibration(setup: dict) -> np.ndarray:
    if setup["calib_data"] == "fashion-mnist":
        return fashion_mnist("train").batch(setup["preprocess"], range(setup["calib_samples"]))
    photos = image_folder(Path(setup["calib_data"]))
    return photos.batch(setup["preprocess"], range(len(photos)))


def plain_flows(setup: dict, out: Path, reference: np.ndarray) -> dict:
    """The stock flows, on the same calibration images."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgeq.export import onnx, pte, ptl

    model, shape = setup["loaded"].module, setup["loaded"].input_shape
    calib = calibration(setup)
    results = {}
    t0 = time.perf_counter()
    graph = torch.export.export(copy.deepcopy(model), (torch.zeros(shape),)).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    converted = convert_pt2e(prepared)
    quantize_s = time.perf_counter() - t0
    for fmt, export in (("pte", lambda p: pte.export(converted, shape, p)),
                        ("onnx", lambda p: onnx.export(converted, shape, p, quantized=True))):
        t1 = time.perf_counter()
        path = out / f"plain.{fmt}"
        export(path)
        results[fmt] = {**score(run_artifact(fmt, path, setup["check_images"]), reference, setup["labels"]),
                        "export_s": round(quantize_s + time.perf_counter() - t1, 1)}
    t1 = time.perf_counter()
    try:
        with runner.quantized_engine("qnnpack"):
            fx = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("qnnpack"), (torch.zeros(shape),))
            with torch.no_grad():
                for i in range(len(calib)):
                    fx(torch.from_numpy(calib[i:i + 1]))
            fx = convert_fx(fx)
        path = out / "plain.ptl"
        ptl.export(fx, shape, path, "qnnpack")
        results["ptl"] = {**score(run_artifact("ptl", path, setup["check_images"]), reference, setup["labels"]),
                          "export_s": round(time.perf_counter() - t1, 1)}
    except Exception as e:  # noqa: BLE001 - the plain flow crashing is a result
        results["ptl"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
    return results


def edgeq_variant(setup: dict, changes: dict, out: Path, reference: np.ndarray) -> dict:
    from edgeq.pipeline import export

    recipe = replace(QuantRecipe(), calib_samples=setup["calib_samples"], **changes)
    config = ExportConfig(model=setup["source"], weights=setup["weights"], input_shape=setup.get("input_shape"),
                          precisions=("int8",), validate=False,
                          quantization=recipe, data=DataConfig(calib=setup["calib_data"], eval=setup["eval_data"]),
                          preprocess=setup["overrides"])
    manifest = export(out, config, progress=False)
    results = {}
    for a in manifest.artifacts:
        results[a.format] = {**score(run_artifact(a.format, out / a.path, setup["check_images"]), reference,
                                     setup["labels"]), "export_s": round(manifest.timings_s["total"], 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="lite1,lite2,builtin")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--table", action="store_true", help="print the table from the saved results only")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    with tempfile.TemporaryDirectory(prefix="edgeq-bench-int8-") as tmp:
        work = Path(tmp)
        for setup in model_setups(args.models.split(","), work):
            with torch.no_grad():
                reference = setup["loaded"].module(torch.from_numpy(setup["check_images"])).numpy()
            row = results.setdefault(setup["name"], {})
            row["float"] = {"accuracy": round(float((reference.argmax(1) == setup["labels"]).mean()), 4),
                            "images": len(reference)}
            print(f"{setup['name']}: float accuracy {row['float']['accuracy']:.2%}", flush=True)
            try:
                row["plain flows"] = plain_flows(setup, work, reference)
            except Exception:  # noqa: BLE001
                row["plain flows"] = {"error": traceback.format_exc(limit=1)}
            print(f"  plain flows: {row['plain flows']}", flush=True)
            for name in args.variants.split(","):
                row[name] = edgeq_variant(setup, VARIANTS[name], work / name.replace(" ", "_"), reference)
                print(f"  {name}: {row[name]}", flush=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results: dict) -> str:
    lines = ["| model | flow | .pte SQNR / agree / acc | .onnx SQNR / agree / acc | .ptl SQNR / agree / acc | export s |",
             "|---|---|---|---|---|---:|"]
    for model, rows in results.items():
        lines.append(f"| {model} | float | acc {rows['float']['accuracy']:.1%} ({rows['float']['images']} images) | | | |")
        for flow, formats in rows.items():
            if flow == "float":
                continue
            cells = []
            for fmt in ("pte", "onnx", "ptl"):
                r = formats.get(fmt, {})
                cells.append(f"crashed ({r['error'][:48]}…)" if "error" in r else
                             f"{r['sqnr_db']:.1f} dB / {r['agreement']:.1%} / {r['accuracy']:.1%}" if r else "–")
            seconds = max((r.get("export_s", 0) for r in formats.values() if isinstance(r, dict)), default=0)
            lines.append(f"| | {flow} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
