"""Batch layouts: exact tensors written by hand, and the shared-prompt layout scoring the same log-probs as the
padded layout on a tiny random model.

Oracles: the expected tensors are written out by hand from the layouts in minorpo/batches.py's docstring; the
log-prob equivalence compares two layouts run through minorpo's model (fp32), and the padded layout through
transformers' LlamaForCausalLM (eager attention, the shared layout given to it as a 4D additive float mask).
"""

import pytest
import torch
from conftest import assert_close

from minorpo.batches import collate_padded, collate_shared_prompt
from minorpo.hf.config import ModelConfig
from minorpo.data import TokenizedPair
from minorpo.models import build_model

N = -100
# prompt [11 12], chosen [21 22], rejected [31]; second pair: prompt [13], chosen [23], rejected [33 34 35]
PAIRS = [TokenizedPair([11, 12], [21, 22], [31], "a"), TokenizedPair([13], [23], [33, 34, 35], "b")]


def test_padded_layout_by_hand():
    b = collate_padded(PAIRS, pad_token_id=0)  # T = max(2+2, 2+1, 1+1, 1+3) = 4
    assert b["chosen_input_ids"].tolist() == [[11, 12, 21, 22], [13, 23, 0, 0]]
    assert b["chosen_attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["chosen_labels"].tolist() == [[N, N, 21, 22], [N, 23, N, N]]
    assert b["rejected_input_ids"].tolist() == [[11, 12, 31, 0], [13, 33, 34, 35]]
    assert b["rejected_labels"].tolist() == [[N, N, 31, N], [N, 33, 34, 35]]
    assert b["prompt_lengths"].tolist() == [2, 1]
    left = collate_padded(PAIRS, pad_token_id=0, padding_side="left", pad_to_multiple_of=3)  # T = 6
    assert left["chosen_input_ids"].tolist() == [[0, 0, 11, 12, 21, 22], [0, 0, 0, 0, 13, 23]]
    assert left["chosen_labels"].tolist() == [[N, N, N, N, 21, 22], [N, N, N, N, N, 23]]
    assert left["rejected_attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]]


def test_shared_prompt_layout_by_hand():
    b = collate_shared_prompt(PAIRS, pad_token_id=0)  # T = max(2+2+1, 1+1+3) = 5
    assert b["input_ids"].tolist() == [[11, 12, 21, 22, 31], [13, 23, 33, 34, 35]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 1, 2, 3]]  # rejected restarts after the prompt
    # row 0: p0 p1 c0 c1 r0. A query sees the prompt and earlier tokens of its own response only.
    assert b["attention_mask"][0].int().tolist() == [
        [1, 0, 0, 0, 0],   # p0
        [1, 1, 0, 0, 0],   # p1
        [1, 1, 1, 0, 0],   # c0
        [1, 1, 1, 1, 0],   # c1
        [1, 1, 0, 0, 1],   # r0: prompt + itself, not c0 c1
    ]
    assert b["attention_mask"][1].int().tolist() == [
        [1, 0, 0, 0, 0],   # p0
        [1, 1, 0, 0, 0],   # c0
        [1, 0, 1, 0, 0],   # r0
        [1, 0, 1, 1, 0],   # r1
        [1, 0, 1, 1, 1],   # r2
    ]
    # next-token targets: the last prompt position predicts c0 in chosen_targets and r0 in rejected_targets
    assert b["chosen_targets"].tolist() == [[N, 21, 22, N, N], [23, N, N, N, N]]
    assert b["rejected_targets"].tolist() == [[N, 31, N, N, N], [33, N, 34, 35, N]]
    assert b["prompt_targets"].tolist() == [[12, N, N, N, N], [N, N, N, N, N]]
    assert b["chosen_lengths"].tolist() == [2, 1] and b["rejected_lengths"].tolist() == [1, 3]


def test_shared_prompt_padding_rows_attend_somewhere():
    b = collate_shared_prompt(PAIRS[:1] + [TokenizedPair([5], [6], [7])], pad_token_id=0, pad_to_multiple_of=4)
    assert b["input_ids"].shape == (2, 8)
    assert b["attention_mask"].any(-1).all()  # no empty attention row (an all-masked softmax row would be NaN)
    for k in ("chosen_targets", "rejected_targets", "prompt_targets"):
        assert (b[k][:, 5:] == N).all()      # padding has no target


LLAMA = dict(model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
             tie_word_embeddings=False)


def random_pairs(n=4, seed=0, V=97):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        P, C, R = (int(torch.randint(1, 9, (1,), generator=g)) for _ in range(3))
        pairs.append(TokenizedPair(*(torch.randint(3, V, (k,), generator=g).tolist() for k in (P, C, R))))
    return pairs


def sequence_logps(logits, targets):
    """Sum over positions of log softmax(logits)[target] where target != -100 (float64 for the sum)."""
    logp = torch.log_softmax(logits.double(), -1)
    keep = targets != N
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (picked * keep).sum(-1)


def shift(labels):
    """HF labels -> next-token targets: targets[:, t] = labels[:, t + 1]."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], N)], 1)


def padded_logps(model, batch):
    out = {}
    for s in ("chosen", "rejected"):
        logits = model(batch[f"{s}_input_ids"], attention_mask=batch[f"{s}_attention_mask"])
        out[s] = sequence_logps(logits, shift(batch[f"{s}_labels"]))
    return out


@pytest.mark.parametrize("config", [LLAMA, dict(model_type="opt", vocab_size=97, hidden_size=32, ffn_dim=64,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 max_position_embeddings=64)], ids=["llama", "opt"])
def test_shared_prompt_logps_equal_padded_logps(config):
    """Same per-sequence log P(response | prompt), summed over response tokens, from both layouts (left and right
    padding too). Tolerance 1e-5 absolute on sums of ~10 log-probs of size ~5: fp32 attention over differently
    padded/ordered keys changes the float32 summation order (rounding ~1e-7 per op), nothing more."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_hf(config)).eval()
    pairs = random_pairs()
    with torch.no_grad():
        ref = padded_logps(model, collate_padded(pairs, pad_token_id=0))
        left = padded_logps(model, collate_padded(pairs, pad_token_id=0, padding_side="left"))
        sh = collate_shared_prompt(pairs, pad_token_id=0)
        logits = model(sh["input_ids"], attention_mask=sh["attention_mask"], position_ids=sh["position_ids"])
        shared = {s: sequence_logps(logits, sh[f"{s}_targets"]) for s in ("chosen", "rejected")}
        # the response scored alone, one example at a time without any padding: the plainest reference
        alone = {s: torch.stack([sequence_logps(model(torch.tensor([e.prompt_ids + getattr(e, f"{s}_ids")])),
                                                shift(torch.tensor([[N] * len(e.prompt_ids) + getattr(e, f"{s}_ids")])))[0]
                                 for e in pairs]) for s in ("chosen", "rejected")}
    for s in ("chosen", "rejected"):
        assert_close(shared[s], ref[s], rtol=0, atol=1e-5, what=f"{s} shared vs padded")
        assert_close(left[s], ref[s], rtol=0, atol=1e-5, what=f"{s} left vs right padding")
        assert_close(alone[s], ref[s], rtol=0, atol=1e-5, what=f"{s} unpadded vs padded")
    # the prompt targets score the same prompt tokens as a plain forward over the prompt
    with torch.no_grad():
        prompt_alone = torch.stack([sequence_logps(model(torch.tensor([e.prompt_ids])),
                                                   shift(torch.tensor([e.prompt_ids])))[0] for e in pairs])
    assert_close(sequence_logps(logits, sh["prompt_targets"]), prompt_alone, rtol=0, atol=1e-5, what="prompt")


def test_shared_prompt_layout_in_transformers():
    """Cross-check on the oracle side: transformers' Llama (eager attention) given the shared row with the block mask
    as a 4D additive float mask (0 = attend, finfo.min = masked) scores the same as transformers on the padded
    layout, and as minorpo. Tolerance 1e-5 absolute: as above, fp32 summation order only."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.LlamaConfig(**{k: v for k, v in LLAMA.items() if k != "model_type"},
                                         attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    ours = build_model(ModelConfig.from_hf(hf_config.to_dict())).eval()
    ours.load_state_dict(hf.state_dict())
    pairs = random_pairs(seed=1)
    sh = collate_shared_prompt(pairs, pad_token_id=0)
    float_mask = torch.zeros(sh["attention_mask"].shape).masked_fill(~sh["attention_mask"], torch.finfo(torch.float32).min)
    with torch.no_grad():
        hf_ref = padded_logps(lambda ids, attention_mask: hf(input_ids=ids, attention_mask=attention_mask).logits,
                              collate_padded(pairs, pad_token_id=0))
        logits = hf(input_ids=sh["input_ids"], attention_mask=float_mask[:, None], position_ids=sh["position_ids"]).logits
        ours_logits = ours(sh["input_ids"], attention_mask=sh["attention_mask"], position_ids=sh["position_ids"])
    for s in ("chosen", "rejected"):
        hf_shared = sequence_logps(logits, sh[f"{s}_targets"])
        assert_close(hf_shared, hf_ref[s], rtol=0, atol=1e-5, what=f"transformers {s}: shared vs padded")
        assert_close(sequence_logps(ours_logits, sh[f"{s}_targets"]), hf_shared, rtol=0, atol=1e-5,
                     what=f"minorpo vs transformers {s}, shared layout")


def test_both_layouts_through_minorpo_logprobs():
    """What the training loop does: hidden states -> minorpo.logprobs.token_logps (chunked) -> Eq. 3 mean per
    sequence. Padded layout with shift_labels, shared layout with its two target tensors scored in one pass; both
    layouts give the same log P(y|x). Tolerance 1e-5 absolute: fp32 summation order only, as above."""
    from minorpo.logprobs import sequence_logps as eq3_mean
    from minorpo.logprobs import shift_labels, token_logps

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_hf(LLAMA)).eval()
    W = model.lm_head.weight
    pairs = random_pairs(seed=2)
    with torch.no_grad():
        padded = collate_padded(pairs, pad_token_id=0, padding_side="left")
        ref = {}
        for s in ("chosen", "rejected"):
            hidden = model(padded[f"{s}_input_ids"], attention_mask=padded[f"{s}_attention_mask"], return_hidden=True)
            targets = shift_labels(padded[f"{s}_labels"], padded[f"{s}_attention_mask"])
            ref[s] = eq3_mean(token_logps(hidden, W, targets, chunk_size=7), targets)
        sh = collate_shared_prompt(pairs, pad_token_id=0)
        hidden = model(sh["input_ids"], attention_mask=sh["attention_mask"], position_ids=sh["position_ids"],
                       return_hidden=True)
        chosen, rejected = token_logps(hidden, W, (sh["chosen_targets"], sh["rejected_targets"]), chunk_size=7)
    assert_close(eq3_mean(chosen, sh["chosen_targets"]), ref["chosen"], rtol=0, atol=1e-5, what="chosen")
    assert_close(eq3_mean(rejected, sh["rejected_targets"]), ref["rejected"], rtol=0, atol=1e-5, what="rejected")
