"""Save and load nested training state (model, optimiser, scheduler) without pickle.

Tensors go into a safetensors file; the structure around them (dicts with int or str
keys, lists, numbers, strings) goes into the file's JSON metadata. Loading therefore
never executes code, unlike ``torch.load`` on a pickle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medpredict.atomic import write_bytes
from medpredict.errors import BundleError, ConfigError

log = logging.getLogger(__name__)


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], views: dict[int, dict[tuple[Any, ...], str]]) -> Any:
    """The JSON skeleton of ``obj``; its tensors go into ``tensors``.

    safetensors refuses tensors that share memory. Tied weights (one tensor under two
    names, as ``state_dict`` gives them) are stored once and both names point at it;
    a different view of already stored memory is stored as a copy. ``views`` maps each
    stored memory block to the views of it already stored, and their keys.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        stored = views.setdefault(t.untyped_storage().data_ptr(), {})
        view = (t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in stored:
            return {"__tensor__": stored[view]}
        key = f"t{len(tensors)}"
        tensors[key] = t.clone(memory_format=torch.contiguous_format) if stored else t.contiguous()
        stored[view] = key
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, tensors, views), _flatten(v, tensors, views)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return {"__list__": [_flatten(v, tensors, views) for v in obj], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"Cannot store a {type(obj).__name__} in a checkpoint.")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (nested dicts/lists of tensors and plain values)."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, {})
    write_bytes(path, st_save(tensors, metadata={"medpredict_state": json.dumps(skeleton)}))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state`.

    Raises:
        BundleError: the file is unreadable or was not written by :func:`save_state`.
    """
    from safetensors import SafetensorError

    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = st_load(data)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        skeleton = json.loads(metadata["medpredict_state"])
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        raise BundleError(f"Cannot read the checkpoint {path}: {exc}. Delete it to start afresh.") from exc
    return _unflatten(skeleton, tensors)


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``"key: saved -> current"`` for every leaf where two nested fingerprints differ."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        lines: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            lines += _differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return lines
    if saved != current:
        return [f"{prefix.rstrip('.')}: {saved!r} in the checkpoint, {current!r} now"]
    return []


def check_fingerprint(saved: Mapping[str, Any] | None, current: Mapping[str, Any] | None, path: Path) -> None:
    """Refuse to resume a checkpoint made on other data, another model or other preprocessing.

    A fingerprint is a nested dict of JSON values (e.g. ``{"data": {"sha256": ...},
    "model": {"name": ...}, "preprocess": {"image_size": 28}}``); the message names every
    value that changed. A checkpoint written before fingerprints existed is resumed with a warning.

    Raises:
        ConfigError: the fingerprints differ.
    """
    if current is None:
        return
    if saved is None:
        log.warning("%s stores no fingerprint of its data and model (an older checkpoint); resuming unchecked.", path)
        return
    changed = _differences(saved, current)
    if changed:
        raise ConfigError(
            f"--resume: the checkpoint {path} was made for another run than this one ({'; '.join(changed)}). "
            "Resume with the data, model and preprocessing it was trained with, or train into a new folder "
            "(--out, or --force to move the old run aside)."
        )


def load_weights_of_checkpoint(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load a checkpoint's weights into ``model``, refusing a checkpoint of another network.

    Raises:
        ConfigError: the weights' names or shapes do not fit the network (counts named, not listed).
    """
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        expected = model.state_dict()
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        reshaped = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
        raise ConfigError(
            f"--resume: the checkpoint {path} holds the weights of another network ({len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape). Resume with the model it was "
            "trained with, or train into a new folder (--out, or --force to move the old run aside)."
        ) from exc


def continue_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, saved: Mapping[str, Any]) -> None:
    """Restore a learning-rate schedule's position; a schedule made longer keeps its new length.

    A one-cycle schedule stores its length and phase boundaries; loaded as saved, the steps
    past the old end would fail (``Tried to step N times``). Keeping the new length continues
    the run on the schedule a run planned with the new number of epochs follows from here on.
    (The cosine and constant schedules compute from the step alone and need nothing.)
    """
    planned = scheduler.state_dict()
    scheduler.load_state_dict(dict(saved))
    total = planned.get("total_steps")
    if total is not None and saved.get("total_steps") != total:
        scheduler.total_steps = total  # type: ignore[attr-defined]
        scheduler._schedule_phases = planned["_schedule_phases"]  # type: ignore[attr-defined]
        log.info(
            "The learning-rate schedule goes from %s to %s steps; continuing at step %s of the new one.",
            saved.get("total_steps"), total, saved.get("last_epoch"),
        )
