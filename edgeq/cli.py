"""The `edgeq` command: parses arguments and calls the Python API; user errors print as one line."""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import click
from click.core import ParameterSource
from rich.table import Table

from edgeq import procs
from edgeq.config import (CALIBRATIONS, FORMATS, METHODS, OPTIMIZERS, SCHEDULES, ExportConfig, ThresholdOverrides,
                          ValidateConfig)
from edgeq.errors import EdgeqError
from edgeq.manifest import Manifest, dumps
from edgeq.progress import plain_console, progress_bars
from edgeq.report import print_terminal
from edgeq.targets import Target, list_targets, load_target, target_of

# OSErrors that are the machine's state, not edgeq's bugs: they print as one line with the fix.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC: "free some space there, or write somewhere else",
                       errno.EDQUOT: "free some space there, or write somewhere else",
                       errno.EACCES: "choose a folder you can write, or fix its permissions",
                       errno.EPERM: "choose a folder you can write, or fix its permissions",
                       errno.EROFS: "the file system is read-only: write somewhere else",
                       errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
                       errno.EISDIR: "the path is a folder: pass a file",
                       errno.ENAMETOOLONG: "use a shorter path"}


SAMPLES_HELP = ("reference inputs each artifact runs [default: 32, one per class first; all in reference.npz "
                "for an artifact whose outputs differ from the host's, unless this is given]")


def _numbers(cast: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return tuple(cast(v) for v in value.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    return parse


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


class _Commands(click.Group):
    """Where every error crosses the CLI boundary: a user error (EdgeqError, or the machine's state:
    a full disk, no permission) becomes one line on stderr and exit code 1; SIGINT/SIGTERM unwind
    like Ctrl-C (130/143) after ending edgeq's children; anything else is a bug in edgeq and says so,
    with its traceback (exit code 70)."""

    def invoke(self, ctx: click.Context) -> Any:
        with procs.signals_handled():
            try:
                result = super().invoke(ctx)
                procs.raise_if_stopped()  # a signal whose exception Python swallowed still ends it as one
                return result
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except EdgeqError as e:
                _fail(str(e))
            except procs.Interrupted as e:
                click.echo(f"edgeq: {e}", err=True)
                sys.exit(128 + e.signum)
            except KeyboardInterrupt as e:
                click.echo(f"edgeq: {str(e) or 'interrupted; nothing was written'}", err=True)
                sys.exit(130)
            except OSError as e:
                if e.errno not in _ENVIRONMENT_ERRNOS:
                    _internal_error(e)
                _fail(_os_error_line(e))
            except Exception as e:  # noqa: BLE001 - the last boundary: report it as what it is
                _internal_error(e)


def _fail(line: str) -> None:
    click.echo(f"edgeq: error: {' '.join(line.split())}", err=True)
    sys.exit(1)


def _os_error_line(e: OSError) -> str:
    from edgeq.fetch import cache_root

    where = f": {e.filename}" if e.filename else ""
    fix = _ENVIRONMENT_ERRNOS[e.errno]
    if e.filename and Path(str(e.filename)).resolve().is_relative_to(cache_root().resolve()):
        fix += " (this is edgeq's cache: set EDGEQ_CACHE to a folder you can write)"
    return f"{(e.strerror or type(e).__name__).lower()}{where}: {fix}"


def _internal_error(e: BaseException) -> None:
    traceback.print_exception(e)
    click.echo(f"edgeq: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} — "
               "this is a bug in edgeq, not in your input; please report it with the traceback above", err=True)
    sys.exit(70)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeq")
def main() -> None:
    """Quantize PyTorch vision models into mobile artifacts (.pte, .onnx, .ptl) and check them."""
    # torch logs a deprecation notice about torchao's enums at import time: not the user's concern.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@main.command("export")
@click.option("--target", default="arm64", show_default=True, help="target name (edgeq targets list) or a .toml file")
@click.option("--model", default=None, help="torchvision:NAME[?k=v], path/file.py:factory, module:factory "
              "[default: the built-in Fashion-MNIST MobileNetV2-style net]")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="state_dict file (loaded weights_only)")
@click.option("--input-shape", callback=_numbers(int), default=None, help="N,C,H,W, e.g. 1,3,224,224")
@click.option("--method", type=click.Choice(list(METHODS)), default="static", show_default=True,
              help="static: post-training calibration; qat: quantization-aware fine-tuning; dynamic: int8 "
              "weights, activations quantized at run time (LSTM, GRU, Transformer; docs/dynamic.md)")
@click.option("--backend", type=click.Choice(["qnnpack", "x86"]), default=None,
              help="quantization config [default: the target's]")
@click.option("--calib-data", default=None, help="image folder, 'fashion-mnist', or an .npz with one array per "
              "forward parameter for a model with example_inputs() [default: fashion-mnist]")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--train-data", default=None, help="QAT: labelled image folder or 'fashion-mnist' "
              "[default for the built-in model: fashion-mnist]")
@click.option("--epochs", type=int, default=2, show_default=True, help="QAT epochs")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="QAT peak learning rate")
@click.option("--batch-size", type=int, default=64, show_default=True, help="QAT batch size per process")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="sgd", show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--freeze-bn-after", type=float, default=None, help="QAT: epochs before batch-norm statistics "
              "freeze [default: 60% of --epochs]")
@click.option("--freeze-observers-after", type=float, default=None, help="QAT: epochs before quantization "
              "ranges freeze [default: 80% of --epochs]")
@click.option("--train-samples", type=int, default=None, help="QAT: use at most this many training images")
@click.option("--val-samples", type=int, default=None, help="QAT: training images held out and scored each "
              "epoch [default: 10%, at most 5000]")
@click.option("--device", default="auto", show_default=True, help="QAT: auto, cpu, cuda or cuda:N")
@click.option("--seed", type=int, default=0, show_default=True, help="QAT: data order and split")
@click.option("--resume", is_flag=True, help="QAT: continue from the checkpoint in --checkpoint-dir")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="QAT checkpoints [default: OUT.qat beside --out]")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="QAT: steps between checkpoints")
@click.option("--eval-data", default=None, help="labelled image folder, 'fashion-mnist', or an .npz of the model's "
              "inputs with optional labels (accuracy + checks)")
@click.option("--check-samples", type=int, default=None,
              help="held-out images for the host check [default: all eval images, else 200 held-out calibration images]")
@click.option("--formats", callback=_names, default=",".join(FORMATS), show_default=True)
@click.option("--precisions", callback=_names, default="int8,fp32", show_default=True)
@click.option("--per-tensor", is_flag=True, help="per-tensor weights instead of per-channel")
@click.option("--calibration", type=click.Choice(CALIBRATIONS), default="histogram", show_default=True,
              help="how activation ranges are chosen (static)")
@click.option("--percentile", type=float, default=99.99, show_default=True,
              help="--calibration percentile: clip each activation at this percentile")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="static: take the mean error of int8 weight rounding out through each layer's bias")
@click.option("--equalization/--no-equalization", default=False, show_default=True,
              help="static: cross-layer equalization of conv pairs joined by ReLU (not ReLU6)")
@click.option("--adaround/--no-adaround", default=False, show_default=True,
              help="static: learn each weight's rounding on the calibration images (minutes on a CPU)")
@click.option("--correction-images", type=int, default=64, show_default=True,
              help="calibration images bias correction and AdaRound use")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="static int8: leave the most damaging layers in float until int8 loses at most this many "
              "percentage points of accuracy on the labelled check images (e.g. 0.5)")
@click.option("--max-agreement-drop", type=float, default=None,
              help="the same budget without labels: percentage points of top-1 agreement with the float model")
@click.option("--min-cosine", type=float, default=None,
              help="int8 of a model of tensors: leave the most damaging layers (a recurrent layer, a linear, an embedding table) "
              "in float until every output's mean cosine similarity to the float model's is at least this (e.g. 0.99)")
@click.option("--min-sqnr", type=float, default=None,
              help="the same budget as every output's SQNR in dB against the float model's (e.g. 30)")
@click.option("--max-float-layers", type=int, default=8, show_default=True,
              help="the budget search stops after this many float layers")
@click.option("--plan", type=click.Path(path_type=Path), default=None,
              help="apply the float layers of an earlier export's plan.json (no search)")
@click.option("--dynamic-layers", callback=_names, default=None,
              help="static int8 of a model of tensors, hybrid: these layers quantized dynamically, comma-separated "
              "(a linear, a recurrent layer such as lstm.layers.0, a cell)")
@click.option("--mean", callback=_numbers(float), default=None, help="per-channel mean, e.g. 0.485,0.456,0.406")
@click.option("--std", callback=_numbers(float), default=None, help="per-channel std")
@click.option("--resize", type=int, default=None, help="resize the shorter side to this, then center-crop")
@click.option("--validate/--no-validate", "validate_on_target", default=True, show_default=True,
              help="run every artifact on the target afterwards (QEMU for arm targets; set up on first use)")
@click.option("--runs", type=int, default=20, show_default=True, help="timed runs per artifact on the target")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder")
@click.option("--json", "as_json", is_flag=True, help="print manifest.json to stdout")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@click.option("--config", "recipe", type=click.Path(path_type=Path), default=None,
              help="a recipe (TOML, see edgeq.config.ExportConfig); the flags given override it")
@click.pass_context
def export_cmd(ctx: click.Context, recipe: Path | None, out: Path, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Quantize, export every format, check each artifact against the float model on the host.

    QAT on more than one process: torchrun --nproc-per-node N -m edgeq export --method qat …
    """
    from edgeq.pipeline import export

    config = export_config(ctx, recipe)
    manifest = export(out, config, progress=not quiet and not as_json)
    if manifest is None:  # another rank of a torchrun job: rank 0 reports
        return
    if as_json:
        click.echo(manifest.to_json())
    else:
        print_terminal(manifest)
        click.echo(f"manifest and reports: {out / 'manifest.json'}, {out / 'report.md'}, {out / 'report.html'}")
    _exit_if_failed(manifest, load_target(config.target) if config.validate else None)


# Each `edgeq export` flag and the recipe field it sets (ExportConfig, dotted). --per-tensor sets
# quantization.per_channel to its opposite.
EXPORT_FLAGS = {
    "model": "model", "weights": "weights", "input_shape": "input_shape", "target": "target", "method": "method",
    "backend": "quantization.backend", "calib_samples": "quantization.calib_samples",
    "per_tensor": "quantization.per_channel", "calibration": "quantization.calibration",
    "percentile": "quantization.percentile", "bias_correction": "quantization.bias_correction",
    "equalization": "quantization.equalization", "adaround": "quantization.adaround",
    "correction_images": "quantization.correction_images",
    "max_accuracy_drop": "budget.max_accuracy_drop", "max_agreement_drop": "budget.max_agreement_drop",
    "min_cosine": "budget.min_cosine", "min_sqnr": "budget.min_sqnr",
    "max_float_layers": "budget.max_float_layers", "plan": "budget.plan",
    "dynamic_layers": "quantization.dynamic_layers",
    "calib_data": "data.calib", "train_data": "data.train",
    "eval_data": "data.eval", "check_samples": "data.check_samples", "formats": "formats", "precisions": "precisions",
    "mean": "preprocess.mean", "std": "preprocess.std", "resize": "preprocess.resize",
    "checkpoint_dir": "checkpoint_dir", "resume": "resume", "validate_on_target": "validate",
    "runs": "validation.runs",
    **{name: f"training.{name}" for name in ("epochs", "lr", "batch_size", "optimizer", "schedule", "weight_decay",
                                              "freeze_bn_after", "freeze_observers_after", "train_samples",
                                              "val_samples", "device", "seed", "checkpoint_every")},
}


def export_config(ctx: click.Context, recipe: Path | None) -> ExportConfig:
    """The recipe file (if any) with the flags given on the command line on top; without a recipe,
    every flag (its default included) sets its field."""
    config = ExportConfig.load(recipe) if recipe else ExportConfig()
    values = {}
    for name, path in EXPORT_FLAGS.items():
        if recipe and ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        value = ctx.params[name]
        values[path] = (not value if name == "per_tensor" else str(value) if isinstance(value, Path) else value)
    return config.with_values(values)


@main.group("targets")
def targets_group() -> None:
    """The targets edgeq knows (targets/*.toml)."""


@targets_group.command("list")
def targets_list() -> None:
    from edgeq.placement import readiness

    table = Table("target", "arch", "qemu -cpu", "backend", "runtimes", "set up", "description")
    for t in list_targets():
        table.add_row(t.name, t.arch, t.qemu_cpu or "(host)", t.backend, ", ".join(t.runtimes), readiness(t),
                      t.description)
    plain_console().print(table)


@targets_group.command("setup")
@click.argument("name")
@click.option("--with-plugins", is_flag=True, help="also build QEMU's instruction-count plugin (a few minutes)")
def targets_setup(name: str, with_plugins: bool) -> None:
    """Provision an emulated target in the cache (EDGEQ_CACHE, default ~/.cache/edgeq). Idempotent."""
    from edgeq.qemu.provision import setup

    target = load_target(name)
    if target.qemu_cpu is None:
        click.echo(f"{target.name} runs on the host: nothing to set up")
        return
    console = plain_console(stderr=True)
    emu = setup(with_plugins, log=lambda line: console.print(f"setup {target.name}: {line}"))
    click.echo(f"{target.name}: ready in {emu.root} (qemu-aarch64 -cpu {target.qemu_cpu})")


@main.command("validate")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--target", default=None, help="target name or .toml [default: the export's target]")
@click.option("--runs", type=int, default=20, show_default=True, help="timed runs per artifact")
@click.option("--warmup", type=int, default=3, show_default=True, help="untimed runs first")
@click.option("--threads", type=int, default=1, show_default=True, help="runtime threads")
@click.option("--samples", type=int, default=None, help=SAMPLES_HELP)
@click.option("--count-instructions", is_flag=True, help="guest instructions per inference (needs targets setup "
              "NAME --with-plugins)")
@click.option("--timeout", type=float, default=900, show_default=True, help="seconds per artifact")
@click.option("--min-agreement", type=float, default=None, help="override the target's min_top1_agreement")
@click.option("--min-sqnr", type=float, default=None, help="override the target's min_sqnr_db")
@click.option("--max-accuracy-drop", type=float, default=None, help="override the target's max_accuracy_drop")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
def validate_cmd(folder: Path, target: str | None, runs: int, warmup: int, threads: int, samples: int | None,
                 count_instructions: bool, timeout: float, min_agreement: float | None, min_sqnr: float | None,
                 max_accuracy_drop: float | None, as_json: bool, quiet: bool) -> None:
    """Run every artifact of an export on a target (QEMU aarch64 or the host) and hold it to the float
    model. Exit code 1 when an artifact fails its thresholds or cannot run."""
    from edgeq.validate import validate

    from edgeq import schema

    options = ValidateConfig(runs=runs, warmup=warmup, threads=threads, samples=samples,
                             count_instructions=count_instructions, timeout=timeout,
                             thresholds=ThresholdOverrides(min_agreement, min_sqnr, max_accuracy_drop))
    with progress_bars(not quiet and not as_json) as bar:
        results = validate(folder, target, options, progress=bar)
    manifest = Manifest.load(folder)
    if as_json:
        click.echo(dumps(schema.dump(results)))
    else:
        print_terminal(manifest)
    _exit_if_failed(manifest, load_target(target) if target else
                    target_of(manifest.target, f"{folder / 'manifest.json'}: target"))


@main.command("inspect")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None,
              help="also write the per-layer plot and table as HTML here")
def inspect_cmd(folder: Path, html_path: Path | None) -> None:
    """Per-layer int8 error of an export, from its manifest.json: SQNR along the network, what each
    conv/linear adds, and the layers its plan left in float."""
    from edgeq import report

    manifest = Manifest.load(folder)
    numerics = manifest.layer_numerics
    if numerics is None or not numerics.layers:
        raise EdgeqError(f"{folder} has no per-layer numerics (an fp32-only, QAT or older export): export with "
                         "static int8 to a PT2E format (.pte, or .onnx with --backend qnnpack)")
    table = Table(title=f"Per-layer int8 error ({report.numerics_source(numerics)})")
    for column in ("#", *report.LAYER_COLUMNS):
        table.add_column(column, justify="right" if column in ("#", "SQNR dB", "added dB") else "left")
    for i, (e, row) in enumerate(zip(numerics.layers, report.layer_rows(numerics))):
        table.add_row(str(i), *row, style="red" if e.kept_float else None)
    console = plain_console()
    console.print(table)
    console.print(report.plan_note(manifest.plan) if manifest.plan else "No float layers: every layer is int8.")
    if html_path is not None:
        report.write_one(html_path, report.inspect_html(manifest))
        console.print(f"plot and table: {html_path}")
    else:
        console.print(f"plot: {folder / 'report.html'} (per-layer error), or pass --html FILE")


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--md", "md_path", type=click.Path(path_type=Path), default=None, help="also write Markdown here")
@click.option("--html", "html_path", type=click.Path(path_type=Path), default=None, help="also write HTML here")
def report_cmd(folder: Path, md_path: Path | None, html_path: Path | None) -> None:
    """Size, accuracy and latency of an export, from its manifest.json: terminal, Markdown, HTML."""
    from edgeq import report

    manifest = Manifest.load(folder)
    print_terminal(manifest)
    if md_path:
        report.write_one(md_path, report.markdown(manifest))
    if html_path:
        report.write_one(html_path, report.html(manifest))


class _AndroidCommands(click.Group):
    """`edgeq android DIST APP` is `edgeq android install DIST APP`: the first argument names a
    subcommand only when it is one."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["install", *args]
        return super().resolve_command(ctx, args)


@main.group("android", cls=_AndroidCommands)
def android_group() -> None:
    """The Android demo app: `edgeq android DIST APP [--apk PATH]` puts an export into it (and builds
    an APK offline); `edgeq android check APK` runs that APK's own runtime on its model."""


@android_group.command("install")
@click.argument("dist", type=click.Path(path_type=Path))
@click.argument("app", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["int8", "fp32"]), default="int8", show_default=True,
              help="which .pte the app bundles")
@click.option("--apk", "apk_path", type=click.Path(path_type=Path), default=None,
              help="also build a debug APK here, offline (no Gradle), and run its runtime on the model (see check)")
@click.option("--check/--no-check", "run_check", default=True, show_default=True,
              help="with --apk: run the APK's ExecuTorch runtime on its golden inputs under QEMU")
def android_install(dist: Path, app: Path, precision: str, apk_path: Path | None, run_check: bool) -> None:
    """Put an export's .pte, labels, preprocessing, sample images and golden data into the Android
    demo's assets (APP/app/src/main/assets); then open APP in Android Studio and run it."""
    from edgeq.android import apk, assets

    console = plain_console(stderr=True)
    result = assets.install(dist, app, precision)
    click.echo(f"{result.folder}: {len(result.files)} files (model.pte {result.precision}, {result.samples} samples "
               f"with golden outputs from ExecuTorch {result.executorch_export} on the host)")
    for warning in result.warnings:
        console.print(f"edgeq: warning: {warning}")
    if apk_path is None:
        click.echo(f"next: open {app} in Android Studio and Run (or ./gradlew installDebug; "
                   "./gradlew connectedAndroidTest runs the golden-output test on a device)")
        return
    newer = assets.newer_than_runtime(result.executorch_export)
    if newer:
        console.print(f"edgeq: warning: {newer}{'' if run_check else ' (skipped: --no-check)'}")
    check = apk.build(app, apk_path, log=lambda line: console.print(f"android: {line}"))
    click.echo(f"{check.path}: {check.bytes / 1e6:.1f} MB, {check.package}, minSdk {check.min_sdk}, "
               f"{', '.join(check.native_code)}, {check.entries} entries, model.pte stored uncompressed, "
               f"signature {'+'.join(check.signatures)} verified")
    if run_check:
        _android_runtime_check(apk_path, console)
    else:
        click.echo("runtime not checked (--no-check): edgeq android check " + str(apk_path))


@android_group.command("check")
@click.argument("apk_path", metavar="APK", type=click.Path(path_type=Path))
def android_check(apk_path: Path) -> None:
    """Run the APK's own ExecuTorch runtime (lib/arm64-v8a/libexecutorch.so) on its packaged model
    and golden inputs, on an emulated arm64 phone core (QEMU), and compare with the golden outputs.
    Proves the native runtime runs the model; not JNI, the Java app, or a phone."""
    from edgeq.android import apk

    console = plain_console(stderr=True)
    apk.check(apk_path)  # packaging and signature first: a tampered APK is refused before it is run
    _android_runtime_check(apk_path, console)


def _android_runtime_check(apk_path: Path, console: Any) -> None:
    from edgeq.android import runtime_check

    result = runtime_check.check(apk_path, log=lambda line: console.print(f"android: {line}"))
    for s in result.samples:
        mark = "ok" if s.ok and s.max_diff <= result.atol else "DIFFERS"
        click.echo(f"  {s.image:28s} max |diff| {s.max_diff:.4g}  top-1 {s.top1} (golden {s.golden_top1})  "
                   f"{s.execute_ms:.1f} ms emulated  {mark}")
    summary = (f"{result.runtime} ran model.pte (exported with ExecuTorch {result.exported_with}) on "
               f"{len(result.samples)} golden inputs on an emulated {result.cpu}: max |diff| {result.max_diff:.4g} "
               f"(output_atol {result.atol:.4g}), top-1 equal on {sum(s.ok for s in result.samples)}/"
               f"{len(result.samples)}; load {result.load_ms:.0f} ms; check {result.seconds:.1f} s")
    if not result.passed:
        bad = [s for s in result.samples if not (s.ok and s.max_diff <= result.atol)]
        raise EdgeqError(f"{apk_path}: the APK's runtime gives outputs unlike the golden ones on {len(bad)}/"
                         f"{len(result.samples)} inputs (first: {bad[0].image}, max |diff| {bad[0].max_diff:.4g}, "
                         f"top-1 {bad[0].top1} vs {bad[0].golden_top1}): {summary}")
    click.echo(f"{apk_path}: runtime check passed: {summary}. Emulated times are QEMU's, not a phone's; "
               "JNI and the Java app are not exercised")


@main.command("farm", context_settings={"ignore_unknown_options": True})
@click.option("--targets", callback=_names, default=None, help="comma-separated [default: every target]")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="farm folder: one export per target")
@click.option("--from", "source", type=click.Path(path_type=Path), default=None,
              help="validate this export on every target instead of exporting")
@click.option("--jobs", type=int, default=None, help="validations at once [default: CPU cores]")
@click.option("--runs", type=int, default=20, show_default=True, help="timed runs per artifact")
@click.option("--samples", type=int, default=None, help=SAMPLES_HELP)
@click.option("--min-agreement", type=float, default=None, help="override every target's min_top1_agreement")
@click.option("--min-sqnr", type=float, default=None, help="override every target's min_sqnr_db")
@click.option("--max-accuracy-drop", type=float, default=None, help="override every target's max_accuracy_drop")
@click.option("--quiet", "-q", is_flag=True, help="no progress bars")
@click.argument("export_args", nargs=-1, type=click.UNPROCESSED)
def farm_cmd(targets: tuple[str, ...] | None, out: Path, source: Path | None, jobs: int | None, runs: int,
             samples: int | None, min_agreement: float | None, min_sqnr: float | None,
             max_accuracy_drop: float | None, quiet: bool, export_args: tuple[str, ...]) -> None:
    """Run the CI device-farm matrix here: export and validate on every target (QEMU ones
    included), validations in parallel. Options after -- go to edgeq export, e.g.
    `edgeq farm --out farm/ -- --model torchvision:resnet18`. Exit code 1 when a target fails."""
    from edgeq.farm import default_targets, farm, markdown

    validate_args = [f"--runs={runs}"]
    for flag, value in (("--samples", samples), ("--min-agreement", min_agreement), ("--min-sqnr", min_sqnr),
                        ("--max-accuracy-drop", max_accuracy_drop)):
        if value is not None:
            validate_args.append(f"{flag}={value}")
    with progress_bars(not quiet) as bar:
        results = farm(targets or default_targets(), out, source=source, jobs=jobs,
                        export_args=export_args, validate_args=validate_args, progress=bar)
    click.echo(markdown(results))
    failed = [r.target for r in results if not r.passed]
    if failed:
        click.echo(f"edgeq: error: {', '.join(failed)} failed (see {out}/farm.md and {out}/logs/)", err=True)
        sys.exit(1)


def _exit_if_failed(manifest: Manifest, spec: Target | None) -> None:
    """CI gates on the exit code: 1 when an artifact failed its host check or its run on `spec`."""
    from edgeq.validate import failures

    failed = failures(manifest, spec)
    if failed:
        where = f"on the host or on {spec.name}" if spec else "on the host"
        click.echo(f"edgeq: error: {', '.join(failed)} failed {where} (see above)", err=True)
        sys.exit(1)

