"""Availability figures are computed from recorded rows: the heatmap grid, participation against data
share and the availability bias, checked by hand on fixed records (training.analysis.availability, pure)."""

from __future__ import annotations

import math

import pytest

from training.analysis.availability import (
    PhoneInfo,
    RoundRecord,
    build_report,
    cell_state,
    latest_represented,
    shown_attempts,
)
from training.web.charts import availability as availability_charts
from training.web.charts import job as charts
from training.web.charts.availability import report_figures

# Three phones: a holds class 0 only, b class 1 only, c both (2 + 2); population = [6, 6] → (0.5, 0.5).
PHONES = [
    PhoneInfo("1", "a", 4, [4, 0]),
    PhoneInfo("2", "b", 4, [0, 4]),
    PhoneInfo("3", "c", 4, [2, 2]),
]
RECORDS = [
    # round 1: a reports, b is offline, c was idle
    RoundRecord(1, 1, "committed", {"1": "selected", "2": "offline", "3": "idle"}, {"1": "reported"}),
    # round 2, first attempt abandoned (a failed); its retry commits with b reporting and c late
    RoundRecord(2, 1, "abandoned", {"1": "selected", "2": "idle", "3": "idle"}, {"1": "failed"}),
    RoundRecord(
        2, 2, "committed", {"1": "busy", "2": "selected", "3": "selected"}, {"2": "reported", "3": "late"}
    ),
    # round 3 still running: a training, b rejected, c ineligible
    RoundRecord(
        3,
        1,
        "training",
        {"1": "selected", "2": "selected", "3": "ineligible"},
        {"1": "training", "2": "rejected"},
    ),
]


def test_cell_state_prefers_the_outcome_and_maps_every_recorded_state() -> None:
    assert cell_state("selected", "reported") == "reported"
    assert cell_state("selected", "pulling") == "selected"
    assert cell_state("selected", "dropped") == "failed"
    assert cell_state("selected", None) == "not_leased"  # chosen but never leased
    assert cell_state("idle", None) == "idle"
    assert cell_state(None, None) is None
    assert cell_state("teleported", None) is None  # unknown: shown as not recorded, never guessed


def test_committed_attempt_wins_over_a_later_abandoned_one() -> None:
    records = [
        RoundRecord(1, 1, "committed", {}, {}),
        RoundRecord(1, 2, "abandoned", {}, {}),
        RoundRecord(2, 1, "abandoned", {}, {}),
        RoundRecord(2, 2, "training", {}, {}),
    ]
    assert [(r.number, r.attempt) for r in shown_attempts(records)] == [(1, 1), (2, 2)]


def test_heatmap_grid_from_recorded_rows() -> None:
    report = build_report(RECORDS, PHONES, algorithm="fedavg")
    assert report.rounds == [1, 2, 3]
    assert report.cells == [
        ["reported", "busy", "selected"],
        ["offline", "reported", "rejected"],
        ["idle", "late", "ineligible"],
    ]
    assert report.hidden_rounds == 0


def test_heatmap_keeps_only_the_latest_rounds_when_asked() -> None:
    report = build_report(RECORDS, PHONES, algorithm="fedavg", max_rounds=2)
    assert report.rounds == [2, 3] and report.hidden_rounds == 1
    assert report.cells[0] == ["busy", "selected"]
    assert len(report.participation) == 3 and report.participation[0].times_reported == 1  # numbers keep all


def test_participation_counts_against_data_share() -> None:
    rows = {r.client_id: r for r in build_report(RECORDS, PHONES, algorithm="fedavg").participation}
    # a: reported, busy (= unavailable), selected → online 2, selected 2, reported 1
    assert (rows["1"].rounds_online, rows["1"].times_selected, rows["1"].times_reported) == (2, 2, 1)
    # b: offline, reported, rejected (= failed) → online 2, selected 2, reported 1
    assert (rows["2"].rounds_online, rows["2"].times_selected, rows["2"].times_reported) == (2, 2, 1)
    # c: idle, late, ineligible (= unavailable) → online 2, selected 1, reported 0
    assert (rows["3"].rounds_online, rows["3"].times_selected, rows["3"].times_reported) == (2, 1, 0)
    assert rows["1"].participation_share == 0.5 and rows["3"].participation_share == 0.0
    assert [rows[c].data_share for c in "123"] == pytest.approx([1 / 3] * 3)


def test_bias_per_round_and_cumulative_from_committed_rounds_only() -> None:
    bias = build_report(RECORDS, PHONES, algorithm="fedavg").bias
    assert [b.round_no for b in bias] == [1, 2]  # round 3 is not committed
    # round 1: only a (class 0) → (1, 0) vs (0.5, 0.5): TV 0.5; round 2: only b → (0, 1): TV 0.5
    assert [b.tv for b in bias] == [0.5, 0.5]
    # cumulative after round 2: a + b = [4, 4] → (0.5, 0.5): TV 0
    assert bias[0].cumulative_tv == 0.5 and bias[1].cumulative_tv == 0.0
    assert bias[0].kl == pytest.approx(math.log(2))


def test_fedlaavg_bias_counts_every_phone_whose_latest_update_is_held() -> None:
    report = build_report(RECORDS, PHONES, algorithm="fedlaavg")
    assert report.bias_basis == "latest"
    # round 2: a's stale update and b's new one → [4, 4] → TV 0, where FedAvg's round-2 step is 0.5 off
    assert [b.tv for b in report.bias] == [0.5, 0.0]
    assert latest_represented({1: {"1": "reported"}, 2: {"2": "reported", "3": "late"}}) == {
        1: {"1": "reported"},
        2: {"1": "reported", "2": "reported"},
    }


def test_summary_numbers() -> None:
    summary = build_report(RECORDS, PHONES, algorithm="fedavg").summary()
    assert summary["mean_tv"] == 0.5 and summary["rounds"] == 2 and summary["basis"] == "reporters"
    assert summary["final_cumulative_tv"] == 0.0 and summary["max_tv"] == 0.5


def test_no_label_counts_means_no_bias_rather_than_an_error() -> None:
    phones = [PhoneInfo(p.client_id, p.label, p.num_samples, []) for p in PHONES]
    report = build_report(RECORDS, phones, algorithm="fedavg")
    assert report.bias == [] and report.summary()["mean_tv"] is None


def test_figures_built_from_the_report() -> None:
    figures = report_figures(build_report(RECORDS, PHONES, algorithm="fedavg"))
    assert set(figures) == {"availability_heatmap", "participation", "availability_bias"}
    heatmap = figures["availability_heatmap"]["data"][0]
    code = {key: i for i, (key, _, _) in enumerate(availability_charts.AVAILABILITY_STATES)}
    assert heatmap["y"] == ["a", "b", "c"] and heatmap["x"] == [1, 2, 3]
    assert heatmap["z"][0] == [code["reported"], code["busy"], code["selected"]]
    assert heatmap["text"][1][0] == "Offline"
    legend = [t["name"] for t in figures["availability_heatmap"]["data"][1:]]
    assert "Reported (aggregated)" in legend and "Idle (available, not selected)" in legend
    assert "Excluded" not in legend  # only states that occur get a legend entry
    bars = {t["name"]: t for t in figures["participation"]["data"]}
    assert bars["Updates aggregated"]["y"] == [1, 1, 0]
    assert bars["Fair share by data"]["y"] == pytest.approx([2 / 3] * 3)  # data share × 2 reports
    bias = {t["name"]: t["y"] for t in figures["availability_bias"]["data"]}
    assert bias["This round"] == [0.5, 0.5]


def test_heatmap_colour_scale_is_discrete_and_covers_every_state() -> None:
    scale = availability_charts.discrete_colorscale(["#000", "#111", "#222"])
    assert scale == [
        [0, "#000"],
        [1 / 3, "#000"],
        [1 / 3, "#111"],
        [2 / 3, "#111"],
        [2 / 3, "#222"],
        [1, "#222"],
    ]
    figure = availability_charts.availability_heatmap_figure(["p"], [1, 2], [["idle", None]])
    trace = figure["data"][0]
    idle = [key for key, _, _ in availability_charts.AVAILABILITY_STATES].index("idle")
    assert trace["z"] == [[idle, None]] and trace["text"] == [
        ["Idle (available, not selected)", "not recorded"]
    ]
    assert (trace["zmin"], trace["zmax"]) == (-0.5, len(availability_charts.AVAILABILITY_STATES) - 0.5)
    with pytest.raises(ValueError, match="unknown"):
        availability_charts.availability_heatmap_figure(["p"], [1], [["asleep"]])
    with pytest.raises(ValueError, match="one row per label"):
        availability_charts.availability_heatmap_figure(["p", "q"], [1], [["idle"]])


def test_bytes_chart_shows_the_strategy_payload_when_reported() -> None:
    rounds = [
        {"number": 1, "attempt": 1, "status": "committed", "bytes_down": 2_000_000, "bytes_up": 100_000,
         "metrics": {"download_bytes": 200_000.0, "upload_bytes": 100_000.0}},
        {"number": 2, "attempt": 1, "status": "committed", "bytes_down": 210_000, "bytes_up": 101_000,
         "metrics": {"download_bytes": 200_000.0, "upload_bytes": 100_000.0}},
    ]  # fmt: skip
    names = {t["name"]: t for t in charts.bytes_figure(rounds)["data"]}
    assert names["Model payload to phones (strategy)"]["y"] == [0.2, 0.2]  # MB
    plain = [{**r, "metrics": {}} for r in rounds]
    assert len(charts.bytes_figure(plain)["data"]) == 2  # FedAvg: just the wire bars
