"""Print the results table of reproduce/README.md from reproduce/results/<model>/<script>/result_<preset>.json.

    python reproduce/summarize.py [--preset cpu] [--results DIR]

One row per claim (a script may state several unrelated claims, each with its own verdict) and model: the
verdict, the per-seed verdicts, the measured result (the verdict's reason, which quotes the numbers), the
script and its wall time. The exact command and hardware are in each JSON. Written so the README's table is
copied from the results files rather than typed by hand.
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["lr_pilot", "probability_inflation", "orpo_vs_sft", "odds_vs_probability_ratio", "lambda_ablation", "gradient_formula",
         "memory_and_time", "reward_model", "win_rate"]


def records(root: Path, preset: str):
    """(model folder, script, record) for every result file, models in name order, scripts in ORDER."""
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        for script in ORDER:
            path = model / script / f"result_{preset}.json"
            if path.exists():
                yield model.name, script, json.loads(path.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--results", default=str(RESULTS), help="the results folder (default reproduce/results)")
    args = p.parse_args(argv)
    print(f"| claim | model | verdict (per seed) | measured, {args.preset} preset | script, wall time |")
    print("|---|---|---|---|---|")
    for model, script, r in records(Path(args.results), args.preset):
        hw = r["hardware"]
        for name, c in r["claims"].items():
            seeds = ", ".join(f"{s}: {v}" for s, v in c["per_seed"].items())
            reason = c["reason"].replace("|", "/")
            print(f"| {name} | {model} | **{c['verdict']}**<br>{seeds} | {reason} | `{script}.py`, "
                  f"{r['wall_time_s'] / 60:.1f} min ({hw['torch_threads']} threads, load {hw.get('load_average_1min')}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
