"""`minorpo plot RUN_DIR`: PNG plots of a run's metrics.jsonl (matplotlib, no display needed).

Writes RUN_DIR/plots/loss.png (total, NLL and L_OR), logps.png (chosen vs rejected), log_odds.png (log odds ratio
and preference accuracy) and optimization.png (learning rate, gradient norm). Each shows what was logged: training
metrics per step (thin line) with a moving average (thick; default_window), and held-out evaluations as markers.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from minorpo.errors import MissingFileError, UserError


def in_notebook() -> bool:
    return "ipykernel" in sys.modules


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only), except in a notebook kernel, which shows figures inline."""
    import matplotlib
    if not in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tutorial_folder(name: str) -> Path:
    """Where tutorial `name` writes its figures and files: $MINORPO_TUTORIAL_OUT/<name> when that is set, else a new
    temporary folder (never the checkout)."""
    root = os.environ.get("MINORPO_TUTORIAL_OUT")
    folder = Path(root) / name if root else Path(tempfile.mkdtemp(prefix=f"minorpo-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, folder, filename: str) -> Path:
    """Save a tutorial's figure as PNG and print its path; closed unless a notebook shows it inline."""
    path = Path(folder) / filename
    fig.savefig(path, dpi=110, bbox_inches="tight")
    if not in_notebook():
        pyplot().close(fig)
    print(f"figure: {path}")
    return path


def read_metrics(run_dir) -> list:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingFileError(f"{run_dir}: no such run folder" if not run_dir.exists() else
                               f"{run_dir} is a file; pass the run folder that `minorpo train --out` wrote")
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise MissingFileError(f"{path} not found: {run_dir} is not a minorpo run folder (or its run has not "
                               f"logged a step yet)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path}:{i}: not JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError(f"{path}:{i}: expected a JSON object with an integer 'step'")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} is empty: nothing to plot")
    return rows


def series(rows, key):
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def moving_average(y, k: int) -> list:
    """Trailing mean over the last k values (fewer at the start); k <= 1 returns the values as they are."""
    if k <= 1:
        return list(y)
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out


def default_window(n: int) -> int:
    """Steps in the moving average: a tenth of the run, at least 5 (one step's batch is a few pairs: noise) and at
    most 50 (a long run keeps its shape), never more than the run."""
    return max(1, min(n, max(5, min(50, n // 10))))


def _line(ax, rows, key, label, color, smooth):
    x, y = series(rows, key)
    if not x:
        return False
    ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(x, moving_average(y, smooth), color=color, linewidth=2,
            label=f"{label} (train, mean of last {smooth} steps)" if smooth > 1 else f"{label} (train)")
    return True


def _points(ax, rows, key, label, color):
    x, y = series(rows, key)
    if x:
        ax.plot(x, y, "o--", color=color, markersize=6, linewidth=1.5, label=f"{label} (held-out)")
        for xi, yi in zip(x, y):  # the numbers a reader compares, written beside the markers
            ax.annotate(f"{yi:.3g}", (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=7, color=color)
    return bool(x)


def figures(rows, cfg: dict, smooth: int = 0) -> dict:
    """{file name: matplotlib figure} for a run's metrics rows (and its config, for the titles)."""
    plt = pyplot()

    train_rows = [r for r in rows if "loss" in r]
    smooth = smooth or default_window(len(train_rows))
    title = f"{str(cfg.get('method', '?')).upper()} on {Path(str(cfg.get('data', '?'))).name}"
    if cfg.get("method") == "orpo":
        title += f", λ = {cfg.get('lam')}"
    figs = {}

    fig, (ax, ax_or) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    _line(ax, train_rows, "loss", "total loss", "black", smooth)
    _line(ax, train_rows, "nll_loss", "NLL (L_SFT)", "tab:blue", smooth)
    _points(ax, rows, "eval_nll_loss", "NLL", "tab:blue")
    ax.set(ylabel="loss (nats)", title=f"Loss\n{title}")
    _line(ax_or, train_rows, "odds_ratio_loss", "L_OR", "tab:red", smooth)  # its own axis: ~10x smaller than NLL
    _points(ax_or, rows, "eval_odds_ratio_loss", "L_OR", "darkred")
    ax_or.set(xlabel="optimizer step", ylabel="L_OR = -log σ(log OR) (nats, Eq. 7)")
    for a in (ax, ax_or):
        a.grid(alpha=0.3), a.legend(fontsize=8)
    figs["loss.png"] = fig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _line(ax, train_rows, "logps/chosen", "chosen", "tab:green", smooth)
    _line(ax, train_rows, "logps/rejected", "rejected", "tab:red", smooth)
    _points(ax, rows, "eval_logps/chosen", "chosen", "darkgreen")
    _points(ax, rows, "eval_logps/rejected", "rejected", "darkred")
    ax.set(xlabel="optimizer step", ylabel="mean per-token log-prob (nats, Eq. 3)",
           title=f"Chosen vs rejected log-probabilities\n{title}")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    figs["logps.png"] = fig

    fig, (ax, ax_acc) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    _line(ax, train_rows, "log_odds_chosen", "log odds ratio", "tab:purple", smooth)
    _points(ax, rows, "eval_log_odds_chosen", "log odds ratio", "indigo")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set(ylabel="log OR(y_w, y_l) (nats, Eq. 5)", title=f"Log odds ratio and preference accuracy\n{title}")
    _line(ax_acc, train_rows, "rewards/accuracies", "accuracy", "tab:orange", smooth)
    _points(ax_acc, rows, "eval_rewards/accuracies", "accuracy", "saddlebrown")
    ax_acc.axhline(0.5, color="gray", linewidth=0.8)
    ax_acc.set(xlabel="optimizer step", ylabel="fraction of pairs with log OR > 0", ylim=(0, 1))
    for a in (ax, ax_acc):
        a.grid(alpha=0.3), a.legend(fontsize=8)
    figs["log_odds.png"] = fig

    fig, (ax_lr, ax_g) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    x, lr = series(train_rows, "lr")
    if x:
        ax_lr.plot(x, lr, color="tab:gray", linewidth=2)
    ax_lr.set(ylabel="learning rate", title=f"Optimization\n{title}")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    _line(ax_g, train_rows, "grad_norm", "gradient norm (before clipping)", "tab:brown", smooth)
    if cfg.get("max_grad_norm"):
        ax_g.axhline(cfg["max_grad_norm"], color="gray", linestyle=":", label=f"clip at {cfg['max_grad_norm']}")
    ax_g.set(xlabel="optimizer step", ylabel="global gradient norm")
    ax_g.legend(fontsize=8)
    for a in (ax_lr, ax_g):
        a.grid(alpha=0.3)
    figs["optimization.png"] = fig
    for f in figs.values():
        f.tight_layout()
    return figs


def plot_run(run_dir, smooth: int = 0) -> list:
    plt = pyplot()

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    cfg_path = run_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, fig in figures(rows, cfg, smooth).items():
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def add_cli(subparsers):
    p = subparsers.add_parser("plot", help="plot a run's metrics (loss, chosen vs rejected log-probs, log odds, lr and gradient norm)",
                              description=__doc__)
    p.add_argument("run_dir", help="a run folder written by `minorpo train` (holds metrics.jsonl)")
    p.add_argument("--smooth", type=int, default=0, help="moving-average window in steps (default: a tenth of the run, 5 to 50)")
    p.set_defaults(func=_cli_main)


def _cli_main(args) -> int:
    if args.smooth < 0:
        raise UserError(f"--smooth {args.smooth}: must be >= 0 (0 = a tenth of the run, 5 to 50)")
    for path in plot_run(args.run_dir, args.smooth):
        print(path)
    return 0
