"""Paths built from data, and edgeq's own scratch folders.

Every name that comes from a manifest, a target file or the command line and becomes part of a
path goes through `plain_name` (one path component) or `inside` (a relative path that stays in
its folder). Scratch folders carry the pid of the process that made them, so a later run can
remove the ones whose process died without cleaning up (SIGKILL, a native abort).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from edgeq.errors import EdgeqError

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_OWNER_PID = re.compile(r"(\d+)-")


def plain_name(name: object, what: str, fix: str = "use letters, digits, '.', '_', '+' and '-' only") -> str:
    """`name` as one safe path component: no separators, no '..', no leading dot or dash."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or name in (".", "..") or len(name) > 200:
        raise EdgeqError(f"{what} {name!r} is not a plain file name: {fix}")
    return name


def inside(folder: Path, relative: object, what: str) -> Path:
    """folder/relative, refused unless it is a relative path that resolves inside `folder`."""
    if not isinstance(relative, str) or not relative or "\0" in relative or Path(relative).is_absolute():
        raise EdgeqError(f"{what} {relative!r} is not a relative path inside {folder}: re-export, or fix the file")
    path = folder / relative
    root = folder.resolve()
    if not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise EdgeqError(f"{what} {relative!r} points outside {folder}: refused; re-export, or fix the file")
    return path


def scratch_prefix(prefix: str) -> str:
    """`prefix` + this process's pid: what `remove_stale` recognises as ours once we are gone."""
    return f"{prefix}{os.getpid()}-"


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove `parent/prefix<pid>-*` entries whose process is gone (killed before it could clean up).
    Entries of live processes, of other users, or not named that way are left alone."""
    removed = []
    try:
        entries = list(parent.glob(f"{prefix}*"))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNER_PID.match(entry.name[len(prefix):])
        if not match or _alive(int(match.group(1))):
            continue
        try:
            if entry.lstat().st_uid != os.getuid():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
