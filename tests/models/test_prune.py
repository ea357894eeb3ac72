"""Channel pruning: masks equal removal, shapes stay consistent through residuals and the FPN, plans, CLI round trip."""

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch

from app.cli import main
from app.pruning import cubic_ramp
from data.formats.labels import read_labels
from models.compress.accounting import static_counts
from models.compress.prune import (
    ChannelMasks,
    CostModel,
    _narrow_output,
    channel_groups,
    channel_importance,
    plan_pruning,
    remove_channels,
)
from models.networks.checkpoint import load_detector, read_checkpoint
from models.networks.detector import DetectorConfig, build_detector, default_widths
from models.networks.neuron import IntegerLIF, NeuronConfig
from models.networks.state import state_nbytes
from tests.helpers import SAMPLE, TINY, calibrated


def _input(cfg, seed=0, batch=2):
    h, w = cfg.padded_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (cfg.bins, batch, 2, h, w), generator=g, dtype=torch.uint8)


def _calibrated(cfg):
    """A fresh detector with BN statistics from a few windows, so deep layers fire in eval mode."""
    return calibrated(build_detector(cfg), (_input(cfg, seed) for seed in range(3)))


def _every_third(model):
    """Remove every third channel of every group (a pattern that hits residual streams, the FPN and the head)."""
    return [(name, c) for name, g in channel_groups(model).items() for c in range(0, g.width, 3)]


def _masked_then_pruned(model, x0, x1):
    """Every third channel removed from ``model`` two ways: masked (output and state on ``x1`` after ``x0``) and
    physically: ``(masked output, masked state, kept channels per group, pruned model)``."""
    removed = _every_third(model)
    with ChannelMasks(model) as masks, torch.no_grad():
        masks.set_removed(removed)
        _, state = model(x0)
        masked, masked_state = model(x1, state)
    gone = set(removed)
    keep = {name: [c for c in range(g.width) if (name, c) not in gone] for name, g in channel_groups(model).items()}
    return masked, masked_state, keep, remove_channels(model, keep)


@pytest.mark.parametrize(
    "variant, scale", [("spquant", "n"), ("baseline", "n"), ("spquant", "m")]  # m: identity-shortcut blocks
)
def test_removal_equals_the_masked_model(variant, scale):
    cfg = DetectorConfig(variant=variant, scale=scale, **TINY)
    model = _calibrated(cfg)
    x0, x1 = _input(cfg, 5), _input(cfg, 6)
    masked, masked_state, keep, pruned = _masked_then_pruned(model, x0, x1)
    with torch.no_grad():
        _, state = pruned(x0)
        out, pruned_state = pruned(x1, state)
    assert out.shape == masked.shape
    assert torch.allclose(out, masked, atol=1e-4)
    assert pruned.config.widths() == {name: len(kept) for name, kept in keep.items()}
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    assert state_nbytes(pruned_state) < state_nbytes(masked_state)
    dense = sum(c.flops for c in static_counts(model))
    assert sum(c.flops for c in static_counts(pruned)) < dense


def test_masks_without_removal_change_nothing_and_hooks_go_away():
    cfg = DetectorConfig(**TINY)
    model = _calibrated(cfg)
    x = _input(cfg)
    with torch.no_grad():
        before, _ = model(x)
        with ChannelMasks(model):
            unmasked, _ = model(x)
        after, _ = model(x)
    assert torch.equal(before, unmasked) and torch.equal(before, after)


def test_removed_model_trains_and_its_config_round_trips():
    cfg = DetectorConfig(**TINY)
    model = _calibrated(cfg)
    pruned = remove_channels(model, {"stage1": list(range(0, 64, 2)), "neck": [0, 5, 9], "head0.box.1": [1, 2]})
    assert pruned.config.channels == (("head0.box.1", 2), ("neck", 3), ("stage1", 32))
    assert DetectorConfig.from_dict(pruned.config.to_dict()) == pruned.config
    out, _ = pruned.train()(_input(cfg))
    (out["scores"].sum() + out["boxes"].sum()).backward()
    assert all(p.grad is not None for p in pruned.parameters() if p.requires_grad)


def test_per_channel_threshold_is_sliced():
    lif = IntegerLIF(NeuronConfig(per_channel_threshold=True), channels=4)
    with torch.no_grad():
        lif.log_threshold.copy_(torch.arange(4.0).view(4, 1, 1))
    _narrow_output(lif, torch.tensor([1, 3]))
    assert lif.channels == 2 and lif.log_threshold.flatten().tolist() == [1.0, 3.0]
    spikes, state = lif(torch.ones(1, 1, 2, 3, 3))
    assert spikes.shape == state.unsqueeze(0).shape == (1, 1, 2, 3, 3)


@pytest.mark.parametrize(
    "channels, message",
    [({"stem9": 4}, "unknown channel group"), ({"neck": 999}, "must be an int in 1.."), ({"neck": 0}, "1..")],
)
def test_bad_channel_widths_are_rejected(channels, message):
    with pytest.raises(ValueError, match=message):
        DetectorConfig(channels=channels)
    with pytest.raises(ValueError, match="unknown channel group"):
        remove_channels(build_detector(DetectorConfig(**TINY)), {"nope": [0]})


def test_default_widths_match_the_built_model():
    for scale in ("n", "m"):
        cfg = DetectorConfig(scale=scale, **TINY)
        groups = channel_groups(build_detector(cfg))
        assert {n: g.width for n, g in groups.items()} == default_widths(scale, 2, 16) == cfg.widths()


def test_plan_reaches_its_estimate_and_respects_floors():
    cfg = DetectorConfig(**TINY)
    model = _calibrated(cfg)
    calibration = channel_importance(model, [SAMPLE], max_windows=6)
    assert calibration.windows == 6
    assert set(calibration.importance) == set(cfg.widths())
    assert all(torch.isclose(s.mean(), torch.tensor(1.0), atol=1e-3) for s in calibration.importance.values()
               if s.sum() > 0)
    plan = plan_pruning(model, calibration, 2.0, floor=0.25)
    assert plan.estimated_reduction >= 2.0
    assert len(set(plan.order)) == len(plan.order)
    dense = cfg.widths()
    assert all(w >= max(2, -(-dense[n] // 4)) for n, w in plan.kept_widths().items())
    half = plan.keep(0.5)
    assert all(len(half[n]) >= len(plan.keep()[n]) for n in half)
    with pytest.raises(ValueError, match=">= 1"):
        plan_pruning(model, calibration, 0.5)


def test_plan_counts_executed_flops_as_the_accounting_does():
    """The planner's cost model is the accounting's executed count: every conv position, non-zero membrane states."""
    cfg = DetectorConfig(**TINY)
    model = _calibrated(cfg)
    calibration = channel_importance(model, [SAMPLE], max_windows=4)
    cost = CostModel(model, calibration.layers)
    executed = sum(layer.executed for layer in calibration.layers if layer.positions)
    effective = sum(layer.effective for layer in calibration.layers if layer.positions)
    assert cost.flops(cfg.widths()) == pytest.approx(executed, rel=1e-9)
    assert executed > effective  # skipped positions are not credited


def test_plan_toward_an_absolute_flops_goal():
    cfg = DetectorConfig(**TINY)
    model = _calibrated(cfg)
    calibration = channel_importance(model, [SAMPLE], max_windows=4)
    by_factor = plan_pruning(model, calibration, 3.0)
    goal = by_factor.flops_dense / 3.0
    by_count = plan_pruning(model, calibration, target_flops=goal)
    assert by_count.order == by_factor.order and by_count.target_reduction == pytest.approx(3.0)
    assert by_count.flops_after <= goal < by_count.flops_before
    assert plan_pruning(model, calibration, target_flops=by_count.flops_before * 2).order == []  # already below
    with pytest.raises(ValueError, match="exactly one"):
        plan_pruning(model, calibration, 3.0, target_flops=goal)
    with pytest.raises(ValueError, match="exactly one"):
        plan_pruning(model, calibration)
    with pytest.raises(ValueError, match="> 0"):
        plan_pruning(model, calibration, target_flops=0.0)


def test_cubic_ramp():
    values = [cubic_ramp(step, 10) for step in range(15)]
    assert values[0] == 0 and values[10:] == [1.0] * 5
    assert all(a < b for a, b in itertools.pairwise(values[:11]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    data = root / "data"
    assert main(["synth", str(data), "--recordings", "1", "--duration", "1.2", "--seed", "4", "--quiet"]) == 0
    tiny = ["input_width=80", "input_height=64", "bins=2", "batch=2", "seq_len=2", "val_recordings=1",
            "warmup_steps=2", "threads=2"]
    assert main(["train", f"data={data}", "epochs=1", f"project={root}", "name=t", *tiny, "--quiet"]) == 0
    return root, data


def test_prune_save_load_eval_predict_report_round_trip(tiny_run, capsys):
    root, data = tiny_run
    out = root / "pruned.pt"
    args = ["prune", "--model", str(root / "t" / "weights" / "best.pt"), "--data", str(data),
            "--target-flops-reduction", "4", "--finetune-epochs", "1", "--out", str(out), "--head-bits", "8",
            "--calibration-windows", "20", "--threads", "2", "--project", str(root), "--distill", "1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "distill_gain: 1.0" in (Path(summary["run_dir"]) / "config.yaml").read_text()  # taught by the unpruned
    assert summary["removed_channels"] > 0 and summary["measured"]["flops_reduction"] > 1.2
    payload = read_checkpoint(out)
    assert payload["detector"]["channels"] and payload["detector"]["head_bits"] == 8 and "prune" in payload
    start = root / "t" / "weights" / "best.pt"
    provenance = payload["prune"]
    assert provenance["source_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert provenance["source_train_config"] == read_checkpoint(start)["train_config"]
    assert provenance["settings"]["finetune_epochs"] == 1 and provenance["settings"]["distill_gain"] == 1
    model = load_detector(out)
    assert model.config.pruned and dataclasses.replace(model.config, channels=()).widths() != model.config.widths()
    assert main(["eval", "--model", str(out), "--data", str(data), "--split", "test", "--json",
                 "--save-dir", str(root / "dt")]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["AP"] <= 1
    source = next((data / "test").glob("*_td.dat"))
    assert main(["predict", str(source), "--model", str(out), "--out", str(root / "p.npy"), "--conf", "0.001"]) == 0
    saved = read_labels(root / "dt" / source.name.replace("_td.dat", "_bbox.npy"))
    assert len(saved) and (read_labels(root / "p.npy") == saved).all()
    capsys.readouterr()
    assert main(["report", "--model", str(out), "--data", str(data), "--windows", "10", "--plot",
                 str(root / "r.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["pruned"] and report["params"] < report["params_dense"]
    assert (root / "r.png").stat().st_size > 0


def test_prune_rejects_bad_input(tiny_run, capsys):
    root, data = tiny_run
    model = str(root / "t" / "weights" / "best.pt")
    assert main(["prune", "--model", model, "--data", str(data), "--target-flops-reduction", "0.5",
                 "--out", str(root / "x.pt")]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert main(["prune", "--model", model, "--data", str(data), "--target-flops-reduction", "2",
                 "--out", str(root / "x.onnx")]) == 2
    assert ".pt" in capsys.readouterr().err
    assert main(["prune", "--model", model, "--data", str(data), "--target-flops-reduction", "2", "--distill", "-1",
                 "--out", str(root / "x.pt")]) == 2
    assert "--distill must be >= 0" in capsys.readouterr().err
    assert main(["prune", "--model", model, "--data", str(data), "--target-mflops", "-3",
                 "--out", str(root / "x.pt")]) == 2
    assert "--target-mflops must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: the two targets exclude each other
        main(["prune", "--model", model, "--data", str(data), "--target-flops-reduction", "2", "--target-mflops", "1",
              "--out", str(root / "x.pt")])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_one_shot_prune_without_fine_tuning(tiny_run, capsys):
    root, data = tiny_run
    out = root / "one_shot.pt"
    assert main(["prune", "--model", str(root / "t" / "weights" / "best.pt"), "--data", str(data),
                 "--target-flops-reduction", "4", "--finetune-epochs", "0", "--calibration-windows", "10",
                 "--eval-split", "none", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_dir"] is None and "metrics" not in summary and summary["removed_channels"] > 0
    assert load_detector(out).config.widths() == summary["widths_after"]
    # the same goal given as executed MFLOPs per window
    assert main(["prune", "--model", str(root / "t" / "weights" / "best.pt"), "--data", str(data),
                 "--target-mflops", str(summary["target_mflops"]), "--finetune-epochs", "0",
                 "--calibration-windows", "10", "--eval-split", "none", "--out", str(root / "by_count.pt"),
                 "--json"]) == 0
    by_count = json.loads(capsys.readouterr().out)
    assert by_count["target_flops_reduction"] == pytest.approx(4.0)
    assert by_count["widths_after"] == summary["widths_after"]


def test_prune_with_channel_gates_combines_static_and_dynamic_sparsity(tiny_run, capsys):
    root, data = tiny_run
    out = root / "gated.pt"
    assert main(["prune", "--model", str(root / "t" / "weights" / "best.pt"), "--data", str(data),
                 "--target-flops-reduction", "3", "--finetune-epochs", "1", "--calibration-windows", "10",
                 "--channel-gates", "--mask-budget", "0.5", "--activity", "0.1", "--threads", "2",
                 "--project", str(root), "--eval-split", "none", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    config = (Path(summary["run_dir"]) / "config.yaml").read_text()
    assert "channel_gates: true" in config and "mask_budget: 0.5" in config and "activity_gain: 0.1" in config
    model = load_detector(out)
    assert model.config.pruned and model.config.channel_gates
    for node in model.graph.of_kind("gated_conv"):
        assert node.module.gate.weight.shape == (node.module.conv.out_channels, node.module.conv.in_channels)


def _masked_trainer(root, data, name):
    """A trainer on the tiny run's model with every third channel masked from the first step (as a pruning
    fine-tune's masks are once final): ``(trainer, masks, keep)``."""
    from app.config import build_config
    from app.trainer import Trainer

    config = build_config(overrides={"data": str(data), "epochs": 2, "batch": 2, "seq_len": 2, "warmup_steps": 2,
                                     "threads": 2, "project": str(root), "name": name, "val_recordings": 1})
    model = load_detector(root / "t" / "weights" / "best.pt").train()
    removed = _every_third(model)
    masks = ChannelMasks(model)
    trainer = Trainer(config, progress=False, model=model,
                      on_step=lambda step: [masks.zero_weights(m) for m in (trainer.model, trainer.ema.ema)])
    masks.set_removed(removed)
    masks.zero_weights(trainer.ema.ema)
    gone = set(removed)
    keep = {name: [c for c in range(g.width) if (name, c) not in gone] for name, g in channel_groups(model).items()}
    return trainer, masks, keep


def test_narrowed_trainer_takes_the_masked_trainers_steps(tiny_run):
    """Narrowing between epochs slices weights, AdamW moments, schedule and EMA: the narrow model then trains as the
    masked full-width one does."""
    root, data = tiny_run
    masked, masks, keep = _masked_trainer(root, data, "masked")
    narrow, narrow_masks, _ = _masked_trainer(root, data, "narrow")
    for trainer in (masked, narrow):
        trainer.train_epoch(0)
    narrow_masks.close()
    narrow.narrow(keep)
    narrow.on_step = None  # nothing left to mask
    assert narrow.model.config.widths() == {name: len(kept) for name, kept in keep.items()}
    assert narrow.optimizer.param_groups[0]["lr"] == masked.optimizer.param_groups[0]["lr"]
    assert narrow.ema.updates == masked.ema.updates
    for trainer in (masked, narrow):
        trainer.train_epoch(1)
    expected = remove_channels(masked.model, keep).state_dict()
    for name, value in narrow.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=1e-4, msg=name)
    expected_ema = remove_channels(masked.ema.ema, keep).state_dict()
    for name, value in narrow.ema.ema.state_dict().items():
        torch.testing.assert_close(value, expected_ema[name], atol=1e-5, rtol=1e-4, msg=name)
    masks.close()


def test_prune_fine_tune_narrows_once_masks_are_final(tiny_run, capsys):
    root, data = tiny_run
    out = root / "narrowed.pt"
    assert main(["prune", "--model", str(root / "t" / "weights" / "best.pt"), "--data", str(data),
                 "--target-flops-reduction", "3", "--finetune-epochs", "2", "--ramp", "0.1", "--calibration-windows",
                 "10", "--threads", "2", "--project", str(root), "--eval-split", "none", "--out", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["narrowed_after_epochs"] == 1 and len(summary["epoch_seconds"]) == 2
    run = Path(summary["run_dir"])
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3  # header + both epochs
    assert load_detector(run / "weights" / "last.pt").config.widths() == summary["widths_after"]
    assert load_detector(out).config.widths() == summary["widths_after"]
