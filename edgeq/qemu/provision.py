"""`edgeq targets setup`: an emulated aarch64 target, provisioned without touching the system.

Everything lands in the cache (EDGEQ_CACHE, default ~/.cache/edgeq), one folder per step. A
step is built in a temporary sibling folder and renamed when complete, with a marker naming
what it was built from, so a step is either done or absent: Ctrl-C or a failed download
leaves nothing that a rerun would trust, and a rerun skips what is done.

    aarch64/qemu/       static qemu-aarch64 10.x (Debian bookworm-backports `qemu-user`)
    aarch64/sysroot/    CPython 3.11 and its libraries (Debian bookworm arm64 packages)
    aarch64/wheels/     aarch64 wheels of the runtimes, in the host's versions
    aarch64/stubs/      stub CUDA libraries: PyPI's aarch64 torch is a CUDA build
    aarch64/native/     native .pte and .ptl runners (edgeq.qemu.native)
    aarch64/plugins/    a plugin-enabled qemu-aarch64 and QEMU's instruction-count plugin
                        (--with-plugins; Debian ships neither, so they are built from source)

APT runs with a private configuration (its own state, cache and sources): `apt-get download`
and `dpkg-deb -x` only; pip runs `--isolated`, for the aarch64 platform, into folders.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterator

from edgeq import fetch
from edgeq.qemu import native, stubs
from edgeq.errors import EdgeqError
from edgeq.fetch import DEBIAN, DEBIAN_SECURITY, Log, cache_root, marker

SYSROOT_PACKAGES = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
                    "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5")
# Build dependencies of QEMU with plugins (glib and what its pkg-config files pull in), amd64.
GLIB_DEV_PACKAGES = ("libglib2.0-dev", "libglib2.0-0", "libpcre2-dev", "libpcre2-8-0", "libpcre2-16-0",
                     "libpcre2-32-0", "libpcre2-posix3", "libmount-dev", "libmount1", "libblkid-dev", "libblkid1",
                     "libselinux1-dev", "libselinux1", "libsepol-dev", "libffi-dev", "zlib1g-dev")
# What the runner imports on the target. --no-deps: pip would resolve markers for the x86 host
# (executorch → coremltools …), so the pure-Python dependencies are listed here.
RUNTIMES = ("onnxruntime", "executorch", "torch", "numpy")
PURE_DEPS = ("flatbuffers", "packaging", "protobuf", "typing-extensions", "sympy", "mpmath", "filelock", "jinja2",
             "MarkupSafe", "networkx", "fsspec", "ruamel.yaml", "pyyaml", "tabulate")
PLATFORM = ("--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
            "--implementation", "cp")
PLUGIN_BUILD_TOOLS = ("meson==1.8.5", "pycotap", "ninja")  # from PyPI, into a build venv
PLUGIN_HOST_TOOLS = ("cc", "pkg-config")  # and a C compiler and pkg-config from the host
STEP = "targets setup"


@dataclass(frozen=True)
class Emulator:
    """The provisioned aarch64 environment and how to run its Python under QEMU."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "sysroot" / "usr" / "bin" / "python3.11"

    def missing(self, with_plugins: bool = False) -> list[str]:
        steps = [name for name, key in _keys().items() if marker(self.root / name) != key]
        if with_plugins and marker(self.root / "plugins") is None:
            steps.append("plugins")
        return steps

    def command(self, cpu: str, argv: list[str], threads: int, count_instructions: bool = False,
                plugin_log: Path | None = None, program: Path | None = None,
                library_path: str | None = None) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) running `python3.11 argv…` (or a native `program`, with `library_path`
        for its libraries) on an emulated `cpu`, one thread per pool. The guest's environment goes
        through -E, the host's stays as it is."""
        guest = {"PYTHONPATH": str(self.root / "wheels"), "LD_LIBRARY_PATH": library_path or str(self.root / "stubs"),
                 "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": str(threads),
                 "OPENBLAS_NUM_THREADS": "1"}  # numpy's BLAS threads would add instructions and noise
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        if count_instructions:
            plugins = self.root / "plugins"
            qemu = [str(plugins / "qemu-aarch64"), "-plugin", f"{plugins / 'libinsn.so'},inline=on", "-d", "plugin",
                    "-D", str(plugin_log)]
            env["LD_LIBRARY_PATH"] = str(plugins / "lib")
            # Repeatable counts: idle threads sleep instead of spinning (a spin counts instructions for as
            # long as it waits), and fixed addresses (no ASLR) keep allocators on the same paths.
            guest.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="0")
            if shutil.which("setarch"):
                qemu = ["setarch", platform.machine(), "-R", *qemu]
        else:
            qemu = [str(self.root / "qemu" / "qemu-aarch64")]
        args = [*qemu, "-cpu", cpu, "-L", str(self.root / "sysroot")]
        for k, v in guest.items():
            args += ["-E", f"{k}={v}"]
        return [*args, str(program or self.python), *argv], env


def emulator(target_name: str, with_plugins: bool = False) -> Emulator:
    """The ready environment, or an error that says how to make it."""
    emu = Emulator(cache_root() / "aarch64")
    missing = emu.missing(with_plugins)
    if missing:
        flag = " --with-plugins" if "plugins" in missing else ""
        raise EdgeqError(f"the emulated target is not set up ({', '.join(missing)} missing in {emu.root}): "
                         f"run edgeq targets setup {target_name}{flag}")
    return emu


def setup(with_plugins: bool = False, log: Log = lambda _: None, native_only: bool = False) -> Emulator:
    """Provision every missing step (idempotent: done steps are skipped). native_only: just QEMU and
    the C library sysroot, what a native aarch64 program needs (no Python runtimes)."""
    for tool in ("apt-get", "dpkg-deb", "readelf", *(PLUGIN_HOST_TOOLS if with_plugins else ())):
        if shutil.which(tool) is None:
            raise EdgeqError(f"targets setup{' --with-plugins' if with_plugins else ''} needs {tool} on the host "
                             "(Debian: apt-get install binutils gcc pkg-config)")
    emu = Emulator(cache_root() / "aarch64")
    emu.root.mkdir(parents=True, exist_ok=True)  # an unwritable cache fails here, before any step
    steps: list[tuple[str, Callable[[Path, Path], None]]] = [
        ("qemu", _qemu), ("sysroot", _sysroot), ("wheels", _wheels), ("stubs", _stubs), ("native", native.build)]
    if native_only:
        steps = steps[:2]
    elif with_plugins:
        steps.append(("plugins", _plugins))
    keys = _keys()
    for name, build in steps:
        fetch.cached_step(emu.root / name, keys.get(name, "built"), lambda tmp, build=build: build(tmp, emu.root), log)
    return emu


def _keys() -> dict[str, str]:
    """What each step is built from: a changed key (new host runtime versions) means rebuild."""
    wheels = " ".join(_requirements())
    return {"qemu": "bookworm-backports qemu-user", "sysroot": " ".join(SYSROOT_PACKAGES) + " +bytecode", "wheels": wheels,
            "stubs": wheels, "native": native.key(wheels)}


def _requirements() -> list[str]:
    """The runtimes (and their pure-Python dependencies) pinned to the host's versions, so the target
    runs what exported the artifacts."""
    reqs = []
    for package in (*RUNTIMES, *PURE_DEPS):
        try:
            reqs.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            if package in RUNTIMES:
                raise EdgeqError(f"{package} is not installed on the host: reinstall edgeq") from None
            reqs.append(package)
    return reqs


def _qemu(out: Path, root: Path) -> None:
    debs = fetch.apt_download(("qemu-user",), "amd64", [f"{DEBIAN} bookworm-backports"], out / "deb", out / "apt",
                               "QEMU 10 user mode from bookworm-backports", STEP)
    fetch.run(["dpkg-deb", "-x", str(debs[0]), str(out / "root")], f"unpack {debs[0].name}", STEP)
    shutil.copy2(out / "root" / "usr" / "bin" / "qemu-aarch64", out / "qemu-aarch64")
    (out / "VERSION").write_text(debs[0].name + "\n")
    for scratch in ("root", "deb", "apt"):
        shutil.rmtree(out / scratch)


def _sysroot(out: Path, root: Path) -> None:
    scratch = out.with_name(out.name + ".apt")
    try:
        debs = fetch.apt_download(SYSROOT_PACKAGES, "arm64", [f"{DEBIAN} bookworm", f"{DEBIAN_SECURITY} bookworm-security"],
                                   scratch / "debs", scratch / "apt", "the arm64 CPython 3.11 sysroot", STEP)
        for deb in debs:
            fetch.run(["dpkg-deb", "-x", str(deb), str(out)], f"unpack {deb.name}", STEP)
        (out / "PACKAGES").write_text("".join(d.name + "\n" for d in debs))
        _compile_bytecode(out / "usr" / "lib" / "python3.11")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the arm64 package lists alone are ~120 MB


def _compile_bytecode(stdlib: Path) -> None:
    """The standard library's .pyc, compiled here: Debian's packages leave that to their install
    scripts, which `dpkg-deb -x` does not run, so every emulated import would compile the sources
    again (the guest runs with PYTHONDONTWRITEBYTECODE). Bytecode is the same on every CPU for one
    Python version; pip already compiled the wheels'."""
    if sys.version_info[:2] != (3, 11):
        return  # another Python's bytecode would be ignored (and the guest still runs, just slower)
    fetch.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(stdlib)], "compile the sysroot's bytecode",
              STEP)


def _pip(*args: str, what: str) -> None:
    # --isolated: PyPI only, whatever pip.conf or PIP_* say on this machine (local find-links, indexes).
    fetch.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args], what, STEP)


def _wheels(out: Path, root: Path) -> None:
    reqs = _requirements()
    _pip("install", "-q", "--target", str(out), *PLATFORM, *reqs, what=f"download the aarch64 wheels ({' '.join(reqs)})")
    (out / "REQUIREMENTS").write_text("\n".join(reqs) + "\n")


def _stubs(out: Path, root: Path) -> None:
    with zig_compiler(out.with_name(out.name + ".zig"), STEP) as compile:
        built = stubs.build(root / "wheels" / "torch", [root / "wheels", root / "sysroot"], root / "sysroot" /
                            "usr" / "bin" / "python3.11", out, lambda args, what: compile(["cc", *args], what))
        (out / "STUBS").write_text("".join(f"{s}\n" for s in built))


@contextmanager
def zig_compiler(scratch: Path, step: str) -> Iterator[Callable[[list[str], str], str]]:
    """zig (PyPI ziglang) in `scratch` for the duration: compile(["cc" or "c++", args…], what) runs
    it and raises a one-line error on failure. zig cross-compiles to aarch64 glibc with no sysroot."""
    try:
        _pip("install", "-q", "--target", str(scratch), "ziglang", what="download the zig cross compiler (PyPI ziglang)")
        env = {**os.environ, "PYTHONPATH": str(scratch), "ZIG_GLOBAL_CACHE_DIR": str(scratch / "cache"),
               "ZIG_LOCAL_CACHE_DIR": str(scratch / "cache")}
        yield lambda args, what: fetch.run([sys.executable, "-m", "ziglang", *args], what, step, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _plugins(out: Path, root: Path) -> None:
    """QEMU's own source at the version of the static qemu, configured for aarch64 user mode with
    plugins, against glib headers unpacked from Debian packages; then its insn plugin."""
    deb = (root / "qemu" / "VERSION").read_text().strip()  # qemu-user_1%3a10.0.2+ds-2+deb13u1~bpo12+1_amd64.deb
    upstream = deb.split("_")[1].split("%3a")[-1].split("-")[0]  # 10.0.2+ds
    scratch = out.with_name(out.name + ".build")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        devroot = scratch / "devroot"
        for d in fetch.apt_download(GLIB_DEV_PACKAGES, "amd64", [f"{DEBIAN} bookworm"], scratch / "debs", scratch / "apt",
                                     "the glib headers QEMU's plugin build needs", STEP):
            fetch.run(["dpkg-deb", "-x", str(d), str(devroot)], f"unpack {d.name}", STEP)
        url = f"{DEBIAN}/pool/main/q/qemu/qemu_{upstream}.orig.tar.xz"
        tarball = scratch / "qemu.tar.xz"
        try:
            urllib.request.urlretrieve(url, tarball)
        except (urllib.error.URLError, OSError) as e:
            raise EdgeqError(f"targets setup: could not download the QEMU source {url} ({e}): check access to "
                             f"{DEBIAN} and rerun") from None
        with tarfile.open(tarball) as tar:
            top = tar.getnames()[0].split("/")[0]
            tar.extractall(scratch, filter="tar")
        fetch.run([sys.executable, "-m", "venv", str(scratch / "py")], "create a venv for meson", STEP)
        fetch.run([str(scratch / "py" / "bin" / "python"), "-m", "pip", "--isolated", "install", "-q", *PLUGIN_BUILD_TOOLS],
                  "install QEMU's build tools (meson, pycotap, ninja) from PyPI", STEP)
        libdir = devroot / "usr" / "lib" / "x86_64-linux-gnu"
        env = {**os.environ, "PATH": f"{scratch / 'py' / 'bin'}:{os.environ.get('PATH', '')}",
               "PKG_CONFIG_SYSROOT_DIR": str(devroot),
               "PKG_CONFIG_LIBDIR": f"{libdir / 'pkgconfig'}:{devroot / 'usr' / 'share' / 'pkgconfig'}"}
        build = scratch / "build"
        build.mkdir()
        fetch.run([str(scratch / top / "configure"), f"--python={scratch / 'py' / 'bin' / 'python'}",
              "--target-list=aarch64-linux-user", "--enable-plugins", "--disable-system", "--disable-tools",
              "--disable-docs", "--disable-rust", "--disable-install-blobs", "--disable-download"],
                  "configure QEMU with plugins", STEP, cwd=build, env=env)
        fetch.run(["ninja", f"-j{os.cpu_count() or 2}", "qemu-aarch64", "tests/tcg/plugins/libinsn.so"],
                  "build qemu-aarch64 and the insn plugin", STEP, cwd=build, env=env)
        shutil.copy2(build / "qemu-aarch64", out / "qemu-aarch64")
        shutil.copy2(build / "tests" / "tcg" / "plugins" / "libinsn.so", out / "libinsn.so")
        (out / "lib").mkdir()
        for lib in libdir.glob("*.so.*"):  # the glib the binary links, whatever the host has
            shutil.copy2(lib, out / "lib" / lib.name, follow_symlinks=True)
        (out / "VERSION").write_text(f"QEMU {upstream} (upstream source, built with --enable-plugins)\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

