"""The Prophesee automotive evaluation protocol, as RVT applies it to Gen1.

For each recording: ground truth and detections are both filtered (drop ``t <= 0.5 s``; keep ``w² + h² >= 30²``,
``w >= 10`` and ``h >= 10``); every unique ground-truth timestamp ``ts`` becomes one COCO image holding the boxes
with ``t == ts`` and the detections with ``|t - ts| <= 50 ms``; COCO bbox AP (pycocotools defaults, computed by
faster-coco-eval) is taken over all images of all recordings, with ``category_id = class_id + 1``.

One deliberate choice: when detections exist at several timestamps inside the tolerance of one ``ts`` (a detector
that emits every 50 ms window), only those of the single timestamp nearest to ``ts`` are scored
(``nearest_only=True``), because counting several windows' copies of one object would be scored as duplicates.
For detections emitted once per label timestamp both rules are identical; ``nearest_only=False`` gives the
toolbox's literal rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.box_filter import GEN1_FILTER, BoxFilter
from data.formats.labels import BBOX_DTYPE, GEN1_CLASSES

_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")




def match_times(
    gt: np.ndarray, dt: np.ndarray, time_tol_us: int = 50_000, nearest_only: bool = True
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """One ``(ts, gt_at_ts, detections_for_ts)`` per unique ground-truth timestamp (inputs in :data:`BBOX_DTYPE`)."""
    gt = gt[np.argsort(gt["t"], kind="stable")]
    dt = dt[np.argsort(dt["t"], kind="stable")]
    images = []
    for ts in np.unique(gt["t"]):
        lo, hi = np.searchsorted(gt["t"], [ts, ts + 1])
        d_lo, d_hi = np.searchsorted(dt["t"], [ts - time_tol_us, ts + time_tol_us + 1])
        near = dt[d_lo:d_hi]
        if nearest_only and len(near):
            gap = np.abs(near["t"] - ts)
            # ties go to the later timestamp, as data.windows.label_window_index assigns a label to a window
            best = near["t"][gap == gap.min()].max()
            near = near[near["t"] == best]
        images.append((int(ts), gt[lo:hi], near))
    return images


def evaluate_detections(
    recordings: Sequence[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str] = GEN1_CLASSES,
    box_filter: BoxFilter = GEN1_FILTER,
    time_tol_us: int = 50_000,
    nearest_only: bool = True,
) -> dict[str, object]:
    """COCO AP of detections against ground truth over several recordings, by the Prophesee protocol.

    ``recordings`` holds one ``(ground_truth, detections)`` pair per recording, both in :data:`BBOX_DTYPE`
    (detection scores in ``class_confidence``). Returns ``AP, AP50, AP75, APs, APm, APl`` (0..1), ``per_class``
    (AP per class name, None where a class has no ground truth) and the number of images and boxes scored.
    """
    images, annotations, detections = [], [], []
    for gt, dt in recordings:
        for ts, gt_boxes, dt_boxes in match_times(
            box_filter(_as_boxes(gt)), box_filter(_as_boxes(dt)), time_tol_us, nearest_only
        ):
            image_id = len(images) + 1
            images.append({"id": image_id, "height": 240, "width": 304, "ts": ts})
            for box in gt_boxes:
                w, h = float(box["w"]), float(box["h"])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(box["class_id"]) + 1,
                        "bbox": [float(box["x"]), float(box["y"]), w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            for box in dt_boxes:
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": int(box["class_id"]) + 1,
                        "bbox": [float(box["x"]), float(box["y"]), float(box["w"]), float(box["h"])],
                        "score": float(box["class_confidence"]),
                    }
                )
    result: dict[str, object] = dict.fromkeys(_METRIC_NAMES, 0.0)
    result["per_class"] = {name: (0.0 if _has_class(annotations, i) else None) for i, name in enumerate(classes)}
    result.update(images=len(images), gt_boxes=len(annotations), detections=len(detections))
    if not annotations or not detections:
        return result
    return {**result, **_coco_ap(images, annotations, detections, classes)}


def _has_class(annotations: list[dict], class_id: int) -> bool:
    return any(a["category_id"] == class_id + 1 for a in annotations)


def _coco_ap(images: list[dict], annotations: list[dict], detections: list[dict], classes: Sequence[str]) -> dict:
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731 - faster-coco-eval prints through this callable
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    coco_gt = COCO({"images": images, "annotations": annotations, "categories": categories}, print_function=quiet)
    coco_dt = coco_gt.loadRes(detections)
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
    evaluator.params.imgIds = [image["id"] for image in images]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    # COCO reports -1 where a metric is undefined (e.g. no large ground-truth boxes): None says so honestly.
    stats = [float(s) if s >= 0 else None for s in evaluator.stats[: len(_METRIC_NAMES)]]
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if _has_class(annotations, k) and np.any(p > -1) else None
    return {**dict(zip(_METRIC_NAMES, stats, strict=True)), "per_class": per_class}


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    if boxes.dtype == BBOX_DTYPE:
        return boxes
    from data.formats.labels import normalize_boxes

    return normalize_boxes(boxes)
