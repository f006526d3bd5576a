# %% [markdown]
# # Tutorial 5 — One ORPO training run, end to end
#
# We train a (tiny, in-process) model with `minorpo train`, then read what the run wrote: metrics.jsonl, the
# plots, the merged model. The same command trains a real model — replace the folder and the data, e.g.
#
#     minorpo train --model HuggingFaceTB/SmolLM2-135M --data Anthropic/hh-rlhf --method orpo --lam 0.1 \
#                   --lora-r 16 --lr 1e-4 --max-steps 500 --out runs/orpo
#
# Run it: `python tutorials/05_one_orpo_run.py` (about ten seconds on a CPU).

# %%
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from minorpo.tools.cli import main as minorpo
from minorpo.hf.config import ModelConfig
from minorpo.tools.generate import generate
from minorpo.hf.loader import load, save
from minorpo.models import build_model
from minorpo.tools.plot import in_notebook, plot_run, pyplot, save_figure, tutorial_folder
from minorpo.hf.tokenizer import Tokenizer

torch.manual_seed(0)
torch.set_num_threads(1)  # a tiny model: threads would only add overhead
work = Path(tempfile.mkdtemp())
plt = pyplot()

# %% [markdown]
# ## 1. A model folder and a data file
#
# Preference data in HH-RLHF's layout: each row holds two whole dialogues that share everything up to the last
# "\n\nAssistant:"; minorpo splits them into prompt, chosen and rejected response (`minorpo data inspect` shows
# how). Our pairs: arithmetic questions, a correct and polite chosen answer, a rude or wrong rejected one.

# %%
rude = ["Figure it out yourself.", "I don't care, go away.", "No idea, stop asking me."]
rows = []
for i in range(120):
    x, y = (i * 7) % 19 + 1, (i * 11) % 17 + 1
    prompt = f"\n\nHuman: What is {x} plus {y}?\n\nAssistant:"
    rejected = f" {rude[i % 3]}" if i % 2 else f" {x} plus {y} is {x + y + 1 + i % 3}."
    rows.append({"chosen": prompt + f" {x} plus {y} is {x + y}. Happy to help!", "rejected": prompt + rejected})
data = work / "pairs.jsonl"
data.write_text("".join(json.dumps(r) + "\n" for r in rows))

backend = Backend(models.BPE())  # a byte-level BPE tokenizer trained on the data itself
backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
backend.decoder = decoders.ByteLevel()
backend.train_from_iterator([r["chosen"] + r["rejected"] for r in rows],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
tokenizer = Tokenizer(backend, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
config = ModelConfig(model_type="llama", vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                     max_position_embeddings=256, tie_word_embeddings=True)
model_dir = save(build_model(config), tokenizer, work / "tiny-model")  # config.json, model.safetensors, tokenizer
print("model folder:", sorted(p.name for p in model_dir.iterdir()))

# %% [markdown]
# ## 2. Train
#
# ORPO with lambda = 0.5, full fine-tuning (--lora-r 0: every weight trained; a random tiny model learns far
# faster that way than through a low-rank adapter), 80 steps of 4 pairs, warmup then cosine decay. 16 pairs are
# held out and evaluated every 20 steps. (A random model needs a large learning rate to learn anything in 80
# steps; a pretrained one needs far less: the paper uses 8e-6 for full fine-tuning.)

# %%
LAM = 0.5
run = work / "run"
status = minorpo(["train", "--model", str(model_dir), "--data", str(data), "--out", str(run), "--method", "orpo",
                  "--lam", str(LAM), "--lora-r", "0",
                  "--lr", "3e-3", "--warmup-steps", "5", "--max-steps", "80", "--batch-size", "4",
                  "--eval-pairs", "16", "--eval-every", "20", "--save-every", "0", "--max-length", "64",
                  "--no-progress"])
assert status == 0
print("run folder:", sorted(p.name for p in run.iterdir()))

# %% [markdown]
# ## 3. Read metrics.jsonl
#
# One JSON object per optimizer step, under TRL's metric names so runs compare with TRL's:
#
# | name | meaning |
# |---|---|
# | loss | L_SFT + lambda * mean L_OR (Eq. 6), the number minimized |
# | nll_loss | L_SFT, the NLL of the chosen responses |
# | odds_ratio_loss | mean L_OR = -log sigmoid(log OR) (Eq. 7) |
# | log_odds_ratio | mean log sigmoid(log OR): TRL's name, = -odds_ratio_loss |
# | log_odds_chosen | mean log OR itself (Eq. 5): > 0 means the chosen odds are higher |
# | logps/chosen, logps/rejected | mean log P(y|x) (Eq. 3) of the batch's chosen / rejected responses |
# | rewards/chosen, rewards/rejected | lambda * logps/* (TRL's "rewards"); rewards/margins their difference |
# | rewards/accuracies | share of pairs with logps/chosen > logps/rejected |
# | eval_* | the same on the held-out pairs, at evaluation steps (step 0 is before any training) |

# %%
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
train_rows = [r for r in rows if "loss" in r]
evals = [r for r in rows if "eval_log_odds_chosen" in r]
print(f"{len(train_rows)} training rows, evaluations at steps {[r['step'] for r in evals]}")
print("last row:", {k: round(v, 4) if isinstance(v, float) else v for k, v in train_rows[-1].items()})

# %% [markdown]
# The identities that tie these numbers together must hold on every row (float32 arithmetic: 1e-5 relative).

# %%
for r in train_rows:
    assert math.isclose(r["loss"], r["nll_loss"] + LAM * r["odds_ratio_loss"], rel_tol=1e-5, abs_tol=1e-6)  # Eq. 6
    assert math.isclose(r["log_odds_ratio"], -r["odds_ratio_loss"], rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(r["rewards/chosen"], LAM * r["logps/chosen"], rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(r["rewards/margins"], r["rewards/chosen"] - r["rewards/rejected"], rel_tol=1e-4, abs_tol=1e-6)
    assert r["nll_loss"] > 0 and r["odds_ratio_loss"] > 0

# %% [markdown]
# Did it learn the preference? On the held-out pairs, before training the log odds ratio is about 0 (a random
# model has no preference); after 80 steps the chosen responses should have clearly higher odds, and their
# log-probability should have risen (the SFT term) while the rejected one fell behind.

# %%
first, last = evals[0], evals[-1]
for key in ("eval_log_odds_chosen", "eval_logps/chosen", "eval_logps/rejected", "eval_rewards/accuracies"):
    print(f"{key:28s} step {first['step']:3d}: {first[key]:+.3f}   step {last['step']:3d}: {last[key]:+.3f}")
assert last["eval_log_odds_chosen"] > first["eval_log_odds_chosen"] + 1.0  # a clear gain, not noise
assert last["eval_logps/chosen"] > first["eval_logps/chosen"]
assert last["eval_rewards/accuracies"] >= 0.75

# %% [markdown]
# ## 4. Plots
#
# `minorpo plot RUN` writes three PNGs: the loss and its two terms; chosen vs rejected log-probs (the picture
# of the paper's Fig. 3 and 7: under SFT alone both rise; under ORPO they separate); the log odds ratio with the
# held-out preference accuracy.

# %%
out = tutorial_folder("05_one_orpo_run")  # $MINORPO_TUTORIAL_OUT/05_one_orpo_run, or a temp folder
for path in plot_run(run):
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
    print(f"figure: {shutil.copy(path, out / path.name)}")
    if in_notebook():  # minorpo plot writes files; show them inline too
        from IPython.display import Image, display
        display(Image(filename=str(path), width=640))

# %% [markdown]
# ## 5. The same training under SFT alone
#
# The paper's Fig. 3: fine-tuning on the chosen responses alone (SFT) raises the log-probability of the REJECTED
# responses too, since they share most of their tokens and format with the chosen ones; ORPO's odds-ratio term
# holds them back. Same model, data, steps and learning rate, `--method sft`. On this random tiny model most of
# the rise is both runs learning the vocabulary at all (everything starts at -5.7), so ORPO's difference is small
# here (about 0.25 nats on the rejected responses); `reproduce/probability_inflation.py` measures the effect on a
# pretrained model.

# %%
sft_run = work / "run-sft"
status = minorpo(["train", "--model", str(model_dir), "--data", str(data), "--out", str(sft_run), "--method", "sft",
                  "--lora-r", "0", "--lr", "3e-3", "--warmup-steps", "5", "--max-steps", "80", "--batch-size", "4",
                  "--eval-pairs", "16", "--eval-every", "20", "--save-every", "0", "--max-length", "64",
                  "--no-progress"])
assert status == 0
sft_evals = [r for r in map(json.loads, (sft_run / "metrics.jsonl").read_text().splitlines())
             if "eval_log_odds_chosen" in r]
for name, ev in (("SFT ", sft_evals), ("ORPO", evals)):
    print(f"{name}: held-out rejected log-prob {ev[0]['eval_logps/rejected']:+.2f} -> {ev[-1]['eval_logps/rejected']:+.2f}, "
          f"log odds ratio {ev[0]['eval_log_odds_chosen']:+.2f} -> {ev[-1]['eval_log_odds_chosen']:+.2f}")
assert sft_evals[-1]["eval_logps/rejected"] > sft_evals[0]["eval_logps/rejected"] + 0.5  # inflated under SFT
assert evals[-1]["eval_log_odds_chosen"] > sft_evals[-1]["eval_log_odds_chosen"]  # ORPO separates them more

fig, axes = plt.subplots(1, 2, figsize=(7.8, 3.8), sharey=True)
for ax, ev, name in ((axes[0], sft_evals, "SFT alone"), (axes[1], evals, f"ORPO, λ = {LAM}")):
    steps = [r["step"] for r in ev]
    ax.plot(steps, [r["eval_logps/chosen"] for r in ev], "o-", color="tab:green", label="chosen")
    ax.plot(steps, [r["eval_logps/rejected"] for r in ev], "s--", color="tab:red", label="rejected")
    ax.set(title=name, xlabel="optimizer step")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("held-out mean token log-prob (nats, Eq. 3)")
axes[0].legend(fontsize=8, loc="lower right")
fig.suptitle("The same 80 steps under SFT and under ORPO: 16 held-out pairs (paper Fig. 3)", fontsize=11)
fig.tight_layout()
save_figure(fig, out, "sft_vs_orpo_logps.png")

# %% [markdown]
# ## 6. The trained model
#
# The run exported the model to run/final, a checkpoint folder that loads in minorpo or in transformers (with
# LoRA, run/adapter also holds the adapter in PEFT's format and run/final the merged weights). Our tiny model
# learned the answer's format and its politeness from 104 pairs, not arithmetic.

# %%
trained, tok = load(run / "final")
prompt = "\n\nHuman: What is 3 plus 4?\n\nAssistant:"
ids = torch.tensor([tok.encode(prompt)])
out = generate(trained, ids, max_new_tokens=12)
print("greedy answer:", repr(tok.decode(out[0, ids.shape[1]:].tolist())))
print("tutorial 5: all checks passed")
