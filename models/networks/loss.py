"""Detection loss for :class:`~models.networks.detector.SpikingYOLO`: ultralytics' ``v8DetectionLoss`` wrapped.

The task-aligned assigner, DFL and CIoU come from ultralytics unchanged; this module only adapts our per-image box
arrays to its batch format and exposes ``loss(preds, targets) -> (total, parts)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from models.networks.detector import SpikingYOLO
from models.networks.ultralytics_parts import v8DetectionLoss


class _LossView:
    """What ``v8DetectionLoss`` reads from a model: hyper-parameters, the Detect head last, a device."""

    def __init__(self, model: SpikingYOLO, box: float, cls: float, dfl: float) -> None:
        self.args = SimpleNamespace(box=box, cls=cls, dfl=dfl)
        self.model = [model.head]
        self._model = model

    def parameters(self):
        return self._model.parameters()


class DetectionLoss:
    """``loss(preds, targets) -> (total, parts)`` with ``parts = [box, cls, dfl]`` (detached, per image).

    ``targets`` holds one array per image of the label dtype (``x, y, w, h`` top-left corner and size in input
    pixels, ``class_id``). ``total`` is the sum of the three gained parts times the number of images, as ultralytics
    defines it.
    """

    def __init__(self, model: SpikingYOLO, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5) -> None:
        self.model = model
        self._loss = v8DetectionLoss(_LossView(model, box, cls, dfl))
        self.height, self.width = model.config.padded_size

    def targets_to_batch(self, targets: Sequence[np.ndarray]) -> dict[str, Tensor]:
        """Per-image boxes → ultralytics' flat batch (``batch_idx``, ``cls``, normalised centre ``bboxes``)."""
        idx, cls, xywh = [], [], []
        for i, boxes in enumerate(targets):
            if not len(boxes):
                continue
            idx.append(np.full(len(boxes), i, np.float32))
            cls.append(boxes["class_id"].astype(np.float32))
            cx = (boxes["x"] + boxes["w"] / 2) / self.width
            cy = (boxes["y"] + boxes["h"] / 2) / self.height
            xywh.append(np.stack([cx, cy, boxes["w"] / self.width, boxes["h"] / self.height], 1).astype(np.float32))
        if not idx:
            return {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
        return {
            "batch_idx": torch.from_numpy(np.concatenate(idx)),
            "cls": torch.from_numpy(np.concatenate(cls)).view(-1, 1),
            "bboxes": torch.from_numpy(np.concatenate(xywh)),
        }

    def __call__(self, preds: dict[str, Tensor], targets: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
        if preds["boxes"].shape[0] != len(targets):
            raise ValueError(f"{preds['boxes'].shape[0]} predictions but {len(targets)} target arrays")
        total, parts = self._loss(preds, self.targets_to_batch(targets))  # parts: {"box_loss": ..., ...}
        return total.sum(), torch.stack(list(parts.values()))


def select_images(preds: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """The head's training output restricted to the images in ``index`` (e.g. the labelled windows)."""
    return {
        "boxes": preds["boxes"][index],
        "scores": preds["scores"][index],
        "feats": [f[index] for f in preds["feats"]],
    }
