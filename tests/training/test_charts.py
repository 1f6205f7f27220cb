"""training.charts: pure figure builders checked on fixed round data (and validated by plotly itself)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pytest

from training.web.charts import job as charts


def make_round(
    number: int,
    accuracy: float | None,
    *,
    status: str = "committed",
    attempt: int = 1,
    loss: float | None = 1.0,
    timings: dict[str, float] | None = None,
    bytes_down: int = 0,
    bytes_up: int = 0,
) -> dict[str, Any]:
    """A dict shaped like Round.snapshot()."""
    return {
        "id": number * 10 + attempt,
        "number": number,
        "attempt": attempt,
        "status": status,
        "goal": 4,
        "accuracy": accuracy,
        "loss": loss,
        "timings": timings
        or {"select": 0.1, "push": 0.5, "train": 2.0, "pull": 0.3, "aggregate": 0.2, "wall": 3.4},
        "bytes_down": bytes_down,
        "bytes_up": bytes_up,
        "metrics": {},
        "reason": "",
    }


ROUNDS = [
    make_round(1, 0.50, loss=1.6),
    make_round(2, None, status="abandoned", loss=None),
    make_round(2, 0.82, attempt=2, loss=0.7),
    make_round(3, 0.91, loss=0.4),
    make_round(4, 0.93, loss=0.3),
    make_round(5, None, status="training", loss=None),
]


def test_rounds_to_target_is_the_first_committed_round_reaching_it() -> None:
    assert charts.rounds_to_target(ROUNDS, 0.9) == 3
    assert charts.rounds_to_target(ROUNDS, 0.82) == 2
    assert charts.rounds_to_target(ROUNDS, 0.5) == 1
    assert charts.rounds_to_target(ROUNDS, 0.95) is None
    assert charts.rounds_to_target([], 0.1) is None


def test_final_accuracy_ignores_rounds_still_running() -> None:
    assert charts.final_accuracy(ROUNDS) == pytest.approx(0.93)
    assert charts.final_accuracy([make_round(1, None, status="training")]) is None


def test_accuracy_loss_figure_plots_committed_rounds_on_two_axes() -> None:
    fig = charts.accuracy_loss_figure(ROUNDS)
    accuracy, loss = fig["data"]
    assert accuracy["x"] == [1, 2, 3, 4]
    assert accuracy["y"] == [0.50, 0.82, 0.91, 0.93]
    assert loss["y"] == [1.6, 0.7, 0.4, 0.3]
    assert loss["yaxis"] == "y2"
    assert fig["layout"]["yaxis2"]["overlaying"] == "y"
    assert "Accuracy" in fig["layout"]["yaxis"]["title"]["text"]
    go.Figure(fig)  # raises if the dict is not a valid Plotly figure


def test_a_ctr_job_plots_its_auc_where_others_plot_accuracy() -> None:
    rounds = [{**make_round(n, 0.3, loss=0.69 - n / 100), "metrics": {"auc": 0.55 + n / 100}} for n in (1, 2)]
    fig = charts.dashboard_figures(rounds, headline="AUC")["accuracy_loss"]
    auc, loss = fig["data"]
    assert auc["name"] == "AUC" and auc["y"] == [pytest.approx(0.56), pytest.approx(0.57)]
    assert loss["y"] == [pytest.approx(0.68), pytest.approx(0.67)]
    assert fig["layout"]["yaxis"]["title"]["text"] == "AUC" and "AUC" in fig["layout"]["title"]["text"]
    go.Figure(fig)


def test_round_time_figure_stacks_phases_and_keeps_abandoned_attempts() -> None:
    fig = charts.round_time_figure(ROUNDS)
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [b["name"] for b in bars] == ["Select", "Push", "Train", "Pull", "Aggregate"]
    assert bars[0]["x"] == ["1", "2", "2 (try 2)", "3", "4"]  # the running round 5 is not drawn yet
    assert bars[2]["y"] == [2.0] * 5
    wall = fig["data"][-1]
    assert wall["name"] == "Wall time" and wall["y"] == [3.4] * 5
    assert wall["text"][1] == "abandoned"
    assert fig["layout"]["barmode"] == "stack"
    assert fig["layout"]["yaxis"]["title"]["text"] == "Seconds (s)"
    go.Figure(fig)


def test_bytes_figure_picks_a_readable_unit() -> None:
    rounds = [make_round(1, 0.5, bytes_down=2_500_000, bytes_up=1_200_000)]
    fig = charts.bytes_figure(rounds)
    down, up = fig["data"]
    assert down["y"] == [pytest.approx(2.5)] and up["y"] == [pytest.approx(1.2)]
    assert fig["layout"]["yaxis"]["title"]["text"] == "Data (MB)"
    small = charts.bytes_figure([make_round(1, 0.5, bytes_down=800, bytes_up=20)])
    assert small["layout"]["yaxis"]["title"]["text"] == "Data (B)"
    go.Figure(fig)


@pytest.mark.parametrize(
    ("largest", "unit"), [(0, "B"), (999, "B"), (1000, "kB"), (3_000_000, "MB"), (4 * 10**9, "GB")]
)
def test_byte_unit(largest: int, unit: str) -> None:
    assert charts.byte_unit(largest)[0] == unit


def test_compare_figure_has_one_curve_per_job_and_a_target_line() -> None:
    other = [make_round(1, 0.3), make_round(2, 0.6)]
    fig = charts.compare_accuracy_figure([("fedavg", ROUNDS), ("fedprox <b>", other)], target=0.9)
    assert [t["name"] for t in fig["data"]] == ["fedavg", "fedprox <b>"]
    assert fig["data"][1]["x"] == [1, 2]
    assert "<b>" not in fig["data"][1]["hovertemplate"]
    (line,) = fig["layout"]["shapes"]
    assert line["y0"] == line["y1"] == 0.9
    assert charts.compare_accuracy_figure([("a", other)])["layout"]["shapes"] == []
    go.Figure(fig)


def test_empty_job_gives_empty_but_valid_figures() -> None:
    figures = charts.dashboard_figures([])
    assert set(figures) == {"accuracy_loss", "round_time", "bytes"}
    for fig in figures.values():
        assert all(trace["x"] == [] for trace in fig["data"])
        go.Figure(fig)


@pytest.mark.parametrize(
    ("last_round", "step"), [(1, 1), (4, 1), (10, 1), (11, 2), (30, 5), (100, 10), (101, 20), (1000, 100)]
)
def test_round_ticks_are_whole_numbers(last_round: int, step: int) -> None:
    assert charts.round_tick_step(last_round) == step
    fig = charts.accuracy_loss_figure([make_round(n, 0.5) for n in range(1, last_round + 1)])
    assert fig["layout"]["xaxis"]["dtick"] == step
