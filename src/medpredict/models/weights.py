"""Load user-supplied starting weights into a built model, from safetensors only (never pickle)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medpredict.errors import ConfigError
from medpredict.models.image import HEAD_PREFIX

logger = logging.getLogger(__name__)

# Prefixes that wrappers add to every key: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_weights` did, key by key.

    Attributes:
        loaded: model tensors given values from the file.
        missing: model tensors the file did not have (left as initialised).
        unexpected: file tensors the model has no place for (ignored).
        skipped: head tensors whose shape differs, left as initialised (``skip_head=True``).
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    skipped: tuple[str, ...]


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, skip_head: bool = False, strict: bool = False
) -> WeightsReport:
    """Copy tensors from a safetensors file into ``model``, in place.

    Keys are matched by name after removing ``module.`` / ``_orig_mod.`` prefixes (weights
    saved from a DDP-wrapped or compiled model); when no name matches, the tensors under a
    common first component (``net.`` in a medpredict bundle) are tried. Missing and unexpected
    keys are logged and returned; with ``strict=True`` they are an error.

    Args:
        model: the built network, e.g. from :func:`medpredict.models.build_model`.
        path: a ``.safetensors`` file.
        skip_head: leave the classifier head (keys under ``head.``) as initialised when its
            shape differs, for fine-tuning to another number of classes.
        strict: refuse missing or unexpected keys instead of logging them.

    Returns:
        A :class:`WeightsReport` of what was loaded, missing, unexpected and skipped.

    Raises:
        ConfigError: the file is missing, not safetensors, shares no tensor name with the model,
            has a tensor whose shape differs from the model's (named in the message), or, with
            ``strict``, lacks or adds tensors.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Weights file '{path}' does not exist. Check model.weights in the config.")
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"Weights file '{path}' is not a .safetensors file. medpredict never unpickles weights; "
            "convert with: safetensors.torch.save_file(torch.load(f, weights_only=True), 'w.safetensors')."
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(
            f"Could not read weights file '{path}': {exc}. Is it a complete safetensors file?"
        ) from exc

    tensors = {_strip_wrapper_prefix(key): value for key, value in tensors.items()}
    state = model.state_dict()
    shared = [key for key in tensors if key in state]
    if tensors and not shared:
        tensors = _unwrap(tensors, state)
        shared = [key for key in tensors if key in state]
    if tensors and not shared:
        raise ConfigError(
            f"Weights file '{path}' shares no tensor name with model {type(model).__name__} "
            f"(file has e.g. '{next(iter(tensors))}', model has e.g. '{next(iter(state))}'). "
            "Were they saved from another architecture?"
        )

    to_load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    mismatched: list[str] = []
    for key in (key for key in state if key in tensors):  # model order: weight before bias
        expected, found = tuple(state[key].shape), tuple(tensors[key].shape)
        if expected == found:
            to_load[key] = tensors[key]
        elif skip_head and _is_head(key):
            skipped.append(key)
        else:
            mismatched.append(f"'{key}' has shape {found}, the model expects {expected}")
    if mismatched:
        only_head = all(_is_head(entry.split("'")[1]) for entry in mismatched)
        hint = (
            "Pass skip_head=True to fine-tune with another number of classes."
            if only_head
            else "The file was saved from a differently configured model (channels, classes, depth)."
        )
        raise ConfigError(
            f"Weights file '{path}' does not fit the model: {'; '.join(mismatched[:5])}"
            f"{f' (+{len(mismatched) - 5} more)' if len(mismatched) > 5 else ''}. {hint}"
        )
    missing = tuple(key for key in state if key not in to_load and key not in skipped)
    unexpected = tuple(key for key in tensors if key not in state)
    if strict and (missing or unexpected):
        raise ConfigError(
            f"Weights file '{path}' does not match the model exactly: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}. Load with strict=False to accept a partial match."
        )
    model.load_state_dict(to_load, strict=False)
    if missing:
        logger.warning(
            "%d model tensors not in '%s', left as initialised: %s", len(missing), path, _few(missing)
        )
    if unexpected:
        logger.warning(
            "%d tensors in '%s' not used by the model: %s", len(unexpected), path, _few(unexpected)
        )
    if skipped:
        logger.info("Classifier head left as initialised (shape differs): %s", _few(tuple(skipped)))
    logger.info("Loaded %d tensors from '%s'.", len(to_load), path)
    return WeightsReport(
        loaded=tuple(to_load), missing=missing, unexpected=unexpected, skipped=tuple(skipped)
    )


def _is_head(key: str) -> bool:
    """True for the classifier head's tensors, also inside a wrapper (``net.head.1.weight``)."""
    return key.startswith(HEAD_PREFIX) or f".{HEAD_PREFIX}" in key


def _unwrap(tensors: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys relative to the wrapped network when the file holds a wrapper around it.

    A medpredict bundle's ``weights.safetensors`` holds the network under ``net.`` beside the
    input-normalisation buffers; starting from it should just work. The tensors outside the
    common prefix are dropped here (they are the wrapper's, not the network's).
    """
    for prefix in sorted({key.split(".", 1)[0] + "." for key in tensors if "." in key}):
        inner = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        if any(key in state for key in inner):
            logger.info("Reading the weights under '%s' (the file holds a wrapped network).", prefix)
            return inner
    return tensors


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _few(keys: tuple[str, ...], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown
