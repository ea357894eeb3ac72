"""Training batches as parallel streams of consecutive windows (RVT's streaming mode).

``B`` streams each walk through whole recordings, window after window; a batch is the next ``L`` windows of every
stream. The model carries its state from batch to batch (detached: truncated BPTT) and resets a stream's state where
a new segment starts (``reset`` mask), so training sees the same long-memory dynamics as evaluation and serving.
The shuffled recordings are laid end to end and cut into ``B`` equal parts so that every stream stays busy; the last
stream is padded with ``valid = False`` windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data.augment import Augmentation, AugmentParams, augment_boxes, augment_events
from data.box_filter import BoxFilter
from data.formats.dat import DatRecording
from data.formats.labels import BBOX_DTYPE, read_labels
from data.gen1 import RecordingFiles
from data.geometry import Letterbox, clip_boxes
from data.representation import StackedHistogram
from data.windows import label_window_index


@dataclass
class SequenceBatch:
    """``L`` consecutive windows of ``B`` streams."""

    inputs: np.ndarray  # [L, B, T, 2, H, W] uint8
    boxes: list[list[np.ndarray]]  # [L][B] label-dtype boxes in input pixels
    labelled: np.ndarray  # [L, B] bool: the window has ground truth (boxes may be empty = nothing there)
    reset: np.ndarray  # [L, B] bool: reset the stream's state before this window (a segment starts)
    valid: np.ndarray  # [L, B] bool: a real window (False = end-of-epoch padding)


class _LoadedRecording:
    """Events (memory-mapped), labels grouped by window, and whether every window is labelled."""

    def __init__(
        self, files: RecordingFiles, histogram: StackedHistogram, box_filter: BoxFilter, letterbox_input: bool,
        max_box_width: float = 1.0,
    ) -> None:
        self.name = files.name
        self.events = DatRecording(files.events)
        self.letterbox = Letterbox(self.events.width, self.events.height, histogram.width, histogram.height)
        window = histogram.window_us
        labels = read_labels(files.labels)
        labels = box_filter(clip_boxes(labels, self.events.width, self.events.height))
        # RVT's training filter: Gen1 holds a few faulty boxes as wide as the sensor
        labels = labels[labels["w"] <= max_box_width * self.events.width]
        if letterbox_input:
            labels = self.letterbox.boxes_to_input(labels)
        self.labels_by_window: dict[int, np.ndarray] = {}
        index = label_window_index(labels["t"], window)
        for k in np.unique(index):
            self.labels_by_window[int(k)] = labels[index == k]
        times = np.unique(read_labels(files.labels)["t"])
        # Dense labels (one label time per window or more, as the synthetic camera writes) mean an unlabelled window
        # has no objects in it; sparse labels (Gen1, 4 Hz) leave the windows between label times unknown.
        self.dense = len(times) > 1 and float(np.median(np.diff(times))) <= window
        self.first_labelled = int(label_window_index(times[0], window)) if len(times) else 0
        last_t = max(self.events.t_last or 0, int(times[-1]) if len(times) else 0)
        self.windows = last_t // window + 1

    def is_labelled(self, k: int) -> bool:
        return k in self.labels_by_window or (self.dense and k >= self.first_labelled)


class SequenceStreams:
    """An epoch of :class:`SequenceBatch` over recordings of a Gen1-layout split.

    ``max_box_width`` drops label boxes wider than that fraction of the sensor (RVT trains Gen1 with 0.9); recordings
    with no label left are skipped (named in :attr:`skipped`).
    """

    def __init__(
        self,
        recordings: list[RecordingFiles],
        histogram: StackedHistogram,
        batch_size: int,
        seq_len: int,
        augmentation: Augmentation | None = None,
        box_filter: BoxFilter | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_box_width: float = 1.0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        self.histogram = histogram
        self.batch_size, self.seq_len = batch_size, seq_len
        self.augmentation, self.seed = augmentation, seed
        # Distributed training: all ranks plan the same B·world streams and each takes its own B of them, so every
        # rank runs the same number of steps.
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.rank, self.world_size = rank, world_size
        box_filter = box_filter or BoxFilter(skip_us=-1)
        loaded = [_LoadedRecording(r, histogram, box_filter, True, max_box_width) for r in recordings]
        # A recording left with no label after filtering would only teach "nothing here" where objects may be.
        self.skipped = [rec.name for rec in loaded if not rec.labels_by_window]
        self.recordings = [rec for rec in loaded if rec.labels_by_window]
        if not self.recordings:
            raise ValueError(f"no training recording has labels left after filtering ({len(loaded)} skipped)")

    def __len__(self) -> int:
        return len(self._plan(0)) // self.seq_len

    def _plan(self, epoch: int) -> list[list[tuple[int, int, AugmentParams, bool]]]:
        # The shuffled recordings are laid end to end and cut into B equal parts, one per stream, so every stream
        # stays busy. Each step is (recording, window, augmentation, starts): the state is reset where a recording
        # starts and where a stream's part starts mid-recording.
        rng = np.random.default_rng([self.seed, epoch])
        timeline = []
        for r in rng.permutation(len(self.recordings)):
            rec = self.recordings[int(r)]
            params = (
                self.augmentation.sample(rng, self.histogram.width, self.histogram.height)
                if self.augmentation
                else AugmentParams()
            )
            timeline += [(int(r), k, params, k == 0) for k in range(rec.windows)]
        streams_total = self.batch_size * self.world_size
        share = max(1, -(-len(timeline) // (streams_total * self.seq_len))) * self.seq_len
        padding = (-1, -1, AugmentParams(), False)
        streams = []
        for b in range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size):
            part = timeline[b * share : (b + 1) * share]
            if part:
                part[0] = (*part[0][:3], True)
            streams.append(part + [padding] * (share - len(part)))
        return [list(step) for step in zip(*streams, strict=True)]  # [position][stream]

    def epoch(self, epoch: int, shard: int = 0, shards: int = 1) -> Iterator[SequenceBatch]:
        """Yield the batches of ``epoch`` (deterministic for a given seed and epoch), in order.

        ``shard``/``shards`` yield only the batches whose index is ``shard`` modulo ``shards``: loader workers take
        one shard each and their outputs, read round-robin, give the epoch's batches in order.
        """
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} outside {shards} shards")
        steps = self._plan(epoch)
        shape = self.histogram.shape
        for index, start in enumerate(range(0, len(steps), self.seq_len)):
            if index % shards != shard:
                continue
            chunk = steps[start : start + self.seq_len]
            L, B = len(chunk), self.batch_size
            batch = SequenceBatch(
                inputs=np.zeros((L, B, *shape), np.uint8),
                boxes=[[np.zeros(0, dtype=BBOX_DTYPE) for _ in range(B)] for _ in range(L)],
                labelled=np.zeros((L, B), bool),
                reset=np.zeros((L, B), bool),
                valid=np.zeros((L, B), bool),
            )
            for i, step in enumerate(chunk):
                for b, (r, k, params, starts) in enumerate(step):
                    if r < 0:
                        continue
                    batch.valid[i, b] = True
                    batch.reset[i, b] = starts
                    batch.inputs[i, b] = self._window_input(r, k, params)
                    rec = self.recordings[r]
                    batch.labelled[i, b] = rec.is_labelled(k)
                    if k in rec.labels_by_window:
                        w, h = self.histogram.width, self.histogram.height
                        batch.boxes[i][b] = augment_boxes(rec.labels_by_window[k], params, w, h)
            yield batch

    def _window_input(self, r: int, k: int, params: AugmentParams) -> np.ndarray:
        rec = self.recordings[r]
        window = self.histogram.window_us
        events = rec.letterbox.map_events(rec.events.read(k * window, (k + 1) * window))
        width, height = self.histogram.width, self.histogram.height
        events = params.sensor(augment_events(events, params, width, height), k * window, window, width, height)
        return self.histogram(events, k * window)
