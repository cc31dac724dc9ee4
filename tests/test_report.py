"""Reports from manifest.json: terminal, Markdown, HTML; the HTML renders in headless Chromium."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_export_writes_reports_with_every_artifact(builtin_export):
    manifest, out, _ = builtin_export
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for a in manifest["artifacts"]:
        key = f"{a['precision']} .{a['format']}"
        assert md.count(f"| {key} |") == 2  # host check and the arm64 table
        assert html.count(f"<td>{key}</td>") == 2
    assert "On arm64: aarch64" in md and "not device time" in md
    # size, latency, per-layer SQNR, accuracy against size
    assert html.count("src='data:image/png;base64,") == 4
    layers = manifest["layer_numerics"]["layers"]
    steps = manifest["weight_steps"]  # the built-in model: 22 conv+BN pairs, 23 layers with a bias
    assert (steps["folded_batchnorms"], steps["bias_corrected_layers"], steps["equalized_pairs"]) == (22, 23, None)
    assert "Before int8: 22 BatchNorms folded; bias corrected in 23 layers; on 64 calibration images" in md
    assert {a["details"]["calibration"] for a in manifest["artifacts"] if a["precision"] == "int8"} == {"histogram"}
    assert "Per-layer SQNR of the int8 model" in md and md.count(" | conv2d | ") == sum(e["op"] == "conv2d" for e in layers)
    assert "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (scripts/setup.sh installs it as root)")
def test_html_renders_in_headless_chromium(builtin_export, tmp_path):
    _, out, _ = builtin_export
    page = (out / "report.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    widths = [int(w) for w in __import__("re").findall(r'data-rendered-width="(\d+)"', dom)]
    assert len(widths) == 4 and all(w >= 400 for w in widths), widths  # every plot decoded and laid out
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", page], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.02  # not a blank page: text, tables, bars


def test_report_command_writes_where_asked(builtin_export, tmp_path):
    _, out, _ = builtin_export
    r = run_cli("report", str(out), "--md", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    assert "Host check" in r.stdout and "int8 .pte" in r.stdout
    assert (tmp_path / "r.md").read_text() == (out / "report.md").read_text()
    assert_user_error(run_cli("report", str(out), "--md", str(tmp_path / "no" / "r.md")), "does not exist")


def test_report_reads_an_older_manifest(builtin_export, tmp_path):
    """A manifest from before validation, QAT and gates existed (schema 1 of the first release)."""
    manifest, _, _ = builtin_export
    old = copy.deepcopy({k: v for k, v in manifest.items() if k not in ("reference", "training")})  # shared fixture
    old["artifacts"] = [{k: v for k, v in a.items() if k != "targets"} for a in old["artifacts"]]
    for a in old["artifacts"]:
        del a["host_check"]["gates"]
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    r = run_cli("report", str(tmp_path), "--md", str(tmp_path / "r.md"))
    assert r.exit_code == 0, r.output
    assert "On arm64" not in (tmp_path / "r.md").read_text() and "| int8 .pte |" in (tmp_path / "r.md").read_text()


def test_missing_or_malformed_manifest(tmp_path):
    assert_user_error(run_cli("report", str(tmp_path)), "no manifest.json", "edgeq export")
    (tmp_path / "manifest.json").write_text("{not json")
    assert_user_error(run_cli("report", str(tmp_path)), "is not an edgeq manifest")
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": []}))
    assert_user_error(run_cli("report", str(tmp_path)), "is not an edgeq manifest")
