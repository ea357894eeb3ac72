"""The Gen1 dataset layout: ``ROOT/{train,val,test}/<name>_td.dat`` with ``<name>_bbox.npy`` beside it.

The same layout serves the real Gen1 download and the recordings ``spquant synth`` writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from data.errors import EventDataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class RecordingFiles:
    """One recording of a Gen1-layout split: its name, event file and label file."""

    name: str
    events: Path
    labels: Path


def list_recordings(root: str | os.PathLike[str], split: str) -> list[RecordingFiles]:
    """The labelled recordings of ``split``, sorted by name.

    Raises:
        EventDataError: unknown split, missing folder, no recordings, or an events file without its labels.
    """
    if split not in SPLITS:
        raise EventDataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    folder = Path(root) / split
    if not folder.is_dir():
        raise EventDataError(f"{folder} does not exist; expected a Gen1 layout ROOT/{{train,val,test}}/*_td.dat")
    recordings = []
    for events in sorted(folder.rglob("*_td.dat")):
        name = events.name[: -len("_td.dat")]
        labels = events.with_name(f"{name}_bbox.npy")
        if not labels.is_file():
            raise EventDataError(f"{events} has no label file {labels.name} beside it")
        recordings.append(RecordingFiles(name, events, labels))
    if not recordings:
        raise EventDataError(f"no *_td.dat recordings in {folder}")
    return recordings
