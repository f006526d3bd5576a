"""`minorpo conformance` (minorpo/tools/conformance.py, minorpo/tools/conventions.py) against other implementations' formulas.

Oracle: each peer below is rebuilt in-process from its published code (cited at each function), run on a tiny
transformers Llama (its own logits, pads computed the transformers way) on the same collated batch, and must be
named correctly from its FULL metrics; TRL's real ORPOTrainer too. The model is first fitted to the pairs so that
P(y|x) is far from 0 (at P ~ 0 the odds ratio and the probability ratio coincide and nothing can separate them).
Tolerance: the default rtol 1e-4 (float32 logs; peer and minorpo differ by float32 rounding, ~1e-6).
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from minorpo.tools.cli import main
from minorpo.batches import collate_padded
from minorpo.tools.conformance import canonical_name, judge, parse_reported
from minorpo.tools.conventions import Predictor, score_batch
from minorpo.errors import UserError

transformers = pytest.importorskip("transformers")

PAIRS = [
    {"prompt": "hi how are you ?", "chosen": " I am fine , thanks .", "rejected": " go away"},
    {"prompt": "what is two plus two ?", "chosen": " four", "rejected": " no , five . I am sure ."},
    {"prompt": "hello", "chosen": " hello , how are you ?", "rejected": " bad"},
]
EOS, PAD = 1, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random Llama fitted for 20 Adam steps to the pairs' chosen and rejected texts (so log P(y|x) ~ -1),
    saved with save_pretrained, with the word-level test tokenizer (prepends <s>); minorpo's pairs and model."""
    from minorpo.data import load_preferences
    from minorpo.hf.loader import load
    from tiny_models import hf_model
    from tiny_tokenizers import word_tokenizer

    folder = tmp_path_factory.mktemp("conformance")
    model_dir = folder / "model"
    model_dir.mkdir()
    word_tokenizer(model_dir, chat_template=None, add_bos=True)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    hf = hf_model("llama-tied", 0, bos_token_id=0, eos_token_id=EOS, pad_token_id=PAD)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tok(p["prompt"] + p[k] + "</s>", return_tensors="pt").input_ids
             for p in PAIRS for k in ("chosen", "rejected")]
    opt = torch.optim.Adam(hf.parameters(), lr=3e-2)
    torch.manual_seed(0)
    for _ in range(20):
        opt.zero_grad()
        sum(hf(ids, labels=ids).loss for ids in texts).backward()
        opt.step()
    hf.eval().save_pretrained(str(model_dir))
    model, tokenizer = load(model_dir)
    pairs = load_preferences(str(data), tokenizer).examples
    return hf, model, pairs, model_dir, data


def hf_logits(hf, batch, multiple=None, extra_pad=0):
    """TRL-style concatenated 2B rows (chosen first), padded right with PAD, through the transformers model."""
    T = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1]) + extra_pad
    if multiple:
        T = -(-T // multiple) * multiple
    cat = {k: torch.cat([F.pad(batch[f"{s}_{k}"], (0, T - batch[f"{s}_{k}"].shape[1]), value=v)
                         for s in ("chosen", "rejected")]) for k, v in (("input_ids", PAD), ("attention_mask", 0),
                                                                         ("labels", -100))}
    with torch.no_grad():
        logits = hf(cat["input_ids"], attention_mask=cat["attention_mask"]).logits.double()
    return cat, logits


def batch_logps(logits, labels):
    """TRL/LLaMA-Factory get_batch_logps(average_log_prob=True): labels shifted, mean over labels != -100."""
    labels = labels[:, 1:]
    mask = labels != -100
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (lp * mask).sum(1) / mask.sum(1)


def ce(logits, labels):
    """HF CrossEntropyLoss after the shift: token mean over labels != -100."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def log_or(a, b):
    return (a - b) - (torch.log1p(-torch.exp(a)) - torch.log1p(-torch.exp(b)))


def trl_style(cat, logits, beta, nll_labels, odds="ratio"):
    """trl/experimental/orpo/orpo_trainer.py (concatenated_forward, odds_ratio_loss, get_batch_loss_metrics).
    nll_labels: TRL's input_ids with pads -100; ms-swift's labels (rlhf_mixin.py passes them as input_ids).
    odds="probability": the circulating 'ORPO' with odds = exp(logp), i.e. log OR replaced by a - b."""
    B = cat["input_ids"].shape[0] // 2
    nll = ce(logits[:B], nll_labels[:B])
    a, b = batch_logps(logits[:B], cat["labels"][:B]), batch_logps(logits[B:], cat["labels"][B:])
    z = log_or(a, b) if odds == "ratio" else a - b
    ratio = F.logsigmoid(z)
    m = {"loss": nll - beta * ratio.mean(), "nll_loss": nll, "rewards/chosen": beta * a.mean(),
         "rewards/rejected": beta * b.mean(), "rewards/accuracies": (a > b).double().mean(),
         "rewards/margins": beta * (a - b).mean(), "logps/chosen": a.mean(), "logps/rejected": b.mean(),
         "logits/chosen": logits[:B, :-1].float().mean(), "logits/rejected": logits[B:, :-1].float().mean(),
         "log_odds_ratio": ratio.mean(), "log_odds_chosen": z.mean()}
    return {k: float(v) for k, v in m.items()}


def peer(name, hf, batch, beta=0.1):
    """(metrics the peer logs, pad_to_multiple_of it uses) for one peer's published formulas."""
    if name in ("trl", "ms-swift", "prob-ratio"):
        cat, logits = hf_logits(hf, batch)
        ids = cat["input_ids"].masked_fill(cat["attention_mask"] == 0, -100)
        return trl_style(cat, logits, beta, cat["labels"] if name == "ms-swift" else ids,
                         "probability" if name == "prob-ratio" else "ratio"), None
    if name == "liger":  # liger_kernel/chunked_loss/{fused_linear_preference,orpo_loss}.py, called as LigerORPOTrainer
        # calls it
        cat, logits = hf_logits(hf, batch)
        B = cat["input_ids"].shape[0] // 2
        logp = torch.log_softmax(logits[:, :-1], -1)  # its input is hidden[:, :-1], its targets labels[:, 1:]
        nll_target = cat["input_ids"].masked_fill(cat["attention_mask"] == 0, -100)[:, 1:]
        nll = F.nll_loss(logp[:B].flatten(0, 1), nll_target[:B].flatten(), reduction="sum")
        nll = nll / (nll_target[:B] != -100).sum()  # a token sum over the tokens of the whole batch
        target = cat["labels"][:, 1:]
        mask = target != -100
        seq = (logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * mask).sum(-1) / mask.sum(-1)
        a, b = seq[:B], seq[B:]
        ratio = F.logsigmoid(log_or(a, b))
        V = logits.shape[-1]
        m = {"loss": nll - beta * ratio.sum() / B, "nll_loss": nll, "rewards/chosen": (beta * a).mean(),
             "rewards/rejected": (beta * b).mean(), "rewards/accuracies": (a > b).double().mean(),
             "rewards/margins": (beta * (a - b)).mean(), "logps/chosen": a.mean(), "logps/rejected": b.mean(),
             "logits/chosen": logits[:B, :-1].sum() / (B * (logits.shape[1] - 1) * V),
             "logits/rejected": logits[B:, :-1].sum() / (B * (logits.shape[1] - 1) * V),
             "log_odds_ratio": ratio.sum() / B, "log_odds_chosen": log_or(a, b).sum() / B}
        return {k: float(v) for k, v in m.items()}, None
    if name == "llamafactory":  # src/llamafactory/train/dpo/trainer.py; its collator pads to a multiple of 8
        cat, logits = hf_logits(hf, batch, multiple=8)
        B = cat["input_ids"].shape[0] // 2
        a, b = batch_logps(logits[:B], cat["labels"][:B]), batch_logps(logits[B:], cat["labels"][B:])
        l_or = -F.logsigmoid(log_or(a, b))
        m = {"loss": (-a + beta * l_or).mean(), "sft_loss": -a.mean(), "odds_ratio_loss": l_or.mean(),
             "rewards/chosen": beta * a.mean(), "rewards/rejected": beta * b.mean(),
             "rewards/accuracies": (a > b).double().mean(), "rewards/margins": beta * (a - b).mean(),
             "logps/chosen": a.mean(), "logps/rejected": b.mean(), "logits/chosen": logits[:B].float().mean(),
             "logits/rejected": logits[B:].float().mean()}
        return {k: float(v) for k, v in m.items()}, 8
    if name == "xtuner":  # xtuner/model/orpo.py: NLL on the labels; logps unshifted, labels != 0
        cat, logits = hf_logits(hf, batch)
        B = cat["input_ids"].shape[0] // 2
        nll = ce(logits[:B], cat["labels"][:B])
        labels = cat["labels"].clamp(min=0)
        mask = labels != 0
        lp = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
        seq = (lp * mask).sum(1) / mask.sum(1)
        a, b = seq[:B], seq[B:]
        z = log_or(a, b)
        ratio = F.logsigmoid(z)
        m = {"loss": nll - (beta * ratio).mean(), "chosen_rewards": beta * a.mean(),
             "rejected_rewards": beta * b.mean(),
             "reward_acc": (beta * a > beta * b).double().mean(), "reward_margin": beta * (a - b).mean(),
             "log_odds_ratio": ratio.mean(), "log_odds_chosen": z.mean(), "nll_loss": nll}
        return {k: float(v) for k, v in m.items()}, None
    if name == "official":  # xfactlab/orpo src/orpo_trainer.py, pad = eos, alpha = beta; every row has a pad after it
        cat, logits = hf_logits(hf, batch, extra_pad=1)
        B = cat["input_ids"].shape[0] // 2
        ids = torch.where(cat["attention_mask"] == 1, cat["input_ids"], EOS)  # its pads are eos
        nll = ce(logits[:B], ids[:B].masked_fill(ids[:B] == EOS, -100))
        prompt_mask = (cat["labels"] == -100) & (cat["attention_mask"] == 1)
        mask = cat["attention_mask"][:, :-1] - prompt_mask[:, 1:].long()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, (mask * ids[:, 1:])[..., None])[..., 0]
        seq = (lp * mask).sum(1) / mask.sum(1)
        a, b = seq[:B], seq[B:]
        ratio = F.logsigmoid(log_or(a, b))
        m = {"loss": (nll - beta * ratio).mean(), "Positive Geometric Mean": a.mean(),
             "Negative Geometric Mean": b.mean(), "Log Odds Ratio": ratio.mean(), "Log Odds": log_or(a, b).mean()}
        return {k: float(v) for k, v in m.items()}, None
    raise ValueError(name)


def verdict(setup, metrics, multiple=None, lam=None):
    hf, model, pairs, _, _ = setup
    batch = collate_padded(pairs, PAD)
    scores = score_batch(model, batch, PAD, EOS, pad_to_multiple_of=multiple)
    lines, status = judge(Predictor(scores), parse_reported(None, None, metrics), 1e-4, lam)
    return "\n".join(lines), status


@pytest.mark.parametrize("name,lam", [("trl", None), ("liger", None), ("ms-swift", None), ("llamafactory", None),
                                      ("xtuner", None), ("official", 1.0)])
def test_peer_named_from_full_metrics(setup, name, lam):
    """Each peer's full metrics -> MATCH at its coordinates, named (and only the implementations sharing them)."""
    metrics, multiple = peer(name, setup[0], collate_padded(setup[2], PAD), beta=lam or 0.1)
    text, status = verdict(setup, metrics, multiple, lam)
    if name == "xtuner":  # its unshifted log-probs are ~ -5 (P ~ 0), where odds ratio and probability ratio coincide
        assert "AMBIGUOUS at" in text and "objective = odds_ratio or probability_ratio;" in text, text
        text = text.replace("AMBIGUOUS", "MATCH")
    else:
        assert status == 0, text
    assert "verdict: MATCH" in text, text
    shared = text.split("shared by: ")[1].split("\n")[0]
    names = [part.split(" (")[0] for part in shared.split("; ")]
    assert ("trl" if name == "liger" else name) in names, text  # Liger's trainer is listed under trl
    if name in ("trl", "liger", "llamafactory", "xtuner", "ms-swift"):
        assert len(names) == 1, text  # logits/* (or xtuner's logps) single them out


def test_logits_that_fit_nothing_are_left_out(setup):
    """LLaMA-Factory's metrics judged without its --pad-to-multiple-of 8: its logits/* (means over the padded rows)
    then fit no averaging, so they are left out with the reason, and the rest still gives its coordinates (shared
    with paper, which differs only in logits/*), not a wrong preset."""
    metrics, _ = peer("llamafactory", setup[0], collate_padded(setup[2], PAD))
    text, status = verdict(setup, metrics)
    assert "LEFT OUT of the verdict" in text and status == 0, text
    assert "shared by: paper (" in text and "; llamafactory (" in text and "trl (" not in text, text


def test_probability_ratio_is_not_odds_ratio(setup):
    """The 'ORPO' with odds = exp(logp) (the probability ratio, section 7.1) in TRL's code: its full metrics match
    objective = probability_ratio, never odds_ratio; with only loss and nll_loss it is at best not separated."""
    metrics, _ = peer("prob-ratio", setup[0], collate_padded(setup[2], PAD))
    text, status = verdict(setup, metrics)
    assert status == 1 and "objective = probability_ratio;" in text and "no known implementation" in text, text
    text, status = verdict(setup, {k: metrics[k] for k in ("loss", "nll_loss")}, lam=0.1)
    assert status == 1 and "objective = odds_ratio" not in text, text


def test_wrong_normalization_is_not_a_match(setup):
    """TRL's metrics with the NLL averaged over every position of the padded chosen rows (pads included): no
    combination matches, and the verdict names nll_loss as what is off."""
    hf, _, pairs, _, _ = setup
    metrics, _ = peer("trl", hf, collate_padded(pairs, PAD))
    cat, logits = hf_logits(hf, collate_padded(pairs, PAD))
    B = len(pairs)
    lp = torch.log_softmax(logits[:B, :-1], -1).gather(-1, cat["input_ids"][:B, 1:, None])[..., 0]
    wrong_nll = float(-lp.mean())
    metrics = {**metrics, "nll_loss": wrong_nll, "loss": metrics["loss"] - metrics["nll_loss"] + wrong_nll}
    text, status = verdict(setup, metrics)
    assert status == 1 and "NO combination matches" in text and "nll_loss is off" in text, text
    # a per-sequence mean over prompt + response: a candidate, but no known implementation's
    tok = lp * cat["attention_mask"][:B, 1:]
    seq_nll = float(-(tok.sum(1) / cat["attention_mask"][:B, 1:].sum(1)).mean())
    metrics = {**metrics, "nll_loss": seq_nll, "loss": metrics["loss"] - metrics["nll_loss"] + seq_nll}
    text, status = verdict(setup, metrics)
    assert status == 1 and "nll_normalization = sequence_mean;" in text and "no known implementation" in text, text
    text, status = verdict(setup, {"loss": metrics["loss"]}, lam=0.1)
    assert status == 1 and "WARNING: a loss alone cannot separate conventions" in text, text


def run_cli(capsys, *args):
    code = main(["conformance", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_real_trl_trainer_full_metrics(setup, capsys, tmp_path):
    """TRL's own ORPOTrainer (its tokenization, collation and logging) on the pairs: its batch dumped to
    safetensors, its metrics (all of them, logits/* included) as a log_history entry -> `trl` via --batch and via
    --data (TRL prepends BOS; so does this tokenizer)."""
    trl_orpo = pytest.importorskip("trl.experimental.orpo")
    datasets = pytest.importorskip("datasets")
    from safetensors.torch import save_file

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    hf, _, _, model_dir, data = setup
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    args = trl_orpo.ORPOConfig(output_dir=str(tmp_path / "out"), beta=0.1, max_length=1024, max_steps=1,
                               report_to=[], use_cpu=True, per_device_train_batch_size=len(PAIRS), save_strategy="no")
    trainer = trl_orpo.ORPOTrainer(model=hf, args=args, processing_class=tokenizer,
                                   train_dataset=datasets.Dataset.from_list(PAIRS))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(hf, batch)
    state = {"log_history": [{"epoch": 1.0, "step": 1, "learning_rate": 1e-5, "loss": loss.item(),
                              **{f"train/{k}" if k.startswith("log") else k: float(v) for k, v in metrics.items()}}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    save_file({k: batch[k].contiguous() for k in ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
                                                 "rejected_input_ids", "rejected_attention_mask", "rejected_labels")},
              str(tmp_path / "batch.safetensors"))
    for source in (["--batch", tmp_path / "batch.safetensors"], ["--data", data, "--add-bos", "yes"]):
        code, out = run_cli(capsys, "--model", model_dir, *source, "--metrics-json", tmp_path / "trainer_state.json")
        assert code == 0 and "verdict: MATCH" in out and "shared by: trl (" in out, out
        assert "LEFT OUT" not in out  # logits/* were judged, and fit


def test_bad_inputs(setup, capsys, tmp_path):
    """Unknown metric names, a pickle, missing keys and mismatched shapes: one-line errors naming them (exit 2)."""
    _, _, pairs, model_dir, data = setup
    assert canonical_name("eval_rewards/chosen") == "rewards/chosen" and canonical_name("reward_acc") == \
        "rewards/accuracies"
    assert parse_reported(1.5, ["sft_loss=0.25"]) == {"loss": 1.5, "nll_loss": 0.25}
    with pytest.raises(UserError, match="unknown metric 'rewards/chosenn'"):
        parse_reported(None, ["rewards/chosenn=1"])
    (tmp_path / "b.pt").write_bytes(b"x")
    code, out = run_cli(capsys, "--model", model_dir, "--batch", tmp_path / "b.pt", "--loss", "1")
    assert code == 2 and "b.pt: a pickle" in out, out
    batch = {k: v.tolist() for k, v in collate_padded(pairs, PAD).items() if k != "prompt_lengths"}
    (tmp_path / "missing.json").write_text(json.dumps({k: v for k, v in batch.items() if k != "rejected_labels"}))
    code, out = run_cli(capsys, "--model", model_dir, "--batch", tmp_path / "missing.json", "--loss", "1")
    assert code == 2 and "missing key(s) ['rejected_labels']" in out, out
    short = [r[:-1] for r in batch["chosen_labels"]]
    (tmp_path / "shape.json").write_text(json.dumps({**batch, "chosen_labels": short}))
    code, out = run_cli(capsys, "--model", model_dir, "--batch", tmp_path / "shape.json", "--loss", "1")
    assert code == 2 and "chosen_labels has shape" in out, out
    (tmp_path / "m.json").write_text(json.dumps({"loss": 1.0, "rewards/chosn": 2.0}))
    code, out = run_cli(capsys, "--model", model_dir, "--data", data, "--metrics-json", tmp_path / "m.json")
    assert code == 2 and "unknown metric 'rewards/chosn'" in out, out


def test_bad_data_fails_before_the_weights_load(setup, capsys, tmp_path, monkeypatch):
    """A data file with no usable pair is refused, naming --data, before the model's weights are read (the slow
    step on a real model): load_model is replaced by a function that fails the test if it is reached."""
    _, _, _, model_dir, _ = setup
    bad = tmp_path / "empty.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": " ", "rejected": "no"}) + "\n")

    def reached(*args, **kwargs):
        raise AssertionError("the weights were loaded before the data was checked")

    monkeypatch.setattr("minorpo.hf.loader.load_model", reached)
    code, out = run_cli(capsys, "--model", model_dir, "--data", bad, "--loss", "1")
    assert code == 2 and "--data" in out and "no usable pair" in out, out


def test_dump_batch_round_trip(setup, capsys, tmp_path):
    """--dump-batch writes minorpo's batch; fed back with --batch it gives the same table."""
    _, _, _, model_dir, data = setup
    code, first = run_cli(capsys, "--model", model_dir, "--data", data, "--dump-batch", tmp_path / "b.json")
    assert code == 0
    code, second = run_cli(capsys, "--model", model_dir, "--batch", tmp_path / "b.json")
    assert code == 0 and first.split("\n", 1)[1] == second.split("\n", 1)[1]


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    out = capsys.readouterr().out
    assert "--metrics-json FILE" in out and "which ORPO conventions" in out
    assert "--loss 2.3456 \\\n" in out  # the example's line continuation survives the docstring
    assert "--add-bos yes --metrics-json" in out  # and its flags are valid ones


@pytest.mark.slow
def test_real_trl_on_smollm2_fixture(real_model_dir, hh_rlhf_file, capsys, tmp_path):
    """Opt-in (MINORPO_TEST_MODEL): TRL's ORPOTrainer on the SmolLM2 fixture and 4 HH-RLHF pairs, one batch; its
    FULL metrics (logits/* included) as a trainer_state.json and its batch as safetensors -> MATCH, named trl.
    (Measured 2026-12-02: nll_loss agrees to 3.6e-6 relative; sequence_mean and the pad-id filter are 1.7e-3 and
    1.9e-3 off, the probability ratio 9.5e-2, all far outside rtol 1e-4.)"""
    import gzip

    trl_orpo = pytest.importorskip("trl.experimental.orpo")
    datasets = pytest.importorskip("datasets")
    from safetensors.torch import save_file

    from minorpo.data import DataConfig, parse_row

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    rows = []
    with gzip.open(hh_rlhf_file, "rt") as f:
        for line in f:
            p = parse_row(json.loads(line), DataConfig())
            rows.append({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
            if len(rows) == 4:
                break
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(real_model_dir), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(real_model_dir))
    args = trl_orpo.ORPOConfig(output_dir=str(tmp_path / "out"), beta=0.1, max_length=1024, max_steps=1,
                               report_to=[], use_cpu=True, per_device_train_batch_size=4, save_strategy="no")
    trainer = trl_orpo.ORPOTrainer(model=hf, args=args, processing_class=tokenizer,
                                   train_dataset=datasets.Dataset.from_list(rows))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(hf, batch)
    state = {"log_history": [{"step": 1, "loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    save_file({k: batch[k].contiguous() for k in ("chosen_input_ids", "chosen_attention_mask", "chosen_labels",
                                                 "rejected_input_ids", "rejected_attention_mask", "rejected_labels")},
              str(tmp_path / "batch.safetensors"))
    code, out = run_cli(capsys, "--model", real_model_dir, "--batch", tmp_path / "batch.safetensors",
                        "--metrics-json", tmp_path / "trainer_state.json")
    assert code == 0 and "verdict: MATCH" in out and "shared by: trl (" in out and "LEFT OUT" not in out, out
