"""Save and load nested training state (model, optimiser, scheduler) without pickle.

Tensors go into a safetensors file; the structure around them (dicts with int or str
keys, lists, numbers, strings) goes into the file's JSON metadata. Loading therefore
never executes code, unlike ``torch.load`` on a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medpredict.atomic import write_bytes
from medpredict.errors import BundleError


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
