"""Print the results table of reproduce/README.md from reproduce/results/*/result_<preset>.json.

    python reproduce/summarize.py [--preset cpu]

One row per script: the claim in short, the verdict and its sub-claims, the measured result (the verdict's reason,
which quotes the numbers), the script and its wall time. The exact command and hardware are in each JSON. Written so the README's table is copied from the
results files rather than typed by hand.
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ORDER = ["probability_inflation", "orpo_vs_sft", "odds_vs_probability_ratio", "lambda_ablation", "gradient_formula",
         "memory_and_time"]
SHORT = {  # the claim in a few words (the full statement is in each JSON's "claim")
    "probability_inflation": "§3 Fig. 3: SFT on chosen raises chosen AND rejected log-probs",
    "orpo_vs_sft": "§7.2 Fig. 7: ORPO (λ=1) lowers rejected, keeps chosen near SFT, log OR rises",
    "odds_vs_probability_ratio": "§7.1 Fig. 6: β·log PR sharper than log OR; App. B Fig. 8: PR drives log-probs < −4 first",
    "lambda_ablation": "App. E Fig. 9: larger λ, stronger discrimination",
    "gradient_formula": "Eq. 8–10: ∇L_OR = −δ·h; δ weights wrong pairs more",
    "memory_and_time": "ORPO ≈ ½ DPO's memory; ORPO step ≈ 2× SFT step",
}


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
    print("| claim | verdict (sub-claims) | measured, cpu preset | script, wall time |")
    print("|---|---|---|---|")
    for name, r in rows(args.preset):
        if r is None:
            print(f"| {SHORT[name]} | not run | | `{name}.py` |")
            continue
        hw = r["hardware"]
        sub = "<br>".join(f"{k}: {v}" for k, v in r["verdicts"].items())
        print(f"| {SHORT[name]} | **{r['verdict']}**<br>{sub} | {r['verdict_reason']} | `{name}.py`, "
              f"{r['wall_time_s'] / 60:.1f} min ({hw['torch_threads']} thread, load {hw.get('load_average_1min')}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
