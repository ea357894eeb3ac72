"""The sensor-imperfection keys: off in the defaults, on in the Gen1 recipe, wired into the trainer's augmentation."""

from __future__ import annotations

from app.cli import main
from app.config import build_config, sensor_augmentation
from app.trainer import Trainer
from data.augment import SensorAugmentation
from tests.conftest import REPO


def test_defaults_are_off_and_the_gen1_recipe_turns_them_on():
    assert not sensor_augmentation(build_config()).enabled
    recipe = sensor_augmentation(build_config(REPO / "app" / "cfg" / "gen1.yaml"))
    assert recipe.refractory_us > 0 and recipe.drop_event > 0 and recipe.time_jitter_us > 0
    assert recipe.uniform_noise_hz > 0


def test_the_trainer_draws_the_configured_imperfections(tmp_path):
    assert main(["synth", str(tmp_path / "data"), "--recordings", "1", "--duration", "0.6", "--seed", "4",
                 "--quiet"]) == 0
    config = build_config(None, {"data": str(tmp_path / "data"), "project": str(tmp_path / "runs"), "epochs": 1,
                                 "input_width": 80, "input_height": 64, "bins": 2, "batch": 2, "seq_len": 2,
                                 "refractory_us": 200, "drop_event": 0.1, "time_jitter_us": 300,
                                 "uniform_noise_hz": 1.5})
    trainer = Trainer(config, progress=False)
    assert trainer.streams.augmentation.sensor == SensorAugmentation(200, 0.1, 300.0, 1.5)
    assert trainer.train_epoch(0)["loss"] > 0  # one epoch of batches built through tonic
