"""ONNX Runtime vs PyTorch eager on CPU: parity, batch throughput and single-image latency.

For each (model, size) pair the network from ``medpredict.models`` (random weights, eval
mode) is exported with :func:`medpredict.deploy.export.export_onnx` (parity checked on 8
inputs), optionally quantised to int8 (static QDQ and dynamic), and timed:

* throughput: images per second on batches of ``--batch`` (median of ``--reps`` runs);
* latency: p50 and p99 of ``--single`` single-image calls.

Both runtimes get the same number of threads (``--threads``, default 1, because this
machine's 2 cores are shared). Results go to ``bench/results/onnx_speed.json`` and ``.md``.

Usage::

    nice .venv/bin/python bench/onnx_speed.py                # the default three pairs
    nice .venv/bin/python bench/onnx_speed.py --pairs tiny-resnet:28 resnet18:224 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpredict.atomic import write_json, write_text
from medpredict.deploy.export import export_onnx, quantize_int8
from medpredict.inference.onnx import OnnxBackend
from medpredict.models import build_model

log = logging.getLogger("bench.onnx_speed")
RESULTS = Path(__file__).parent / "results"


def _timed(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(
    name: str,
    size: int,
    *,
    batch: int,
    reps: int,
    single: int,
    threads: int,
    exporter: str,
    int8: bool,
    seed: int = 0,
) -> dict[str, Any]:
    """Export one model and time PyTorch eager, ORT fp32 and (optionally) ORT int8."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_model(name, in_channels=1, num_classes=2, spatial_dims=2).eval()
    rng = np.random.default_rng(seed)
    batch_x = rng.random((batch, 1, size, size), dtype=np.float32)
    one = batch_x[:1]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        report = export_onnx(
            model,
            path,
            [rng.random((2, 1, size, size), dtype=np.float32)],
            parity_inputs=[rng.random((8, 1, size, size), dtype=np.float32)],
            exporter=exporter,
        )
        export_s = time.perf_counter() - started
        backends = {"onnxruntime_fp32": OnnxBackend(path, threads=threads)}
        quant: dict[str, Any] = {}
        if int8:
            for method in ("static", "dynamic"):
                target = Path(tmp) / f"model.int8.{method}.onnx"
                quant[method] = quantize_int8(
                    path, target, [rng.random((32, 1, size, size), dtype=np.float32)], method=method
                )
                backends[f"onnxruntime_int8_{method}"] = OnnxBackend(target, threads=threads)

        tensor_batch, tensor_one = torch.from_numpy(batch_x), torch.from_numpy(one)
        runners = {"pytorch_eager": (lambda: _torch(model, tensor_batch), lambda: _torch(model, tensor_one))}
        for key, backend in backends.items():
            runners[key] = (lambda b=backend: b.logits(batch_x), lambda b=backend: b.logits(one))
        rows: dict[str, Any] = {}
        for key, (run_batch, run_one) in runners.items():
            run_batch()
            run_one()  # warm-up: first calls allocate
            batch_times = _timed(run_batch, reps)
            single_times = _timed(run_one, single)
            rows[key] = {
                "throughput_img_s": round(batch / statistics.median(batch_times), 1),
                "latency_p50_ms": round(1e3 * _percentile(single_times, 50), 3),
                "latency_p99_ms": round(1e3 * _percentile(single_times, 99), 3),
            }
            log.info("%s@%d %s: %s", name, size, key, rows[key])
    return {
        "model": name,
        "size": size,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "exporter": report.exporter,
        "export_seconds": round(export_s, 2),
        "parity_max_abs_diff": report.max_abs_diff,
        "int8_max_abs_prob_diff": {m: q.max_abs_prob_diff for m, q in quant.items()} or None,
        "int8_label_agreement": {m: q.label_agreement for m, q in quant.items()} or None,
        "batch": batch,
        "results": rows,
    }


@torch.no_grad()
def _torch(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def trained_run(run_dir: Path, *, threads: int, reps: int = 5, single: int = 50) -> dict[str, Any]:
    """A trained run exported as medpredict users export it, scored and timed in each runtime.

    ``export_run(quantize=True)`` checks parity on the run's validation images and calibrates
    the static int8 scales on its training images; the test split is then scored by PyTorch,
    ONNX Runtime fp32 and int8 (AUC, so the int8 accuracy cost is measured on real data), and
    each runtime is timed on batches of test images and on single images, in alternating rounds.
    """
    from sklearn.metrics import roc_auc_score

    from medpredict.config import from_dict
    from medpredict.deploy.export import export_run
    from medpredict.inference.predictor import Predictor
    from medpredict.training.image import build_dataset, load_data

    torch.set_num_threads(threads)
    report = export_run(run_dir, quantize=True)
    predictor = Predictor.from_bundle(run_dir / "model")
    config = from_dict(predictor.meta["config"])
    manifest = load_data(config)
    test = manifest.split("test")
    x = build_dataset(test, config, manifest.task, progress=False).inputs[0].float().div(255)
    y = test["target"].to_numpy()
    onnx_dir = run_dir / "onnx"
    runtimes = {
        "pytorch_eager": lambda a: _torch(predictor.model, torch.from_numpy(a)).numpy(),
        "onnxruntime_fp32": OnnxBackend(onnx_dir / "model.onnx", threads=threads).logits,
        "onnxruntime_int8_static": OnnxBackend(onnx_dir / "model.int8.onnx", threads=threads).logits,
    }
    xs = x.numpy()
    batch = xs[: min(len(xs), 64 if predictor.image_size <= 64 else 8)]
    rows: dict[str, Any] = {}
    for name, run in runtimes.items():
        logits = np.concatenate([run(xs[i : i + 256]) for i in range(0, len(xs), 256)])
        rows[name] = {"test_auc": float(roc_auc_score(y, logits[:, 1] - logits[:, 0]))}
        run(batch)  # warm-up: first calls allocate
        run(batch[:1])
    timings: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runtimes}
    for _ in range(reps):  # alternate the runtimes so that machine load hits all alike
        for name, run in runtimes.items():
            timings[name][0].extend(_timed(lambda r=run: r(batch), 1))
            timings[name][1].extend(_timed(lambda r=run: r(batch[:1]), max(1, single // reps)))
    for name, (batch_times, single_times) in timings.items():
        rows[name].update({
            "throughput_img_s": round(len(batch) / statistics.median(batch_times), 1),
            "latency_p50_ms": round(1e3 * _percentile(single_times, 50), 3),
            "latency_p99_ms": round(1e3 * _percentile(single_times, 99), 3),
        })
    base = rows["pytorch_eager"]
    for row in rows.values():
        row["speedup_vs_pytorch"] = round(row["throughput_img_s"] / base["throughput_img_s"], 2)
        row["auc_change_vs_pytorch"] = row["test_auc"] - base["test_auc"]
    q = report.quantized
    return {"run": run_dir.name, "model": predictor.meta["model"]["name"], "size": predictor.image_size,
            "n_test": int(len(y)), "batch": int(len(batch)), "parity_max_abs_diff": report.max_abs_diff,
            "int8_val_auc_change": None if q is None else q.auc_change, "results": rows}


def to_markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# ONNX Runtime vs PyTorch eager (CPU)",
        "",
        f"Host: {payload['host']}; threads per runtime: {payload['threads']}; torch {payload['torch']}, "
        f"onnxruntime {payload['onnxruntime']}. Random weights, eval mode, 1-channel input, 2 classes. "
        "Shared 2-core machine: figures are indicative, compare within a row.",
        "",
        "| model | size | params | parity max abs diff | runtime | batch throughput (img/s) | "
        "p50 single (ms) | p99 single (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["rows"]:
        for key, figures in row["results"].items():
            cells = [
                row["model"],
                row["size"],
                f"{row['parameters']:,}",
                f"{row['parity_max_abs_diff']:.2e}",
                key,
                figures["throughput_img_s"],
                figures["latency_p50_ms"],
                figures["latency_p99_ms"],
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Batch sizes: " + ", ".join(f"{r['model']}@{r['size']}: {r['batch']}" for r in payload["rows"]),
        "",
        f"Command: `{payload['command']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=["tiny-resnet:28", "tiny-resnet:224", "resnet18:224"],
        help="MODEL:SIZE pairs",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5, help="timed batch runs per runtime")
    parser.add_argument("--single", type=int, default=50, help="timed single-image calls per runtime")
    parser.add_argument("--exporter", default="dynamo")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime

    rows = []
    for pair in args.pairs:
        name, _, size = pair.partition(":")
        size_px = int(size or 224)
        batch = 64 if size_px <= 64 else 8
        rows.append(
            measure(
                name,
                size_px,
                batch=batch,
                reps=args.reps,
                single=args.single,
                threads=args.threads,
                exporter=args.exporter,
                int8=not args.no_int8,
            )
        )
    payload = {
        "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": " ".join(["nice .venv/bin/python bench/onnx_speed.py", *argv]),
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out / "onnx_speed.json", payload)
    write_text(out / "onnx_speed.md", to_markdown(payload))
    log.info("Wrote %s and %s", out / "onnx_speed.json", out / "onnx_speed.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
