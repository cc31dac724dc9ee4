"""`edgeq farm`: the CI device-farm matrix on one machine. Export, then validate on every target,
with the same `edgeq export` / `edgeq validate` commands the workflow runs
(.github/workflows/device-farm.yml), one folder per target under OUT, validations in parallel
where cores allow.

Targets that quantize alike (same backend and runtimes) share one export: it is made once, for
the first of them, and copied for the others, so each target's folder holds its own validation.

    OUT/<target>/        the export and its validation on <target> (manifest.json, report.md/html)
    OUT/logs/            each command's output
    OUT/farm.json        one row per target: passed, failed artifacts, seconds, latency
    OUT/farm.md          the summary table (CI writes it to the job summary)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from rich.progress import Progress

from edgeq import procs
from edgeq.errors import EdgeqError
from edgeq.manifest import MANIFEST, Manifest, check_replaceable, write_atomic
from edgeq.targets import Target, list_targets, load_target
from edgeq.validate import failures

FARM = "farm.json"


@dataclass
class FarmResult:
    target: str
    folder: str  # relative to OUT
    exported_for: str  # the target the export was made for (targets that quantize alike share it)
    passed: bool
    exit_code: int
    failed: list[str] = field(default_factory=list)  # "int8 .pte", … or the command's error line
    seconds: float = 0.0
    int8_pte_ms: float | None = None  # median latency of the int8 .pte on the target
    measured: str | None = None  # where that latency was measured


def default_targets() -> list[str]:
    return [t.name for t in list_targets()]


def farm(targets: Sequence[str], out: str | Path, *, source: str | Path | None = None, jobs: int | None = None,
         export_args: Sequence[str] = (), validate_args: Sequence[str] = (),
         progress: Progress | None = None) -> list[FarmResult]:
    """Export (or copy `source`) and validate for each target; write farm.json and farm.md."""
    out = Path(out)
    specs = [load_target(t) for t in targets]
    if not specs:
        raise EdgeqError("no targets given: pass --targets NAME[,NAME…] (edgeq targets list)")
    # How the commands name each target: the user's .toml path where one was given, so the child
    # edgeq finds it too. Names are plain (checked at load): each is a folder and a log file here.
    given = {spec.name: str(Path(t).resolve()) if str(t).endswith(".toml") else spec.name
             for spec, t in zip(specs, targets)}
    if len(given) != len(specs):
        raise EdgeqError("two targets share a name: each target's folder is named after it; rename one")
    if out.exists() and any(out.iterdir()) and not (out / FARM).is_file():
        raise EdgeqError(f"--out {out} exists and is not an edgeq farm folder (no {FARM}): pass a new or empty folder")
    if source is not None:
        Manifest.load(Path(source))  # a clear error before anything is copied
    for spec in specs:  # an earlier farm's exports are replaced; nothing else is
        check_replaceable(out / spec.name, option=f"farm folder for {spec.name}:")
    (out / "logs").mkdir(parents=True, exist_ok=True)
    task = progress.add_task("farm", total=2 * len(specs)) if progress else None

    def step(description: str, done: int = 1) -> None:
        if progress:
            progress.update(task, description=description, advance=done)

    results: dict[str, FarmResult] = {}
    started: dict[str, float] = {}
    ready: list[Target] = []
    for group in _groups(specs) if source is None else [specs]:
        first = group[0]
        origin = Path(source) if source is not None else out / first.name
        for spec in group:
            started[spec.name] = time.perf_counter()
        if source is None:
            if progress:
                progress.update(task, description=f"exporting for {first.name}")
            code, error = _edgeq(["export", "--target", given[first.name], "--out", str(origin), "--no-validate", "-q",
                                  *export_args], out / "logs" / f"{first.name}.export.log")
            if code != 0:
                for spec in group:
                    results[spec.name] = FarmResult(spec.name, spec.name, first.name, False, code, [f"export: {error}"])
                    step(f"export for {first.name} failed", done=2)
                continue
        exported_for = Manifest.load(origin).target.name
        for spec in group:
            if out / spec.name != origin:
                check_replaceable(out / spec.name, option=f"farm folder for {spec.name}:")
                shutil.rmtree(out / spec.name, ignore_errors=True)
                shutil.copytree(origin, out / spec.name)
            step(f"exported for {exported_for}")
            ready.append(spec)

    def validate(spec: Target) -> FarmResult:
        code, error = _edgeq(["validate", str(out / spec.name), "--target", given[spec.name], "-q", *validate_args],
                             out / "logs" / f"{spec.name}.validate.log")
        result = _result(spec, out, code, error, time.perf_counter() - started[spec.name])
        step(f"{spec.name}: {'passed' if result.passed else 'FAILED'}")
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs or os.cpu_count() or 1)) as pool:
        for result in pool.map(validate, ready):
            results[result.target] = result
    ordered = [results[s.name] for s in specs]
    _write(out, ordered)
    return ordered


def _groups(specs: list[Target]) -> list[list[Target]]:
    """Targets whose exports would be identical: same quantization backend and runtimes."""
    groups: dict[tuple, list[Target]] = {}
    for spec in specs:
        groups.setdefault((spec.backend, spec.runtimes), []).append(spec)
    return list(groups.values())


def _edgeq(args: list[str], log: Path) -> tuple[int, str]:
    """Run an edgeq command in its own process (as CI does); (exit code, its last error line)."""
    with log.open("w") as f:
        proc = procs.run([sys.executable, "-m", "edgeq", *args], stdout=f, stderr=subprocess.STDOUT)
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("edgeq: error:")]
    return proc.returncode, (errors[-1] if errors else lines[-1] if lines else "")[:300]


def _result(spec: Target, out: Path, code: int, error: str, seconds: float) -> FarmResult:
    target = spec.name
    try:
        manifest = Manifest.load(out / target)
    except EdgeqError:
        return FarmResult(target, target, "?", False, code, [error], round(seconds, 1))
    failed = failures(manifest, spec)
    pte = next((a.targets.get(target) for a in manifest.artifacts if a.key == "int8 .pte"), None)
    latency = pte.latency_ms if pte else None
    if code != 0 and not failed:
        failed = [error]
    return FarmResult(target, target, manifest.target.name, code == 0 and not failed, code, failed,
                      round(seconds, 1), latency.median if latency else None, latency.measured if latency else None)


def _write(out: Path, results: list[FarmResult]) -> None:
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.machine(),
           "cpus": os.cpu_count(), "passed": all(r.passed for r in results), "targets": [asdict(r) for r in results]}
    write_atomic(out / FARM, (json.dumps(doc, indent=2) + "\n").encode())
    write_atomic(out / "farm.md", markdown(results).encode())


def markdown(results: list[FarmResult]) -> str:
    rows = ["| target | exported for | result | int8 .pte median | measured | time |", "|---|---|---|---|---|---|"]
    for r in results:
        verdict = "✓ passed" if r.passed else f"✗ FAILED: {', '.join(r.failed)}"
        ms = f"{r.int8_pte_ms:.2f} ms" if r.int8_pte_ms is not None else "–"
        rows.append(f"| {r.target} | {r.exported_for} | {verdict} | {ms} | {r.measured or '–'} | {r.seconds:.0f} s |")
    details = "".join(f"- {r.target}: `{r.folder}/report.md`, `{r.folder}/{MANIFEST}`\n" for r in results)
    return "## edgeq farm\n\n" + "\n".join(rows) + "\n\n" + details
