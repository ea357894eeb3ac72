"""The bundled default model: a small spquant detector trained on synthetic recordings (see the README)."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "weights" / "spquant-n.pt"


def default_model_path() -> Path:
    """Path of the bundled checkpoint (raises FileNotFoundError with a hint when it is missing)."""
    if not BUNDLED_MODEL.is_file():
        raise FileNotFoundError(
            f"the bundled model {BUNDLED_MODEL} is missing; pass --model PATH (a checkpoint from `spquant train`)"
        )
    return BUNDLED_MODEL
