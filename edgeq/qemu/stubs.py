"""Stub shared libraries for the CUDA libraries that PyPI's aarch64 torch links but a CPU-only
target lacks (every aarch64 torch wheel since 2.11 is a CUDA build).

For each missing soname: the symbols torch's ELF files take from it (by symbol version, else by
name prefix), compiled into a tiny aarch64 library whose functions return an error code ("no
device"), with the same symbol versions. torch then imports, `torch.cuda.is_available()` is
False, and CPU ops run. (Deleting libtorch_cuda.so instead segfaults.) Only `readelf` reads the
aarch64 files; the compiler is zig's clang (PyPI `ziglang`): no cross toolchain needed.
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

# Unversioned symbols go to the missing library their name belongs to.
PREFIXES = [(r"^nccl|^pnccl", "libnccl"), (r"^cuFile", "libcufile"), (r"^cusparseLt", "libcusparseLt"),
            (r"^nvshmem", "libnvshmem"), (r"^cudnn", "libcudnn"), (r"^cupti|^CUpti", "libcupti"),
            (r"^cublasLt", "libcublasLt"), (r"^cublas", "libcublas"), (r"^cusparse", "libcusparse"),
            (r"^cufft", "libcufft"), (r"^curand", "libcurand"), (r"^cusolver", "libcusolver"),
            (r"^nvrtc", "libnvrtc"), (r"^cuda", "libcudart"), (r"^cu[A-Z]", "libcuda.")]
RETURNS_STRING = re.compile(r"(GetErrorString|GetErrorName|GetStatusString|GetStatusName|GetLastErrorString)$")
SYMBOL = re.compile(r"^\s*\d+:\s+[0-9a-f]+\s+(?:\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s+(\S+)")
Compile = Callable[[list[str], str], object]  # (compiler arguments, what) → runs it or raises


def build(scan: Path, available: list[Path], executable: Path, out: Path, compile: Compile) -> list[str]:
    """Stub every soname that the ELF files under `scan` need and no file under `available` provides.
    Returns the sonames stubbed."""
    have: dict[str, Path] = {}
    for root in available:
        for path in _shared_objects(root, include_links=True):
            have.setdefault(path.name, path)
            if not path.is_symlink():
                soname = dynamic(path)[1]
                if soname:
                    have.setdefault(soname, path)
    needs = {p: dynamic(p)[0] for p in _shared_objects(scan)}
    missing = sorted({n for ns in needs.values() for n in ns if n not in have})
    defined = {name for p in {*have.values(), executable} if not p.is_symlink()
               for name, _, _, _, undefined in _symbols(p) if not undefined}

    symbols: dict[str, dict[str, str]] = defaultdict(dict)  # soname → {symbol: ELF type}
    versions: dict[str, set[str]] = defaultdict(set)  # soname → version names
    version_of: dict[tuple[str, str], str] = {}
    for path, needed in needs.items():
        lacking = [n for n in needed if n not in have]
        if not lacking:
            continue
        needed_versions = _version_needs(path)
        for v, soname in needed_versions.items():
            if soname in lacking:
                versions[soname].add(v)
        for name, ver, typ, bind, undefined in _symbols(path):
            if not undefined:
                continue
            if ver is not None:
                soname = needed_versions.get(ver)
                if soname in lacking:
                    symbols[soname][name] = typ
                    version_of[soname, name] = ver
            elif name not in defined and bind != "WEAK":
                owner = [m for pattern, lib in PREFIXES if re.search(pattern, name) for m in lacking if m.startswith(lib)]
                for soname in owner[:1] or lacking:
                    symbols[soname][name] = typ

    src = out / "src"
    src.mkdir(parents=True, exist_ok=True)
    for soname in missing:
        c = src / f"{soname}.c"
        c.write_text(_source(soname, symbols.get(soname, {})))
        args = ["-target", "aarch64-linux-gnu", "-shared", "-nostdlib", "-fPIC", "-O1", "-g0", "-s",
                f"-Wl,-soname,{soname}", "-o", str(out / soname), str(c)]
        if versions[soname]:
            script = src / f"{soname}.map"
            script.write_text(_version_script(soname, symbols.get(soname, {}), sorted(versions[soname]), version_of))
            args.insert(-1, f"-Wl,--version-script={script}")
        compile(args, f"compile the stub {soname}")
    return missing


def _source(soname: str, symbols: dict[str, str]) -> str:
    error = 100 if soname.startswith(("libcudart", "libcuda.")) else 1  # cudaErrorNoDevice / CUDA_ERROR_NO_DEVICE
    lines = [f"/* {soname}: no CUDA on this target; every call fails */",
             'static const char message[] = "CUDA stub: no CUDA on this target";']
    for name, typ in sorted(symbols.items()):
        if typ in ("OBJECT", "TLS"):
            lines.append(f"__attribute__((aligned(64))) char {name}[4096];")
        elif RETURNS_STRING.search(name):
            lines.append(f"const char *{name}(void) {{ return message; }}")
        elif name in ("cudaGetDeviceCount", "cuDeviceGetCount"):
            lines.append(f"long {name}(int *n) {{ if (n) *n = 0; return {error}; }}")
        else:
            lines.append(f"long {name}(void) {{ return {error}; }}")
    return "\n".join(lines) + "\n"


def _version_script(soname: str, symbols: dict[str, str], versions: list[str],
                    version_of: dict[tuple[str, str], str]) -> str:
    nodes: dict[str, list[str]] = defaultdict(list)
    for name in symbols:
        nodes[version_of.get((soname, name), versions[0])].append(name)
    return "".join(f"{v} {{ global:{''.join(f' {n};' for n in sorted(nodes[v]))} {'local: *;' if i == 0 else ''} }};\n"
                   for i, v in enumerate(versions))


def _readelf(*args: str) -> str:
    return subprocess.run(["readelf", "-W", *args], check=True, capture_output=True, text=True).stdout


def _shared_objects(root: Path, include_links: bool = False) -> Iterator[Path]:
    for path in root.rglob("*.so*"):
        if path.is_symlink():
            if include_links:
                yield path
        elif path.is_file() and path.open("rb").read(4) == b"\x7fELF":
            yield path


def dynamic(path: Path) -> tuple[list[str], str | None]:
    """(NEEDED sonames, SONAME)."""
    needed, soname = [], None
    for line in _readelf("-d", str(path)).splitlines():
        m = re.search(r"\((NEEDED|SONAME)\)\s+\S+.*\[(.+)\]", line)
        if m and m.group(1) == "NEEDED":
            needed.append(m.group(2))
        elif m:
            soname = m.group(2)
    return needed, soname


def _symbols(path: Path) -> Iterator[tuple[str, str | None, str, str, bool]]:
    """(name, version or None, type, binding, undefined) of each dynamic symbol."""
    for line in _readelf("--dyn-syms", str(path)).splitlines():
        m = SYMBOL.match(line)
        if not m:
            continue
        typ, bind, index, name = m.groups()
        ver = None
        if "@" in name:
            name, ver = re.split(r"@@?", name, maxsplit=1)
            ver = re.sub(r"\s*\(\d+\)$", "", ver)
        if name:
            yield name, ver, typ, bind, index == "UND"


def _version_needs(path: Path) -> dict[str, str]:
    """Version name → the soname it is required from (.gnu.version_r)."""
    text = _readelf("-V", str(path))
    found: dict[str, str] = {}
    if ".gnu.version_r" not in text:
        return found
    current = None
    for line in text.split(".gnu.version_r", 1)[1].splitlines():
        if m := re.search(r"File:\s+(\S+)", line):
            current = m.group(1)
        elif (m := re.search(r"Name:\s+(\S+)", line)) and current:
            found[m.group(1)] = current
    return found
