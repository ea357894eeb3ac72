"""Load a detector from a training checkpoint (``.pt``) or an exported integer model (``.spq``).

The kind is read from the file's first bytes, not its name: a checkpoint is a zip archive (``torch.save``), an
exported model has the safetensors layout. Both results run behind :class:`~models.inference.stream.StreamingDetector`.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.inference.runtime import Runtime
from models.inference.spq import is_spq
from models.networks.checkpoint import load_detector
from models.networks.detector import SpikingYOLO


def load_model(path: str | os.PathLike[str], integer: bool = False) -> SpikingYOLO | Runtime:
    """The detector stored at ``path``, in eval mode (a :class:`Runtime` for an exported model).

    ``integer``: fold a quantized checkpoint into the integer :class:`Runtime` (what ``export`` then ``load`` gives);
    an FP32 checkpoint has no integer form and loads as it is.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError, ExportFormatError: (both ``ValueError``) a file of neither kind, corrupt, or another version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    if is_spq(path):
        return Runtime.load(path)
    model = load_detector(path)
    return Runtime.from_model(model) if integer and model.config.quantized else model
