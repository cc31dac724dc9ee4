"""Where an artifact runs for a target, and how its time is labelled: the one place that says so.

    host       the target's arch is this machine's: the runner runs here, times are host times
    emulated   an aarch64 target on another host: qemu-aarch64 user mode with the target's -cpu;
               times are emulated, not device time (QEMU emulates floating point far more slowly
               than integer SIMD, so fp32 ÷ int8 ratios are not a phone's; count instructions)
    device     a real phone or board (the CI's device jobs); edgeq does not run those itself

A "host" run can turn out to be emulated too: inside `docker run --platform linux/arm64` on an
x86 machine binfmt QEMU runs everything, and only the CPU the kernel reports shows it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Callable

from edgeq.errors import EdgeqError
from edgeq.targets import Target


@dataclass(frozen=True)
class Placement:
    where: str  # host | emulated
    qemu_cpu: str | None  # the CPU QEMU emulates; None on the host

    def label(self) -> str:
        """How a latency measured here is labelled in manifests and reports."""
        if self.where == "emulated":
            return f"emulated: qemu-aarch64 -cpu {self.qemu_cpu}, not device time"
        return f"host ({platform.machine()})"


def placement(target: Target, host: str | None = None) -> Placement:
    """Where `target`'s artifacts run from this machine; an error when they cannot."""
    host = host or platform.machine()
    if target.arch == host:
        return Placement("host", None)
    if target.arch == "aarch64":
        return Placement("emulated", target.qemu_cpu or "max")
    raise EdgeqError(f"target {target.name} is {target.arch} and runs on the host, but this host is {host}: "
                     f"validate on an {target.arch} machine, or pick an emulated target")


def measured(plan: Placement, seen: dict[str, Any]) -> tuple[str, str]:
    """(where, label) of a latency the runner reported (`seen`: its machine and CPU)."""
    if plan.where == "emulated":
        return "emulated", plan.label()
    cpu = seen.get("cpu", "")
    if seen.get("machine") == "aarch64" and ("implementer 0x" not in cpu or cpu.startswith("QEMU")):
        return "emulated", f"emulated: QEMU user mode (binfmt, {cpu}), not device time"
    return "host", f"host ({seen.get('machine', platform.machine())})"


def readiness(target: Target) -> str:
    """For `edgeq targets list`: host, set up, or what to run."""
    try:
        plan = placement(target)
    except EdgeqError:
        return f"no: needs an {target.arch} host"
    if plan.where == "host":
        return "host"
    from edgeq.qemu.provision import Emulator, cache_root

    return "yes" if not Emulator(cache_root() / "aarch64").missing() else f"no: edgeq targets setup {target.name}"


def ensure_ready(plan: Placement, log: Callable[[str], None]) -> None:
    """Set the emulator up on first use (the end of `edgeq export`)."""
    if plan.where != "emulated":
        return
    from edgeq.qemu.provision import Emulator, cache_root, setup

    if Emulator(cache_root() / "aarch64").missing():
        log(f"setting up the emulated target (once; cached in {cache_root()})")
        setup(log=lambda line: log(f"  {line}"))
