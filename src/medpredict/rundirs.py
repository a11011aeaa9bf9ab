"""Output folders: one rule for every command that writes a model or results.

No command overwrites a run's model or results silently. The trainers (``train``,
``records train``, ``fusion train``) claim a whole run folder; ``evaluate`` and ``predict``
write their files into a folder of their own. Each checks its folder before any work:

* a path that is a file, or that cannot be created or written, is refused;
* a folder inside a model bundle (``RUN/model``) or an export (``RUN/onnx``) is refused,
  since any file written there breaks their checksums;
* a folder already holding a run's model, training state or results is refused, naming
  what it holds; ``force`` moves the old folder aside to ``NAME.old-<time>`` instead.

:func:`claim_run_dir` is the trainers' check, :func:`claim_output_dir` the one of commands
that write results beside others (``evaluate``, ``predict``), :func:`set_aside` the move.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from medpredict.errors import ConfigError

log = logging.getLogger(__name__)

#: Files and folders that make a folder a run: its model, training state and results.
TRAINING_STATE = "checkpoint.safetensors"
#: The training state of small-data mode: one folder per fold (medpredict.training.crossfit.FOLDS_DIR).
FOLDS_STATE = "folds"
RUN_CONTENT = (
    "model",
    TRAINING_STATE,
    FOLDS_STATE,
    "onnx",
    "metrics.json",
    "report.html",
    "cv.json",
    "predictions.csv",
    "predictions.json",
)
#: What ``evaluate`` writes into its output folder.
EVALUATION_FILES = (
    "metrics.json", "report.html", "model_card.md", "model_card.json", "model_card.html", "evaluation_cases.csv",
)
#: What ``predict`` writes into its output folder.
PREDICTION_FILES = ("predictions.csv", "predictions.json", "overlays")
#: Marker files of the folders nothing else may write into.
_SEALED = {"checksums.json": "a model bundle or an ONNX export"}
_KINDS = {"image": "an image model", "table": "a record model", "fusion": "a fused image + record model"}


def check_writable(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Refuse an output folder that is a file or cannot be created and written.

    Nothing is left behind: a folder created to try is removed again.

    Raises:
        ConfigError: names the path and why it cannot be used.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder. Give a folder path (it is created if needed).")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {existing} is a file. Give a folder path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medpredict-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path} cannot be written ({exc.strerror or exc}). Choose a folder you can write to."
        ) from None
    return path


def sealed_folder(path: str | os.PathLike[str]) -> Path | None:
    """The model bundle or export folder that ``path`` is, or lies inside; ``None`` if none."""
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        if any((folder / marker).is_file() for marker in _SEALED):
            return folder
    return None


def refuse_sealed(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Refuse an output folder inside a model bundle or export (its checksums would break).

    Raises:
        ConfigError: names the bundle and suggests a folder beside it.
    """
    sealed = sealed_folder(path)
    if sealed is not None:
        raise ConfigError(
            f"{flag} {path} is inside {sealed}, which is {_SEALED['checksums.json']}: a file written there would "
            f"break its checksums. Write to a folder of its own, e.g. {sealed.parent / 'predictions'}."
        )


def _model_kind(path: Path) -> str | None:
    """The ``input_kind`` of the bundle in ``path/model`` (``"?"`` when unreadable), ``None`` without one."""
    bundle = path / "model" / "bundle.json"
    if not bundle.is_file():
        return None
    try:
        return str(json.loads(bundle.read_text(encoding="utf-8")).get("input_kind"))
    except (OSError, ValueError, AttributeError):
        return "?"


def contents(path: str | os.PathLike[str]) -> str | None:
    """What a folder holds, in words (``"a record model"``, ``"training state"``, ...); ``None`` if no run."""
    path = Path(path)
    if not path.is_dir():
        return None
    kind = _model_kind(path)
    if kind is not None:
        return _KINDS.get(kind, "a model")
    if (path / TRAINING_STATE).is_file() or (path / FOLDS_STATE).is_dir():
        state = TRAINING_STATE if (path / TRAINING_STATE).is_file() else f"{FOLDS_STATE}/"
        return f"the training state of an unfinished run ({state})"
    found = [name for name in RUN_CONTENT if (path / name).exists()]
    return f"results ({', '.join(found)})" if found else None


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Move ``path`` to ``NAME.old-<YYYYmmdd-HHMMSS>`` beside it (a counter is added on a clash)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{counter}")
    os.replace(path, target)
    log.warning("Moved the previous %s aside to %s.", path, target)
    return target


def claim_run_dir(
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    resume: bool = False,
    can_resume: bool = False,
    flag: str = "--out",
) -> Path:
    """Check that a trainer may write the run folder ``path``; with ``force`` move an old run aside.

    Args:
        path: the run folder.
        force: move a folder holding a run aside (``NAME.old-<time>``) instead of refusing.
        resume: the trainer continues the folder's own checkpoint (an image run's only).
        can_resume: the command has ``--resume`` (named in the refusal when it would apply).
        flag: the command's flag for the folder, named in messages.

    Raises:
        ConfigError: the folder is a file, cannot be written, lies inside a bundle, holds a run
            (without ``force``), or has no checkpoint to resume.
    """
    path = Path(path)
    check_writable(path, flag)
    refuse_sealed(path, flag)
    held = contents(path)
    has_state = (path / TRAINING_STATE).is_file() or (path / FOLDS_STATE).is_dir()
    resumable = has_state and _model_kind(path) in (None, "image")
    if resume:
        if not has_state:
            raise ConfigError(
                f"--resume: {path} holds no checkpoint ({TRAINING_STATE}) to continue"
                + (f"; it holds {held}." if held else ".")
                + " Run without --resume to train a new model."
            )
        if not resumable:
            raise ConfigError(f"--resume: {path} holds {held}; only an image run's training can be resumed.")
        return path
    if held is None:
        return path
    if force:
        set_aside(path)
        return path
    advice = "--resume to continue its training, " if resumable and can_resume else ""
    raise ConfigError(
        f"{path} already holds {held}. Use {advice}--force to move it aside (to {path.name}.old-<time>), "
        f"or {flag} to write another folder."
    )


def claim_output_dir(
    path: str | os.PathLike[str], own: Iterable[str], *, force: bool = False, flag: str = "--out"
) -> Path:
    """Check the folder of a command's results (``evaluate``, ``predict``) before any work.

    A folder is refused when it holds a model, or when it already holds any of ``own`` (the
    command's own result files) — unless ``force``, which moves it aside.

    Raises:
        ConfigError: a file, unwritable, inside a bundle, holding a model, or holding results.
    """
    path = Path(path)
    check_writable(path, flag)
    refuse_sealed(path, flag)
    if (path / "model" / "bundle.json").is_file():
        raise ConfigError(
            f"{flag} {path} is a run folder holding {contents(path)}; write results to a folder of their own, "
            f"e.g. {flag} {path / 'predictions'}."
        )
    found = [name for name in own if (path / name).exists()]
    if found:
        if not force:
            raise ConfigError(
                f"{flag} {path} already holds results ({', '.join(found)}). Use --force to move them aside "
                f"(to {path.name}.old-<time>), or {flag} to write another folder."
            )
        set_aside(path)
    return path


@contextlib.contextmanager
def removed_on_failure(
    path: str | os.PathLike[str], *, keep: Iterable[str] = (TRAINING_STATE, FOLDS_STATE)
) -> Iterator[Path]:
    """Remove a folder this command created when the command fails before writing any of ``keep``.

    A failed run leaves no empty run folder with an empty log behind; one that wrote a
    checkpoint keeps it (``--resume`` continues from it).
    """
    path = Path(path)
    created = not path.exists()
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and not any((path / name).exists() for name in keep):
            shutil.rmtree(path, ignore_errors=True)
        raise


def set_aside_stale_results(run_dir: str | os.PathLike[str]) -> Path | None:
    """Move the evaluation results of a run's previous model into ``RUN/evaluation.old-<time>/``.

    Called when a resumed run writes a new model: results that describe the old one must not
    sit beside it as if they were its own. Returns the folder they went to, if any.
    """
    run_dir = Path(run_dir)
    found = [run_dir / name for name in EVALUATION_FILES if (run_dir / name).exists()]
    if not found:
        return None
    target = run_dir / f"evaluation.old-{time.strftime('%Y%m%d-%H%M%S')}"
    counter = 1
    while target.exists():
        counter += 1
        target = run_dir / f"evaluation.old-{time.strftime('%Y%m%d-%H%M%S')}-{counter}"
    target.mkdir()
    for path in found:
        os.replace(path, target / path.name)
    log.warning("The evaluation results of the previous model went to %s; evaluate the new one again.", target)
    return target
