"""End-to-end latency of one window at batch 1: events → histogram → network → NMS, per stage, in one run.

Contenders, all at the Gen1 input (304×240, padded to 320×256), T = 5 bins of a Δ = 50 ms window:

* ``fp32-dense``: the FP32 baseline SNN in PyTorch (``baseline`` variant, scale n);
* ``fake-quant``: the quantized SNN in PyTorch, as trained (4-bit weights, ternary membranes);
* ``integer``: the exported integer runtime (:class:`models.inference.runtime.Runtime`);
* ``integer-pruned``: the integer runtime of a pruned checkpoint (``--pruned PATH``), when one is given;
* ``integer-head``: the integer runtime of the quantized SNN with an integer Detect head (``head_bits`` 4,
  ``head_act_bits`` 8: the bundled weights requantized, activation scales calibrated on the windows before the
  measured one; dense);
* ``integer-numpy`` (and ``integer-pruned-numpy``, ``integer-head-numpy``): the same exported models on the torch-free
  runtime (:class:`models.inference.numpy_runtime.NumpyRuntime`, numpy + numba) with its numpy NMS — what serving
  without torch runs; ``speedup_vs_torch_runtime`` compares each with its torch-runtime row of the same run;
* ``--model NAME=PATH`` (repeatable): any other checkpoint on the torch-free runtime, row ``NAME`` (e.g. two
  fine-tunes that differ in their firing rates);
* ``integer-onnxrt``: the integer runtime's exported ONNX step run by ONNX Runtime (when onnx and onnxruntime are
  installed);
* ``yolov8n``: ultralytics YOLOv8n (``DetectionModel('yolov8n.yaml', ch=10, nc=2)``, Conv+BN fused) reading the
  same histogram as 10 channels: the ANN a user would pick instead.

The SNNs get the bundled models' trained weights (trained at 152×120; convs do not depend on the input size), so
spikes and detections are realistic; YOLOv8n has random weights (its cost does not depend on them, except NMS,
which sees few candidates). The window is a busy one of the bundled recording; each SNN carries its state from
window to window as in a stream. Contenders run round-robin (one window each per round) so background load hits
them alike; medians and p99 over the rounds are reported. Each SNN's Detect head is also timed alone in every
round (``head_ms``: the head on the measured window's firing rates, as its network stage runs it).

Run: ``python benchmarks/latency.py [--rounds 100] [--threads 2] [--pruned CKPT] [--model NAME=CKPT ...]
[--out JSON]`` (writes ``benchmarks/results/latency.json`` by default and prints a table).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from data.formats.recording import open_recording
from data.windows import Window, iter_windows
from models.inference.bundled import BUNDLED_MODEL
from models.inference.export import fold
from models.inference.numpy_detect import non_max_suppression as numpy_nms
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.runtime import Runtime
from models.inference.stream import StreamingDetector
from models.networks.checkpoint import read_checkpoint
from models.networks.detector import DetectorConfig, SpikingYOLO, build_detector, requantized
from models.networks.graph import ModuleOps
from models.networks.quant import QuantSiLU
from models.networks.ultralytics_parts import non_max_suppression

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "street_td.dat"
BASELINE = BUNDLED_MODEL.parent / "baseline-n.pt"
WIDTH, HEIGHT = 304, 240
STAGES = ("histogram", "network", "nms")


@dataclass
class Contender:
    """One pipeline: its histogram (with letterbox), network (with its state) and NMS, timed stage by stage."""

    name: str
    detector: StreamingDetector
    network: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "total", "head")})
    state: Any = None
    detections: int = 0
    head: Callable[[], Any] | None = None  # the network's head alone on one window's rates (see head_call)

    def run_head(self) -> None:
        """Time the head alone (when the network has one to call)."""
        if self.head is not None:
            with torch.inference_mode():
                t0 = time.perf_counter()
                self.head()
                self.times["head"].append((time.perf_counter() - t0) * 1e3)

    def run(self, window: Window) -> None:
        t0 = time.perf_counter()
        counts = self.detector.histogram(self.detector.letterbox.map_events(window.events), window.t_start)
        t1 = time.perf_counter()
        with torch.inference_mode():
            y, self.state = self.network(torch.from_numpy(counts).unsqueeze(1), self.state)  # [T, 1, 2, H, W] in
            t2 = time.perf_counter()
            (dets,) = non_max_suppression(y, conf_thres=0.25, iou_thres=0.6, max_det=100, nc=y.shape[1] - 4)
        t3 = time.perf_counter()
        self.detections = len(dets)
        for stage, seconds in zip((*STAGES, "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            self.times[stage].append(seconds * 1e3)


@dataclass
class NumpyContender(Contender):
    """The torch-free pipeline: histogram → :class:`NumpyRuntime` → numpy NMS, on numpy arrays throughout."""

    def run(self, window: Window) -> None:
        t0 = time.perf_counter()
        counts = self.detector.histogram(self.detector.letterbox.map_events(window.events), window.t_start)
        t1 = time.perf_counter()
        y, self.state = self.network(counts[:, None], self.state)  # [T, 1, 2, H, W] in
        t2 = time.perf_counter()
        (dets,) = numpy_nms(y, conf_thres=0.25, iou_thres=0.6, max_det=100)
        t3 = time.perf_counter()
        self.detections = len(dets)
        for stage, seconds in zip((*STAGES, "total"), (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            self.times[stage].append(seconds * 1e3)


def full_resolution(path: Path, **overrides: Any) -> SpikingYOLO:
    """A checkpoint's detector rebuilt at the Gen1 input size with its trained weights."""
    payload = read_checkpoint(path)
    config = DetectorConfig.from_dict({**payload["detector"], "input_width": WIDTH, "input_height": HEIGHT,
                                       **overrides})
    model = build_detector(config)
    model.load_state_dict(payload["model"])
    return model.eval()


def integer_head(model: SpikingYOLO, windows: list[Window]) -> SpikingYOLO:
    """``model`` with an integer Detect head (4-bit weights, 8-bit activations), its activation quantizers calibrated
    on ``windows`` (streamed, in train mode as in training; everything else as trained)."""
    converted = requantized(model, head_bits=4, head_act_bits=8).eval()
    detector = StreamingDetector(converted)
    for module in converted.modules():
        if isinstance(module, QuantSiLU):
            module.train()
    state = None
    with torch.no_grad():
        for window in windows:
            counts = detector.counts(window.events, window.t_start)
            _, state = converted(torch.from_numpy(counts).unsqueeze(1), state)
    return converted.eval()


def head_call(pipeline: Contender, window: Window) -> Callable[[], Any] | None:
    """The network's Detect head alone on the firing rates of ``window`` (from the pipeline's state), as its network
    stage runs it (the runtime's own ops; the trained model's Detect module); None for networks without a layer
    graph."""
    model = pipeline.network
    if not hasattr(model, "graph"):
        return None
    rates: dict[str, Any] = {}
    counts = pipeline.detector.counts(window.events, window.t_start)[:, None]  # [T, 1, 2, H, W]
    with torch.inference_mode():
        model(counts if isinstance(model, NumpyRuntime) else torch.from_numpy(counts), pipeline.state,
              observe=lambda node, value: rates.__setitem__(node.name, value) if node.kind == "rate" else None)
    detect = model.graph.output
    args = [rates[name] for name in detect.inputs]
    if isinstance(model, NumpyRuntime):
        # its observers see [B, C, h, w] views, its head reads [C, B, h, w]; BLAS threads capped as in its calls
        args = [np.ascontiguousarray(np.moveaxis(a, 0, 1)) for a in args]
        blas = ThreadpoolController()

        def numpy_head() -> Any:
            with blas.limit(limits=model.blas_threads, user_api="blas"):
                return model.ops.detect(detect, *args)

        return numpy_head
    ops = model.ops if hasattr(model, "ops") else ModuleOps()
    return lambda: ops.detect(detect, *args)


def yolov8n(bins: int) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]:
    """YOLOv8n over the histogram's ``T·2`` channels, Conv+BN fused; stateless."""
    # after models.networks.ultralytics_parts set ultralytics' environment
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", ch=2 * bins, nc=2, verbose=False).eval().fuse(verbose=False)

    def network(x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        frames = x.to(torch.float32).permute(1, 0, 2, 3, 4).flatten(1, 2)  # [1, T·2, H, W]
        return model(frames)[0], None

    return network


def busy_window(bins: int) -> tuple[Window, list[Window]]:
    """The window with the 75th-percentile event count of the bundled recording, and the windows before it."""
    windows = list(iter_windows(open_recording(SAMPLE), 50_000))
    order = np.argsort([len(w.events) for w in windows])
    index = int(order[len(order) * 3 // 4])
    return windows[index], windows[:index]


def contenders(pruned: Path | None, calibration: list[Window], extra: dict[str, Path]) -> list[Contender]:
    """Every pipeline (the integer head's activation scales calibrated on ``calibration``); ``extra`` checkpoints
    on the torch-free runtime, by row name."""
    fake_quant = full_resolution(BUNDLED_MODEL)
    integer_head_model = integer_head(fake_quant, calibration)
    models: dict[str, Any] = {
        "fp32-dense": full_resolution(BASELINE),
        "fake-quant": fake_quant,
        "integer": Runtime.from_model(fake_quant),
        "integer-head": Runtime.from_model(integer_head_model),
    }
    # the same folded models (what their .spq files hold) on the torch-free runtime
    engines = {"integer-numpy": NumpyRuntime(*fold(fake_quant)),
               "integer-head-numpy": NumpyRuntime(*fold(integer_head_model))}
    if pruned is not None:
        pruned_model = full_resolution(pruned)
        models["integer-pruned"] = Runtime.from_model(pruned_model)
        engines["integer-pruned-numpy"] = NumpyRuntime(*fold(pruned_model))
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        from models.inference.onnx_step import OnnxStepModel, export_onnx

        path = export_onnx(models["integer"], Path(tempfile.mkdtemp()) / "integer.onnx")
        models["integer-onnxrt"] = OnnxStepModel(path, threads=torch.get_num_threads())
    out = [Contender(name, StreamingDetector(model), model) for name, model in models.items()]
    out.append(Contender("yolov8n", StreamingDetector(fake_quant), yolov8n(fake_quant.config.bins)))
    out += [NumpyContender(name, StreamingDetector(models[name.removesuffix("-numpy")]), engine)
            for name, engine in engines.items()]
    for name, path in extra.items():
        model = full_resolution(path)
        out.append(NumpyContender(name, StreamingDetector(model), NumpyRuntime(*fold(model))))
    return out


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2: this machine)")
    parser.add_argument("--pruned", type=Path, default=None, help="a pruned spquant checkpoint (from spquant prune)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT",
                        help="also run this checkpoint on the torch-free runtime, as row NAME (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    extra = dict(spec.rsplit("=", 1) for spec in args.model if "=" in spec)
    if len(extra) != len(args.model):
        parser.error("--model takes NAME=CKPT")
    torch.set_num_threads(args.threads)
    window, history = busy_window(5)
    pipelines = contenders(args.pruned, history[-20:], {name: Path(path) for name, path in extra.items()})
    torch.set_num_threads(args.threads)  # the ONNX export may have changed it
    for pipeline in pipelines:
        for previous in history[-5:]:  # warm-up, and a state carried from the stream
            pipeline.run(previous)
        pipeline.head = head_call(pipeline, window)
        pipeline.run_head()
        pipeline.times = {s: [] for s in pipeline.times}
    for _ in range(args.rounds):
        for pipeline in pipelines:
            state = pipeline.state
            pipeline.run(window)
            pipeline.state = state  # every round measures the same window from the same state
            pipeline.run_head()
    base = statistics.median(pipelines[0].times["total"])
    by_name = {p.name: p for p in pipelines}
    torch_runtime = {f"{name}-numpy": by_name[name] for name in ("integer", "integer-pruned", "integer-head")
                     if name in by_name}
    results = {
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average": os.getloadavg()},
        "window": {"events": len(window.events), "t_start": window.t_start, "window_us": 50_000, "bins": 5,
                   "input": [WIDTH, HEIGHT]},
        "rounds": args.rounds,
        "pruned": str(args.pruned) if args.pruned else None,
        "contenders": {
            p.name: {
                **{f"{s}_ms": {"median": statistics.median(p.times[s]), "p99": percentile(p.times[s], 99)}
                   for s in (*STAGES, "total", "head") if p.times[s]},
                "speedup_vs_fp32_dense": base / statistics.median(p.times["total"]),
                **({"speedup_vs_torch_runtime": statistics.median(torch_runtime[p.name].times["total"])
                    / statistics.median(p.times["total"])} if p.name in torch_runtime else {}),
                "detections": p.detections,
            }
            for p in pipelines
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"one window: {len(window.events)} events, {WIDTH}x{HEIGHT}, T=5, batch 1, {args.threads} threads, "
          f"{args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    print(f"{'pipeline':<22}{'histogram':>11}{'network':>10}{'nms':>8}{'total':>9}{'p99':>9}{'vs fp32':>9}"
          f"{'head':>9}")
    for name, r in results["contenders"].items():
        versus = r.get("speedup_vs_torch_runtime")
        head = f"{r['head_ms']['median']:>7.2f}ms" if "head_ms" in r else f"{'-':>9}"
        print(f"{name:<22}{r['histogram_ms']['median']:>9.2f}ms{r['network_ms']['median']:>8.2f}ms"
              f"{r['nms_ms']['median']:>6.2f}ms{r['total_ms']['median']:>7.2f}ms{r['total_ms']['p99']:>7.2f}ms"
              f"{r['speedup_vs_fp32_dense']:>8.2f}x{head}"
              + (f"  ({versus:.2f}x vs its torch runtime)" if versus is not None else ""))
    if args.pruned is None:
        print("integer-pruned: not measured (pass --pruned CKPT, a checkpoint from `spquant prune`)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
