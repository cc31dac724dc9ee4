"""`edgeq android check APK`: the APK's own ExecuTorch runtime runs its packaged model on the golden
inputs, on an emulated arm64 CPU, and must give the golden outputs.

What runs is the APK's lib/arm64-v8a/libexecutorch.so (with the APK's libfbjni.so and
libc++_shared.so beside it) under qemu-aarch64, driven through the runtime's C++ API (Program,
Method: the calls its Java Module makes beneath JNI) by native/pte_check.cpp. The libraries are
built for Android's C library (bionic); they run on Debian's arm64 glibc with native/bionic_shim.c
for what bionic has and glibc lacks, and with their references' symbol versions (bionic's `LIBC`)
cleared in the run folder's copies, since glibc's loader binds a versioned reference only to that
version. The machine code is the APK's, byte for byte. Not exercised: JNI, the Java app, a phone.

Cached under android/check/ (EDGEQ_CACHE): pte_check and the shim libraries, compiled once by zig
against the runtime's own headers; QEMU and the C library come from the arm64 target's cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from edgeq import fetch, procs, targets
from edgeq.android import apk as apk_build
from edgeq.errors import EdgeqError
from edgeq.fetch import Log
from edgeq.manifest import sha256_file
from edgeq.paths import inside
from edgeq.qemu import provision, stubs

STEP = "android check"
TARGET = "android-arm64"  # its qemu_cpu: a phone's big core
SHIMS = ("libc.so", "libm.so", "libdl.so", "liblog.so", "libandroid.so")  # bionic's sonames
TIMEOUT_S = 600
# executorch::runtime::Error (runtime/core/error.h)
ERRORS = {0x01: "Internal", 0x02: "InvalidState", 0x10: "NotSupported", 0x11: "NotImplemented",
          0x12: "InvalidArgument", 0x13: "InvalidType", 0x14: "OperatorMissing", 0x20: "NotFound",
          0x21: "MemoryAllocationFailed", 0x22: "AccessFailed", 0x23: "InvalidProgram",
          0x24: "InvalidExternalData", 0x25: "OutOfResources", 0x30: "DelegateInvalidCompatibility",
          0x31: "DelegateMemoryAllocationFailed", 0x32: "DelegateInvalidHandle"}
STAGES = {"open": "opening", "program": "loading", "method_meta": "reading", "load_method": "loading the method of",
          "inputs": "feeding", "input_dtype": "feeding", "input_rank": "feeding", "set_input": "feeding",
          "execute": "running", "output": "reading the output of"}


@dataclass
class SampleResult:
    image: str
    max_diff: float
    top1: int
    golden_top1: int
    execute_ms: float  # emulated: QEMU's time, not a phone's

    @property
    def ok(self) -> bool:
        return self.top1 == self.golden_top1


@dataclass
class RuntimeCheck:
    apk: str
    runtime: str  # "ExecuTorch 1.1.0 (react-native-executorch@0.8.5)"
    exported_with: str | None  # the .pte's ExecuTorch, from preprocess.json
    cpu: str
    atol: float
    load_ms: float
    seconds: float  # the check's wall time, not counting the one-time build of its tools
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def max_diff(self) -> float:
        return max((s.max_diff for s in self.samples), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.samples) and all(s.ok and s.max_diff <= self.atol for s in self.samples)


def tools(log: Log = lambda _: None) -> tuple[provision.Emulator, Path]:
    """QEMU and the arm64 C library (the target cache), and the compiled check (android/check/)."""
    emu = provision.setup(log=log, native_only=True)
    toolchain = apk_build.toolchain(log)
    sources = resources.files("edgeq.android") / "native"
    key = hashlib.sha256(b"".join((sources / n).read_bytes() for n in ("pte_check.cpp", "bionic_shim.c"))).hexdigest()
    key = f"{apk_build.EXECUTORCH_NPM} {key[:16]}"
    built = fetch.cached_step(fetch.cache_root() / "android" / "check", key,
                              lambda out: _build(out, toolchain, Path(str(sources)), emu.root / "sysroot"), log)
    return emu, built


def _build(out: Path, toolchain: apk_build.Toolchain, sources: Path, sysroot: Path) -> None:
    library = next(p for p in toolchain.native_libs if p.name == "libexecutorch.so")
    target = ["-target", "aarch64-linux-gnu.2.36"]
    with provision.zig_compiler(out.with_name(out.name + ".zig"), STEP) as compile:
        (out / "lib").mkdir()
        # bionic's symbol versions, which the libraries ask their libc, libm and libdl for: the shim's
        # symbols carry LIBC; the other sonames define the version and nothing else.
        exported, bare = out / "libc.map", out / "empty.map"
        exported.write_text("LIBC { global: *; };\nLIBC_N {} LIBC;\nLIBC_O {} LIBC_N;\nLIBC_P {} LIBC_O;\n")
        bare.write_text("LIBC { local: *; };\n")
        empty = out / "empty.c"
        empty.write_text("/* a soname with bionic's symbol version; the definitions are glibc's or libc.so's */\n")
        for soname in SHIMS:
            args = ["cc", *target, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out / "lib" / soname)]
            if soname == "libc.so":
                args += ["-O2", f"-Wl,--version-script={exported}", str(sources / "bionic_shim.c")]
            elif soname == "libm.so":  # bionic's libm is glibc's libm.so.6 (no -O2: zig 0.17 fails to link then)
                args += [f"-Wl,--version-script={bare}", str(empty), "-Wl,--no-as-needed",
                         str(sysroot / "lib" / "aarch64-linux-gnu" / "libm.so.6")]
            else:
                args += [f"-Wl,--version-script={bare}", str(empty)]
            compile(args, f"compile the bionic shim {soname}")
        # The driver uses the runtime's headers in the NDK's libc++ namespace, so templates the
        # library exports match, and links against the library it will be run with.
        compile(["c++", *target, "-std=c++17", "-O2", "-fno-exceptions", "-fno-rtti", "-Wno-macro-redefined",
                 "-D_LIBCPP_ABI_NAMESPACE=__ndk1", "-I", str(toolchain.headers), "-c", "-o", str(out / "pte_check.o"),
                 str(sources / "pte_check.cpp")], "compile pte_check")
        compile(["cc", *target, "-o", str(out / "pte_check"), str(out / "pte_check.o"), str(library),
                 "-Wl,--allow-shlib-undefined"], "link pte_check")
        (out / "pte_check.o").unlink()
        (out / "RUNTIME").write_text(json.dumps({"sha256": sha256_file(library), "npm": apk_build.EXECUTORCH_NPM,
                                                 "executorch": apk_build.RUNTIME_EXECUTORCH}) + "\n")


def check(apk: str | Path, log: Log = lambda _: None, timeout_s: float = TIMEOUT_S) -> RuntimeCheck:
    """Run the APK's runtime on its model and golden inputs; compare with the golden outputs. Raises
    EdgeqError with one line when the runtime refuses the model; returns the per-sample comparison."""
    apk = Path(apk)
    apk_build.open_apk(apk).close()  # a missing or foreign file is refused before the tools are built
    emu, built = tools(log)
    start = time.monotonic()  # the check itself; building its tools once is not part of it
    runtime = json.loads((built / "RUNTIME").read_text())
    cpu = targets.load_target(TARGET).qemu_cpu
    with tempfile.TemporaryDirectory(prefix="edgeq-apk-check-") as tmp:
        work = Path(tmp)
        golden, exported_with = _unpack(apk, work, runtime["sha256"])
        for soname in SHIMS:
            shutil.copyfile(built / "lib" / soname, work / "lib" / soname)
        shape = golden["input_shape"]
        count = len(golden["samples"])
        log(f"check: {count} golden inputs through the APK's libexecutorch.so on an emulated {cpu}")
        argv = [str(emu.root / "qemu" / "qemu-aarch64"), "-cpu", cpu, "-L", str(emu.root / "sysroot"),
                "-E", f"LD_LIBRARY_PATH={work / 'lib'}", "-E", f"LD_PRELOAD={work / 'lib' / 'libc.so'}",
                str(built / "pte_check"), str(work / "model.pte"), str(work / "golden" / "inputs.f32"), str(count),
                str(work / "outputs.f32")]
        try:
            proc = procs.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout_s,
                             cwd=work)
        except subprocess.TimeoutExpired:
            raise EdgeqError(f"{apk}: the runtime did not finish {count} inputs in {timeout_s:.0f} s under QEMU: "
                             "an internal bug or a hung runtime; rerun with a longer timeout") from None
        facts = _facts(proc.stdout)
        label = f"the APK's runtime (ExecuTorch {runtime['executorch']})"
        if proc.returncode != 0:
            raise EdgeqError(f"{apk}: {label} {_refusal(proc, facts)}")
        outputs = np.fromfile(work / "outputs.f32", "<f4")
        golden_outputs = np.fromfile(work / "golden" / "outputs.f32", "<f4")
        if outputs.size != golden_outputs.size or facts.get("input") != [str(d) for d in shape]:
            raise EdgeqError(f"{apk}: {label} took input {' x '.join(facts.get('input', ['?']))} and gave "
                             f"{outputs.size} values; golden.json says input {shape} and {golden_outputs.size} "
                             "values: the assets do not belong to this model; rebuild the APK")
        outputs, golden_outputs = outputs.reshape(count, -1), golden_outputs.reshape(count, -1)
        times = [float(t) for t in facts.get("execute_ms", [])]
        samples = [SampleResult(image=s["image"], max_diff=float(np.abs(outputs[i] - golden_outputs[i]).max()),
                                top1=int(np.argmax(outputs[i])), golden_top1=int(s["top5"][0]["index"]),
                                execute_ms=times[i] if i < len(times) else float("nan"))
                   for i, s in enumerate(golden["samples"])]
    return RuntimeCheck(apk=str(apk), runtime=f"ExecuTorch {runtime['executorch']} ({runtime['npm']})",
                        exported_with=exported_with, cpu=cpu, atol=float(golden["output_atol"]),
                        load_ms=float(facts.get("load_ms", ["nan"])[0]), seconds=time.monotonic() - start,
                        samples=samples)


def _unpack(apk: Path, work: Path, runtime_sha256: str) -> tuple[dict, str | None]:
    """The APK's native libraries (under their sonames, symbol versions cleared), model.pte and golden
    data into `work`. Returns (golden.json, the exporter's ExecuTorch version)."""
    with apk_build.open_apk(apk) as z:
        names = set(z.namelist())
        needed = ["assets/model.pte", "assets/golden/golden.json", "assets/golden/inputs.f32",
                  "assets/golden/outputs.f32", "assets/preprocess.json", f"lib/{apk_build.ABI}/libexecutorch.so"]
        lacking = [n for n in needed if n not in names]
        if lacking:
            raise EdgeqError(f"{apk} lacks {', '.join(lacking)}: rebuild it with edgeq android DIST APP --apk PATH")
        (work / "lib").mkdir()
        (work / "golden").mkdir()
        for name in sorted(n for n in names if n.startswith(f"lib/{apk_build.ABI}/") and n.endswith(".so")):
            lib = inside(work / "lib", Path(name).name, f"{apk} entry")
            lib.write_bytes(z.read(name))
        for name in needed[:4]:
            inside(work, name.removeprefix("assets/"), f"{apk} entry").write_bytes(z.read(name))
        try:
            golden = json.loads(z.read("assets/golden/golden.json"))
            exported_with = json.loads(z.read("assets/preprocess.json")).get("executorch")
            missing = [k for k in ("input_shape", "samples", "output_atol") if k not in golden]
            if missing:
                raise KeyError(", ".join(missing))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EdgeqError(f"{apk}: assets/golden/golden.json is damaged ({e}): rebuild the APK") from None
    library = work / "lib" / "libexecutorch.so"
    if sha256_file(library) != runtime_sha256:
        raise EdgeqError(f"{apk}: its libexecutorch.so is not the runtime edgeq packages ({apk_build.EXECUTORCH_NPM}), "
                         "so its C++ API may differ from the one the check calls: rebuild the APK with "
                         "edgeq android DIST APP --apk PATH")
    for lib in list((work / "lib").iterdir()):
        soname = stubs.dynamic(lib)[1]
        if soname and soname != lib.name:  # libexecutorch.so calls itself libexecutorch_jni.so
            lib.rename(lib.with_name(soname))
    for lib in (work / "lib").iterdir():
        clear_bionic_versions(lib)
    return golden, exported_with


def _facts(stdout: str) -> dict[str, list[str]]:
    """pte_check's "key value…" lines; repeated keys (per sample) collect their first values."""
    facts: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "sample":
            fields = dict(zip(parts[2::2], parts[3::2]))
            facts.setdefault("execute_ms", []).append(fields.get("execute_ms", "nan"))
        elif len(parts) >= 2:
            facts[parts[0]] = parts[1:]
    return facts


def _refusal(proc: subprocess.CompletedProcess, facts: dict[str, list[str]]) -> str:
    """One line: what the runtime refused, and the runtime's own words for why."""
    log_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # The runtime's errors (E/…), most specific first: a missing operator or delegate names it.
    errors = [re.sub(r"^E/[^:]*:\s*", "", line).rstrip(".") for line in log_lines if line.startswith("E/")]
    errors.sort(key=lambda e: not re.search(r"[Mm]issing|not (found|registered)|[Dd]elegate|[Bb]ackend", e))
    why = "; ".join(dict.fromkeys(errors[:2])) or (log_lines[-1] if log_lines else "no message")
    if "error" in facts:
        stage, code = facts["error"][0], int(facts["error"][1], 16)
        return (f"refused model.pte when {STAGES.get(stage, stage)} it ({ERRORS.get(code, hex(code))}): {why}"
                f"{_hint(code)}")
    if proc.returncode < 0 or proc.returncode > 128:
        signal = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        return f"crashed (signal {signal}) running model.pte: {why}; report it as a bug with the APK"
    return f"could not run (exit {proc.returncode}): {why}"


def _hint(code: int) -> str:
    if code == 0x14:
        return ("; the .pte uses an operator this runtime lacks: export with an ExecuTorch no newer than "
                "the runtime's, or keep the operator out of the model")
    if code in (0x30, 0x32, 0x23, 0x01):
        return "; the .pte's delegate data is damaged or newer than this runtime: re-export and rebuild the APK"
    return ""


def clear_bionic_versions(lib: Path) -> int:
    """Make the library's references to bionic's symbol versions (LIBC, LIBC_N, …) unversioned, in
    place: glibc's loader then binds them to its own default definitions. Returns how many."""
    data = bytearray(lib.read_bytes())
    if data[:6] != b"\x7fELF\x02\x01":
        raise EdgeqError(f"{lib.name} in the APK is not a 64-bit little-endian ELF library: rebuild the APK")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # (type, link, offset, size) of each section header (Elf64_Shdr: name, type, flags, addr, offset, size, link)
    sections = [(t, link, off, size) for t, _, _, off, size, link in
                (struct.unpack_from("<4xIQQQQI", data, shoff + i * shentsize) for i in range(shnum))]
    by_type = {t: (link, off, size) for t, link, off, size in sections}
    dynsym, versym, verneed = by_type.get(11), by_type.get(0x6FFFFFFF), by_type.get(0x6FFFFFFE)
    if not (dynsym and versym and verneed):
        return 0
    strings = sections[verneed[0]][2]
    names, off = {}, verneed[1]
    while True:  # .gnu.version_r: per needed file, its version entries (index → name)
        _, count, _, aux, next_file = struct.unpack_from("<HHIII", data, off)
        entry = off + aux
        for _ in range(count):
            _, _, index, name, next_entry = struct.unpack_from("<IHHII", data, entry)
            names[index] = bytes(data[strings + name:data.index(0, strings + name)]).decode()
            entry += next_entry
        if not next_file:
            break
        off += next_file
    cleared = 0
    for i in range(dynsym[2] // 24):
        section_index, = struct.unpack_from("<H", data, dynsym[1] + i * 24 + 6)
        version, = struct.unpack_from("<H", data, versym[1] + 2 * i)
        if section_index == 0 and names.get(version & 0x7FFF, "").startswith("LIBC"):
            struct.pack_into("<H", data, versym[1] + 2 * i, 1)  # VER_NDX_GLOBAL
            cleared += 1
    lib.write_bytes(data)
    return cleared
