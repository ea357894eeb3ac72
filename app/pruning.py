"""Prune engine: calibrate → plan → masked fine-tuning with a gradual schedule → physical removal.

Fine-tuning reuses :class:`app.trainer.Trainer` (same streams, loss, EMA and run folder) on the full-width model
with :class:`models.compress.prune.ChannelMasks` hooks; the share of the plan that is masked grows with a cubic
schedule over the first ``ramp`` of the steps (fast early, gentle late, as in gradual magnitude pruning), then the
remaining steps train at the final masks. At the first epoch end with every mask on, the trainer narrows to the
pruned model (weights, AdamW moments, schedule and EMA sliced alike: the same steps at the pruned model's cost); a
fine-tune whose masks complete only in its last epoch prunes the EMA weights physically at the end. The run folder's
``best.pt``/``last.pt`` hold the full-width masked weights until the narrowing, the pruned ones after it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from app.config import build_config, load_defaults
from data.gen1 import list_recordings
from models.compress.prune import ChannelMasks, PrunePlan, channel_importance, plan_pruning, remove_channels
from models.networks.detector import SpikingYOLO, requantized, with_channel_gates

# Training keys a fine-tune inherits from the checkpoint's own training run (optimisation and augmentation).
INHERITED_KEYS = ("batch", "seq_len", "weight_decay", "ema_decay", "grad_clip", "box_gain", "cls_gain", "dfl_gain",
                  "flip_prob", "zoom_prob", "max_zoom", "train_split", "val_split", "conf_thres", "iou_thres",
                  "max_det", "seed")


@dataclasses.dataclass
class PruneSettings:
    """How to prune (``spquant prune`` options)."""

    target_flops_reduction: float | None = None  # dense / executed FLOPs to reach …
    target_mflops: float | None = None  # … or executed MFLOPs per window to reach (exactly one of the two)
    finetune_epochs: int = 3
    calibration_windows: int = 400
    floor: float = 0.25
    cost_weight: float = 0.0
    ramp: float = 0.2
    lr: float = 0.002
    warmup_steps: int = 20
    head_bits: int | None = None
    distill_gain: float = 0.0
    threads: int = 0
    val_recordings: int = 1
    project: str = "runs/prune"
    name: str | None = None
    channel_gates: bool = False  # add channel gates and train them in the fine-tune (see app/cfg/default.yaml)
    mask_mass: float = 0.85
    mask_budget: float = 1.0
    mask_gain: float = 1.0
    mask_lr_gain: float = 10.0
    activity_gain: float = 0.0

    def __post_init__(self) -> None:
        if (self.target_flops_reduction is None) == (self.target_mflops is None):
            raise ValueError("give exactly one of --target-flops-reduction and --target-mflops")
        if self.target_flops_reduction is not None and self.target_flops_reduction < 1:
            raise ValueError(f"--target-flops-reduction must be >= 1, got {self.target_flops_reduction}")
        if self.target_mflops is not None and self.target_mflops <= 0:
            raise ValueError(f"--target-mflops must be > 0, got {self.target_mflops}")
        if self.finetune_epochs < 0:
            raise ValueError(f"--finetune-epochs must be >= 0, got {self.finetune_epochs}")
        if not 0 < self.ramp <= 1:
            raise ValueError(f"ramp must be in (0, 1], got {self.ramp}")
        if self.distill_gain < 0:
            raise ValueError(f"--distill must be >= 0, got {self.distill_gain}")


@dataclasses.dataclass
class PruneResult:
    """The pruned model and how it was made."""

    model: SpikingYOLO
    plan: PrunePlan
    run_dir: Path | None
    seconds: dict[str, float]
    train_config: dict[str, Any] | None
    narrowed_after_epochs: int | None = None  # fine-tuning epochs at full width before the trainer narrowed
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)  # per fine-tuning epoch, validation included

    def summary(self) -> dict[str, Any]:
        """Plain-data record stored in the checkpoint (``prune`` entry)."""
        return {
            "target_flops_reduction": self.plan.target_reduction,
            "target_mflops": self.plan.flops_dense / self.plan.target_reduction / 1e6,
            "estimated_flops_reduction": self.plan.estimated_reduction,
            "estimated_flops_reduction_unpruned": self.plan.flops_dense / self.plan.flops_before,
            "removed_channels": len(self.plan.order),
            "widths_before": self.plan.widths,
            "widths_after": self.plan.kept_widths(),
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "seconds": self.seconds,
            "narrowed_after_epochs": self.narrowed_after_epochs,
            "epoch_seconds": self.epoch_seconds,
        }


def cubic_ramp(step: int, ramp_steps: int) -> float:
    """Share of the plan masked after ``step`` steps: ``1 − (1 − step/ramp_steps)³``, 1 from ``ramp_steps`` on."""
    return 1.0 - (1.0 - min(1.0, step / max(ramp_steps, 1))) ** 3


def prune_detector(
    model: SpikingYOLO,
    data: str | os.PathLike[str],
    settings: PruneSettings,
    train_config: dict[str, Any] | None = None,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` toward the settings' executed-FLOPs target using the recordings under ``data``.

    ``train_config`` is the checkpoint's training config (batch, augmentation, …), inherited by the fine-tuning.
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model = model if settings.head_bits is None else requantized(model, head_bits=settings.head_bits)
    model = (with_channel_gates(model) if settings.channel_gates else model).eval()  # fresh gates keep everything
    calibration = channel_importance(
        model, [r.events for r in list_recordings(data, "train")], settings.calibration_windows, progress
    )
    target_flops = None if settings.target_mflops is None else settings.target_mflops * 1e6
    plan = plan_pruning(model, calibration, settings.target_flops_reduction, settings.floor,
                        cost_weight=settings.cost_weight, target_flops=target_flops)
    seconds["calibrate_and_plan"] = round(time.perf_counter() - start, 1)
    if settings.finetune_epochs == 0:
        return PruneResult(remove_channels(model, plan.keep()).eval(), plan, None, seconds, None)
    start = time.perf_counter()
    config = _finetune_config(model, data, settings, train_config)
    from app.trainer import Trainer  # the trainer pulls in the evaluator and plotting; only fine-tuning needs it

    # the unpruned model teaches its pruned self (a copy: the masks zero the fine-tuned model's weights in place)
    teacher = copy.deepcopy(model) if settings.distill_gain > 0 else None
    masks = ChannelMasks(model)
    trainer: Trainer | None = None
    masked = 0
    narrowed_after: int | None = None  # epochs trained at full width with masks

    def on_step(step: int) -> None:
        nonlocal masked
        assert trainer is not None
        if narrowed_after is not None:
            return
        removed = plan.removed(cubic_ramp(step, round(settings.ramp * trainer.steps_per_epoch * config["epochs"])))
        if len(removed) != masked:
            masks.set_removed(removed)  # also zeroes the training model's weights that read masked channels
            masked = len(removed)
        else:
            masks.zero_weights(trainer.model)  # the optimizer step moved them
        if trainer.ema is not None:
            masks.zero_weights(trainer.ema.ema)

    def on_epoch(epochs_done: int) -> None:
        nonlocal narrowed_after
        assert trainer is not None
        # once every mask is on, the masked channels are dead weight: train the pruned model from here on
        if narrowed_after is None and plan.order and masked == len(plan.order) and epochs_done < config["epochs"]:
            masks.close()
            trainer.narrow(plan.keep())
            narrowed_after = epochs_done

    trainer = Trainer(config, progress=progress, model=model.train(), on_step=on_step, teacher=teacher,
                      on_epoch=on_epoch)
    trainer.fit()
    if narrowed_after is None:
        masks.set_removed(plan.removed())
        masks.zero_weights(trainer.eval_model)
        masks.close()
        pruned = remove_channels(trainer.eval_model, plan.keep()).eval()
    else:
        pruned = trainer.eval_model.eval()
    seconds["finetune"] = round(time.perf_counter() - start, 1)
    return PruneResult(pruned, plan, trainer.run_dir, seconds, config, narrowed_after,
                       [row["seconds"] for row in trainer.history])


def _finetune_config(model: SpikingYOLO, data: str | os.PathLike[str], settings: PruneSettings,
                     train_config: dict[str, Any] | None) -> dict[str, Any]:
    """A training config for fine-tuning ``model``: inherited optimisation keys, the model's input, the settings."""
    known = load_defaults()
    inherited = {k: v for k, v in (train_config or {}).items() if k in INHERITED_KEYS and k in known}
    cfg = model.config
    overrides = {
        **inherited,
        "data": str(data),
        "variant": cfg.variant,
        "scale": cfg.scale,
        "bins": cfg.bins,
        "window_us": cfg.window_us,
        "cutoff": cfg.cutoff,
        "input_width": cfg.input_width,
        "input_height": cfg.input_height,
        "weight_bits": cfg.weight_bits,
        "membrane_lb": cfg.membrane_lb,
        "leak": cfg.leak,
        "epochs": settings.finetune_epochs,
        "lr": settings.lr,
        "warmup_steps": settings.warmup_steps,
        "distill_gain": settings.distill_gain,
        "channel_gates": cfg.channel_gates,
        "mask_mass": settings.mask_mass,
        "mask_budget": settings.mask_budget,
        "mask_gain": settings.mask_gain,
        "mask_lr_gain": settings.mask_lr_gain,
        "activity_gain": settings.activity_gain,
        "threads": settings.threads,
        "val_recordings": settings.val_recordings,
        "project": settings.project,
        "name": settings.name or f"prune-{cfg.variant}-{cfg.scale}-{time.strftime('%Y%m%d-%H%M%S')}",
    }
    return build_config(None, overrides)
