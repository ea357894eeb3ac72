"""Training engine: streams of consecutive windows, truncated BPTT, AdamW + cosine, EMA, per-epoch validation.

A run folder holds ``config.yaml``, ``metrics.csv``, ``loss.png``/``ap.png`` and ``weights/{last,best}.pt``. ``last.pt``
is rewritten atomically after every epoch with everything needed to resume (model, EMA, optimizer, scheduler,
epoch), so a killed run loses at most the epoch in progress. ``best.pt`` holds only the EMA detector and its config.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from app.config import load_defaults, sensor_augmentation
from app.evaluator import evaluate_split
from data.augment import Augmentation
from data.box_filter import BoxFilter
from data.formats.dat import DatRecording
from data.gen1 import RecordingFiles, list_recordings
from data.loader import epoch_batches
from data.sequences import SequenceStreams
from models.compress.distill import DistillationLoss, frozen_teacher
from models.compress.prune import remove_channels, slice_like_parameters
from models.inference.stream import input_histogram
from models.networks.checkpoint import load_detector, read_checkpoint, save_checkpoint
from models.networks.detector import (
    QUANTIZATION_FIELDS,
    DetectorConfig,
    SpikingYOLO,
    build_detector,
    requantized,
    with_channel_gates,
)
from models.networks.loss import DetectionLoss, select_images
from models.networks.neuron import use_implementation
from models.networks.sparsity import ActivityPenalty, GateLoss
from models.networks.state import detach_state, reset_state
from models.networks.ultralytics_parts import ModelEMA

# data_share: the share of the epoch's training time spent waiting for batches (the loader's share of a step)
# kept: the FLOPs-weighted share of gated channels kept (channel gates); rate: the mean firing rate (activity_gain)
METRIC_COLUMNS = ("epoch", "loss", "box", "cls", "dfl", "lr", "AP", "AP50", "AP75", "seconds", "data_share", "kept",
                  "rate")


# Training-config keys that are DetectorConfig fields: the architecture, and its quantization (null = the default).
ARCHITECTURE_KEYS = ("variant", "scale", "bins", "window_us", "cutoff", "input_width", "input_height", "membrane_lb",
                     "leak", "channel_gates")


def detector_config_from(config: dict[str, Any]) -> DetectorConfig:
    """The architecture and quantization part of a training config."""
    values = {key: config[key] for key in ARCHITECTURE_KEYS}
    quantization = {key: config[key] for key in QUANTIZATION_FIELDS if config.get(key) is not None}
    return DetectorConfig(**{**values, **quantization, "membrane_lb": float(values["membrane_lb"]),
                             "leak": float(values["leak"])})


def architecture_keys(detector: DetectorConfig) -> dict[str, Any]:
    """The training-config keys that describe ``detector`` (inverse of :func:`detector_config_from`)."""
    return {key: getattr(detector, key) for key in (*ARCHITECTURE_KEYS, *QUANTIZATION_FIELDS)}


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_initialized():
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def _init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun with several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class _Unroll(nn.Module):
    """The ``L``-window unroll of a batch as one forward call (DistributedDataParallel wants one per backward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, reset: torch.Tensor, state: Any) -> tuple[list[Any], Any]:
        # x [L, B, T, 2, H, W]; reset [L, B] bool
        outputs = []
        for i in range(x.shape[0]):
            if state is not None and bool(reset[i].any()):
                state = reset_state(state, reset[i])
            out, state = self.model(x[i].transpose(0, 1), state)  # input [T, B, 2, H, W]
            outputs.append(out)
        return outputs, state


def _float_outputs(preds: dict[str, Any]) -> dict[str, Any]:
    """The head's training outputs in float32 (``boxes``, ``scores``: tensors; ``feats``: a list of tensors)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in preds.items()}


def training_sensor(recordings: list[RecordingFiles]) -> tuple[int, int] | None:
    """The sensor size shared by every training recording (its DAT header, else Gen1's); None when they differ."""
    sizes = {(r.width, r.height) for r in (DatRecording(files.events) for files in recordings)}
    return next(iter(sizes)) if len(sizes) == 1 else None


class Trainer:
    """Train a detector from a validated config dict (see ``app/cfg/default.yaml``).

    ``model`` starts from a given detector (its weights and architecture, e.g. a pruned one being fine-tuned) instead
    of a fresh one built from ``config``; ``on_step(steps_done)`` is called after every optimizer step (schedules such
    as gradual pruning masks) and ``on_epoch(epochs_done)`` after every epoch (a pruning fine-tune narrows the model
    there); ``teacher`` (or the config's ``teacher`` checkpoint) is distilled into the model.
    """

    def __init__(self, config: dict[str, Any], progress: bool = True, model: SpikingYOLO | None = None,
                 on_step: Callable[[int], None] | None = None, teacher: SpikingYOLO | None = None,
                 on_epoch: Callable[[int], None] | None = None) -> None:
        self.on_step, self.on_epoch, self.progress_requested = on_step, on_epoch, progress
        config = self._read_resume(config)
        if not config.get("data"):
            raise ValueError("no training data: pass data=ROOT (a Gen1-layout folder, e.g. from `spquant synth`)")
        if model is None and config.get("init"):  # also on resume: a pruned start cannot be rebuilt from keys
            model = load_detector(config["init"]).train()
            given = {key: config[key] for key in QUANTIZATION_FIELDS if config.get(key) is not None}
            model = requantized(model, **given)
            if config.get("channel_gates"):
                model = with_channel_gates(model)
        if model is not None:  # the starting model's architecture wins over the config's (recorded as trained)
            config = {**config, **architecture_keys(model.config)}
        self.config = config
        self._setup_device()
        self._build_model(model)
        self._build_teacher(teacher)
        self._build_data()
        self.optimizer = self.build_optimizer()
        self.scheduler = self._build_scheduler()
        self._build_ema()
        self._resume()

    def _read_resume(self, config: dict[str, Any]) -> dict[str, Any]:
        """With ``resume=``: read the checkpoint, whose training config wins; keys added since it was written take
        their defaults."""
        resume = config.get("resume")
        self.resumed: dict[str, Any] | None = None
        if not resume:
            return config
        self.resumed = read_checkpoint(resume)
        if "train_state" not in self.resumed:
            raise ValueError(f"{resume} holds no training state (use a run's weights/last.pt)")
        return {**load_defaults(), **self.resumed["train_config"], "resume": str(resume)}

    def _setup_device(self) -> None:
        """Threads, seed, the process group under torchrun, and the device."""
        if self.config["threads"] > 0:
            torch.set_num_threads(self.config["threads"])
        torch.manual_seed(self.config["seed"])
        self.rank, self.world_size, local_rank = _init_distributed()
        self.is_main = self.rank == 0
        self.progress = self.progress_requested and self.is_main
        self.device = _device(self.config["device"], local_rank)
        amp = self.config["amp"]
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device (on a CPU use amp=bf16 or none)")
        # Mixed precision covers convs, BN and the head; neurons and quantizers stay float32 (IntegerLIF casts up).
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    def _build_model(self, model: SpikingYOLO | None) -> None:
        """The detector (given or built from the config), its unroll (DDP-wrapped when distributed) and its loss."""
        config = self.config
        self.detector_config = model.config if model is not None else detector_config_from(config)
        self.model = (model if model is not None else build_detector(self.detector_config)).to(self.device)
        use_implementation(self.model, config.get("lif", "fused"))
        if config["channels_last"]:  # conv weights in NHWC: faster convs on GPUs with tensor cores
            self.model = self.model.to(memory_format=torch.channels_last)
        self.unroll: nn.Module = _Unroll(self.model)
        if self.world_size > 1:
            self.unroll = nn.parallel.DistributedDataParallel(self.unroll)
        self.loss = DetectionLoss(self.model, config["box_gain"], config["cls_gain"], config["dfl_gain"])
        self.gate_loss = (GateLoss(self.model, config["mask_mass"], config["mask_gain"], config["mask_budget"],
                                   config["mask_budget_gain"])
                          if self.detector_config.channel_gates else None)
        activity = config["activity_gain"]
        self.activity = ActivityPenalty(self.model, activity) if activity > 0 else None

    def _build_teacher(self, teacher: SpikingYOLO | None) -> None:
        """The frozen teacher of distillation, if one is given (argument or the config's ``teacher``)."""
        if teacher is None and self.config.get("teacher"):
            teacher = load_detector(self.config["teacher"])
        self.teacher: nn.Module | None = None
        if teacher is not None:
            use_implementation(teacher, self.config.get("lif", "fused"))
            self.teacher = _Unroll(frozen_teacher(teacher).to(self.device))
            self.distill = DistillationLoss(self.detector_config.reg_max)

    def _build_data(self) -> None:
        """The training streams of this rank; the detector records the sensor size of its training data."""
        config = self.config
        sensor = training_sensor(list_recordings(config["data"], config["train_split"]))
        if sensor is not None:  # so that serve and predict default to the camera the data came from
            self.detector_config = dataclasses.replace(self.detector_config, sensor_width=sensor[0],
                                                       sensor_height=sensor[1])
            self.model.config = self.detector_config
        histogram = input_histogram(self.detector_config)  # what the streaming detector feeds the trained model
        augmentation = Augmentation(config["flip_prob"], config["zoom_prob"], config["max_zoom"],
                                    sensor_augmentation(config))
        self.streams = SequenceStreams(
            list_recordings(config["data"], config["train_split"]),
            histogram,
            config["batch"],
            config["seq_len"],
            augmentation,
            BoxFilter(skip_us=-1),  # train on the boxes the protocol scores, from the first window on
            config["seed"],
            self.rank,
            self.world_size,
            config["train_max_box_width"],
        )
        if self.streams.skipped and self.is_main:
            print(f"skipped {len(self.streams.skipped)} training recording(s) with no labels left after filtering: "
                  f"{', '.join(self.streams.skipped[:5])}{' …' if len(self.streams.skipped) > 5 else ''}")
        self.steps_per_epoch = len(self.streams)
        self.total_steps = max(1, config["epochs"] * self.steps_per_epoch)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; no weight decay on biases, BN and thresholds; channel gates (when the model has them) in a group of
        their own at ``lr · mask_lr_gain``, without weight decay."""
        decay, no_decay, gate_params = [], [], []
        for name, param in self.model.named_parameters():
            if ".gate." in name:
                gate_params.append(param)
            else:
                (decay if param.dim() > 1 and "threshold" not in name else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": self.config["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        if gate_params:  # fresh predictors on a trained network: they must learn within a short fine-tune
            groups.append({"params": gate_params, "weight_decay": 0.0,
                           "lr": self.config["lr"] * self.config["mask_lr_gain"]})
        return torch.optim.AdamW(groups, lr=self.config["lr"])

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up, then cosine decay to ``lr · final_lr_ratio`` over the whole run."""
        warmup, floor, total = self.config["warmup_steps"], self.config["final_lr_ratio"], self.total_steps

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress_))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)

    def _build_ema(self, updates: int = 0) -> None:
        use_ema = self.config["ema_decay"] > 0 and self.is_main  # only the main process validates and saves
        self.ema = (ModelEMA(self.model, decay=self.config["ema_decay"], tau=max(10, self.total_steps // 20),
                             updates=updates) if use_ema else None)

    def narrow(self, keep: Mapping[str, Sequence[int]]) -> None:
        """Go on training only the ``keep`` channels of each group (:func:`remove_channels`); call between epochs.

        The weights, AdamW's moments and step counts, the learning-rate schedule and the EMA are sliced alike, so the
        steps that follow are those of the full-width model with the other channels masked (their weights are zero
        and get no gradient), at the narrow model's cost: a pruning fine-tune narrows once its masks are final.
        """
        old_model, old_optimizer, old_scheduler, old_ema = self.model, self.optimizer, self.scheduler, self.ema
        param_names = {param: name for name, param in old_model.named_parameters()}
        old_states = {param_names[param]: state for param, state in old_optimizer.state.items()}
        moments = {key: slice_like_parameters(old_model, keep, {name: state[key] for name, state in old_states.items()})
                   for key in ("exp_avg", "exp_avg_sq")}
        self._build_model(remove_channels(old_model, keep))
        self.optimizer = self.build_optimizer()
        for name, param in self.model.named_parameters():
            if name in old_states:
                self.optimizer.state[param] = {"step": old_states[name]["step"].clone(),
                                               "exp_avg": moments["exp_avg"][name].to(param),
                                               "exp_avg_sq": moments["exp_avg_sq"][name].to(param)}
        self.scheduler = self._build_scheduler()
        self.scheduler.load_state_dict(old_scheduler.state_dict())
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        self._build_ema(old_ema.updates if old_ema is not None else 0)
        if self.ema is not None and old_ema is not None:
            self.ema.ema = remove_channels(old_ema.ema, keep).to(self.device).eval().requires_grad_(False)

    def _resume(self) -> None:
        """Restore a resumed run's state and folder, or start a new run folder."""
        self.start_epoch, self.best_fitness, self.history = 0, -1.0, []
        if self.resumed:
            self._restore(self.resumed)
            self.run_dir = Path(self.resumed["run_dir"])
        else:
            self.run_dir = self._new_run_dir() if self.is_main else Path(self.config["project"])

    def _new_run_dir(self) -> Path:
        name = (
            self.config["name"] or f"{self.config['variant']}-{self.config['scale']}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        run_dir = Path(self.config["project"]) / name
        (run_dir / "weights").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        return run_dir

    def _restore(self, payload: dict[str, Any]) -> None:
        state = payload["train_state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(payload["model"])
            self.ema.updates = int(state["ema_updates"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_fitness = float(state["best_fitness"])
        self.history = [dict(row) for row in state["history"]]

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights used for validation and export (EMA when enabled)."""
        return self.ema.ema if self.ema is not None else self.model

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training streams; returns mean loss parts."""
        self.model.train()
        state = teacher_state = None
        sums, images = np.zeros(4), 0
        kept, rate, chunks = 0.0, 0.0, 0
        batches = tqdm(
            epoch_batches(self.streams, epoch, self.config.get("workers", 0)),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.config['epochs']}",
            disable=not self.progress,
            leave=False,
        )
        waited, start = 0.0, time.perf_counter()
        ready = start
        for batch in batches:
            waited += time.perf_counter() - ready  # the step waited this long for its batch
            x = self._to_device(batch.inputs)  # [L, B, T, 2, H, W] uint8
            state = detach_state(state)  # truncated BPTT: no gradient into the previous chunk
            reset = self._to_device(batch.reset)
            with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
                outputs, state = self.unroll(x, reset, state)
            if self.autocast_dtype is not None:  # the loss (assigner, DFL, IoU) in float32
                outputs = [_float_outputs(preds) for preds in outputs]
            total = torch.zeros((), device=self.device)
            if self.teacher is not None:
                with torch.no_grad():
                    taught, teacher_state = self.teacher(x, reset, teacher_state)
                total = total + self._distillation(outputs, taught, batch.valid)
            for i, preds in enumerate(outputs):
                selected = np.flatnonzero(batch.labelled[i] & batch.valid[i])
                if len(selected):
                    index = torch.from_numpy(selected).to(self.device)
                    loss, parts = self.loss(select_images(preds, index), [batch.boxes[i][b] for b in selected])
                    total = total + loss
                    sums[1:] += parts.cpu().numpy() * len(selected)
                    images += len(selected)
                elif self.world_size > 1:
                    # every rank must run backward through all parameters, even without labels in its share
                    total = total + 0.0 * (preds["scores"].sum() + preds["boxes"].sum())
            windows = x.shape[0] * x.shape[1]  # the sparsity terms are means per window, like the detection loss
            chunks += 1
            if self.gate_loss is not None:
                gate_total, gate_parts = self.gate_loss()
                total = total + gate_total * windows
                kept += float(gate_parts[2])
            if self.activity is not None:
                activity_total, chunk_rate = self.activity()
                total = total + activity_total * windows
                rate += float(chunk_rate)
            if total.requires_grad:
                self.optimizer.zero_grad(set_to_none=True)
                self.grad_scaler.scale(total / x.shape[0] / x.shape[1]).backward()
                if self.config["grad_clip"] > 0:
                    self.grad_scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
                if self.ema is not None:
                    self.ema.update(self.model)
            with warnings.catch_warnings():
                # the schedule counts steps, labelled or not: with sparse labels a step may have nothing to learn
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                self.scheduler.step()
            if self.on_step is not None:
                self.on_step(self.scheduler.last_epoch)
            sums[0] += float(total.detach())
            if images:
                batches.set_postfix(loss=f"{sums[0] / images:.3f}")
            ready = time.perf_counter()
        parts = sums / max(images, 1)
        data_share = waited / max(time.perf_counter() - start, 1e-9)
        return {"loss": float(parts[0]), "box": float(parts[1]), "cls": float(parts[2]), "dfl": float(parts[3]),
                "data_share": round(data_share, 4),
                "kept": round(kept / max(chunks, 1), 4) if self.gate_loss is not None else None,
                "rate": round(rate / max(chunks, 1), 5) if self.activity is not None else None}

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A batch array on the training device; through pinned memory and an asynchronous copy on CUDA."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def _distillation(self, outputs: list[Any], taught: list[Any], valid: np.ndarray) -> torch.Tensor:
        """Gained distillation loss over every valid window of the chunk (labelled or not)."""
        total = torch.zeros((), device=self.device)
        for i, (preds, targets) in enumerate(zip(outputs, taught, strict=True)):
            selected = np.flatnonzero(valid[i])
            if len(selected):
                index = torch.from_numpy(selected).to(self.device)
                loss, _ = self.distill(select_images(preds, index), select_images(targets, index))
                total = total + loss
        return self.config["distill_gain"] * total

    def validate(self) -> dict[str, Any]:
        """Prophesee-protocol metrics of the EMA model on the validation split."""
        metrics, _ = evaluate_split(
            self.eval_model,
            self.config["data"],
            self.config["val_split"],
            max_recordings=self.config["val_recordings"],
            conf_thres=self.config["conf_thres"],
            iou_thres=self.config["iou_thres"],
            max_det=self.config["max_det"],
            progress=self.progress,
        )
        return metrics

    def fit(self) -> dict[str, Any]:
        """Train for the configured epochs (continuing a resumed run); returns the last epoch's metrics row."""
        row: dict[str, Any] = {}
        for epoch in range(self.start_epoch, self.config["epochs"]):
            start = time.perf_counter()
            losses = self.train_epoch(epoch)
            if self.is_main:
                row = self._end_epoch(epoch, losses, start)
            else:
                dist.barrier()  # wait while the main process validates and saves
            if self.on_epoch is not None:
                self.on_epoch(epoch + 1)
        return row

    def _end_epoch(self, epoch: int, losses: dict[str, Any], start: float) -> dict[str, Any]:
        """Validate, record, save and print one epoch (main process); returns its metrics row."""
        metrics = self.validate()
        row = {
            "epoch": epoch + 1,
            **losses,
            "lr": self.optimizer.param_groups[0]["lr"],
            "AP": metrics["AP"],
            "AP50": metrics["AP50"],
            "AP75": metrics["AP75"],
            "seconds": round(time.perf_counter() - start, 1),
        }
        self.history.append(row)
        fitness = float(metrics["AP"] or 0.0)
        improved = fitness > self.best_fitness
        self.best_fitness = max(self.best_fitness, fitness)
        self._save(epoch, improved, metrics)
        self._write_metrics()
        if self.world_size > 1:
            dist.barrier()
        print(
            f"epoch {epoch + 1}/{self.config['epochs']}  loss {losses['loss']:.3f}  "
            f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  ({row['seconds']} s)"
            + (f"  kept {losses['kept']:.3f}" if losses["kept"] is not None else "")
            + (f"  rate {losses['rate']:.4f}" if losses["rate"] is not None else "")
            + ("  *best*" if improved else "")
        )
        return row

    def _save(self, epoch: int, improved: bool, metrics: dict[str, Any]) -> None:
        weights = self.run_dir / "weights"
        common = {"train_config": self.config, "metrics": _plain(metrics), "epoch": epoch + 1}
        if improved:
            save_checkpoint(weights / "best.pt", self.eval_model, **common)
        train_state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "history": self.history,
        }
        save_checkpoint(
            weights / "last.pt", self.eval_model, run_dir=str(self.run_dir), train_state=train_state, **common
        )

    def _write_metrics(self) -> None:
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: row.get(k) for k in METRIC_COLUMNS})
        _plot(self.history, self.run_dir)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | dict | type(None))}


def _plot(history: list[dict[str, Any]], run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("loss", "box", "cls", "dfl"):
        ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="training loss per window", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("AP", "AP50", "AP75"):
        ax.plot(epochs, [row[key] or 0 for row in history], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="validation (Prophesee protocol)", title="validation AP", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "ap.png", dpi=100)
    plt.close(fig)
