"""`minorpo conformance`: which ORPO conventions does another implementation follow?

Give it a model, the pairs (or the other code's own collated batch, --batch) and the loss and metrics that code
logged on exactly that batch. minorpo runs the model ONCE and computes every combination of conventions
(minorpo/tools/conventions.py): which tokens the NLL covers and how it is normalized, which tokens log P(y|x) averages,
the preference term (odds ratio, probability ratio, none), lambda, and the positions logits/* average over. Each
dimension is judged from the quantities that identify it, with its own tolerance; the verdict is the matching
coordinates and the known implementations that share them (TRL/Liger/Axolotl, official, LLaMA-Factory, ms-swift,
xtuner, the paper).

    minorpo conformance --model DIR --data pairs.jsonl --limit 4 --add-bos yes --metrics-json trainer_state.json

    minorpo conformance --model DIR --batch their_batch.safetensors --loss 2.3456 \\
        --metric nll_loss=2.301 --metric log_odds_ratio=-0.693

Report everything the other code logged: nll_loss (sft_loss) fixes the NLL dimension, logps/* and rewards/* the
log-prob tokens and lambda, odds_ratio_loss / log_odds_ratio (or the loss with nll_loss) the preference term,
logits/* the padded positions averaged. A loss alone cannot separate conventions. logits/* average over pad
positions: they match only if the padding is the same (--pad-to-multiple-of 8 for LLaMA-Factory); if they fit no
averaging they are left out of the verdict, with the reason printed. Batch composition matters for a token mean,
so the other implementation must have seen exactly these pairs, tokenized the same way (`minorpo data inspect`;
TRL prepends BOS: --add-bos yes), as one batch; --batch removes that doubt.
"""

from __future__ import annotations

import argparse

from minorpo.tools.conventions import DIMENSIONS, KNOWN, Predictor, combinations, score_batch
from minorpo.errors import UserError
from minorpo.hf.layouts import LAYOUTS
from minorpo.hf.loader import DTYPES

# the quantities compared, in the order printed
QUANTITIES = ["loss", "nll_loss", "odds_ratio_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen",
              "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
              "logits/chosen", "logits/rejected"]
# names other implementations log -> ours (LLaMA-Factory's sft_loss, the official code's wandb names, xtuner's)
ALIASES = {"sft_loss": "nll_loss", "Positive Geometric Mean": "logps/chosen",
           "Negative Geometric Mean": "logps/rejected", "Log Odds Ratio": "log_odds_ratio", "Log Odds": "log_odds_chosen",
           "chosen_rewards": "rewards/chosen", "rejected_rewards": "rewards/rejected",
           "reward_acc": "rewards/accuracies", "reward_margin": "rewards/margins"}
DERIVED = "(loss - nll_loss) / lambda"
# which dimensions each compared quantity depends on
DEPENDS = {"nll_loss": ("nll_coverage", "nll_normalization"),
           "loss": ("nll_coverage", "nll_normalization", "logps", "objective", "lam"),
           DERIVED: ("logps", "objective", "lam"), **{q: ("logps", "objective") for q in
                                                      ("odds_ratio_loss", "log_odds_ratio", "log_odds_chosen")},
           **{q: ("logps", "lam") for q in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                             "rewards/margins")},
           "logps/chosen": ("logps",), "logps/rejected": ("logps",),
           "logits/chosen": ("logits",), "logits/rejected": ("logits",)}
DIMENSION_NAMES = [*DIMENSIONS, "lam"]


def canonical_name(name: str) -> str:
    """A reported metric name -> ours: strips train/, eval/, eval_ prefixes and maps known aliases."""
    for prefix in ("train/", "eval/", "eval_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    name = ALIASES.get(name, name)
    if name not in QUANTITIES:
        raise UserError(f"unknown metric {name!r}; known: {', '.join(QUANTITIES)} (and {', '.join(ALIASES)})")
    return name


def parse_reported(loss: float | None, metrics: list[str] | None, logged: dict | None = None) -> dict[str, float]:
    """--loss, --metric NAME=VALUE and a --metrics-json dict -> {our name: value}."""
    reported = {canonical_name(k): v for k, v in (logged or {}).items()}
    if loss is not None:
        reported["loss"] = float(loss)
    for item in metrics or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--metric {item!r}: expected NAME=VALUE, e.g. rewards/chosen=-0.153")
        try:
            reported[canonical_name(name.strip())] = float(value)
        except ValueError as e:
            raise UserError(f"--metric {item!r}: {e}") from None
    return reported


def relative_difference(x: float, y: float) -> float:
    return abs(x - y) / max(abs(x), abs(y), 1e-12)


def _tolerance(name: str, value: float, pred: dict, reported: dict, rtol: float, lam: float) -> float:
    """Absolute tolerance of one quantity: rtol of the numbers it is computed from (a difference of two reported
    numbers, or of two log-probs, is only as precise as they are)."""
    if name == "rewards/accuracies":
        return rtol  # a fraction of the pairs, in [0, 1]
    if name == DERIVED:
        return rtol * ((abs(reported["loss"]) + abs(reported["nll_loss"])) / lam + abs(value))
    if name in ("rewards/margins", "log_odds_chosen", "log_odds_ratio", "odds_ratio_loss"):
        scale = pred["_scale_logps"] * (lam if name == "rewards/margins" else 1.0)
        return rtol * max(abs(value), scale)
    return rtol * abs(value) + 1e-12


def score_combinations(predictor: Predictor, reported: dict, rtol: float, lams, use_logits: bool = True):
    """[(coords, {quantity: (relative difference, difference / tolerance)})] for every combination."""
    rows = []
    for c in combinations(lams):
        p = predictor.predict(c)
        values = {k: v for k, v in reported.items() if use_logits or not k.startswith("logits/")}
        if "loss" in reported and "nll_loss" in reported and c["lam"] > 0:
            values[DERIVED] = (reported["loss"] - reported["nll_loss"]) / c["lam"]
            p = {**p, DERIVED: p["preference_term"]}
        scores = {k: (relative_difference(p[k], v), abs(p[k] - v) / _tolerance(k, v, p, reported, rtol, c["lam"]))
                  for k, v in values.items()}
        rows.append((c, scores))
    return rows


def candidate_lams(reported: dict, lam: float | None) -> tuple[list[float], str]:
    if lam is not None:
        return [lam], "given (--lam)"
    if "rewards/chosen" in reported and reported.get("logps/chosen"):
        inferred = reported["rewards/chosen"] / reported["logps/chosen"]
        return [inferred], "inferred: rewards/chosen / logps/chosen"
    return [0.1, 1.0], "not given: 0.1 and 1.0 tried (the defaults; pass --lam)"


def judge(predictor: Predictor, reported: dict, rtol: float, lam: float | None = None, logits: str = "auto"):
    """The decomposed verdict: (lines to print, exit status 0 if a known implementation matches on every
    identified dimension, else 1). logits: "auto" (judged, left out if no averaging fits) | "ignore"."""
    lams, lam_note = candidate_lams(reported, lam)
    lines = [f"lambda: {', '.join(f'{x:g}' for x in lams)} ({lam_note})"]
    has_logits = any(k.startswith("logits/") for k in reported)
    use_logits = has_logits and logits == "auto"
    if use_logits:
        rows = score_combinations(predictor, {k: v for k, v in reported.items() if k.startswith("logits/")}, rtol,
                                  lams[:1])
        best = min(rows, key=lambda r: max(s for _, s in r[1].values()))
        if max(s for _, s in best[1].values()) > 1:
            worst = max(best[1], key=lambda k: best[1][k][1])
            lines.append(f"logits/* fit no averaging (closest: {best[0]['logits']}, {worst} off by "
                         f"{best[1][worst][0]:.2e}): LEFT OUT of the verdict. They average over pad positions too, "
                         "which depend on the other code's padding (its pad id, --pad-to-multiple-of) and model.")
            use_logits = False
    elif has_logits:
        lines.append("logits/*: left out of the verdict (--logits ignore)")
    rows = score_combinations(predictor, reported, rtol, lams, use_logits)
    if not rows[0][1]:
        return lines + ["nothing reported to compare: pass --loss, --metric NAME=VALUE or --metrics-json"], 1
    identified = sorted({d for q in rows[0][1] for d in DEPENDS[q]}, key=DIMENSION_NAMES.index)
    if set(rows[0][1]) == {"loss"}:
        lines.append("WARNING: a loss alone cannot separate conventions (many combinations give the same loss); "
                     "report nll_loss, logps/* and the odds metrics too.")
    worst = {id(c): max(s for _, s in sc.values()) for c, sc in rows}
    matches = [(c, sc) for c, sc in rows if worst[id(c)] <= 1]
    lines += ["", "per dimension, from the quantities that depend on it (each candidate at its best combination; "
                  f"ratio = difference / tolerance, <= 1 matches; rtol {rtol:g}):"]
    for dim in identified:
        relevant = [q for q in rows[0][1] if dim in DEPENDS[q]]
        best = {}
        for c, sc in rows:
            v, w = c[dim], max(sc[q][1] for q in relevant)
            if v not in best or w < best[v][0]:
                best[v] = (w, c, {q: sc[q] for q in relevant})
        ranked = sorted(best.items(), key=lambda kv: kv[1][0])
        within = [v for v, (w, _, _) in ranked if w <= 1]
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in within) or "nothing"
        status = "not separated by the reported numbers" if len(within) > 1 else ("ok" if within else "FAILS")
        lines.append(f"  {dim:<18} {shown:<34} [{status}]  from {', '.join(relevant)}")
        for v, (w, c, sc) in ranked[:4]:
            q = max(sc, key=lambda k: sc[k][1])
            label = f"{v:g}" if isinstance(v, float) else str(v)
            lines.append(f"      {label:<28} ratio {w:9.3g}  (worst: {q}, relative difference {sc[q][0]:.2e})")
    if not matches:
        c, sc = min(rows, key=lambda r: worst[id(r[0])])
        lines += ["", "verdict: NO combination matches. Closest: " + _coords(c, identified)]
        for q, (rel, ratio) in sorted(sc.items(), key=lambda kv: -kv[1][1]):
            if ratio > 1:
                lines.append(f"  {q} is off by {rel:.2e} relative ({ratio:.3g} x its tolerance): the "
                             f"{' / '.join(DEPENDS[q])} dimension(s)")
        lines.append("  Check lambda, that the same pairs formed one batch (--batch), the tokenization (--add-bos, "
                     "--system, `minorpo data inspect`) and the dtype (bf16 logs need --rtol 1e-2).")
        return lines, 1
    values = {d: sorted({c[d] for c, _ in matches}, key=str) for d in identified}
    named = [impl for impl in KNOWN if any(all(c.get(d) == impl.coords[d] for d in identified if d in impl.coords)
                                           for c, _ in matches)]
    unique = all(len(v) == 1 for v in values.values())
    coords = "; ".join(f"{d} = {' or '.join(f'{x:g}' if isinstance(x, float) else x for x in v)}"
                       for d, v in values.items())
    lines += ["", f"verdict: {'MATCH' if unique else 'AMBIGUOUS'} at {coords}"]
    if named:
        lines.append("  shared by: " + "; ".join(f"{i.name} ({i.description})" for i in named))
    else:
        lines.append("  no known implementation uses these conventions")
    unidentified = [d for d in DIMENSION_NAMES if d not in identified]
    if unidentified:
        lines.append(f"  not identified by the reported numbers: {', '.join(unidentified)}")
    if not unique:
        lines.append("  report more quantities (or a smaller --rtol, if the numbers are that precise) to separate them")
    return lines, 0 if unique and named else 1


def _coords(c: dict, dims) -> str:
    return ", ".join(f"{d} = {c[d]:g}" if isinstance(c[d], float) else f"{d} = {c[d]}" for d in dims)


def known_table(predictor: Predictor, reported: dict, lam: float | None) -> list[str]:
    """Every compared quantity under each known implementation's coordinates (at its default lambda or --lam)."""
    cols = []
    for impl in KNOWN:
        c = {**{d: v[0] for d, v in DIMENSIONS.items()}, **impl.coords, "lam": impl.lam if lam is None else lam}
        p = predictor.predict(c)
        if "logits" not in impl.coords:
            p["logits/chosen"] = p["logits/rejected"] = float("nan")
        cols.append((impl.name, p))
    header = f"{'quantity':<19}" + "".join(f"{n[:13]:>14}" for n, _ in cols) + (f"{'reported':>14}" if reported else "")
    lines = [header, "-" * len(header)]
    for q in QUANTITIES:
        row = f"{q:<19}" + "".join(f"{p[q]:>14.7g}" if p[q] == p[q] else f"{'-':>14}" for _, p in cols)
        lines.append(row + (f"{reported[q]:>14.7g}" if q in reported else ""))
    return lines


def _examples_batch(args, tokenizer, pad: int):
    from minorpo.batches import collate_padded
    from minorpo.data import DataConfig, load_preferences

    flag = {"auto": "auto", "yes": True, "no": False}
    try:
        config = DataConfig(format=args.format, template=args.template, max_length=args.max_length,
                            add_bos=flag[args.add_bos], add_eos=flag[args.add_eos],
                            max_prompt_length=args.max_prompt_length, prompt_truncation=args.prompt_truncation,
                            response_truncation=args.response_truncation, system=args.system)
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        data = load_preferences(args.data, tokenizer, config, split=args.split, data_files=args.data_files,
                                limit=args.limit)
    except UserError:
        raise
    except ValueError as e:  # e.g. --system with raw-text rows
        raise UserError(f"--data {args.data}: {e}") from None
    if len(data) == 0:
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(data.report.counts().items()))
        raise UserError(f"--data {args.data}: no usable pair: {data.report.rows_read} rows read, all dropped "
                        f"({counts or 'no rows'}; `minorpo data inspect` lists them)")
    return collate_padded(list(data.examples), pad), f"{len(data)} pairs of {args.data}"


def run(args) -> int:
    from minorpo.batches import pad_token_id
    from minorpo.tools.conformance_io import dump_batch, load_batch, load_metrics
    from minorpo.hf.loader import load_model, resolve
    from minorpo.hf.tokenizer import Tokenizer

    logged = load_metrics(args.metrics_json, args.log_entry) if args.metrics_json else None
    try:
        parse_reported(None, None, logged)
    except UserError as e:
        raise UserError(f"--metrics-json {args.metrics_json}: {e}") from None
    reported = parse_reported(args.loss, args.metric, logged)  # before the slow work: bad names fail fast
    if (args.batch is None) == (args.data is None):
        raise UserError("pass exactly one of --data (pairs minorpo tokenizes) or --batch (a collated batch file)")
    batch = load_batch(args.batch) if args.batch else None
    folder = resolve(args.model, args.revision)
    tokenizer = Tokenizer.from_dir(folder)
    pad = pad_token_id(tokenizer)
    what = f"the batch in {args.batch}"
    if batch is None:  # the data before the weights: a bad row fails before the slow load
        batch, what = _examples_batch(args, tokenizer, pad)
    model = load_model(folder, dtype=DTYPES[args.dtype], device=args.device)
    if args.dump_batch:
        dump_batch(batch, args.dump_batch)
    official_pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad
    scores = score_batch(model, batch, pad, official_pad, args.max_length, args.pad_to_multiple_of, args.chunk_size)
    predictor = Predictor(scores)
    print(f"minorpo conformance: {what} as ONE batch of {scores.B} pairs (right-padded with id {pad}"
          + (f" to a multiple of {args.pad_to_multiple_of}" if args.pad_to_multiple_of else "")
          + f"; the official pad id is eos {official_pad}), model {args.model} in {args.dtype}")
    print("\n".join(known_table(predictor, reported, args.lam)))
    if not reported:
        print("\n(pass --loss / --metric NAME=VALUE / --metrics-json with another implementation's numbers to find its "
              "conventions)")
        return 0
    lines, status = judge(predictor, reported, args.rtol, args.lam, args.logits)
    print("\n" + "\n".join(lines))
    return status


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("conformance", help="which ORPO conventions another implementation's logged numbers "
                                                  "follow (every combination, one forward)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder or hub id (minorpo.hf.loader.load)")
    p.add_argument("--revision", default=None, help="hub revision of --model")
    p.add_argument("--data", default=None, help="preference pairs: .jsonl/.json/.parquet file, folder or hub dataset "
                                                "(minorpo.data; see `minorpo data inspect`)")
    p.add_argument("--batch", default=None, metavar="FILE", help="the other code's collated batch instead of --data "
                   "(.safetensors or .json with chosen_/rejected_ input_ids, attention_mask, labels; see "
                   "minorpo/tools/conformance_io.py)")
    p.add_argument("--dump-batch", default=None, metavar="FILE", help="write the batch used (.safetensors or .json)")
    p.add_argument("--split", default=None, help="split of a folder or hub dataset")
    p.add_argument("--data-files", default=None, help="glob of files inside a folder or hub dataset")
    p.add_argument("--limit", type=int, default=8, help="use the first N usable pairs, as ONE batch (default 8)")
    p.add_argument("--format", default="auto", choices=["auto", *LAYOUTS],
                   help="row layout: auto (detected from the first rows) or one of minorpo/hf/layouts.py's")
    p.add_argument("--template", default="auto", choices=["auto", "chat", "raw"], help="chat template or raw text")
    p.add_argument("--system", default=None, help="a system prompt added to chat-template prompts (LLaMA-Factory's "
                                                  "templates add their default one)")
    p.add_argument("--add-bos", default="auto", choices=["auto", "yes", "no"], help="prepend BOS to the prompt "
                   "(TRL does: yes)")
    p.add_argument("--add-eos", default="auto", choices=["auto", "yes", "no"], help="append EOS to each response")
    p.add_argument("--max-length", type=int, default=1024, help="max tokens of prompt + response (rows reaching it "
                                                               "count as truncated: no official extra target)")
    p.add_argument("--max-prompt-length", type=int, default=None, help="max prompt tokens")
    p.add_argument("--prompt-truncation", default="drop", choices=["drop", "keep_end", "keep_start"],
                   help="a prompt over --max-prompt-length: dropped, or cut keeping its end (TRL) or start")
    p.add_argument("--response-truncation", default="keep_start", choices=["keep_start", "drop"],
                   help="a response past --max-length: cut on the right, or the pair dropped")
    p.add_argument("--pad-to-multiple-of", type=int, default=None, help="pad the 2B rows to a multiple of N "
                   "(LLaMA-Factory: 8); changes logits/* only")
    p.add_argument("--lam", type=float, default=None, help="lambda (TRL beta, official alpha, LLaMA-Factory "
                   "pref_beta); "
                   "default: inferred from rewards/chosen / logps/chosen, else 0.1 and 1.0 are tried")
    p.add_argument("--loss", type=float, default=None, help="the loss another implementation reported")
    p.add_argument("--metric", action="append", metavar="NAME=VALUE",
                   help="a metric it reported, under TRL's name (rewards/chosen, nll_loss, log_odds_ratio, ...; "
                        "train/ and eval_ prefixes, sft_loss and the official and xtuner names are understood)")
    p.add_argument("--metrics-json", default=None, metavar="FILE", help="the metrics as a JSON dict, a "
                   "trainer_state.json (log_history) or JSON lines, instead of many --metric")
    p.add_argument("--log-entry", type=int, default=None, help="which entry of --metrics-json's log (default: the "
                                                               "first with a loss)")
    p.add_argument("--logits", default="auto", choices=["auto", "ignore"], help="judge logits/* (auto: left out, "
                   "with the reason, when they fit no averaging) or ignore them")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative precision of the reported numbers (default "
                   "1e-4, for float32 logs; 1e-3 with TF32 matmuls, 1e-2 for numbers logged in bf16)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="model dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--chunk-size", type=int, default=1024, help="token positions per log-prob chunk")
    p.set_defaults(func=run)
