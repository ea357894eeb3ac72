"""Synthetic recordings on disk in the Gen1 layout: ``OUT/<split>/<name>_td.dat`` + ``OUT/<split>/<name>_bbox.npy``.

Every recording has its own seed, derived from the dataset seed with the split name and the index as spawn keys,
so no two recordings (in one split or across splits) share a random stream, and a recording does not change when
more are added. The same seed gives byte-identical files.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.formats.dat import DatWriter
from data.formats.labels import GEN1_CLASSES, write_labels
from data.synthetic.labels import scene_labels
from data.synthetic.presets import SynthConfig
from data.synthetic.scene import StreetScene
from data.synthetic.sensor import simulate

DAT_MAX_SECONDS = (2**32 - 1) / 1e6  # DAT timestamps are uint32 µs


@dataclass(frozen=True)
class RecordingSummary:
    """What one generated recording holds."""

    events_path: Path
    labels_path: Path
    duration_s: float
    events: int
    on: int
    boxes_per_class: tuple[int, ...]  # indexed by class id

    @property
    def event_rate(self) -> float:
        """Mean events per second."""
        return self.events / self.duration_s


def recording_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed sequence of recording ``index`` of ``split`` (split hashed with CRC-32, a stable key)."""
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode()), index))


def recording_streams(seed: np.random.SeedSequence) -> tuple[np.random.Generator, np.random.Generator]:
    """The scene's and the sensor's random generators of one recording (independent children of ``seed``)."""
    # Fixed children rather than seed.spawn(), whose result depends on how often it was called before.
    scene, sensor = (np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i)) for i in range(2))
    return np.random.default_rng(scene), np.random.default_rng(sensor)


def recording_name(split: str, index: int) -> str:
    """The file stem of recording ``index`` of ``split``: ``synth_<split>_<index:04d>``."""
    return f"synth_{split}_{index:04d}"


def write_recording(
    stem: str | os.PathLike[str],
    config: SynthConfig,
    duration_s: float,
    seed: np.random.SeedSequence,
    on_progress: Callable[[int], None] | None = None,
) -> RecordingSummary:
    """Simulate one recording and write ``<stem>_td.dat`` and ``<stem>_bbox.npy``.

    ``on_progress`` is called with the simulated milliseconds of each written chunk.
    """
    if not 0 < duration_s <= DAT_MAX_SECONDS:
        raise ValueError(f"duration must be in (0, {DAT_MAX_SECONDS:.0f}] s, got {duration_s}")
    scene_rng, sensor_rng = recording_streams(seed)
    duration_us = duration_s * 1e6
    scene = StreetScene(config.scene, scene_rng, duration_us)
    events_path, labels_path = Path(f"{stem}_td.dat"), Path(f"{stem}_bbox.npy")
    chunk_us = config.sensor.chunk_frames * 1e6 / config.sensor.frame_rate_hz
    count = on = 0
    reported_ms = 0
    with DatWriter(events_path, config.scene.width, config.scene.height) as writer:
        for i, chunk in enumerate(simulate(scene.render, duration_us, config.sensor, sensor_rng)):
            writer.write(chunk)
            count += len(chunk)
            on += int(np.count_nonzero(chunk["p"]))
            if on_progress is not None:
                done_ms = round(min((i + 1) * chunk_us, duration_us) / 1000)
                on_progress(done_ms - reported_ms)
                reported_ms = done_ms
    boxes = scene_labels(scene, config.labels)
    write_labels(labels_path, boxes)
    per_class = tuple(int(np.count_nonzero(boxes["class_id"] == c)) for c in range(len(GEN1_CLASSES)))
    return RecordingSummary(events_path, labels_path, duration_s, count, on, per_class)


def write_dataset(
    out: str | os.PathLike[str],
    config: SynthConfig,
    recordings: int,
    duration_s: float,
    seed: int,
    splits: Sequence[str] = ("train", "val", "test"),
    progress: bool = True,
) -> list[RecordingSummary]:
    """Write ``recordings`` recordings of ``duration_s`` seconds into each of ``splits`` under ``out``."""
    out = Path(out)
    summaries = []
    total_ms = len(splits) * recordings * round(duration_s * 1000)
    with tqdm(
        total=total_ms,
        disable=not progress,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s simulated [{elapsed}<{remaining}]",
        unit_scale=1e-3,
    ) as bar:
        for split in splits:
            (out / split).mkdir(parents=True, exist_ok=True)
            for index in range(recordings):
                name = recording_name(split, index)
                bar.set_description(name)
                summaries.append(
                    write_recording(
                        out / split / name, config, duration_s, recording_seed(seed, split, index), bar.update
                    )
                )
    return summaries
