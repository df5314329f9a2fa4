"""Who is in which shared clip, so training and validation never share a person.

Keys come from the descriptions in ../shared/media/MANIFEST.tsv; clips that show the same
person get the same key (e.g. MEAD actor M003 appears in three files).
"""

from __future__ import annotations

from pathlib import Path

PERSON = {
    "EAMM_mead_contempt_woman": "mead_braids_woman",
    "EAMM_mead_disgusted_man": "mead_eastasian_man_b",
    "EAMM_mead_fear_woman": "mead_curly_woman",
    "EAMM_mead_surprised_woman": "mead_curly_woman",
    "EAMM_mead_happy_man": "mead_M003",
    "spectre_mead_M003_disgusted": "mead_M003",
    "spectre_mead_M003_happy": "mead_M003",
    "spectre_mead_M026_disgusted": "mead_M026",
    "spectre_mead_M030_angry": "mead_M030",
    "EAMM_mead_M030_sad_1080p": "mead_M030",
    "dreamtalk_mead_M030_surprised": "mead_M030",
    "spectre_mead_W015_neutral": "mead_W015",
    "spectre_mead_W023_surprised": "mead_W023",
    "spectre_mead_W036_happy": "mead_W036",
    "dreamtalk_mead_W009_neutral": "mead_W009",
    "dreamtalk_mead_W009_surprised": "mead_W009",
    "dreamtalk_mead_W011_neutral": "mead_W011",
    "dreamtalk_mead_W011_happy": "mead_W011",
    "LipNet_grid_pwij3p": "grid_greying_man",
    "LipNet_grid_id2_swwp2s": "grid_greying_man",
    "styletalk_furious_talk1_clip2": "styletalk_furious_man",
    "styletalk_furious_talk2_clip6": "styletalk_furious_man",
}

# Held out for validation: these people never appear in training data.
VALIDATION_PEOPLE = {
    "liveportrait_d0",
    "liveportrait_d9",
    "mead_W011",
    "styletalk_happyenglish_clip2",
    "IP_LAP_ip_lap_129",
    "extra_astorfi_oldman",
    "LipNet_grid_bbaf2n",
}


# Held out from training too, to choose the best checkpoint: choosing it on the validation
# people would make their scores (the held-out evaluation's people) look better than they are.
SELECTION_PEOPLE = {
    "liveportrait_d3",
    "styletalk_surprisegirl_clip2",
    "extra_edtalk_woman_smile",
    "mead_M026",
}


def person_of(path: str | Path) -> str:
    stem = Path(path).stem
    return PERSON.get(stem, stem)


def is_validation(path: str | Path) -> bool:
    return person_of(path) in VALIDATION_PEOPLE


def split(paths: list[str | Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, selection, validation) by person."""
    paths = [Path(p) for p in paths]
    val = [p for p in paths if is_validation(p)]
    selection = [p for p in paths if person_of(p) in SELECTION_PEOPLE]
    train = [p for p in paths if p not in val and p not in selection]
    return train, selection, val
