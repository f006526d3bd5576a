"""`minorpo conformance` (minorpo/conformance.py) on a tiny random model saved with transformers' save_pretrained.

Oracles: (1) the `trl` preset's own numbers fed back must be identified as `trl` (and perturbed ones as nothing);
(2) numbers computed by TRL's real ORPOTrainer (test-only oracle) on the same pairs and weights must be identified
as `trl`; (3) the official preset's numbers as `official`.
"""

import json
import os

import pytest
import torch

from minorpo.cli import main
from minorpo.conformance import canonical_name, conformance_table, parse_reported

PAIRS = [
    {"prompt": "hi how are you ?", "chosen": " I am fine , thanks .", "rejected": " go away"},
    {"prompt": "what is two plus two ?", "chosen": " four", "rejected": " no , five . I am sure ."},
    {"prompt": "hello", "chosen": " hello , how are you ?", "rejected": " bad"},
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random Llama (transformers, save_pretrained) with the word-level test tokenizer, and a data file."""
    from tiny_models import saved
    from tiny_tokenizers import word_tokenizer

    folder = tmp_path_factory.mktemp("conformance")
    hf, model_dir = saved("llama-tied", folder / "model", bos_token_id=0, eos_token_id=1, pad_token_id=2)
    word_tokenizer(model_dir, chat_template=None, add_bos=True)  # Llama-style: the tokenizer prepends <s>
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return hf, model_dir, data


def run_cli(capsys, *args):
    code = main(["conformance", *map(str, args)])
    return code, capsys.readouterr().out


def our_table(model_dir, data, lam=None):
    from minorpo.data import load_preferences
    from minorpo.loader import load

    model, tok = load(model_dir)
    examples = load_preferences(str(data), tok).examples
    return conformance_table(model, examples, tok.pad_token_id, tok.eos_token_id, lam=lam, max_length=1024)


def test_trl_numbers_fed_back_are_identified(saved_model, capsys):
    """The trl preset's loss, nll_loss and logits/chosen, printed with 7 digits as a user would copy them, are
    identified as 'trl' alone (exit 0); the same loss 5% off matches nothing (exit 1)."""
    _, model_dir, data = saved_model
    trl = our_table(model_dir, data)["trl"]
    reported = [f"--loss={trl['loss']:.7g}", f"--metric=nll_loss={trl['nll_loss']:.7g}",
                f"--metric=train/logits/chosen={trl['logits/chosen']:.7g}"]
    code, out = run_cli(capsys, "--model", model_dir, "--data", data, *reported)
    assert code == 0, out
    assert "verdict: the reported numbers follow the 'trl' preset" in out
    for preset in ("paper", "official", "llamafactory"):
        assert f"{preset}" in out  # every preset has a column and a match line
    code, out = run_cli(capsys, "--model", model_dir, "--data", data, f"--loss={trl['loss'] * 1.05:.7g}")
    assert code == 1 and "no preset matches" in out


def test_official_numbers_identified(saved_model, capsys):
    """The official preset's loss and logps/chosen (under the official code's wandb name) are identified as 'official',
    with lambda passed explicitly for every preset."""
    _, model_dir, data = saved_model
    official = our_table(model_dir, data, lam=1.0)["official"]
    code, out = run_cli(capsys, "--model", model_dir, "--data", data, "--lam", "1.0", f"--loss={official['loss']:.7g}",
                        f"--metric=Positive Geometric Mean={official['logps/chosen']:.7g}")
    assert code == 0 and "follow the 'official' preset" in out, out


def test_real_trl_trainer_numbers_identified(saved_model, capsys, tmp_path):
    """The numbers TRL's own ORPOTrainer logs for these pairs (its tokenization, its collation, the transformers model
    that was saved) fed to `minorpo conformance` -> 'trl'. All its metrics except logits/* (those average over padding
    positions, whose hidden states depend on the model's position ids for padding: see test_loss_trl_parity.py)."""
    trl_orpo = pytest.importorskip("trl.experimental.orpo")
    transformers = pytest.importorskip("transformers")
    datasets = pytest.importorskip("datasets")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    hf, model_dir, data = saved_model
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    args = trl_orpo.ORPOConfig(output_dir=str(tmp_path / "out"), beta=0.1, max_length=1024, max_steps=1,
                               report_to=[], use_cpu=True, per_device_train_batch_size=len(PAIRS), save_strategy="no")
    trainer = trl_orpo.ORPOTrainer(model=hf.eval(), args=args, processing_class=tokenizer,
                                   train_dataset=datasets.Dataset.from_list(PAIRS))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(hf, next(iter(trainer.get_train_dataloader())))
    reported = [f"--loss={loss.item():.7g}"] + [f"--metric={k}={v:.7g}" for k, v in metrics.items()
                                                  if not k.startswith("logits/")]
    code, out = run_cli(capsys, "--model", model_dir, "--data", data, *reported)
    assert code == 0 and "follow the 'trl' preset" in out, out


def test_reported_names_and_errors():
    assert canonical_name("eval_rewards/chosen") == "rewards/chosen"
    assert canonical_name("Log Odds") == "log_odds_chosen"
    assert parse_reported(1.5, ["sft_loss=0.25"]) == {"loss": 1.5, "nll_loss": 0.25}
    with pytest.raises(ValueError, match="unknown metric 'rewards/chosenn'"):
        parse_reported(None, ["rewards/chosenn=1"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_reported(None, ["nll_loss"])


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    out = capsys.readouterr().out
    assert "--metric NAME=VALUE" in out and "which ORPO conventions" in out
