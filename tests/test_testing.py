"""minorpo.tools.testing on losses people write: a correct TRL-style one conforms; the circulating mistakes are caught,
each by the property it breaks. Oracle: minorpo.tools.testing.reference (float64, minorpo.loss.log_odds_ratio), itself
checked here against loss.batch_loss (the golden-tested implementation) on a hand-written case."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("hypothesis")

from conftest import preset_loss  # noqa: E402

from minorpo.loss import TokenLogps  # noqa: E402
from minorpo.tools.testing import Case, assert_orpo_conforms, case_to_batch, check_orpo_loss, reference  # noqa: E402

LAM = 0.1
N = 15  # hypothesis examples per property: enough to hit each mistake below (they fail on most batches)
CASE = Case(prompt=[[-1.0, -2.0], []], chosen=[[-0.5, -0.2], [-1.5, -0.1, -0.7]], rejected=[[-2.0], [-0.3, -3.0]])


def test_reference_is_minorpos_loss():
    """reference(paper) and reference(trl coordinates) equal loss.batch_loss on the same tensors (1e-12:
    both float64)."""
    c, cm, nm, r, rm = CASE.tensors(dtype=torch.float64)
    for preset, coverage, norm, mask in (("paper", "response", "sequence_mean", cm), ("trl", "prompt+response",
                                                                                       "token_mean", nm)):
        want, _ = preset_loss(TokenLogps(c, cm, mask, r, rm), preset, LAM)
        assert reference(CASE, LAM, coverage, norm) == pytest.approx(float(want), rel=1e-12)


def trl_style(c, cm, nm, r, rm, lam):
    """TRL's math (trl/experimental/orpo/orpo_trainer.py), written on token log-probs."""
    a, b = (c * cm).sum(1) / cm.sum(1), (r * rm).sum(1) / rm.sum(1)
    log_odds = (a - b) - (torch.log1p(-torch.exp(a)) - torch.log1p(-torch.exp(b)))
    nll = -(c * nm).sum() / nm.sum()
    return nll - lam * F.logsigmoid(log_odds).mean()


def careful(c, cm, nm, r, rm, lam):
    """The same, with minorpo's stable log1mexp: conforms to trl everywhere."""
    from minorpo.loss import log1mexp
    a, b = (c * cm).sum(1) / cm.sum(1), (r * rm).sum(1) / rm.sum(1)
    log_odds = (a - b) - (log1mexp(a) - log1mexp(b))
    return -(c * nm).sum() / nm.sum() - lam * F.logsigmoid(log_odds).mean()


def test_careful_loss_conforms_and_is_named():
    report = assert_orpo_conforms(careful, convention="trl", max_examples=N)
    assert any("trl" in names for _, names in report.conventions), report


def test_naive_log1mexp_caught_near_zero():
    """TRL's own log1p(-exp(a)) in float32: exp(a) rounds to 1 for a > -6e-8, so the loss or its gradient is not
    finite (or wrong) for near-certain responses."""
    report = check_orpo_loss(trl_style, convention="trl", max_examples=N)
    failed = {p for p, _, _ in report.failures}
    assert "near_zero" in failed and failed <= {"near_zero", "finite"}, report


def test_batch_level_odds_ratio_caught():
    def pooled(c, cm, nm, r, rm, lam):  # one mean over the batch's tokens: one odds ratio per batch
        a, b = (c * cm).sum() / cm.sum(), (r * rm).sum() / rm.sum()
        from minorpo.loss import odds_ratio_loss
        return -(c * nm).sum() / nm.sum() + lam * odds_ratio_loss(a[None], b[None]).mean()

    report = check_orpo_loss(pooled, convention="trl", max_examples=N)
    value = [w for p, w, _ in report.failures if p == "value"]
    assert value and "one odds ratio per batch" in value[0], report
    assert len(report.failures[0][2].chosen) >= 2  # the minimal example needs two pairs


def test_flipped_odds_ratio_sign_caught():
    """The sign of Eq. 8 as printed (xfactlab/orpo #37) carried into the loss: NLL - lam * L_OR rewards the rejected
    response; the gradient property catches it (d loss / d rejected log-probs < 0)."""
    def flipped(c, cm, nm, r, rm, lam):
        return careful(c, cm, nm, r, rm, 0.0) - (careful(c, cm, nm, r, rm, lam) - careful(c, cm, nm, r, rm, 0.0))

    report = check_orpo_loss(flipped, convention="trl", max_examples=N)
    assert "gradient" in {p for p, _, _ in report.failures}, report


@pytest.mark.slow
def test_mean_over_pads_caught():
    def over_pads(c, cm, nm, r, rm, lam):  # NLL averaged over every position, pads included
        return careful(c, cm, nm, r, rm, lam) + (c * nm).sum() / nm.sum() - c.mean()

    report = check_orpo_loss(over_pads, convention="trl", max_examples=N)
    assert "padding" in {p for p, _, _ in report.failures}, report


@pytest.mark.slow
def test_other_convention_named_in_the_failure():
    """A correct paper-convention loss checked against trl: fails value, and the report says what it implements."""
    def paper(c, cm, nm, r, rm, lam):  # NLL = -mean_i a_i: response only, per-sequence mean
        return careful(c, cm, cm, r, rm, lam) + (c * cm).sum() / cm.sum() - ((c * cm).sum(1) / cm.sum(1)).mean()

    with pytest.raises(AssertionError, match="nll_coverage=response.*nll_normalization=sequence_mean"):
        assert_orpo_conforms(paper, convention="trl", max_examples=N)
    assert_orpo_conforms(paper, convention="paper", max_examples=N)


@pytest.mark.slow
def test_logits_kind_pad_equal_to_eos():
    """From logits + labels: a TRL-style loss that drops NLL targets by id == pad id loses every EOS when
    pad = eos (the default here): caught by value; the right one (attention mask) conforms."""
    batch = case_to_batch(CASE)
    lp = torch.log_softmax(batch["chosen_logits"][:, :-1], -1).gather(-1, batch["chosen_input_ids"][:, 1:, None])
    assert torch.allclose(lp[..., 0][batch["chosen_attention_mask"][:, 1:] == 1],
                          torch.tensor([-1.0, -2.0, -0.5, -0.2, -1.5, -0.1, -0.7], dtype=torch.float64))

    def from_logits(drop_pad_id):
        def fn(b, lam):
            seq, nll = [], None
            for side in ("chosen", "rejected"):
                logp = torch.log_softmax(b[f"{side}_logits"][:, :-1], -1)
                ids = b[f"{side}_input_ids"][:, 1:]
                tok = logp.gather(-1, ids[..., None])[..., 0]
                resp = b[f"{side}_labels"][:, 1:] != -100
                seq.append((tok * resp).sum(1) / resp.sum(1))
                if side == "chosen":
                    keep = (ids != 1) if drop_pad_id else b["chosen_attention_mask"][:, 1:] == 1
                    nll = -(tok * keep).sum() / keep.sum()
            from minorpo.loss import odds_ratio_loss
            return nll + lam * odds_ratio_loss(*seq).mean()
        return fn

    assert_orpo_conforms(from_logits(False), convention="trl", kind="logits", max_examples=N)
    report = check_orpo_loss(from_logits(True), convention="trl", kind="logits", max_examples=N)
    assert "value" in {p for p, _, _ in report.failures}, report
