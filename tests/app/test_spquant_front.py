"""The trade-off front of ``benchmarks/spquant_table.py`` from synthetic rows: Pareto fronts, methods, the figure.

No model runs: the rows carry only what a measured row would (``benchmarks/`` is not a package, so the script is loaded
from its file).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO


def _load_table() -> ModuleType:
    path = REPO / "benchmarks" / "spquant_table.py"
    spec = importlib.util.spec_from_file_location("spquant_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["spquant_table"] = module
    spec.loader.exec_module(module)
    return module


table = _load_table()


def _row(name: str, ap: float, mflops: float, kb: float, scale: str = "n", variant: str = "spquant",
         weight_bits: int = 4, head_bits: int = 32, head_act_bits: int = 0, pruned: bool = False) -> dict[str, Any]:
    row = {"name": name, "scale": scale, "variant": variant,
           "weight_bits": 32 if variant == "baseline" else weight_bits, "head_bits": head_bits,
           "head_act_bits": head_act_bits, "pruned": pruned, "AP": ap, "AP50": ap + 0.3,
           "flops_executed": mflops * 1e6, "flops_event_driven": 0.95 * mflops * 1e6, "flops_dense": mflops * 1e6,
           "memory_bytes": kb * 1e3, "shipped_bytes": None, "state_bytes": 1e3, "ms_per_window": 1.0}
    return {**row, "method": table.method_of(row)}


def _rows() -> list[dict[str, Any]]:
    rows = [_row("base n", 0.49, 109.4, 2500.7, variant="baseline"),
            _row("quantized n", 0.49, 109.1, 944.7),
            _row("ternary n", 0.40, 109.0, 169.0, weight_bits=2, head_bits=2, head_act_bits=8),
            _row("pruned n", 0.37, 22.0, 75.0, head_bits=4, pruned=True),
            _row("base s", 0.52, 360.0, 8000.0, scale="s", variant="baseline"),
            _row("pruned s", 0.51, 70.0, 250.0, scale="s", head_bits=4, pruned=True)]
    table.add_reductions(rows)
    return rows


@pytest.mark.parametrize(("points", "front"), [
    ([], []),
    ([(5.0, 0.3)], [0]),
    ([(1.0, 0.5), (1.0, 0.5)], [0, 1]),  # exact ties: the same operating point, both kept
    ([(1.0, 0.5), (1.0, 0.4)], [0]),  # same cost, lower AP
    ([(2.0, 0.5), (1.0, 0.5)], [1]),  # same AP, higher cost
    ([(1.0, 0.3), (2.0, 0.5), (3.0, 0.4)], [0, 1]),  # a trade-off, then a point beaten on both axes
    ([(3.0, 0.6), (1.0, 0.2), (2.0, 0.4)], [1, 2, 0]),  # returned by cost, whatever the input order
])
def test_pareto_front(points: list[tuple[float, float]], front: list[int]) -> None:
    assert table.pareto_front(points) == front


def test_pareto_front_tolerance_merges_near_equal_costs() -> None:
    points = [(100.0, 0.40), (100.5, 0.45), (50.0, 0.30)]
    assert table.pareto_front(points) == [2, 0, 1]
    assert table.pareto_front(points, tolerance=0.01) == [2, 1]  # 0.5 % apart: the same cost, the higher AP wins


def test_method_comes_from_the_config_fields() -> None:
    rows = {r["name"]: r["method"] for r in _rows()}
    assert rows["base n"] == "FP32 baseline"
    assert rows["quantized n"] == "quantized: 4-bit weights, FP32 head"
    assert rows["ternary n"] == "quantized: ternary weights, ternary integer head"
    assert rows["pruned n"] == "quantized + pruned: 4-bit weights, 4-bit head"
    gated = {"variant": "spquant", "weight_bits": 4, "head_bits": 4, "pruned": True, "channel_gates": True}
    assert table.method_of(gated) == "quantized + pruned + channel gates: 4-bit weights, 4-bit head"


def test_operating_points_each_scale_against_its_baseline() -> None:
    rows = _rows()
    assert [r["reference"] for r in rows] == ["base n"] * 4 + ["base s"] * 2
    front = table.operating_points(rows)
    assert front["pareto_flops"] == ["pruned n", "pruned s", "base s"]
    best = front["best_at_flops_target"]
    assert best["name"] == "pruned s" and best["AP_drop_points"] == pytest.approx(1.0) and best["meets_AP_target"]
    assert front["best_at_memory_target"]["name"] == "pruned s"
    assert "best at >= 4.7x executed FLOPs: pruned s" in table.format_summary(front)
    below = table.operating_points(rows[:3])  # nothing pruned: no row reaches 4.7x, the closest is named
    assert below["best_at_flops_target"] is None
    assert "no model reaches 4.7x" in table.format_summary(below)


@pytest.mark.parametrize("scales", [("n",), ("n", "s")])
def test_front_figure_is_drawn(tmp_path: Path, scales: tuple[str, ...]) -> None:
    rows = [r for r in _rows() if r["scale"] in scales]
    path = tmp_path / "front.png"
    table.plot_front(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_reference_compares_scales_at_equal_work(tmp_path: Path) -> None:
    rows = _rows()
    table.add_reductions(rows, "base n")  # every row against the smaller scale's baseline
    assert {r["reference"] for r in rows} == {"base n"}
    pruned_s = next(r for r in rows if r["name"] == "pruned s")
    assert pruned_s["flops_reduction"] == pytest.approx(109.4 / 70.0)
    assert pruned_s["AP_drop_points"] == pytest.approx(100 * (0.49 - 0.51))
    path = tmp_path / "front.png"
    table.plot_front(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no row is named 'base m'"):
        table.add_reductions(rows, "base m")


def test_rows_read_back_with_their_method(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "method"} for r in _rows()]
    path = tmp_path / "front.json"
    path.write_text(table.json.dumps({"rows": rows}))
    assert [r["method"] for r in table.read_rows(path)] == [r["method"] for r in _rows()]
