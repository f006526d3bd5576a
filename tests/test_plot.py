"""`minorpo plot`: which series each figure draws, and the default smoothing for the run's length.

Oracle: a metrics.jsonl written by hand (60 steps, held-out rows at 0, 20, 40, 60): the figures must hold each
logged series, point for point, and label the moving average with its real window.
"""

import json

import pytest

pytest.importorskip("matplotlib")

from minorpo.tools.plot import default_window, figures, moving_average, plot_run  # noqa: E402


def _rows(n=60, every=20):
    ev = lambda s: {"eval_nll_loss": 2.7 - s / 1000, "eval_odds_ratio_loss": 0.74 - s / 2000,
                    "eval_log_odds_chosen": 0.05 + s / 1000, "eval_rewards/accuracies": 0.5 + s / 600,
                    "eval_logps/chosen": -2.6, "eval_logps/rejected": -2.7}
    rows = [{"step": 0, **ev(0)}]
    for s in range(1, n + 1):
        row = {"step": s, "loss": 3.4 - s / 100, "nll_loss": 2.7, "odds_ratio_loss": 0.7 - s / 1000,
               "log_odds_chosen": s / 100, "rewards/accuracies": (s % 2) * 1.0, "logps/chosen": -2.6,
               "logps/rejected": -2.7, "lr": 3e-4 * min(1, s / 3), "grad_norm": 1 + (s % 5) / 10}
        rows.append({**row, **(ev(s) if s % every == 0 else {})})
    return rows


def _labels(fig):
    return [line.get_label() for ax in fig.axes for line in ax.get_lines()]


def test_default_window_fits_the_run_length():
    assert default_window(30) == 5 and default_window(60) == 6 and default_window(300) == 30
    assert default_window(5000) == 50 and default_window(3) == 3
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]  # trailing mean (hand arithmetic)


def test_figures_show_held_out_l_or_lr_and_grad_norm():
    import matplotlib
    matplotlib.use("Agg")
    figs = figures(_rows(), {"method": "orpo", "lam": 1.0, "data": "x.jsonl", "max_grad_norm": 1.0})
    assert sorted(figs) == ["log_odds.png", "logps.png", "loss.png", "optimization.png"]
    loss = _labels(figs["loss.png"])
    assert "L_OR (held-out)" in loss and "L_OR (train, mean of last 6 steps)" in loss
    [held_out] = [ln for ax in figs["loss.png"].axes for ln in ax.get_lines() if ln.get_label() == "L_OR (held-out)"]
    assert list(held_out.get_xdata()) == [0, 20, 40, 60]
    assert list(held_out.get_ydata()) == pytest.approx([0.74, 0.73, 0.72, 0.71])
    assert "accuracy (held-out)" in _labels(figs["log_odds.png"])
    opt = figs["optimization.png"]
    lr_line = opt.axes[0].get_lines()[0]
    assert list(lr_line.get_ydata()) == pytest.approx([r["lr"] for r in _rows()[1:]])
    assert "gradient norm (before clipping) (train, mean of last 6 steps)" in _labels(opt)


def test_plot_run_writes_the_pngs(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["log_odds.png", "logps.png", "loss.png", "optimization.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
