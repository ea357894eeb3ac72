"""Detector checkpoints: weights plus the full detector config and a format version, loadable without pickle.

A checkpoint is a plain dict of tensors, strings and numbers, so ``torch.load(weights_only=True)`` reads it and no
code in a file can run. Loading checks the format and version and that the weights fit the stored config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from models.networks.detector import DetectorConfig, SpikingYOLO, build_detector

FORMAT = "spquant-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: foreign, corrupt, another version, or not matching its config."""


def save_checkpoint(path: str | os.PathLike[str], model: SpikingYOLO, **extra: Any) -> Path:
    """Write ``model`` (weights + config) and ``extra`` entries atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "detector": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    payload["detector"]["class_names"] = list(model.config.class_names)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint dict, validated for format and version (``weights_only=True``: no pickle execution)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable spquant checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a spquant checkpoint (format tag missing)")
    if payload.get("version") != VERSION:
        found = payload.get("version")
        raise CheckpointError(f"{path}: checkpoint format version {found}; this spquant reads version {VERSION}")
    return payload


def load_detector(path: str | os.PathLike[str], expected: DetectorConfig | None = None) -> SpikingYOLO:
    """Rebuild the detector stored at ``path`` (in eval mode).

    Raises:
        CheckpointError: unreadable file, or stored config different from ``expected`` where given, or weights that
            do not fit the stored config.
    """
    payload = read_checkpoint(path)
    try:
        config = DetectorConfig.from_dict(payload["detector"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: invalid detector config in checkpoint ({exc})") from exc
    if expected is not None and expected != config:
        diff = {k: (getattr(expected, k), getattr(config, k)) for k in expected.to_dict()}
        diff = {k: pair for k, pair in diff.items() if pair[0] != pair[1]}
        raise CheckpointError(f"{path}: checkpoint config differs from the requested one (requested, stored): {diff}")
    model = build_detector(config)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: weights do not match the stored {config.variant}-{config.scale} config: {exc}"
        ) from exc
    return model.eval()
