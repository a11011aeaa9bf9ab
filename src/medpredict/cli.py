"""The ``medpredict`` command: parses flags and calls the library, nothing more.

Every sub-command is registered by one ``_add_<name>`` function and handled by a few lines
that call one library function; the result says what happened (``summary()``) and how the
process exits (``exit_code``). User errors (:class:`medpredict.errors.MedpredictError`) are
printed as one message and exit with status 2, without a traceback. Model names offered come
from the model tables (:data:`medpredict.models.MODELS`, :data:`medpredict.models.records.RECORD_MODELS`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from medpredict import __version__
from medpredict.config import RECORD_TASKS
from medpredict.errors import ConfigError, MedpredictError

log = logging.getLogger("medpredict")

Handler = Callable[[argparse.Namespace], int]
#: Where a run's network runs: PyTorch, or its exported ONNX model (fp32 or int8).
BACKENDS = ("torch", "onnx", "int8")  # medpredict.inference.loader.BACKENDS (not imported: it loads torch)


class CommandResult(Protocol):
    """What every command returns."""

    @property
    def exit_code(self) -> int: ...

    def summary(self) -> str: ...


def _done(result: CommandResult) -> int:
    print(result.summary())
    return result.exit_code


def _image_models() -> list[str]:
    from medpredict.models import MODELS

    return list(MODELS)


def _record_models() -> list[str]:
    from medpredict.models.records import RECORD_MODELS

    return sorted(RECORD_MODELS)


def _parse_set(values: Sequence[str]) -> dict[str, Any]:
    import yaml

    overrides: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.001), got '{item}'.")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


# --- train / tune ------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an image model; writes runs/<name>/ with a bundle")
    _add_train_flags(p)
    p.add_argument("--out", help="run folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="move a run already in the folder aside (NAME.old-<time>)")
    p.set_defaults(handler=_train)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The config flags ``train`` and ``tune`` share (read back by :func:`train_overrides`)."""
    p.add_argument("config", nargs="?", help="YAML config (flags override it)")
    p.add_argument("--data", help="manifest CSV, MedMNIST .npz or image folder")
    p.add_argument("--target", help="target column of a manifest (default: label)")
    p.add_argument("--model", metavar="NAME", help=f"image network: {', '.join(_image_models())}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--channels", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--max-minutes", type=float, help="wall-time budget for training")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    p.add_argument("--positive", help="binary tasks: the class sensitivity, PPV and the threshold refer to")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. augment.strength=0.5"
    )


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the train flags (shared by ``train`` and ``tune``)."""
    flags = {
        "data.source": args.data, "data.target": args.target, "model.name": args.model,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "preprocess.image_size": args.image_size, "data.channels": args.channels, "train.seed": args.seed,
        "train.device": args.device, "train.max_minutes": args.max_minutes,
        "train.deterministic": True if args.deterministic else None,
        "data.positive": args.positive,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.out:
        from medpredict.config import run_location

        overrides["out_dir"], overrides["name"] = run_location(args.out)
    overrides.update(_parse_set(args.set))
    return overrides


def _train(args: argparse.Namespace) -> int:
    from medpredict.config import load_config
    from medpredict.training.engine import Distributed
    from medpredict.training.image import train

    result = train(load_config(args.config, train_overrides(args)), resume=args.resume, force=args.force)
    return _done(result) if Distributed.from_env().is_main else 0  # under torchrun, rank 0 reports


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="architecture / hyper-parameter search within a time budget")
    _add_train_flags(p)
    p.add_argument("--budget", default="30m", help="wall time for search + final run, e.g. 30m, 2h (default 30m)")
    p.add_argument("--trials", type=int, help="stop after this many trials even if time is left")
    p.add_argument("--ensemble-top", type=int, default=0, help="also report the top-K trials' average on test")
    p.add_argument("--tune-seed", type=int, default=0, help="seed of the search's sampler")
    p.add_argument("--out", default="runs/tune", help="output folder: tune.json and best/ (default runs/tune)")
    p.add_argument("--storage", help="Optuna storage shared by the search's workers and machines, "
                   "e.g. postgresql://user:password@host/db (default: in memory, or OUT/study.journal with --workers)")
    p.add_argument("--study", help="study name in --storage; the same on every machine (default medpredict-tune)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--worker-index", type=int, help="this machine's index in a shared search (seeds its sampler)")
    p.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from medpredict.config import load_config
    from medpredict.workflows.tune import parse_budget, tune

    overrides = train_overrides(argparse.Namespace(**{**vars(args), "out": None}))  # --out is the search folder
    return _done(tune(
        load_config(args.config, overrides), budget_minutes=parse_budget(args.budget), n_trials=args.trials,
        out=args.out, ensemble_top=args.ensemble_top, seed=args.tune_seed, storage=args.storage,
        study_name=args.study, workers=args.workers, worker_index=args.worker_index,
    ))


# --- evaluate / predict ------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics with CIs, calibration, thresholds and report.html")
    p.add_argument("run", help="run folder (or a bring-your-own ONNX descriptor .yaml)")
    p.add_argument("--data", help="evaluate on another dataset (external validation); default: the run's data")
    p.add_argument("--target", help="target column of --data (default: the run's)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--lang", default="en", help="report language: en or zh")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--subgroups", default="", help="comma-separated manifest columns to report by")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (default), onnx or int8 (after 'medpredict export', with --int8 for int8)")
    p.add_argument(
        "--card",
        help="model-card fields the run cannot know, as YAML: owner, contact, licence, regulatory_status, "
        "citation, intended_use, intended_users, population, setting, out_of_scope, modality, data_origin, "
        "ethical_considerations, monitoring, caveats",
    )
    p.add_argument("--force", action="store_true", help="move other results in --out aside instead of refusing")
    p.add_argument("--allow-training-overlap", action="store_true",
                   help="evaluate --data even when it holds rows or images the model was trained on (reported)")
    p.add_argument("--robustness", action="store_true",
                   help="also score the model under MedMNIST-C corruptions at 5 severities (image models)")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from medpredict.workflows.evaluate import evaluate

    return _done(evaluate(
        args.run, data=args.data, target=args.target, split=args.split, out=args.out, lang=args.lang,
        n_boot=args.n_boot, subgroups=tuple(c.strip() for c in args.subgroups.split(",") if c.strip()),
        backend=args.backend, card=args.card, force=args.force, allow_training_overlap=args.allow_training_overlap,
        robustness=args.robustness,
    ))


# --- adopt -------------------------------------------------------------------------------


def _add_adopt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adopt", help="a model trained elsewhere (ONNX + descriptor YAML): fit calibration, threshold, "
        "prediction sets, input check on validation data; write a bundle")
    p.add_argument("descriptor", help="bring-your-own-model descriptor .yaml (docs/BRING_YOUR_OWN_MODEL.md)")
    p.add_argument("--data", required=True, help="manifest CSV, MedMNIST .npz or image folder with a split column")
    p.add_argument("--out", required=True, help="run folder to write (the bundle goes to OUT/model)")
    p.add_argument("--split", default="val", help="the split to fit on (default val); not the one you test on")
    p.add_argument("--target", help="label column of a manifest (default: label)")
    p.add_argument("--threshold-from", choices=("validation", "descriptor"), default="validation",
                   help="fit the threshold on the split (default) or keep the descriptor's")
    p.add_argument("--intended-use", help="what the model is for, in words (overrides the descriptor's card)")
    p.add_argument("--modality", action="append", default=[], help="intended DICOM Modality, e.g. CR (repeatable)")
    p.add_argument("--body-part", action="append", default=[], help="intended BodyPartExamined (repeatable)")
    p.add_argument("--view", action="append", default=[], help="intended ViewPosition, e.g. PA (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="move a run already in --out aside (NAME.old-<time>)")
    p.set_defaults(handler=_adopt)


def _adopt(args: argparse.Namespace) -> int:
    from medpredict.workflows.adopt import adopt

    intended = {"description": args.intended_use, "modalities": args.modality, "body_parts": args.body_part,
                "views": args.view}
    return _done(adopt(
        args.descriptor, args.data, args.out, split=args.split, target=args.target, intended_use=intended,
        threshold_from=args.threshold_from, seed=args.seed, force=args.force,
    ))


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict for images, folders, DICOM files or a manifest")
    p.add_argument("run", help="run folder (or a bring-your-own ONNX descriptor .yaml)")
    p.add_argument("inputs", nargs="+", help="image files, folders, DICOM files or a manifest CSV")
    p.add_argument("--out", required=True, help="output folder for predictions.csv/json and overlays")
    p.add_argument("--no-overlays", action="store_true", help="skip the Grad-CAM overlay PNGs")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch (default), onnx or int8 (after 'medpredict export', with --int8 for int8)")
    p.add_argument("--ignore-intended-use", action="store_true",
                   help="predict even for DICOM inputs whose tags contradict the model's intended use")
    p.add_argument("--force", action="store_true", help="move earlier predictions in --out aside (OUT.old-<time>)")
    p.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from medpredict.inference.files import predict_files

    return _done(predict_files(
        args.run, args.inputs, args.out, overlays=not args.no_overlays, backend=args.backend,
        ignore_intended_use=args.ignore_intended_use, force=args.force,
    ))


# --- data / demo -------------------------------------------------------------------------


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data-quality checks and dataset downloads")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="data-quality report: files, balance, duplicates, leakage; "
                                              "exits 1 when a problem stops training")
    check.add_argument("source", help="manifest CSV, MedMNIST .npz, image folder or clinical table")
    check.add_argument("--target", help="target column (default: label for images, guessed for tables)")
    check.add_argument("--out", default="data_check", help="report folder (default: data_check)")
    check.add_argument("--lang", default="en", help="language of the HTML report: en or zh")
    check.set_defaults(handler=_data_check)
    fetch = data_sub.add_parser("fetch", help="download a public dataset and verify its MD5")
    fetch.add_argument("name", help="dataset name, e.g. pneumoniamnist")
    fetch.add_argument("--dest", default="data", help="destination folder (default ./data)")
    fetch.add_argument("--url", help="download from this URL (a mirror) instead of the catalogue's")
    fetch.add_argument("--md5", help="expected MD5 (required with --url for names not in the catalogue)")
    fetch.set_defaults(handler=_data_fetch)
    deid = data_sub.add_parser(
        "deid",
        help="de-identify a folder of DICOM files (PS3.15 basic profile) before it becomes training data",
        description="Writes a de-identified copy of every DICOM file under IN to the same relative path under "
        "OUT, and deid_report.json there. Files whose Burned In Annotation is YES are refused (listed in the "
        "report) unless --allow-burned-in. Exit status 1 when any file was refused or unreadable.",
    )
    deid.add_argument("source", metavar="IN", help="folder (searched recursively) or one DICOM file")
    deid.add_argument("dest", metavar="OUT", help="output folder (must not be inside IN)")
    deid.add_argument("--salt-file",
                      help="file holding a secret salt: the same salt gives the same new UIDs across runs "
                           "(default: a random salt per run)")
    deid.add_argument("--keep-uids", action="store_true", help="keep the original UIDs (Retain UIDs option)")
    deid.add_argument("--keep", action="append", default=[], metavar="KEYWORD",
                      help="retain this attribute although the profile removes it (repeatable), e.g. PatientAge")
    deid.add_argument("--allow-burned-in", action="store_true",
                      help="de-identify the header of images marked Burned In Annotation = YES (the pixel text stays)")
    deid.set_defaults(handler=_data_deid)


def _data_check(args: argparse.Namespace) -> int:
    from medpredict.workflows.check import check_data

    return _done(check_data(args.source, target=args.target, out=args.out, lang=args.lang))


def _data_fetch(args: argparse.Namespace) -> int:
    from medpredict.data.fetch import fetch

    path = fetch(args.name, args.dest, url=args.url, md5=args.md5)
    print(f"Downloaded and verified: {path}")
    return 0


def _data_deid(args: argparse.Namespace) -> int:
    from medpredict.deploy.deid import deidentify_folder

    salt = Path(args.salt_file).read_text(encoding="utf-8").strip() if args.salt_file else None
    report = deidentify_folder(
        args.source, args.dest, salt=salt, keep_uids=args.keep_uids, keep=tuple(args.keep),
        allow_burned_in=args.allow_burned_in,
    )
    print(f"De-identified {report.written} file(s) into {args.dest}; refused {len(report.refused)}, "
          f"not DICOM {len(report.not_dicom)}")
    for path, reason in report.refused.items():
        print(f"REFUSED {path}: {reason}")
    print(f"Report: {report.report_path}")
    return 1 if report.refused else 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole path on the shipped PneumoniaMNIST: train, evaluate, explain")
    p.add_argument(
        "--data-dir",
        help="folder holding medmnist/pneumoniamnist.npz (default: $MEDPREDICT_DATA_DIR, then ../shared/data)",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from medpredict.demo import run_demo

    return _done(run_demo(data_dir=args.data_dir, out=args.out, epochs=args.epochs))


# --- records -----------------------------------------------------------------------------


def _add_records(sub: argparse._SubParsersAction) -> None:
    shown = sub.add_parser("records", help="clinical records: train, cross-validate, cluster; the MIMIC-IV demo task")
    hidden = sub.add_parser("tabular")  # the former name, still accepted; without help= it is not listed
    for parser in (shown, hidden):
        _add_record_commands(parser.add_subparsers(dest="records_command", required=True))


def _add_record_commands(rec: argparse._SubParsersAction) -> None:
    commands = {
        "train": ("train + evaluate a record network and baselines; writes a run folder with a bundle", _records_train),
        "cv": ("repeated cross-validation: network, logistic regression, gradient boosting; same folds", _records_cv),
        "cluster": ("cluster patients in the trained network's embedding; writes clusters.png/json", _records_cluster),
    }
    for name, (help_text, handler) in commands.items():
        q = rec.add_parser(name, help=help_text)
        q.add_argument("table", help="CSV/TSV/ARFF/Parquet, or header-less .data with a .names file")
        q.add_argument("--target", help="target column or rule such as 'num>0' (default: guessed)")
        q.add_argument("--schema", help="YAML schema overriding the inferred column kinds")
        q.add_argument("--model", default="mlp", choices=_record_models())
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--out", default=f"runs/records_{name}")
        if name != "cluster":
            q.add_argument("--task", default="auto", choices=RECORD_TASKS)
            default = 10 if name == "cv" else 0
            q.add_argument("--repeats", type=int, default=default, help=f"5-fold CV repeats (default {default})")
        else:
            q.add_argument("--k", type=int, help="clusters (default: chosen by silhouette)")
        if name in ("train", "cluster"):
            q.add_argument("--force", action="store_true", help="move a run already in --out aside (NAME.old-<time>)")
        if name == "train":
            q.add_argument("--allow-target-proxy", action="store_true",
                           help="train even with a column that restates the target on its own (a leak)")
        q.set_defaults(handler=handler)
    from medpredict.ehr.mimic import MIMIC_TASKS

    m = rec.add_parser("mimic", help="the MIMIC-IV demo task end to end (patient-level split)")
    m.add_argument("root", help="MIMIC-IV demo folder holding hosp/ and icu/")
    m.add_argument("--task", default="prolonged_stay", choices=MIMIC_TASKS)
    m.add_argument("--model", default="mlp", choices=_record_models())
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--repeats", type=int, default=0, help="also run REPEATS x 5-fold CV")
    m.add_argument("--out", default="runs/mimic")
    m.add_argument("--force", action="store_true", help="move a run already in --out aside (NAME.old-<time>)")
    m.set_defaults(handler=_records_mimic)


def _records_train(args: argparse.Namespace) -> int:
    from medpredict.training.records import train_table

    return _done(train_table(
        args.table, target=args.target, schema=args.schema, task=args.task, out=args.out, model=args.model,
        seed=args.seed, cv_repeats=args.repeats, force=args.force, allow_target_proxy=args.allow_target_proxy,
    ))


def _records_cv(args: argparse.Namespace) -> int:
    from medpredict.training.records import cross_validate_table

    return _done(cross_validate_table(
        args.table, out=args.out, target=args.target, schema=args.schema, task=args.task, model=args.model,
        n_repeats=args.repeats, seed=args.seed,
    ))


def _records_cluster(args: argparse.Namespace) -> int:
    from medpredict.training.clustering import cluster_table

    return _done(cluster_table(
        args.table, target=args.target, schema=args.schema, out=args.out, k=args.k, model=args.model, seed=args.seed,
        force=args.force,
    ))


def _records_mimic(args: argparse.Namespace) -> int:
    from medpredict.workflows.mimic import run_mimic_task

    return _done(run_mimic_task(
        args.root, out=args.out, task=args.task, model=args.model, seed=args.seed, cv_repeats=args.repeats,
        force=args.force,
    ))


# --- export / serve / pacs ---------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's model to ONNX with a parity check (and int8)")
    p.add_argument("run", help="run folder (or its model/ bundle folder)")
    p.add_argument("--int8", action="store_true", help="also write an int8 quantised model (model.int8.onnx)")
    p.add_argument("--int8-method", choices=("static", "dynamic"),
                   help="static (QDQ, calibrated on training images; default for image models) or dynamic "
                        "(default for record and fused models)")
    p.add_argument("--exporter", default="dynamo", choices=("dynamo", "torchscript"),
                   help="dynamo (default) or torchscript")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |ONNX - PyTorch| (default 1e-4)")
    p.add_argument("--out", help="output folder (default RUN/onnx)")
    p.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    from medpredict.deploy.export import export_run

    return _done(export_run(
        args.run, out_dir=args.out, quantize=args.int8, quant_method=args.int8_method, atol=args.atol,
        exporter=args.exporter,
    ))


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="REST API and web page for a run (or a bring-your-own ONNX .yaml)")
    p.add_argument("run", help="run folder or bring-your-own ONNX descriptor .yaml")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="API key (default: the MEDPREDICT_API_KEY environment variable)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request size limit (default 20 MB)")
    p.add_argument("--audit", help="SQLite audit log (default: audit.sqlite beside the model)")
    p.add_argument("--modality", action="append", default=[], help="accepted DICOM modality (repeatable)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="onnx: run RUN/onnx/model.onnx in ONNX Runtime; int8: RUN/onnx/model.int8.onnx")
    p.add_argument("--ignore-intended-use", action="store_true",
                   help="answer DICOM uploads whose tags contradict the model's intended use (default: 422)")
    p.add_argument("--workers", type=int, default=2,
                   help="prediction requests worked on at once (default 2; each may hold a decoded image)")
    p.add_argument("--queue", type=int, default=8,
                   help="prediction requests waiting for a worker; more get 503 with Retry-After (default 8)")
    p.add_argument("--public-docs", action="store_true",
                   help="serve the web page and the API docs without the key (the page then asks for it); "
                        "by default every route but /health needs the key")
    p.add_argument("--lang", default="en", choices=("en", "zh"),
                   help="language of the web page (default en); a user can switch with /?lang=en or /?lang=zh")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from medpredict.service.app import serve

    if not 0 <= args.port <= 65535:  # before the model is loaded
        raise ConfigError(f"--port {args.port} is not a TCP port; give one in 1-65535 (default 8000).")
    serve(args.run, host=args.host, port=args.port, api_key=args.api_key, max_upload_mb=args.max_upload_mb,
          audit_path=args.audit, modalities=tuple(args.modality), backend=args.backend,
          ignore_intended_use=args.ignore_intended_use, workers=args.workers, queue=args.queue,
          public_docs=args.public_docs, lang=args.lang)
    return 0


def _add_pacs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pacs",
        help="DICOMweb: find new images the model is meant for, predict, store SR + overlay (+ FHIR) back",
        description="Exit status: 0 when the pass completed (results stored, images outside the intended use "
        "skipped, failing images quarantined in the ledger and retried with backoff); 1 when a study could not "
        "be examined (tried again next pass); 2 for bad flags and for connection, TLS or authentication "
        "failures.",
    )
    p.add_argument("run", help="run folder or bring-your-own ONNX descriptor .yaml")
    p.add_argument("--url", required=True, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="torch, onnx (RUN/onnx/model.onnx) or int8 (RUN/onnx/model.int8.onnx)")
    p.add_argument("--modality", action="append", default=[],
                   help="only images of this modality (repeatable; within the model's intended use)")
    p.add_argument("--ignore-intended-use", action="store_true",
                   help="write results for images outside the model's declared intended use (modality, body part, "
                        "view); needed for models that declare none")
    p.add_argument("--since", help="only studies from this date on (YYYYMMDD)")
    p.add_argument("--ledger", help="JSON of what was done (default: pacs_ledger.json beside the model)")
    p.add_argument("--limit", type=int, default=50, help="studies examined per pass")
    p.add_argument("--max-images", type=int, default=4, help="images per study per pass")
    p.add_argument("--no-overlay", action="store_true", help="store the SR only, no overlay image")
    p.add_argument("--fhir-dir", help="also write a FHIR R4 transaction Bundle per image into this folder")
    p.add_argument("--fhir-url", help="also POST each FHIR Bundle to this FHIR server base URL")
    p.add_argument("--fhir-patient-system",
                   help="identifier system of DICOM Patient IDs in the FHIR server (e.g. urn:oid:1.2.3.4)")
    p.add_argument("--fhir-patient-map", help="JSON file of Patient ID -> 'Patient/<id>' FHIR references")
    p.add_argument("--max-attempts", type=int, default=3, help="tries of a failing image before it is given up")
    p.add_argument("--retry-after", type=float, default=600.0,
                   help="seconds before a failed image is retried (doubles each time; default 600)")
    p.add_argument("--retry-quarantined", action="store_true", help="retry every quarantined image now")
    p.add_argument("--watch", type=float, default=30.0, help="seconds between passes when --rounds > 1")
    p.add_argument("--rounds", type=int, default=1, help="number of passes (default 1)")
    p.add_argument("--user", help="DICOMweb user (password from MEDPREDICT_PACS_PASSWORD)")
    p.set_defaults(handler=_pacs)


def _pacs(args: argparse.Namespace) -> int:
    from medpredict.deploy.pacs import run_pacs
    from medpredict.deploy.pacs_ledger import RetryPolicy

    results = run_pacs(
        args.run, args.url, backend=args.backend, ledger_path=args.ledger, modalities=args.modality,
        ignore_intended_use=args.ignore_intended_use, since=args.since, limit=args.limit,
        max_images=args.max_images, overlay=not args.no_overlay, fhir_dir=args.fhir_dir, fhir_url=args.fhir_url,
        fhir_patient_system=args.fhir_patient_system, fhir_patient_map=args.fhir_patient_map,
        retry=RetryPolicy(max_attempts=args.max_attempts, backoff_s=args.retry_after),
        retry_quarantined=args.retry_quarantined, interval_s=args.watch, max_rounds=args.rounds,
        username=args.user, password=os.environ.get("MEDPREDICT_PACS_PASSWORD") if args.user else None,
    )
    for result in results:
        print(f"study {result.study_short_id}: {result.status} {result.reason}".rstrip()
              + "".join(f"\n  image {i.sop_short_id}: {i.label} (score {i.score})" for i in result.images))
    statuses = [r.status for r in results]
    counts = {status: statuses.count(status) for status in ("processed", "skipped", "quarantined", "failed")}
    print(", ".join(f"{n} {status}" for status, n in counts.items()) + " (unchanged studies are not listed)")
    return 1 if counts["failed"] else 0


# --- fusion ------------------------------------------------------------------------------


def _add_fusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fusion", help="image + clinical record fusion models")
    fusion_sub = p.add_subparsers(dest="fusion_command", required=True)
    q = fusion_sub.add_parser("train", help="train a fusion model on a manifest with image_path and clinical columns")
    q.add_argument("manifest", help="CSV/TSV/Parquet: image_path, patient_id, target and clinical columns")
    q.add_argument("--target", default="label", help="target column (default: label)")
    q.add_argument("--clinical-columns", help="comma-separated record columns (default: all non-reserved)")
    q.add_argument("--out", default="runs/fusion", help="run folder (default runs/fusion)")
    q.add_argument("--image-model", default="tiny-resnet", metavar="NAME",
                   help=f"image network: {', '.join(_image_models())}")
    q.add_argument("--image-size", type=int, default=28)
    q.add_argument("--channels", type=int, default=1, choices=(1, 3))
    q.add_argument("--mode", default="intermediate", choices=("intermediate", "late"))
    q.add_argument("--modalities", default="image,record", help="image,record (default), or one for an ablation")
    q.add_argument("--modality-dropout", type=float, default=0.2)
    q.add_argument("--table-model", default="mlp", choices=_record_models(), help="the record network")
    q.add_argument("--epochs", type=int)
    q.add_argument("--seed", type=int)
    q.add_argument("--force", action="store_true", help="move a run already in --out aside (NAME.old-<time>)")
    q.add_argument("--allow-target-proxy", action="store_true",
                   help="train even with a clinical column that restates the target on its own (a leak)")
    q.set_defaults(handler=_fusion)


def _fusion(args: argparse.Namespace) -> int:
    from medpredict.training.fusion import train_fusion

    columns = [c.strip() for c in args.clinical_columns.split(",")] if args.clinical_columns else None
    return _done(train_fusion(
        args.manifest, target=args.target, clinical_columns=columns, out=args.out, image_model=args.image_model,
        image_size=args.image_size, channels=args.channels, mode=args.mode,
        modalities=tuple(m.strip() for m in args.modalities.split(",")), modality_dropout=args.modality_dropout,
        table_model=args.table_model, epochs=args.epochs, seed=args.seed, force=args.force,
        allow_target_proxy=args.allow_target_proxy,
    ))


# --- entry point -------------------------------------------------------------------------

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train, _add_tune, _add_evaluate, _add_adopt, _add_predict, _add_data, _add_demo, _add_records,
    _add_export, _add_serve, _add_pacs, _add_fusion,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medpredict",
        description="Medical images and clinical records to prediction models a hospital can trust.",
    )
    parser.add_argument("--version", action="version", version=f"medpredict {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # the console shows --quiet/--verbose's level even while
        handler.setLevel(level)  # a run's train.log collects INFO
    logging.getLogger("medpredict").setLevel(level)
    try:
        return int(args.handler(args))
    except MedpredictError as exc:
        print(f"medpredict: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medpredict: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
