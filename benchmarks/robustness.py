"""Robustness to real sensors: false alarms on real box-less recordings (with and without the background-activity
filter of ``spquant predict --denoise-us``) and the effect of training with tonic's sensor imperfections.

Two steps, because the first trains (run it beside other training) and the second measures (run it under
``/work/tools/quiet``, which pauses background training)::

    python benchmarks/robustness.py finetune --data datasets/synth-v1
    /work/tools/quiet python benchmarks/robustness.py measure --data datasets/synth-v1

``finetune`` fine-tunes the bundled model twice with an equal budget, once without and once with the sensor
imperfections (``refractory_us``, ``drop_event``, ``time_jitter_us``, ``uniform_noise_hz``: app/cfg/gen1.yaml's
values), on the first ``--train-recordings`` training recordings. ``measure`` counts, for the bundled model and both
fine-tunes, the boxes scoring at least the service's default threshold (0.25) and the highest score on every real
recording in ``--fixtures`` (none of them holds an object of the two classes, so every box is a false alarm), for
each filter time; the Prophesee-protocol AP on the synthetic test split; the AP of the bundled model on denoised
test recordings; and the filter's throughput against tonic's ``denoise_numpy``. Writes
``benchmarks/results/robustness.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import yaml

from app.commands.predict import predict_recording
from app.config import build_config
from app.evaluator import evaluate_split
from app.prophesee import evaluate_detections
from app.trainer import Trainer
from data.denoise import BackgroundActivityFilter
from data.formats.labels import read_labels
from data.formats.recording import open_recording
from data.gen1 import list_recordings
from models.networks.checkpoint import load_detector

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "robustness.json"
BUNDLED = REPO / "models" / "weights" / "spquant-n.pt"
FIXTURES = Path(os.environ.get("SPQUANT_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))
SERVICE_THRESHOLD = 0.25  # the service's and predict's default score threshold
# The Gen1 recipe's sensor imperfections (app/cfg/gen1.yaml)
SENSOR_KEYS = ("refractory_us", "drop_event", "time_jitter_us", "uniform_noise_hz")
ARMS = ("plain", "tonic")


def _subset(data: Path, project: Path, recordings: int) -> Path:
    """A Gen1-layout root of links: the first ``recordings`` training recordings, the whole val split."""
    root = project / "data"
    for split, files in (("train", list_recordings(data, "train")[:recordings]), ("val", list_recordings(data, "val"))):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for rec in files:
            for path in (rec.events, rec.labels):
                link = folder / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
    return root


def finetune(args: argparse.Namespace) -> None:
    """Train the two arms one after the other (skipping an arm whose run folder already has ``best.pt``)."""
    root = _subset(args.data, args.project, args.train_recordings)
    recipe = build_config(REPO / "app" / "cfg" / "gen1.yaml")
    for arm in ARMS:
        if (args.project / arm / "weights" / "best.pt").is_file():
            print(f"{arm}: already trained")
            continue
        overrides = {"data": str(root), "init": str(args.init), "epochs": args.epochs, "warmup_steps": 20,
                     "val_recordings": 1, "threads": args.threads, "project": str(args.project), "name": arm,
                     "seed": 0}
        if arm == "tonic":
            overrides |= {key: recipe[key] for key in SENSOR_KEYS}
        Trainer(build_config(None, overrides), progress=False).fit()


def _false_alarms(model: Any, filter_times: list[int]) -> dict[str, Any]:
    """Boxes at or above the service threshold and the top score on every real recording, per filter time."""
    out = {}
    for path in sorted(p for p in FIXTURES.iterdir() if p.suffix in (".dat", ".raw")):
        rows = {}
        for filter_time in [0, *filter_times]:
            dets, windows, denoiser = predict_recording(model, open_recording(path), conf_thres=0.001,
                                                        denoise_us=filter_time, progress=False)
            scores = dets["class_confidence"]
            alarms = dets[scores >= SERVICE_THRESHOLD]
            rows[str(filter_time)] = {
                "windows": windows,
                "boxes": len(alarms),
                "windows_with_boxes": len(np.unique(alarms["t"])),
                "max_score": round(float(scores.max()), 4) if len(scores) else 0.0,
                "events_kept": None if denoiser is None else round(denoiser.events_out / denoiser.events_in, 4),
            }
        out[path.name] = rows
    totals = {}
    for filter_time in [0, *filter_times]:
        key = str(filter_time)
        totals[key] = {"boxes": sum(r[key]["boxes"] for r in out.values()),
                       "windows_with_boxes": sum(r[key]["windows_with_boxes"] for r in out.values()),
                       "windows": sum(r[key]["windows"] for r in out.values()),
                       "max_score": max(r[key]["max_score"] for r in out.values())}
    return {"per_recording": out, "total": totals}


def _denoised_ap(model: Any, data: Path, filter_time: int) -> dict[str, Any]:
    """Prophesee-protocol AP on the test split with every recording denoised first (as evaluate_split scores)."""
    pairs, kept, seen = [], 0, 0
    for rec in list_recordings(data, "test"):
        dets, _, denoiser = predict_recording(model, open_recording(rec.events), conf_thres=0.001,
                                              denoise_us=filter_time, progress=False)
        pairs.append((read_labels(rec.labels), dets))
        kept, seen = kept + denoiser.events_out, seen + denoiser.events_in
    metrics = evaluate_detections(pairs, classes=model.config.class_names)
    return {**_ap(metrics), "events_kept": round(kept / seen, 4)}


def _ap(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: round(float(metrics[key]), 4) for key in ("AP", "AP50", "AP75")} | {
        "per_class": {k: None if v is None else round(float(v), 4) for k, v in metrics["per_class"].items()}}


def _throughput(filter_time: int, repeats: int = 3) -> dict[str, Any]:
    """Events per second of the streaming filter (one chunk per 50 ms) and of tonic's loop, on sparklers.raw."""
    import tonic.functional

    recording = open_recording(FIXTURES / "sparklers.raw")
    events = recording.read()
    chunks = np.split(events, np.searchsorted(events["t"], np.arange(events["t"][0], events["t"][-1], 50_000)[1:]))
    ours, theirs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        denoiser = BackgroundActivityFilter(recording.width, recording.height, filter_time)
        for chunk in chunks:
            denoiser(chunk)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        tonic.functional.denoise_numpy(events, filter_time)
        theirs.append(time.perf_counter() - start)
    return {"recording": "sparklers.raw", "events": len(events), "filter_time_us": filter_time,
            "streaming_mev_per_s": round(len(events) / min(ours) / 1e6, 3),
            "tonic_whole_recording_mev_per_s": round(len(events) / min(theirs) / 1e6, 3)}


def _training(run_dir: Path) -> dict[str, Any]:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    with open(run_dir / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    return {"run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
            "sensor_imperfections": {key: config[key] for key in SENSOR_KEYS},
            "epochs": config["epochs"], "train_recordings": len(list_recordings(config["data"], "train")),
            "batch": config["batch"], "seq_len": config["seq_len"], "lr": config["lr"],
            "warmup_steps": config["warmup_steps"], "threads": config["threads"], "seed": config["seed"],
            "val_AP_per_epoch": [float(row["AP"]) for row in history],
            "train_seconds": round(sum(float(row["seconds"]) for row in history), 1),
            # the share of an epoch spent waiting for batches (tonic's refractory filter loops in Python)
            "data_share_per_epoch": [float(row["data_share"]) for row in history]}


def measure(args: argparse.Namespace) -> None:
    """Measure the bundled model and both fine-tunes; write the JSON and print the summary."""
    torch.set_num_threads(args.threads)
    models = {"bundled": BUNDLED} | {arm: args.project / arm / "weights" / "best.pt" for arm in ARMS}
    result: dict[str, Any] = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "commands": [],  # filled in below, from what the fine-tunes recorded
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "note": "2 shared cores, background training paused"},
        "note": "the fine-tunes train on a subset of the training split (train_recordings of "
                "train_recordings_available) to keep them short on 2 shared cores; both get the same budget and seed; "
                "every box on the real recordings is a false alarm (none holds a car or a pedestrian)",
        "service_threshold": SERVICE_THRESHOLD,
        "fixtures": str(FIXTURES),
        "models": {},
    }
    for name, path in models.items():
        model = load_detector(path)
        print(f"{name}: false alarms on {FIXTURES}")
        entry: dict[str, Any] = {"checkpoint": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)}
        if name != "bundled":
            entry["training"] = _training(path.parents[1])
            entry["training"]["train_recordings_available"] = len(list_recordings(args.data, "train"))
        entry["false_alarms"] = _false_alarms(model, args.filter_times)
        print(f"{name}: AP on {args.data}/test")
        metrics, _ = evaluate_split(model, args.data, "test", progress=False)
        entry["test"] = _ap(metrics)
        if name == "bundled":
            print(f"{name}: AP on denoised test recordings ({args.ap_filter_time} µs)")
            entry["test_denoised"] = {"filter_time_us": args.ap_filter_time,
                                      **_denoised_ap(model, args.data, args.ap_filter_time)}
        result["models"][name] = entry
    result["denoise_throughput"] = _throughput(args.ap_filter_time)
    trained = result["models"]["plain"]["training"]
    result["commands"] = [
        f"python benchmarks/robustness.py finetune --data {args.data} --train-recordings {trained['train_recordings']} "
        f"--epochs {trained['epochs']} --threads {trained['threads']}",
        f"/work/tools/quiet python benchmarks/robustness.py measure --data {args.data} --threads {args.threads} "
        f"--filter-times {' '.join(map(str, args.filter_times))} --ap-filter-time {args.ap_filter_time}",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    _summary(result, args.filter_times)
    print(f"wrote {RESULTS}")


def _summary(result: dict[str, Any], filter_times: list[int]) -> None:
    times = [0, *filter_times]
    print(f"\nfalse alarms on {len(next(iter(result['models'].values()))['false_alarms']['per_recording'])} real "
          f"recordings: boxes >= {SERVICE_THRESHOLD} (windows with one) / highest score, per denoise filter time")
    print(f"{'model':10s}" + "".join(f"{('off' if t == 0 else f'{t} µs'):>18s}" for t in times) + "   test AP  AP50")
    for name, entry in result["models"].items():
        total = entry["false_alarms"]["total"]
        cells = "".join(f"{total[str(t)]['boxes']:>7d} ({total[str(t)]['windows_with_boxes']:d}) "
                        f"/ {total[str(t)]['max_score']:.2f}" for t in times)
        print(f"{name:10s}{cells}   {entry['test']['AP']:.4f}  {entry['test']['AP50']:.4f}")
    bundled = result["models"]["bundled"]
    denoised = bundled["test_denoised"]
    print(f"bundled on denoised test recordings ({denoised['filter_time_us']} µs, {denoised['events_kept']:.1%} of "
          f"events kept): AP {denoised['AP']:.4f} (vs {bundled['test']['AP']:.4f})")
    speed = result["denoise_throughput"]
    print(f"denoise throughput: {speed['streaming_mev_per_s']} Mev/s streaming, "
          f"{speed['tonic_whole_recording_mev_per_s']} Mev/s tonic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("finetune", "measure"))
    parser.add_argument("--data", type=Path, default=REPO / "datasets" / "synth-v1")
    parser.add_argument("--project", type=Path, default=REPO / "runs" / "robustness", help="fine-tune run folders")
    parser.add_argument("--init", type=Path, default=BUNDLED, help="the model both fine-tunes start from")
    parser.add_argument("--train-recordings", type=int, default=4, help="training recordings used (the first N)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--filter-times", type=int, nargs="+", default=[1_000, 5_000, 10_000, 20_000],
                        help="denoise filter times (µs) for the false alarms")
    parser.add_argument("--ap-filter-time", type=int, default=10_000, help="denoise filter time of the AP check")
    args = parser.parse_args()
    finetune(args) if args.step == "finetune" else measure(args)


if __name__ == "__main__":
    main()
