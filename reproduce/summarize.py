"""Print the results table of reproduce/README.md from reproduce/results/*/result_<preset>.json.

    python reproduce/summarize.py [--preset cpu]

One row per script: the claim, the command that produced the numbers, the measured result (the verdict's reason,
which quotes the numbers), the verdict, wall time and machine. Written so the README's table is copied from the
results files rather than typed by hand.
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["probability_inflation", "orpo_vs_sft", "odds_vs_probability_ratio", "lambda_ablation", "gradient_formula",
         "memory_and_time"]


def rows(preset: str):
    for name in ORDER:
        path = RESULTS / name / f"result_{preset}.json"
        if not path.exists():
            yield name, None
            continue
        yield name, json.loads(path.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    args = p.parse_args(argv)
    print("| script | claim | command | measured (cpu preset) | verdict | wall time, machine |")
    print("|---|---|---|---|---|---|")
    for name, r in rows(args.preset):
        if r is None:
            print(f"| {name} | | | not run | | |")
            continue
        hw = r["hardware"]
        sub = "; ".join(f"{k}: {v}" for k, v in r["verdicts"].items())
        print(f"| `{name}` | {r['claim']} | `{r['command']}` | {r['verdict_reason']} ({sub}) | **{r['verdict']}** | "
              f"{r['wall_time_s'] / 60:.1f} min, {hw['cpu']}, {hw['torch_threads']} thread(s), "
              f"load avg {hw.get('load_average_1min')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
