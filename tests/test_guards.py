"""Guards for redesigns: what a user sees must not change. Every CLI command's options, and a
manifest.json written by an earlier edgeq, which must load and save back to the same JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from edgeq.cli import main
from edgeq.manifest import Manifest

DATA = Path(__file__).resolve().parent / "data"


def _options(command: click.Command) -> dict:
    return {p.name: {"opts": sorted(p.opts + p.secondary_opts), "type": p.type.name, "required": p.required,
                     "default": p.default if isinstance(p.default, (str, int, float, bool, type(None), tuple, list))
                     else repr(p.default),
                     "multiple": p.multiple, "nargs": p.nargs, "flag": getattr(p, "is_flag", False),
                     "help": getattr(p, "help", None)}
            for p in command.params}


def _snapshot(group: click.Group, prefix: str = "edgeq") -> dict:
    out = {}
    for name, command in sorted(group.commands.items()):
        out[f"{prefix} {name}"] = _options(command)
        if isinstance(command, click.Group):
            out.update(_snapshot(command, f"{prefix} {name}"))
    return out


def test_cli_options_are_unchanged():
    expected = json.loads((DATA / "cli_options.json").read_text())
    assert json.loads(json.dumps(_snapshot(main))) == expected


@pytest.mark.parametrize("name", ["manifest_v0.1.json", "manifest_v0.1_qat.json"])
def test_an_older_manifest_loads_and_saves_back_the_same(tmp_path, name):
    """Written by edgeq 0.1 before the manifest was typed: a static export validated on arm64 and on
    x86_64 (one run crashed), and a QAT export."""
    original = json.loads((DATA / name).read_text())
    manifest = Manifest.from_dict(original)
    assert json.loads(manifest.to_json()) == original
    manifest.write(tmp_path)
    assert Manifest.load(tmp_path).to_dict() == manifest.to_dict()
