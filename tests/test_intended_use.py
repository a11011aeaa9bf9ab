"""Intended use: the declaration in the bundle and the DICOM-tag check against it."""

from __future__ import annotations

import pytest

from medpredict.data.intended_use import CHEST_RADIOGRAPH, IntendedUse, from_training_tags
from medpredict.errors import ConfigError

CHEST = IntendedUse.from_dict(CHEST_RADIOGRAPH)


@pytest.mark.parametrize(
    ("tags", "refused_by"),
    [
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}, []),  # the shipped RG1 chest CR
        ({"Modality": "DX", "BodyPartExamined": "thorax", "ViewPosition": "AP"}, []),  # synonym, lower case
        ({"Modality": "CR"}, []),  # body part and view absent: nothing contradicts
        ({"Modality": "CR", "BodyPartExamined": "", "ViewPosition": " "}, []),  # empty tags are absent
        ({"Modality": "CR", "BodyPartExamined": "EXTREMITY", "ViewPosition": "AP"}, ["BodyPartExamined"]),  # RG3 tibia
        ({"Modality": "MR", "BodyPartExamined": "HEAD"}, ["Modality", "BodyPartExamined"]),  # emri head MR
        ({"Modality": "US"}, ["Modality"]),  # ultrasound without body part
        ({"Modality": "CT"}, ["Modality"]),
        ({"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "LL"}, ["ViewPosition"]),  # lateral view
    ],
)
def test_contradictions_name_each_tag(tags: dict[str, str], refused_by: list[str]) -> None:
    reasons = CHEST.contradictions(tags)
    assert [r.split(" ")[0] for r in reasons] == refused_by
    for reason in reasons:
        assert "this model is for" in reason


def test_undeclared_intended_use_checks_nothing() -> None:
    assert IntendedUse().contradictions({"Modality": "MR"}) == []
    assert not IntendedUse().declared


def test_round_trip_and_unknown_key() -> None:
    assert IntendedUse.from_dict(CHEST.to_dict()) == CHEST
    with pytest.raises(ConfigError, match="Did you mean 'modalities'"):
        IntendedUse.from_dict({"modality": ["CR"]})


def test_from_training_tags_ignores_a_rare_stray_value() -> None:
    rows = [{"Modality": "CR", "BodyPartExamined": "CHEST"}] * 199 + [{"Modality": "MR"}]
    use = from_training_tags(rows, min_share=0.01)
    assert use.modalities == ("CR",)
    assert use.body_parts == ("CHEST",)
    assert use.views == ()
    assert use.source == "dicom"
