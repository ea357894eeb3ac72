"""Load a detector from a training checkpoint (``.pt``) or an exported integer model (``.spq``).

The kind is read from the file's first bytes, not its name: a checkpoint is a zip archive (``torch.save``), an
exported model has the safetensors layout. Every result runs behind
:class:`~models.inference.stream.StreamingDetector`.

An exported model runs on one of two engines of the same integer graph (states bit for bit the same, boxes to float
rounding): the torch :class:`~models.inference.runtime.Runtime` or the torch-free
:class:`~models.inference.numpy_runtime.NumpyRuntime`. ``runtime="auto"`` takes torch when it can be imported, else
numpy, so a machine without torch (the edge image) serves ``.spq`` files. This module imports torch only when it
loads a torch model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from models.inference.bundled import default_model_path
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.spq import is_spq

if TYPE_CHECKING:
    from models.inference.runtime import Runtime
    from models.networks.detector import SpikingYOLO

RuntimeChoice = Literal["auto", "numpy", "torch"]
RUNTIMES: tuple[str, ...] = get_args(RuntimeChoice)


def torch_available() -> bool:
    """Whether torch can be imported here (it is imported to find out: a broken install counts as absent)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(runtime: str = "auto") -> Literal["numpy", "torch"]:
    """``"numpy"`` or ``"torch"`` for a requested ``runtime`` (``auto``: torch when it can be imported).

    Raises:
        ValueError: an unknown name.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        return "torch" if torch_available() else "numpy"
    return runtime  # type: ignore[return-value]


def default_model(runtime: str = "auto") -> Path:
    """The bundled model for ``runtime``: its checkpoint where torch runs it, its export on the numpy engine."""
    return default_model_path(torch_free=resolve_runtime(runtime) == "numpy")


def load_model(path: str | os.PathLike[str], integer: bool = False,
               runtime: str = "auto") -> SpikingYOLO | Runtime | NumpyRuntime:
    """The detector stored at ``path``, in eval mode.

    An exported model (``.spq``) loads as the integer engine ``runtime`` names: ``torch`` (:class:`Runtime`),
    ``numpy`` (:class:`NumpyRuntime`, no torch needed) or ``auto`` (torch when it can be imported, else numpy). A
    checkpoint needs torch; ``integer`` folds a quantized one into the integer :class:`Runtime` (what ``export``
    then ``load`` gives); an FP32 checkpoint has no integer form and loads as it is.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError, ExportFormatError: (both ``ValueError``) a file of neither kind, corrupt, or another version.
        ValueError: an unknown ``runtime``, or a checkpoint asked to run on numpy or where torch is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    engine = resolve_runtime(runtime)
    if is_spq(path):
        if engine == "numpy":
            return NumpyRuntime.load(path)
        from models.inference.runtime import Runtime  # lazy: torch

        return Runtime.load(path)
    if engine == "numpy":
        reason = "torch is not installed" if runtime == "auto" else "the numpy runtime was asked for"
        raise ValueError(f"{path}: a training checkpoint needs torch ({reason}); export it (`spquant export --model "
                         f"{path} --out model.spq`) and load the .spq")
    from models.inference.runtime import Runtime  # lazy: torch
    from models.networks.checkpoint import load_detector

    model = load_detector(path)
    return Runtime.from_model(model) if integer and model.config.quantized else model


def runtime_name(model: Any) -> Literal["pytorch", "integer", "numpy"]:
    """What ``GET /v1/model`` calls ``model``'s engine: ``numpy`` (:class:`NumpyRuntime`), ``integer`` (the torch
    :class:`Runtime`) or ``pytorch`` (a trained :class:`SpikingYOLO`)."""
    if isinstance(model, NumpyRuntime):
        return "numpy"
    from models.networks.detector import SpikingYOLO  # not a NumpyRuntime: a torch model, torch is loaded

    return "pytorch" if isinstance(model, SpikingYOLO) else "integer"
