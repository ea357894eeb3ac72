"""The ultralytics building blocks spquant uses (head, loss, NMS, box ops), imported once and quietly.

ultralytics contacts the network, writes a settings file and may pip-install at import time unless told otherwise;
the environment below is set before its first import, here and only here. It is AGPL-3.0, as is spquant.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "spquant-ultralytics"))

from ultralytics.nn.modules.conv import Conv, DWConv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.torch_utils import ModelEMA

__all__ = ["Conv", "DWConv", "Detect", "ModelEMA", "non_max_suppression", "v8DetectionLoss"]
