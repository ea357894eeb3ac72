"""Training batches off the training process: :class:`SequenceStreams` run in DataLoader worker processes.

Building a batch (reading events, letterboxing, augmenting, binning ``L × B`` windows) is CPU work that would
otherwise run between optimisation steps. With ``workers = W > 0`` a ``torch.utils.data.DataLoader`` runs ``W``
processes; worker ``w`` builds the batches ``k ≡ w (mod W)`` of the epoch and the DataLoader reads the workers
round-robin, so batches arrive in the epoch's order — every stream's windows in order and its reset flags where
they belong — while the next ones are being built (``prefetch`` batches per worker). ``workers = 0`` builds them
in the training process, as before. Batches are identical either way (tested).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.sequences import SequenceBatch, SequenceStreams


class _EpochShards(IterableDataset):
    """One epoch of a :class:`SequenceStreams`, each worker yielding its shard of the batches."""

    def __init__(self, streams: SequenceStreams, epoch: int) -> None:
        self.streams, self.epoch = streams, epoch

    def __iter__(self) -> Iterator[SequenceBatch]:
        info = get_worker_info()
        shard, shards = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.streams.epoch(self.epoch, shard, shards)


def _as_is(batch: SequenceBatch) -> SequenceBatch:
    return batch  # a SequenceBatch travels as numpy arrays; the trainer makes the tensors


def epoch_batches(streams: SequenceStreams, epoch: int, workers: int = 0, prefetch: int = 2) -> Iterator[SequenceBatch]:
    """The batches of ``epoch`` in order, built in ``workers`` processes (0: in this process)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        yield from streams.epoch(epoch)
        return
    workers = min(workers, len(streams)) or 1  # a worker with no batch would only cost a process
    loader = DataLoader(_EpochShards(streams, epoch), batch_size=None, num_workers=workers, collate_fn=_as_is,
                        prefetch_factor=prefetch)
    yield from loader
