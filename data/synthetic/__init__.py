"""A synthetic event camera watching a street, writing Gen1-format recordings (``*_td.dat`` + ``*_bbox.npy``).

``scene`` renders the street in log intensity, ``sensor`` turns frames into events, ``labels`` draws the boxes a
labeller would, ``presets`` holds the difficulty levels and ``dataset`` writes recordings in the Gen1 layout.
"""

from data.synthetic.dataset import RecordingSummary, recording_seed, write_dataset, write_recording
from data.synthetic.labels import LabelConfig, scene_labels
from data.synthetic.presets import DIFFICULTIES, SynthConfig, difficulty_config
from data.synthetic.scene import SceneConfig, StreetScene
from data.synthetic.sensor import SensorConfig, simulate

__all__ = [
    "DIFFICULTIES",
    "LabelConfig",
    "RecordingSummary",
    "SceneConfig",
    "SensorConfig",
    "StreetScene",
    "SynthConfig",
    "difficulty_config",
    "recording_seed",
    "scene_labels",
    "simulate",
    "write_dataset",
    "write_recording",
]
