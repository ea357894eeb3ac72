"""End to end through the CLI: synth → train (1 epoch) → eval → predict → score, plus resume and bad input."""

import json

import numpy as np
import pytest
import torch

from app.cli import main
from data.formats.labels import read_labels
from models.networks.checkpoint import read_checkpoint

TINY = ["input_width=80", "input_height=64", "bins=2", "batch=2", "seq_len=2", "val_recordings=1", "warmup_steps=2"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(root), "--recordings", "1", "--duration", "1.2", "--seed", "4", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    args = ["train", f"data={tiny_dataset}", "epochs=2", f"project={project}", "name=tiny", "threads=2", *TINY]
    assert main([*args, "--quiet"]) == 0
    return project / "tiny"


def test_train_writes_a_complete_run_folder(trained):
    for name in ("config.yaml", "metrics.csv", "loss.png", "ap.png", "weights/best.pt", "weights/last.pt"):
        assert (trained / name).is_file(), name
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,loss") and len(rows) == 3
    best = read_checkpoint(trained / "weights" / "best.pt")
    assert best["detector"]["bins"] == 2 and best["detector"]["input_width"] == 80 and "train_state" not in best
    assert "train_state" in read_checkpoint(trained / "weights" / "last.pt")


def test_eval_predict_and_score_agree(trained, tiny_dataset, tmp_path, capsys):
    model = str(trained / "weights" / "best.pt")
    assert (
        main(
            [
                "eval",
                "--model",
                model,
                "--data",
                str(tiny_dataset),
                "--split",
                "test",
                "--json",
                "--save-dir",
                str(tmp_path / "dt"),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"} <= set(metrics) and 0 <= metrics["AP"] <= 1
    source = next((tiny_dataset / "test").glob("*_td.dat"))
    out = tmp_path / "pred.npy"
    assert main(["predict", str(source), "--model", model, "--out", str(out), "--conf", "0.001"]) == 0
    predicted = read_labels(out)
    saved = read_labels(tmp_path / "dt" / source.name.replace("_td.dat", "_bbox.npy"))
    # eval and predict stream the same windows through the same code, with the same thresholds here
    assert len(saved) and np.array_equal(predicted, saved)
    capsys.readouterr()
    gt_dir = tiny_dataset / "test"
    (tmp_path / "gt").mkdir()
    for f in gt_dir.glob("*_bbox.npy"):
        (tmp_path / "gt" / f.name).write_bytes(f.read_bytes())
    assert main(["score", "--gt", str(tmp_path / "gt"), "--dt", str(tmp_path / "dt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(metrics["AP"])


def test_predict_on_a_foreign_sensor_size(trained, real_file, tmp_path):
    out = tmp_path / "raw.npy"
    assert (
        main(
            [
                "predict",
                str(real_file("sparklers.raw")),
                "--model",
                str(trained / "weights" / "best.pt"),
                "--out",
                str(out),
                "--conf",
                "0.0",
            ]
        )
        == 0
    )
    dets = read_labels(out)
    assert np.all(dets["x"] >= 0) and np.all(dets["x"] + dets["w"] <= 640 + 1e-3)
    assert np.all(dets["y"] + dets["h"] <= 480 + 1e-3)


def test_resume_continues_after_the_last_finished_epoch(trained, tmp_path, capsys):
    last = read_checkpoint(trained / "weights" / "last.pt")
    # Simulate a kill during epoch 2: the last checkpoint on disk is the one written after epoch 1.
    last["train_state"]["epoch"] = 0
    last["train_state"]["history"] = last["train_state"]["history"][:1]
    last["run_dir"] = str(tmp_path / "resumed")
    for key in ("workers", "lif"):  # a checkpoint written before these keys existed resumes with their defaults
        del last["train_config"][key]
    (tmp_path / "resumed" / "weights").mkdir(parents=True)
    torch.save(last, tmp_path / "killed.pt")
    assert main(["train", f"resume={tmp_path / 'killed.pt'}", "--quiet"]) == 0
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def test_init_starts_a_new_run_from_a_checkpoint_and_keeps_its_architecture(trained, tiny_dataset, tmp_path):
    init = trained / "weights" / "best.pt"
    # a vanishing learning rate and no EMA: the new run's weights must still be the checkpoint's
    args = ["train", f"data={tiny_dataset}", f"init={init}", "epochs=1", "lr=1e-12", "ema_decay=0", "input_width=304",
            f"project={tmp_path}", "name=longer", "batch=2", "seq_len=2", "val_recordings=1", "threads=2"]
    assert main([*args, "--quiet"]) == 0
    start, after = read_checkpoint(init), read_checkpoint(tmp_path / "longer" / "weights" / "last.pt")
    assert after["detector"] == start["detector"]  # input_width=304 lost to the checkpoint's 80
    for name, tensor in start["model"].items():
        if tensor.is_floating_point() and "running_" not in name:  # BN statistics move in train mode at any lr
            assert torch.allclose(after["model"][name], tensor, atol=1e-6), name
    assert "input_width: 80" in (tmp_path / "longer" / "config.yaml").read_text()


def test_init_with_quantization_keys_requantizes_the_same_weights(trained, tiny_dataset, tmp_path):
    """A quantization-aware fine-tune: the init model's weights under ternary spiking layers and an integer head."""
    init = trained / "weights" / "best.pt"
    args = ["train", f"data={tiny_dataset}", f"init={init}", "epochs=1", "lr=1e-12", "ema_decay=0",
            "weight_bits=2", "head_bits=4", "head_act_bits=8", f"project={tmp_path}", "name=ternary", "batch=2",
            "seq_len=2", "val_recordings=1", "threads=2"]
    assert main([*args, "--quiet"]) == 0
    start, after = read_checkpoint(init), read_checkpoint(tmp_path / "ternary" / "weights" / "last.pt")
    assert (after["detector"]["weight_bits"], after["detector"]["head_bits"], after["detector"]["head_act_bits"]) \
        == (2, 4, 8)
    assert {k: v for k, v in after["detector"].items() if "bits" not in k} \
        == {k: v for k, v in start["detector"].items() if "bits" not in k}
    scales = {k: v for k, v in after["model"].items() if k.endswith(".act.scale")}
    assert len(scales) == 18 and all(v > 0 for v in scales.values())  # 6 hidden layers × 3 levels, calibrated
    assert torch.allclose(after["model"]["head.cv2.0.2.weight"], start["model"]["head.cv2.0.2.weight"], atol=1e-6)
    config = (tmp_path / "ternary" / "config.yaml").read_text()
    assert "weight_bits: 2" in config and "head_act_bits: 8" in config


def test_a_teacher_changes_what_is_learned(trained, tiny_dataset, tmp_path):
    teacher = trained / "weights" / "best.pt"
    common = ["train", f"data={tiny_dataset}", f"init={teacher}", "epochs=1", "ema_decay=0", f"project={tmp_path}",
              "batch=2", "seq_len=2", "val_recordings=1", "threads=2"]
    assert main([*common, "name=plain", "--quiet"]) == 0
    assert main([*common, "name=taught", f"teacher={teacher}", "distill_gain=5", "--quiet"]) == 0
    plain, taught = (read_checkpoint(tmp_path / n / "weights" / "last.pt")["model"] for n in ("plain", "taught"))
    assert any(not torch.equal(plain[k], taught[k]) for k in plain if plain[k].is_floating_point())
    # batches built in two loader processes: the same batches in the same order, so the same weights
    assert main([*common, "name=workers", "workers=2", "--quiet"]) == 0
    workers = read_checkpoint(tmp_path / "workers" / "weights" / "last.pt")["model"]
    assert all(torch.equal(plain[k], workers[k]) for k in plain)
    header, row = (tmp_path / "workers" / "metrics.csv").read_text().strip().splitlines()
    share = float(row.split(",")[header.split(",").index("data_share")])
    assert 0 <= share < 1


def test_init_with_channel_gates_adds_and_trains_them(trained, tiny_dataset, tmp_path, capsys):
    """Masks on a trained model: gates added by init=, trained with their loss and the activity penalty, recorded in
    the checkpoint, and measured by the report."""
    args = ["train", f"data={tiny_dataset}", f"init={trained / 'weights' / 'best.pt'}", "epochs=1",
            "channel_gates=true", "mask_budget=0.5", "activity_gain=0.1", f"project={tmp_path}", "name=gated",
            "batch=2", "seq_len=2", "val_recordings=1", "threads=2"]
    assert main([*args, "--quiet"]) == 0
    header, row = (tmp_path / "gated" / "metrics.csv").read_text().strip().splitlines()
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert 0 < float(values["kept"]) <= 1 and 0 < float(values["rate"]) < 1
    checkpoint = read_checkpoint(tmp_path / "gated" / "weights" / "last.pt")
    assert checkpoint["detector"]["channel_gates"] and any(".gate." in k for k in checkpoint["model"])
    capsys.readouterr()
    assert main(["report", "--model", str(tmp_path / "gated" / "weights" / "last.pt"), "--windows", "5",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["gates"]) == 5 and all(0 <= share <= 1 for share in report["gates"].values())
    assert report["flops_predictor"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "data=/tmp", "init=/nonexistent.pt"], "no such"),
        (["train", "data=/tmp", "teacher=/nonexistent.pt"], "no such"),
        (["train", "epochz=3"], "unknown config key"),
        (["train", "epochs=three"], "must be a number"),
        (["train", "epochs=1"], "no training data"),
        (["train", "workers=-1"], "workers must be >= 0"),
        (["train", "lif=fast"], "lif must be fused or reference"),
        (["train", "amp=fp8"], "amp must be none, bf16 or fp16"),
        (["train", "weight_bits=1"], "weight_bits must be one of"),
        (["train", "head_bits=16"], "head_bits must be one of"),
        (["train", "weight_quantizer=lsq"], "weight_quantizer must be one of"),
        (["train", "data=/tmp", "head_act_bits=8"], "needs quantized head weights"),
        (["train", "data=/nonexistent"], "does not exist"),
        (["train", "mask_mass=0"], "mask_mass must lie in (0, 1]"),
        (["train", "mask_budget=1.5"], "mask_budget must lie in [0, 1]"),
        (["train", "activity_gain=-1"], "activity_gain must be >= 0"),
        (["eval", "--model", "/nonexistent.pt", "--data", "/x"], "no such"),
        (["predict", "/nonexistent.dat", "--out", "/tmp/x.npy"], "No such file"),
    ],
)
def test_bad_input_is_a_clean_error(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_a_run_records_the_sensor_of_its_training_data(trained):
    """Serving and predict default to the camera the data came from (the synthetic Gen1 sensor here)."""
    detector = read_checkpoint(trained / "weights" / "best.pt")["detector"]
    assert (detector["sensor_width"], detector["sensor_height"]) == (304, 240)
    assert (detector["input_width"], detector["input_height"]) != (304, 240)


def test_bf16_autocast_and_channels_last_train_on_a_cpu(tiny_dataset, tmp_path):
    """The GPU switches run on a CPU too (bf16 autocast exists there): the run trains and its losses are finite."""
    args = ["train", f"data={tiny_dataset}", "epochs=1", f"project={tmp_path}", "name=amp", "amp=bf16",
            "channels_last=true", "threads=2", *TINY]
    assert main([*args, "--quiet"]) == 0
    rows = (tmp_path / "amp" / "metrics.csv").read_text().strip().splitlines()
    loss = float(rows[1].split(",")[rows[0].split(",").index("loss")])
    assert np.isfinite(loss) and loss > 0


def test_fp16_needs_a_cuda_device(tiny_dataset, tmp_path, capsys):
    args = ["train", f"data={tiny_dataset}", "epochs=1", f"project={tmp_path}", "amp=fp16", "device=cpu", *TINY]
    assert main(args) == 2
    assert "amp=fp16 needs a CUDA device" in capsys.readouterr().err
