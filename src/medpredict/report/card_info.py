"""What the model owner adds to the model card: ``medpredict evaluate RUN --card card.yaml``.

An evaluation knows the numbers, the data and the model; it cannot know who owns the
model, whom to contact, under which licence it is shared, the setting it is meant for or
how it will be monitored. Those fields come from a small YAML file (data only, read with
``yaml.safe_load``); any field left out is marked "to be supplied by the model owner" in
the card. Unknown keys are refused with the closest valid one, like every config.

Keys (all optional; text unless noted)::

    owner: Paediatric Radiology AI group, Example Hospital
    contact: ai-governance@example.org
    licence: Apache-2.0                 # of the model weights and card
    regulatory_status: Research use only; not a medical device.   # default when absent
    citation: "Doe J et al. ..."
    intended_use: Second reader for paediatric frontal chest radiographs.
    intended_users: Radiologists and paediatricians
    population: Children aged 1-5 years presenting with respiratory symptoms
    setting: Emergency department, after the radiograph is acquired
    out_of_scope: [Adults, Lateral views, CT]                      # list of text
    modality: Frontal chest radiograph (CR/DX), grey
    data_origin: Where the training data came from, in words
    ethical_considerations: ...
    monitoring: [Monthly calibration check on 100 confirmed cases]  # list of text
    caveats: [Not validated on portable AP films]                   # list of text
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpredict.errors import ConfigError, did_you_mean

#: Shown when the owner gives no regulatory status: the honest default for this software.
DEFAULT_REGULATORY_STATUS = "research use, not a medical device"

_LISTS = ("out_of_scope", "monitoring", "caveats")


@dataclass(frozen=True)
class CardInfo:
    """The model owner's fields of the model card (see the module docstring); None = not supplied."""

    owner: str | None = None
    contact: str | None = None
    licence: str | None = None
    regulatory_status: str | None = None
    citation: str | None = None
    intended_use: str | None = None
    intended_users: str | None = None
    population: str | None = None
    setting: str | None = None
    out_of_scope: tuple[str, ...] = ()
    modality: str | None = None
    data_origin: str | None = None
    ethical_considerations: str | None = None
    monitoring: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The valid keys of a card file."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "card") -> CardInfo:
        """Validate and build from a mapping (a parsed card file).

        Raises:
            ConfigError: an unknown key (with the closest valid one) or a value of the wrong type.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a mapping of card fields (key: value); got {type(values).__name__}.")
        known = cls.keys()
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"Unknown model-card key '{key}' in {source}.{did_you_mean(str(key), known)} "
                                  f"Valid keys: {', '.join(known)}.")
            if value is None:
                continue
            if key in _LISTS:
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, list) or not all(isinstance(v, str | int | float) for v in items):
                    raise ConfigError(f"Model-card key '{key}' in {source} must be a text or a list of texts; "
                                      f"got {value!r}.")
                kwargs[key] = tuple(str(v).strip() for v in items if str(v).strip())
            else:
                if not isinstance(value, str | int | float) or isinstance(value, bool):
                    raise ConfigError(f"Model-card key '{key}' in {source} must be a text; got {value!r}.")
                kwargs[key] = str(value).strip() or None
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (lists for the list fields)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def missing(self) -> list[str]:
        """Keys the owner has not supplied (the regulatory status has a default and is not listed)."""
        return [k for k, v in dataclasses.asdict(self).items() if not v and k != "regulatory_status"]


def load_card_info(source: CardInfo | Mapping[str, Any] | str | os.PathLike[str] | None) -> CardInfo:
    """A :class:`CardInfo` from a CardInfo, a mapping, a YAML file path, or None (nothing supplied).

    Raises:
        ConfigError: the file is missing or not YAML, or a key is unknown or ill-typed.
    """
    if source is None:
        return CardInfo()
    if isinstance(source, CardInfo):
        return source
    if isinstance(source, Mapping):
        return CardInfo.from_dict(source)
    import yaml

    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"Model-card file not found: {path}. Give a YAML file with keys such as owner, "
                          "contact, licence (see 'medpredict evaluate --help').")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Model-card file {path} is not valid YAML: {exc}") from exc
    return CardInfo.from_dict(values or {}, source=str(path))
