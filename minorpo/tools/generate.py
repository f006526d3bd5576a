"""Text generation: greedy or sampled (temperature, top-p), with a KV cache, stopping at EOS.

    minorpo generate --model HUB_ID_OR_DIR --prompt "..." [--chat] [--max-new-tokens N]
                     [--temperature T] [--top-p P] [--seed S] [--dtype float32|bfloat16|float16]

One step: run the model on the new tokens only (the KV cache holds the keys and values of everything before),
take the logits of the last position, pick the next token. Greedy picks the argmax (temperature 0). Sampling
divides the logits by the temperature, keeps the smallest set of most likely tokens whose probabilities sum to at
least top_p (nucleus sampling, Holtzman et al. 2019), renormalizes and draws. A row that emitted EOS is finished:
it is padded from then on, and generation stops when every row is finished.
"""

from __future__ import annotations

import argparse

import torch

from minorpo.errors import UserError
from minorpo.hf.loader import DTYPES
from minorpo.models.llama import KVCache


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose total probability is >= top_p; renormalize.

    probs: (B, V) rows summing to 1. The most likely token is always kept.
    """
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)                                  # (B, V)
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # probability of the tokens ranked above each one
    sorted_p = sorted_p * (mass_before < top_p)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)                            # (B, V)
    return kept / kept.sum(dim=-1, keepdim=True)


def next_token(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """The next token of each row from last-position logits (B, V): argmax if temperature == 0, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)                                                       # (B,)
    probs = torch.softmax(logits.float() / temperature, dim=-1)                            # (B, V)
    probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)                    # (B,)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int = 64, *, attention_mask=None, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, eos_token_id=None, pad_token_id: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue each row of input_ids [B, T] (a list of ints is one row); return [B, T + n], n <= max_new_tokens.

    attention_mask [B, T] (1 = real token) allows left-padded batches of prompts of different lengths.
    eos_token_id: an id or a list of ids; default the model's generation_config.json / config.json eos.
    Finished rows are filled with pad_token_id (default: the first eos id). use_cache=False recomputes the
    whole sequence at every step (slow; it exists to check the cache).
    """
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if not torch.is_tensor(input_ids):
        input_ids = torch.tensor([list(input_ids)], dtype=torch.long)
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    mask = None if attention_mask is None else attention_mask.to(device).long()
    if eos_token_id is None:
        eos_token_id = model.config.generation_eos_token_id
        if eos_token_id is None:
            eos_token_id = model.config.eos_token_id
    eos = torch.tensor([] if eos_token_id is None else
                       [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                       dtype=torch.long, device=device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if len(eos) else 0
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)

    was_training = model.training
    model.eval()
    cache = KVCache() if use_cache else None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)                 # (B,)
    new = ids  # what the model has not seen yet: the prompt, then one token per step
    for _ in range(max_new_tokens):
        logits = model(new if use_cache else ids, attention_mask=mask, kv_cache=cache)     # (B, t, V)
        token = next_token(logits[:, -1], temperature, top_p, generator)                   # (B,)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        ids = torch.cat([ids, token[:, None]], dim=1)                                      # (B, T + n)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        finished |= torch.isin(token, eos)
        if finished.all():
            break
        new = token[:, None]                                                               # (B, 1)
    model.train(was_training)
    return ids


# ----------------------------------------------------------------------------------------------------------
# Command line

def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a model (hub id or local folder)",
        description="Load a model and its tokenizer and continue a prompt. Greedy by default; "
                    "--temperature > 0 samples (with --top-p and --seed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct) or folder")
    p.add_argument("--prompt", required=True, help="the text to continue (the user message with --chat)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the tokenizer's chat template")
    p.add_argument("--system", default=None, help="with --chat: a system message placed first")
    p.add_argument("--max-new-tokens", type=int, default=128, help="stop after this many new tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 = sample")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep this much probability mass")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weight and compute dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.set_defaults(func=run_cli)


def check_cli(args) -> None:
    """The flags of `minorpo generate`, checked before the model loads."""
    from minorpo.run.validate import check_device, check_local_model
    if not args.prompt.strip():
        raise UserError("--prompt is empty: give the text to continue")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    if not args.temperature >= 0:
        raise UserError(f"--temperature {args.temperature:g}: must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p {args.top_p:g}: must be in (0, 1]")
    if args.system is not None and not args.chat:
        raise UserError("--system needs --chat (a system message is a chat-template turn)")
    check_device(args.device)
    check_local_model(args.model)
    if args.chat:
        from minorpo.hf.tokenizer import load_tokenizer
        if load_tokenizer(args.model, revision=args.revision).chat_template is None:
            raise UserError(f"--chat: the tokenizer of {args.model} has no chat template (drop --chat to continue "
                            f"the prompt as raw text)")


def run_cli(args) -> int:
    from minorpo.hf.loader import load
    check_cli(args)
    model, tok = load(args.model, dtype=DTYPES[args.dtype], revision=args.revision, device=args.device)
    if args.chat:  # check_cli made sure the tokenizer has a chat template
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": args.prompt}]
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    else:
        prompt_ids = tok.encode(args.prompt, add_special_tokens=True)
    # stop at any of the ids that mean "end": generation_config.json's, config.json's and the tokenizer's eos
    eos = set()
    for e in (model.config.generation_eos_token_id, model.config.eos_token_id, tok.eos_token_id):
        eos.update([] if e is None else [e] if isinstance(e, int) else e)
    out = generate(model, list(prompt_ids), args.max_new_tokens, temperature=args.temperature,
                   top_p=args.top_p, seed=args.seed, eos_token_id=sorted(eos) or None)
    print(tok.decode(out[0, len(prompt_ids):].tolist(), skip_special_tokens=True))
    return 0
