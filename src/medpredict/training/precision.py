"""Which arithmetic training uses: bf16 autocast where the hardware runs it natively, fp32 elsewhere.

``train.amp`` (on by default) asks for mixed precision *where it pays*:

==========================================  =======================================================
device                                      training arithmetic
==========================================  =======================================================
CUDA GPU                                    bf16 autocast
CPU with ``avx512_bf16`` or ``amx_bf16``    bf16 autocast + channels-last (native bf16 dot products)
any other CPU                               fp32 (bf16 there is emulated: slower, nothing gained)
``train.amp: false``                        fp32 everywhere
==========================================  =======================================================

The CPU's capability is *detected*, never guessed from its name: the ``flags`` line of
``/proc/cpuinfo`` on Linux, else PyTorch's own CPU probe. Nothing is probed at import;
:func:`choose_precision` takes the detector as an argument so that tests (and the
benchmark, which measures emulated bf16 on CPUs without it) can force either answer.
Weights, optimiser state and the validation pass stay fp32; autocast only lowers the
matrix products and convolutions of the training forward pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: CPU flags (as ``/proc/cpuinfo`` spells them) that mean bf16 dot products run natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> frozenset[str] | None:
    """The CPU feature flags listed in ``cpuinfo`` (Linux), or ``None`` where the file is absent or has none."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or AMX).

    Args:
        flags: CPU feature flags; ``None`` reads them (``/proc/cpuinfo``, else PyTorch's probe).
    """
    if flags is None:
        flags = cpu_flags()
    if flags is not None:
        return any(flag in set(flags) for flag in NATIVE_BF16_FLAGS)
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # PyTorch's cpuinfo-based probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@dataclass(frozen=True)
class Precision:
    """The arithmetic of one training run.

    Attributes:
        device_type: ``cpu`` or ``cuda`` (what ``torch.autocast`` is given).
        bf16: autocast the training forward pass to bfloat16.
        reason: one line for the log and the bundle's ``training`` section.
    """

    device_type: str
    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self) -> Any:
        """The context the training forward pass runs in (a no-op for fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

    @classmethod
    def forced(cls, device_type: str, bf16: bool) -> Precision:
        """A fixed choice, whatever the hardware (benchmarks and tests)."""
        return cls(device_type, bf16, f"{'bf16' if bf16 else 'fp32'} forced by the caller")


def choose_precision(
    amp: bool, device: torch.device, *, detect: Callable[[], bool] | None = None
) -> Precision:
    """The arithmetic for training on ``device`` (see the module's table).

    Args:
        amp: ``train.amp``: use bf16 where it runs natively.
        device: the training device.
        detect: says whether the CPU computes bf16 natively (default :func:`native_bf16`);
            called only for CPU training with ``amp`` on.
    """
    kind = device.type
    if not amp:
        return Precision(kind, False, "fp32 (train.amp is off)")
    if kind == "cuda":
        return Precision(kind, True, "bf16 autocast on the GPU")
    if kind == "cpu":
        if (detect or native_bf16)():
            return Precision(kind, True, "bf16 autocast: the CPU has native bf16 (avx512_bf16 / AMX)")
        return Precision(kind, False, "fp32: the CPU has no native bf16 (no avx512_bf16 / AMX flag)")
    return Precision(kind, False, f"fp32 on {kind}")
