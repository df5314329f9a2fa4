"""Who is in which shared clip, so training and validation never share a person.

The table is data, ``people.tsv`` beside this module (clip, person, group); its person keys
come from the descriptions in ../shared/media/MANIFEST.tsv.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

GROUPS = ("train", "selection", "validation")


def load_table(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(clip → person for clips that share a person or are not their own key, person → group)
    from the TSV ``text``; a person listed in two groups is an error."""
    rows = csv.DictReader((line for line in text.splitlines() if not line.startswith("#")), delimiter="\t")
    person_of_clip: dict[str, str] = {}
    group_of: dict[str, str] = {}
    for row in rows:
        clip, person, group = row["clip"], row["person"], row["group"]
        if group not in GROUPS:
            raise ValueError(f"people.tsv: {clip} has group {group!r}; known: {', '.join(GROUPS)}")
        if group_of.setdefault(person, group) != group:
            raise ValueError(f"people.tsv: {person} is in both {group_of[person]} and {group}")
        if clip != person:
            person_of_clip[clip] = person
    return person_of_clip, group_of


PERSON, _GROUP = load_table(resources.files(__package__).joinpath("people.tsv").read_text())

# Held out for validation: these people never appear in training data.
VALIDATION_PEOPLE = {p for p, g in _GROUP.items() if g == "validation"}

# Held out from training too, to choose the best checkpoint: choosing it on the validation
# people would make their scores (the held-out evaluation's people) look better than they are.
SELECTION_PEOPLE = {p for p, g in _GROUP.items() if g == "selection"}


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
