"""Plots that fit the run (issue 19): short runs get visible points and a learning-rate panel, integer keys get
integer ticks, fraction metrics stay within [0, 1]."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mmpt.plots import fraction_axis, integer_ticks, is_fraction, plot_curves  # noqa: E402
from mmpt.sweep_summary import plot_sweep  # noqa: E402


def test_a_short_run_draws_points_in_both_panels(tmp_path, monkeypatch):
    log = tmp_path / "log.csv"
    log.write_text("stage,step,loss,lr,samples_per_s\nprefix,1,2.5,0.01,3.0\n")
    drawn = {}
    real_close = plt.close

    def keep(fig):
        drawn["fig"] = fig
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    assert plot_curves(log, tmp_path / "curves.png") == tmp_path / "curves.png"
    loss, lr = drawn["fig"].axes
    for ax in (loss, lr):
        [line] = ax.get_lines()
        assert line.get_marker() == "o" and list(line.get_xdata()) == [1]
    assert [t.get_text() for t in lr.get_xticklabels()] == ["1"]
    assert "1 logged step(s)" in loss.texts[0].get_text()


@pytest.mark.parametrize("metric,fraction", [("accuracy", True), ("accuracy/color", True), ("mme/acc", True),
                                             ("acc@0.5", True), ("cider", False), ("mme/score", False)])
def test_fraction_metrics(metric, fraction):
    assert is_fraction(metric) == fraction


def test_fraction_axes_stay_within_0_and_1_and_integer_keys_get_integer_ticks():
    fig, ax = plt.subplots()
    ax.plot([4, 8], [0.0, 0.0])
    fraction_axis(ax, "accuracy")
    integer_ticks(ax, [4, 8])
    assert ax.get_ylim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [0.80, 0.99])
    fraction_axis(ax2, "accuracy")
    low, high = ax2.get_ylim()
    assert 0.0 <= low < 0.80 and 0.99 < high <= 1.0
    plt.close(fig)
    plt.close(fig2)


def test_a_sweep_over_prefix_lengths_shows_the_lengths(tmp_path, monkeypatch):
    rows = [{"method.length": "4", "mean": 0.0, "std": 0.0, "n": 2, "seeds": "0,1"},
            {"method.length": "8", "mean": 0.0, "std": 0.0, "n": 2, "seeds": "0,1"}]
    monkeypatch.setattr("mmpt.sweep_summary.swept_keys", lambda rows: ["method.length"])
    drawn = {}
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (drawn.setdefault("fig", fig), real_close(fig)))
    plot_sweep(rows, "accuracy", tmp_path / "sweep.png")
    [ax] = drawn["fig"].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8"]
    assert ax.get_ylim() == (0.0, 1.0)
