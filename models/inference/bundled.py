"""The bundled default model: a small spquant detector trained on synthetic recordings (see the README).

It ships twice: the checkpoint (``spquant-n.pt``, what training, pruning and reports read) and its integer export
(``spquant-n.spq``, ``spquant export`` of that checkpoint), which a machine without torch serves.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
BUNDLED_MODEL = WEIGHTS / "spquant-n.pt"
BUNDLED_EXPORT = WEIGHTS / "spquant-n.spq"


def default_model_path(torch_free: bool = False) -> Path:
    """Path of the bundled checkpoint, or of its export when ``torch_free`` (FileNotFoundError with a hint when it
    is missing)."""
    path = BUNDLED_EXPORT if torch_free else BUNDLED_MODEL
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled model {path} is missing; pass --model PATH (a checkpoint from `spquant train` or a .spq "
            f"from `spquant export`)"
        )
    return path
