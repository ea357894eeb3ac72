"""Difficulty presets: one :class:`SynthConfig` per name, from an empty-ish street to a busy, noisy, swaying one."""

from __future__ import annotations

from dataclasses import dataclass, field

from data.synthetic.labels import LabelConfig
from data.synthetic.scene import SceneConfig
from data.synthetic.sensor import SensorConfig

DIFFICULTIES = ("easy", "normal", "hard")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic recording apart from its seed and duration."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)


def difficulty_config(name: str, label_rate_hz: float = 20.0) -> SynthConfig:
    """The preset called ``name`` (one of :data:`DIFFICULTIES`), labelled at ``label_rate_hz``.

    easy: fewer objects with strong contrast, a fixed camera, little noise. normal: the defaults, a gently swaying
    camera. hard: crowded, low-contrast objects, more stops, a swaying camera, noisy sensor with uneven thresholds.
    """
    if name not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {name!r}; choose one of {', '.join(DIFFICULTIES)}")
    labels = LabelConfig(rate_hz=label_rate_hz)
    if name == "easy":
        scene = SceneConfig(
            car_rate_hz=0.5,
            pedestrian_rate_hz=0.2,
            stop_probability=0.2,
            object_contrast=(0.6, 1.3),
            texture_contrast=0.1,
        )
        sensor = SensorConfig(threshold_mismatch=0.02, shot_noise_hz=0.05, hot_pixels=2)
    elif name == "normal":
        scene = SceneConfig(ego_amplitude_px=6.0, ego_period_s=15.0)
        sensor = SensorConfig(shot_noise_hz=0.1)
    else:
        scene = SceneConfig(
            car_rate_hz=1.1,
            pedestrian_rate_hz=0.5,
            stop_probability=0.4,
            object_contrast=(0.25, 1.0),
            texture_contrast=0.2,
            ego_amplitude_px=10.0,
            ego_period_s=8.0,
        )
        sensor = SensorConfig(
            threshold_on=0.25, threshold_off=0.27, threshold_mismatch=0.05, shot_noise_hz=0.6, hot_pixels=8
        )
    return SynthConfig(scene=scene, sensor=sensor, labels=labels)
