"""Bring your own ORPO loss: drive it with generated batches, name its convention, list what it breaks.

    from minorpo.tools.testing import assert_orpo_conforms

    def my_loss(chosen_logps, chosen_mask, nll_mask, rejected_logps, rejected_mask, lam):
        ...                                   # [B, T] float32 token log-probs, [B, T] bool masks
        return loss                           # or (loss, metrics)

    def test_my_orpo():
        assert_orpo_conforms(my_loss, convention="trl")

kind="token_logps" (above): chosen_mask / rejected_mask mark the response tokens of log P(y|x) (Eq. 3), nll_mask
the prompt + response tokens of the chosen rows; which one the NLL uses is the loss's own convention.
kind="logits": fn(batch, lam) with batch = chosen_/rejected_ logits [B, T, V], input_ids, attention_mask,
labels (HF-style: input ids on response tokens, -100 elsewhere, not shifted), built by `case_to_batch` so that
the log-probs are exactly the generated ones (float64 logits: float32 could not hold log-probs near 0).

Batches come from hypothesis (a test dependency; imported here on first use): uneven lengths, long responses,
compositions where the token mean and the sequence mean differ, near-certain responses (a -> 0), and for the logits
kind pads equal to EOS. Each property that fails is reported with hypothesis' minimal failing example:
  finite      loss and gradients finite            padding    extra masked positions change nothing
  value       equal to the convention's loss (float64 reference; rtol 1e-4: the loss sees float32 inputs)
  near_zero   the same for near-certain responses (a naive log(1 - exp(a)) loses everything there)
  gradient    d loss / d chosen response log-probs < 0, d / d rejected > 0 (when lam > 0)
The convention it implements is found by comparing it with every candidate (NLL coverage and normalization,
objective, one odds ratio per pair or one pooled per batch) on seeded batches.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minorpo.tools.conventions import KNOWN
from minorpo.loss import log_odds_ratio

CANDIDATES = {"nll_coverage": ("response", "prompt+response"),
              "nll_normalization": ("token_mean", "sequence_mean", "sequence_sum", "batch_sum"),
              "objective": ("odds_ratio", "probability_ratio", "sft"), "pairing": ("per_pair", "per_batch")}
EOS = 1


def _hypothesis():
    try:
        import hypothesis
        from hypothesis import strategies
    except ImportError:
        raise ImportError("minorpo.tools.testing generates batches with hypothesis: pip install hypothesis "
                          "(or minorpo[test])") from None
    return hypothesis, strategies


@dataclass
class Case:
    """One batch at the token level: per pair, prompt targets then response targets (chosen and rejected)."""
    prompt: list  # [B] lists of log-probs of the prompt targets (all but the first prompt token)
    chosen: list  # [B] lists of log-probs of the chosen response tokens (the last is its EOS)
    rejected: list

    def tensors(self, extra_pad: int = 0, dtype=torch.float32):
        """(chosen_logps, chosen_mask, nll_mask, rejected_logps, rejected_mask), right-padded [B, T]."""
        def rows(responses, with_prompt):
            seqs = [p + r for p, r in zip(self.prompt, responses)]
            T = max(map(len, seqs)) + extra_pad
            lp = torch.full((len(seqs), T), -3.0, dtype=torch.float64)  # garbage where masked
            resp, nll = (torch.zeros(len(seqs), T, dtype=torch.bool) for _ in range(2))
            for i, (p, s) in enumerate(zip(self.prompt, seqs)):
                lp[i, :len(s)] = torch.tensor(s, dtype=torch.float64)
                resp[i, len(p):len(s)] = True
                nll[i, :len(s)] = True
            return lp.to(dtype), resp, nll
        c, cm, nm = rows(self.chosen, True)
        r, rm, _ = rows(self.rejected, False)
        return c, cm, nm, r, rm


def reference(case: Case, lam: float, nll_coverage="response", nll_normalization="sequence_mean",
              objective="odds_ratio", pairing="per_pair") -> float:
    """The loss of one candidate convention, in float64 (minorpo.loss's stable log odds ratio)."""
    c, cm, nm, r, rm = case.tensors(dtype=torch.float64)
    if pairing == "per_pair":
        a, b = (c * cm).sum(1) / cm.sum(1), (r * rm).sum(1) / rm.sum(1)  # Eq. 3  [B]
    else:  # the circulating mistake: one mean over the whole batch's tokens, one odds ratio per batch
        a, b = (c * cm).sum() / cm.sum(), (r * rm).sum() / rm.sum()
    z = (a - b) if objective == "probability_ratio" else log_odds_ratio(a, b)
    term = 0.0 if objective == "sft" else float((-F.logsigmoid(z)).mean())
    m = cm if nll_coverage == "response" else nm
    total, count = (c * m).sum(1), m.sum(1)
    nll = {"token_mean": total.sum() / count.sum(), "sequence_mean": (total / count).mean(),
           "sequence_sum": total.mean(), "batch_sum": total.sum()}[nll_normalization]
    return float(-nll) + lam * term


def _exact(logits: torch.Tensor, targets: torch.Tensor, logps: torch.Tensor) -> None:
    """In place: logits [n, V] rows with logit x for each target and 0 elsewhere, x = log(V - 1) + l - log(1 - e^l),
    so that log_softmax gives exactly log-prob l for the target."""
    V = logits.shape[-1]
    logits.zero_()
    logits[torch.arange(len(targets)), targets] = math.log(V - 1) + logps - torch.log(-torch.expm1(logps))


def case_to_batch(case: Case, vocab_size: int = 16, pad_id: int = EOS, seed: int = 0) -> dict:
    """A padded batch whose logits give exactly the case's log-probs: logits [B, T, V] (float64), input_ids,
    attention_mask, labels per side, random token ids (each response ends with EOS); unscored positions get random
    logits."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [p + r for p, r in zip(case.prompt, getattr(case, side))]
        B, T = len(seqs), max(map(len, seqs)) + 1  # + 1: the first prompt token, which nothing predicts
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        logits = torch.randn(B, T, vocab_size, generator=g, dtype=torch.float64)
        mask, labels = torch.zeros(B, T, dtype=torch.long), torch.full((B, T), -100, dtype=torch.long)
        for i, (p, s) in enumerate(zip(case.prompt, seqs)):
            n = len(s) + 1
            row = torch.randint(3, vocab_size, (n,), generator=g)
            row[-1] = EOS  # every response ends with its EOS
            ids[i, :n], mask[i, :n] = row, 1
            labels[i, len(p) + 1:n] = row[len(p) + 1:]
            _exact(logits[i, :n - 1], row[1:], torch.tensor(s, dtype=torch.float64))
        out.update({f"{side}_logits": logits, f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                    f"{side}_labels": labels})
    return out


def golden_to_batch(case: dict, padding_side: str = "right", pad_to_multiple_of: int | None = None,
                    seed: int = 0) -> dict:
    """A token-level golden case (tests/golden/orpo_tokens.json, SPEC.md) -> the padded layout with logits that
    give exactly its log-probs: chosen_/rejected_ logits [B, T, V] float64, input_ids (padded with the case's
    pad_id), attention_mask, labels, truncated [B]; pads on padding_side, T rounded up to pad_to_multiple_of.
    Feed it to another implementation's loss-from-logits code to check which tokens it scores."""
    g = torch.Generator().manual_seed(seed)
    V, pad = case["vocab_size"], case["pad_id"]
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [p["prompt_ids"] + p[f"{side}_ids"] for p in case["pairs"]]
        T = max(map(len, seqs))
        if pad_to_multiple_of:
            T = -(-T // pad_to_multiple_of) * pad_to_multiple_of
        B = len(seqs)
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask, labels = torch.zeros(B, T, dtype=torch.long), torch.full((B, T), -100, dtype=torch.long)
        logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
        for i, (pair, seq) in enumerate(zip(case["pairs"], seqs)):
            n = len(seq)
            start = 0 if padding_side == "right" else T - n
            ids[i, start:start + n], mask[i, start:start + n] = torch.tensor(seq), 1
            labels[i, start + len(pair["prompt_ids"]):start + n] = torch.tensor(pair[f"{side}_ids"])
            targets = torch.tensor(seq[1:] + [pad])  # the next tokens, then the extra target (pad id)
            _exact(logits[i, start:start + n], targets, torch.tensor(case[f"{side}_token_logps"][i],
                                                                       dtype=torch.float64))
        out.update({f"{side}_logits": logits, f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                    f"{side}_labels": labels,
                    f"{side}_truncated": torch.tensor([p[f"{side}_truncated"] for p in case["pairs"]])})
    return out


def _strategy(st, near_zero=False, long=False):
    def logp(certain):
        return st.floats(-1e-6, -1e-9) if certain else st.floats(-8.0, -1e-3)

    @st.composite
    def cases(draw):
        B = draw(st.integers(1, 4))
        R = 40 if long else 6
        prompt = [draw(st.lists(logp(False), min_size=0, max_size=4)) for _ in range(B)]
        chosen = [draw(st.lists(logp(near_zero), min_size=1, max_size=R)) for _ in range(B)]
        rejected = [draw(st.lists(st.one_of(logp(False), logp(True)) if near_zero else logp(False), min_size=1,
                                  max_size=R)) for _ in range(B)]
        return Case(prompt, chosen, rejected)
    return cases()


@dataclass
class Report:
    conventions: list = field(default_factory=list)  # candidate coordinates it matches on every seeded batch
    failures: list = field(default_factory=list)  # (property, what, minimal failing Case)

    def __str__(self):
        names = [", ".join(f"{k}={v}" for k, v in c.items()) + (f"  ({', '.join(n)})" if n else "")
                 for c, n in self.conventions]
        lines = ["implements: " + ("; ".join(names) if names else "no candidate convention")]
        for prop, what, case in self.failures:
            lines.append(f"FAILS {prop}: {what}\n    minimal example: {case}")
        return "\n".join(lines)


def _call(fn, kind, case, lam, extra_pad=0, pad_id=EOS):
    """(loss, (chosen grads, rejected grads) or None) of the user's loss on one case."""
    if kind == "token_logps":
        c, cm, nm, r, rm = case.tensors(extra_pad)
        c.requires_grad_(True), r.requires_grad_(True)
        out = fn(c, cm, nm, r, rm, lam)
        leaves = (c, r)
    else:
        batch = case_to_batch(case, pad_id=pad_id)
        for side in ("chosen", "rejected"):
            batch[f"{side}_logits"] = F.pad(batch[f"{side}_logits"], (0, 0, 0, extra_pad))
            for key, v in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
                batch[f"{side}_{key}"] = F.pad(batch[f"{side}_{key}"], (0, extra_pad), value=v)
            batch[f"{side}_logits"].requires_grad_(True)
        out = fn(batch, lam)
        leaves = (batch["chosen_logits"], batch["rejected_logits"])
    loss = out[0] if isinstance(out, tuple) else out
    grads = None
    if torch.is_tensor(loss) and loss.requires_grad:
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return float(loss.detach() if torch.is_tensor(loss) else loss), grads


def _names(coords):
    return [i.name for i in KNOWN if coords["objective"] == i.coords["objective"] == "odds_ratio"
            and coords["pairing"] == "per_pair" and i.coords["nll_coverage"] == coords["nll_coverage"]
            and i.coords["nll_normalization"] == coords["nll_normalization"] and i.coords["logps"] == "response"]


def identify(fn, kind="token_logps", lam=0.1, batches=12, seed=0, rtol=1e-4):
    """[(coords, known implementation names)] of the candidates that match fn on seeded uneven batches."""
    g = torch.Generator().manual_seed(seed)

    def draw(n):  # n token log-probs, exponential with mean 1.4 nats
        return (-torch.empty(n, dtype=torch.float64).exponential_(0.7, generator=g)).clamp(max=-1e-3).tolist()

    cases = []
    for _ in range(batches):  # 2-4 pairs of uneven lengths: token and sequence means differ
        B = int(torch.randint(2, 5, (1,), generator=g))
        lens = lambda lo, hi: [int(x) for x in torch.randint(lo, hi, (B,), generator=g)]  # noqa: E731
        cases.append(Case([draw(n) for n in lens(0, 4)], [draw(n) for n in lens(1, 9)], [draw(n) for n in lens(1, 9)]))
    got = [_call(fn, kind, c, lam)[0] for c in cases]
    found = []
    for values in itertools.product(*CANDIDATES.values()):
        coords = dict(zip(CANDIDATES, values))
        if all(abs(reference(c, lam, **coords) - v) <= rtol * abs(v) + 1e-6 for c, v in zip(cases, got)):
            found.append((coords, _names(coords)))
    return found


def check_orpo_loss(fn, convention="paper", kind="token_logps", lam=0.1, max_examples=30) -> Report:
    """Run every property on fn (see the module docstring) against `convention` (a known implementation's name:
    paper, trl, llamafactory, ms-swift, ... or a dict with nll_coverage, nll_normalization, objective, pairing)."""
    hypothesis, st = _hypothesis()
    if isinstance(convention, str):
        impl = {i.name: i for i in KNOWN}.get(convention)
        if impl is None or impl.coords["logps"] != "response":
            raise ValueError(f"convention {convention!r}: choose one of "
                             f"{[i.name for i in KNOWN if i.coords['logps'] == 'response']} or pass a dict")
        coords = {"nll_coverage": impl.coords["nll_coverage"], "nll_normalization": impl.coords["nll_normalization"],
                  "objective": "odds_ratio", "pairing": "per_pair"}
    else:
        coords = {"objective": "odds_ratio", "pairing": "per_pair", **convention}
    report = Report(identify(fn, kind, lam))

    def close(x, y, rtol=1e-4):
        return math.isfinite(x) and abs(x - y) <= rtol * abs(y) + 1e-6

    def finite(case):
        loss, grads = _call(fn, kind, case, lam)
        return math.isfinite(loss) and (grads is None or all(g is None or bool(torch.isfinite(g).all())
                                                             for g in grads))

    def gradient_sign(case):
        _, grads = _call(fn, kind, case, lam)
        if grads is None or kind != "token_logps" or lam == 0:
            return True
        _, cm, _, _, rm = case.tensors()
        return bool((grads[0][cm] < 0).all()) and bool((grads[1][rm] > 0).all())

    props = {
        "finite": (finite, _strategy(st, near_zero=False, long=True), "the loss or its gradient is NaN or inf"),
        "near_zero": (lambda c: finite(c) and close(_call(fn, kind, c, lam)[0], reference(c, lam, **coords)),
                      _strategy(st, near_zero=True), "near-certain responses (a -> 0, b -> 0 too): not the "
                                                     "convention's loss, or not finite (precision lost in "
                                                     "log(1 - e^a)?)"),
        "value": (lambda c: close(_call(fn, kind, c, lam)[0], reference(c, lam, **coords)), _strategy(st),
                  f"not the loss of {coords}"),
        "padding": (lambda c: close(_call(fn, kind, c, lam, extra_pad=3)[0], _call(fn, kind, c, lam)[0], 1e-6),
                    _strategy(st), "masked padding positions change the loss (a mean over pads?)"),
        "gradient": (gradient_sign, _strategy(st), "d loss / d chosen log-probs is not < 0 or d / d rejected not > 0"),
    }
    settings = hypothesis.settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                                   suppress_health_check=list(hypothesis.HealthCheck))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few dozen numbers: waking more threads costs more than it saves
    try:
        found = {}
        for name, (holds, strategy, _) in props.items():
            try:
                found[name] = hypothesis.find(strategy, lambda c, holds=holds: not holds(c), settings=settings)
            except hypothesis.errors.NoSuchExample:
                pass
    finally:
        torch.set_num_threads(threads)
    for name, example in found.items():
        what = props[name][2]
        if name == "value" and any(c["pairing"] == "per_batch" for c, _ in report.conventions):
            what += ": one odds ratio per batch instead of one per pair"
        elif name == "value" and report.conventions:
            what += "; it implements " + ", ".join(f"{k}={v}" for k, v in report.conventions[0][0].items()
                                                   if coords.get(k) != v)
        loss, grads = _call(fn, kind, example, lam)
        finite_grad = grads is None or all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        what += (f" [there: loss {loss:.10g}, expected {reference(example, lam, **coords):.10g}"
                 f"{'' if finite_grad else ', gradient NOT finite'}]")
        report.failures.append((name, what, example))
    return report


def assert_orpo_conforms(fn, convention="paper", kind="token_logps", lam=0.1, max_examples=30) -> Report:
    """pytest helper: raises AssertionError listing every broken property (with minimal examples)."""
    report = check_orpo_loss(fn, convention, kind, lam, max_examples)
    if report.failures:
        raise AssertionError(f"the loss does not conform to {convention!r}:\n{report}")
    return report
