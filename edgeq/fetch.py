"""Fetching tools into the cache without touching the system: cached build steps, subprocess
calls whose failures read as one line, and `apt-get download` with a private APT configuration.

Used by `edgeq targets setup` (the emulated target) and by the offline APK build (`edgeq android
--apk`). A step is built in a temporary sibling folder and renamed when complete, with a marker
naming what it was built from and every file it made (with sizes), written last: a step is done
only while all of those are there, so a rerun skips what is done and rebuilds what was damaged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

from edgeq.errors import EdgeqError
from edgeq.paths import remove_stale, scratch_prefix

DEBIAN = os.environ.get("EDGEQ_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_SECURITY = os.environ.get("EDGEQ_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
Log = Callable[[str], None]


def cache_root() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE") or Path.home() / ".cache" / "edgeq")


STEP_MARKER = ".edgeq-step.json"


def marker(folder: Path) -> str | None:
    """The key `folder` was built from, or None when it is not a complete step."""
    return step_state(folder)[0]


def step_state(folder: Path) -> tuple[str | None, str | None]:
    """(key, None) for a complete step; (None, what is wrong) for a damaged one; (None, None) if absent."""
    try:
        doc = json.loads((folder / STEP_MARKER).read_text())
        key, files = doc["key"], doc["files"]
        if not isinstance(key, str) or not isinstance(files, dict):
            raise ValueError
    except FileNotFoundError:
        return None, ("its marker is missing" if folder.exists() else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"its marker {STEP_MARKER} is unreadable"
    for name, size in files.items():
        try:
            st = (folder / name).lstat()
        except OSError:
            return None, f"{name} is missing"
        if size is not None and st.st_size != size:
            return None, f"{name} has {st.st_size} bytes, not {size}"
    return key, None


def _inventory(folder: Path) -> dict[str, int | None]:
    """Every file (its size) and link (None) below `folder`."""
    return {str(p.relative_to(folder)): None if p.is_symlink() else p.stat().st_size
            for p in folder.rglob("*") if p.is_symlink() or p.is_file()}


@contextlib.contextmanager
def building(final: Path, key: str) -> Iterator[Path]:
    """A temporary sibling folder that replaces `final` only when the step completed. Folders left by
    a killed setup are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    remove_stale(final.parent, prefix)
    tmp = final.with_name(f"{scratch_prefix(prefix)}build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / STEP_MARKER).write_text(json.dumps({"key": key, "files": _inventory(tmp)}))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, log: Log = lambda _: None, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if missing), waiting for its holder: two
    processes (two test workers, two terminals) never build the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{what or path.name}: waiting for another edgeq process that is setting it up …")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # the lock goes with the closed file, also when the process is killed


def cached_step(final: Path, key: str, build: Callable[[Path], None], log: Log) -> Path:
    """Run `build(tmp)` unless `final` is already built from `key` and complete. Processes building
    the same step take turns; the later one finds it done."""
    if step_state(final)[0] != key:
        with locked(final.with_name(f".{final.name}.lock"), log, final.name):
            done, damage = step_state(final)
            if done != key:
                log(f"{final.name}: {'damaged (' + damage + '), rebuilding' if damage else 'setting up'} …")
                with building(final, key) as tmp:
                    build(tmp)
                log(f"{final.name}: done ({folder_size(final)})")
                return final
    log(f"{final.name}: cached in {final}")
    return final


def folder_size(folder: Path) -> str:
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return f"{total / 1e6:.0f} MB"


def run(args: list[str], what: str, step: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        fix: str | None = None) -> str:
    """Run a command; a failure becomes one line: what could not be done, the tool's first error and
    the fix (by default: check access to the package registries)."""
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise EdgeqError(f"{step}: could not {what}: {args[0]} is not installed") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error", "npm error")) or ": error:" in ln]
        detail = errors[0] if errors else lines[-1] if lines else f"exit code {proc.returncode}"
        fix = fix or f"check access to the package registries (Debian {DEBIAN}, PyPI, npm) and rerun"
        raise EdgeqError(f"{step}: could not {what} ({detail.strip()[:300]}): {fix}")
    return proc.stdout


def apt_download(packages: tuple[str, ...], arch: str, sources: list[str], into: Path, scratch: Path,
                 what: str, step: str) -> list[Path]:
    """`apt-get download` with a private APT configuration: the system's state and sources stay as they are."""
    for d in ("state/lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d",
              "etc/trusted.gpg.d", "etc/sources.list.d"):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    (scratch / "state" / "status").touch()
    (scratch / "etc" / "sources.list").write_text("".join(f"deb [signed-by={KEYRING}] {s} main\n" for s in sources))
    conf = scratch / "apt.conf"
    conf.write_text("\n".join([
        f'APT::Architecture "{arch}";', f'APT::Architectures {{ "{arch}"; }};', f'Dir::State "{scratch}/state";',
        f'Dir::State::status "{scratch}/state/status";', f'Dir::Cache "{scratch}/cache";', f'Dir::Etc "{scratch}/etc";',
        f'Dir::Etc::SourceList "{scratch}/etc/sources.list";', f'Dir::Etc::SourceParts "{scratch}/etc/sources.list.d";',
        f'Dir::Etc::Parts "{scratch}/etc/apt.conf.d";', f'Dir::Etc::PreferencesParts "{scratch}/etc/preferences.d";',
        f'Dir::Etc::TrustedParts "{scratch}/etc/trusted.gpg.d";', 'Acquire::Languages "none";',
        'APT::Sandbox::User "root";' if os.geteuid() == 0 else "", ""]))
    env = {**os.environ, "APT_CONFIG": str(conf)}
    run(["apt-get", "-q", "update"], f"read the Debian package lists for {what}", step, env=env)
    into.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "-q", "download", *packages], f"download {what} ({' '.join(packages)})", step, cwd=into, env=env)
    return sorted(into.glob("*.deb"))
