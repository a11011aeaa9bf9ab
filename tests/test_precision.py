"""bf16 where the CPU has it natively, fp32 elsewhere: detection, the decision, and a short training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medpredict.training import precision as precision_module
from medpredict.training.precision import Precision, choose_precision, cpu_flags, native_bf16

# Trimmed /proc/cpuinfo of two machines.
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
)
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (SAPPHIRE_RAPIDS, True),  # avx512_bf16 and AMX: native bf16
        (EPYC_AVX2, False),  # AVX2 only: bf16 would be emulated
        ("processor\t: 0\nflags\t\t: avx512f avx512_bf16\n", True),  # avx512_bf16 alone suffices
        ("processor\t: 0\nflags\t\t: amx_bf16\n", True),  # AMX alone suffices
    ],
)
def test_native_bf16_reads_the_cpu_flags(tmp_path: Path, cpuinfo: str, expected: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert native_bf16(cpu_flags(path)) is expected


def test_cpu_flags_is_none_without_a_readable_file(tmp_path: Path) -> None:
    assert cpu_flags(tmp_path / "absent") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "noflags") is None


@pytest.mark.parametrize(
    ("amp", "device", "native", "bf16"),
    [
        (True, "cpu", True, True),  # the default on a CPU with avx512_bf16 / AMX
        (True, "cpu", False, False),  # the default on this AVX2 machine: fp32
        (False, "cpu", True, False),  # amp off: fp32 even where bf16 is native
        (True, "cuda", False, True),  # GPUs: bf16, whatever the CPU has
        (False, "cuda", True, False),
    ],
)
def test_choose_precision(amp: bool, device: str, native: bool, bf16: bool) -> None:
    asked: list[bool] = []

    def detect() -> bool:
        asked.append(True)
        return native

    chosen = choose_precision(amp, torch.device(device), detect=detect)
    assert chosen.bf16 is bf16 and chosen.name == ("bf16" if bf16 else "fp32")
    assert bool(asked) == (amp and device == "cpu")  # the CPU is probed only when it matters


def _linear_fit(precision: Precision | None = None) -> tuple[str, float]:
    from medpredict.config import TrainConfig
    from medpredict.data.datasets import ArrayDataset
    from medpredict.training.engine import fit

    rng = np.random.default_rng(0)
    y = torch.tensor(np.arange(64) % 2)
    x = torch.tensor(rng.normal(0, 1, (64, 4)), dtype=torch.float32) + 1.5 * y[:, None]
    data = ArrayDataset((x,), y)
    config = TrainConfig(epochs=2, batch_size=16, threads=1, channels_last=False)
    result = fit(torch.nn.Linear(4, 2), data, data, task="binary", config=config, progress=False, precision=precision)
    return result.precision, result.best_score


def test_fit_follows_the_detected_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "native_bf16", lambda: True)
    assert _linear_fit()[0] == "bf16"  # a CPU that has it: bf16 by default
    monkeypatch.setattr(precision_module, "native_bf16", lambda: False)
    assert _linear_fit()[0] == "fp32"


def test_forced_bf16_runs_autocast() -> None:
    chosen = Precision.forced("cpu", True)
    with chosen.autocast():
        out = torch.nn.Linear(4, 2)(torch.ones(3, 4))
    assert out.dtype == torch.bfloat16
    assert _linear_fit(chosen)[0] == "bf16"


@pytest.mark.slow
def test_bf16_and_fp32_reach_the_same_validation_auc(tmp_path: Path) -> None:
    """The default network, bf16 autocast forced on vs fp32, same seeded run on a task it cannot
    learn perfectly (a faint square in noise): the validation AUCs agree within 0.005. bf16 is
    emulated on CPUs without avx512_bf16 (slower there), but the arithmetic is the same."""
    from conftest import make_square_npz
    from medpredict.config import TrainConfig
    from medpredict.data.datasets import ArrayDataset
    from medpredict.models import build_model
    from medpredict.training.engine import fit

    with np.load(make_square_npz(tmp_path / "sq.npz", size=16, n=(600, 400, 2), seed=5)) as data:
        x = {s: torch.from_numpy(data[f"{s}_images"][:, None]) for s in ("train", "val")}
        y = {s: torch.from_numpy(data[f"{s}_labels"].reshape(-1).astype(np.int64)) for s in ("train", "val")}
    aucs = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = build_model("tiny-resnet", in_channels=1, num_classes=2)
        config = TrainConfig(epochs=6, batch_size=32, lr=3e-3, threads=2, patience=6)
        result = fit(model, ArrayDataset((x["train"],), y["train"]), ArrayDataset((x["val"],), y["val"]),
                     task="binary", config=config, progress=False, precision=Precision.forced("cpu", bf16))
        assert result.precision == ("bf16" if bf16 else "fp32")
        aucs[bf16] = result.best_score
    assert 0.8 < aucs[False] < 0.999, aucs  # learned, and not trivially perfect
    assert abs(aucs[True] - aucs[False]) <= 0.005, aucs
