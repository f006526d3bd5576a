"""minorpo.loss against the golden vectors in tests/golden/ (spec: tests/golden/SPEC.md).

Oracle: tests/golden/make_golden.py, an independent float64 implementation in plain Python (math module, no torch,
no minorpo) whose analytic gradients it checks by finite differences. Tolerance rtol 1e-12, atol 1e-15: both sides
compute in float64 with the same formulas grouped differently (a few roundings of ~1e-16 each).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close, logits_loss, preset_loss

from minorpo.batches import get_conventions
from minorpo.loss import TokenLogps, odds_ratio_loss

GOLDEN = Path(__file__).parent / "golden"
PRESETS = ("paper", "trl", "official", "llamafactory")
RTOL, ATOL = 1e-12, 1e-15


def load_generator():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases():
    for preset in PRESETS:
        data = json.loads((GOLDEN / f"orpo_{preset}.json").read_text())
        assert data["preset"] == preset
        for c in data["cases"]:
            yield pytest.param(preset, c, id=f"{preset}-{c['name']}")


@pytest.mark.parametrize("preset,case", list(cases()))
def test_golden_case(preset, case):
    inp, out = case["inputs"], case["outputs"]
    f64 = lambda k: torch.tensor(inp[k], dtype=torch.float64, requires_grad=True)  # noqa: E731
    boolean = lambda k: torch.tensor(inp[k], dtype=torch.bool)  # noqa: E731
    chosen, rejected = f64("chosen_token_logps"), f64("rejected_token_logps")
    tl = TokenLogps(chosen, boolean("chosen_mask"), boolean("nll_mask"), rejected, boolean("rejected_mask"))
    loss, metrics = preset_loss(tl, preset, case["lambda"])  # loss.batch_loss
    assert case["nll_normalization"] == get_conventions(preset).nll_normalization  # the file matches the preset
    assert_close(loss, torch.tensor(out["loss"], dtype=torch.float64), rtol=RTOL, atol=ATOL, what="loss")
    assert set(out["metrics"]) == set(metrics)
    for name, value in out["metrics"].items():
        assert_close(torch.tensor(metrics[name], dtype=torch.float64), torch.tensor(value, dtype=torch.float64),
                     rtol=RTOL, atol=ATOL, what=name)
    loss.backward()
    assert_close(chosen.grad, torch.tensor(out["grad_chosen_token_logps"], dtype=torch.float64), rtol=RTOL, atol=ATOL,
                 what="grad chosen token log-probs")
    assert_close(rejected.grad, torch.tensor(out["grad_rejected_token_logps"], dtype=torch.float64), rtol=RTOL,
                 atol=ATOL, what="grad rejected token log-probs")
    a = torch.tensor(out["chosen_logps"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(out["rejected_logps"], dtype=torch.float64, requires_grad=True)
    (case["lambda"] * odds_ratio_loss(a, b).mean()).backward()
    assert_close(a.grad, torch.tensor(out["grad_or_wrt_chosen_logps"], dtype=torch.float64), rtol=RTOL, atol=ATOL,
                 what="d(lam mean L_OR)/da")
    assert_close(b.grad, torch.tensor(out["grad_or_wrt_rejected_logps"], dtype=torch.float64), rtol=RTOL, atol=ATOL,
                 what="d(lam mean L_OR)/db")


def test_golden_files_are_what_the_script_writes():
    """The committed JSON equals what make_golden.py computes now (numbers to 4 float64 ulps, so a different libm
    on another machine does not fail this), so nobody edited the files by hand or changed the script without
    regenerating them."""
    generated = load_generator().generate()
    for preset in PRESETS:
        stored = json.loads((GOLDEN / f"orpo_{preset}.json").read_text())
        assert _close(stored, json.loads(json.dumps(generated[preset]))), preset
    stored = json.loads((GOLDEN / "orpo_tokens.json").read_text())["cases"]
    assert _close(stored, json.loads(json.dumps(load_generator().token_cases()))), "orpo_tokens.json"


def _close(x, y) -> bool:
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, float):
        return abs(x - y) <= 4 * 2.0 ** -52 * max(abs(x), abs(y))
    return x == y


def token_cases():
    data = json.loads((GOLDEN / "orpo_tokens.json").read_text())
    for c in data["cases"]:
        for preset in PRESETS:
            for layout in (("right", None), ("left", None), ("right", 8)):
                yield pytest.param(c, preset, layout, id=f"{c['name']}-{preset}-{layout[0]}{layout[1] or ''}")


@pytest.mark.parametrize("case,preset,layout", list(token_cases()))
def test_token_golden_case(case, preset, layout):
    """Token-level goldens: minorpo builds the masks from token ids (batches.preference_targets) on the batch that
    minorpo.tools.testing.golden_to_batch converts the case to (right/left padding, a multiple of 8), and gets the
    generator's loss and metrics. Tolerance 1e-10: the logits reproduce each log-prob to ~1e-15 (x ~ 20 rounded),
    and the NLL and log OR add a few dozen of them."""
    from minorpo.tools.testing import golden_to_batch

    batch = golden_to_batch(case, padding_side=layout[0], pad_to_multiple_of=layout[1])
    for side in ("chosen", "rejected"):  # the converter: log_softmax picks out exactly the case's log-probs
        logp = torch.log_softmax(batch[f"{side}_logits"], -1)
        for i, pair in enumerate(case["pairs"]):
            real = batch[f"{side}_attention_mask"][i].bool()
            seq = batch[f"{side}_input_ids"][i][real]
            targets = torch.cat([seq[1:], torch.tensor([case["pad_id"]])])
            got = logp[i][real].gather(-1, targets[:, None])[:, 0]
            assert_close(got, torch.tensor(case[f"{side}_token_logps"][i], dtype=torch.float64), rtol=1e-13,
                         atol=1e-13, what=f"{side} row {i} log-probs")
    loss, metrics = logits_loss(batch["chosen_logits"], batch["rejected_logits"], batch, preset, lam=case["lambda"],
                                pad_token_id=case["pad_id"])
    want = case["expected"][preset]
    assert loss.item() == pytest.approx(want["loss"], rel=1e-10)
    for name, value in want["metrics"].items():
        assert metrics[name] == pytest.approx(value, rel=1e-10, abs=1e-12), name
