"""Memory and time of an ORPO step, against DPO and SFT (the claims that come with ORPO's "no reference model").

Claim 1: ORPO keeps one model in memory, DPO two (the policy and a frozen reference), so ORPO needs about half the
memory of DPO. Claim 2: an ORPO step costs about twice an SFT step (it runs the chosen AND the rejected response).

What we measure, in ONE run, on the same batch:
  memory  peak bytes of all tensors alive during a steady-state training step (forward, backward, AdamW step,
          after one warm-up step has created the optimizer state): the model's weights, the reference's weights
          (DPO), the AdamW state, and the gradients, activations and temporaries the step allocates. On a GPU:
          torch.cuda.max_memory_allocated. On a CPU: the bytes of the weights and the optimizer state plus the
          peak of minorpo.tools.memtrack.LiveTensorBytes over the step.
          Two settings: full fine-tuning (DPO's reference = a frozen copy of the model) and LoRA (DPO's reference =
          the same model with the adapters switched off: no copy at all).
  time    wall time of whole training steps, interleaved (sft, orpo, dpo, sft, orpo, dpo, ...) after a warm-up,
          medians with bootstrap 95% intervals of the ratios.
  methods sft = NLL of the chosen response, which is all an SFT step needs: the chosen rows only (minorpo.train
          --method sft also runs the rejected rows, to log their log-probs, so it costs as much as ORPO);
          orpo = minorpo's ORPO step (one forward of the 2B chosen + rejected rows); dpo = minorpo's DPO step
          (the same forward, plus one no-grad forward of the reference).

    python reproduce/memory_and_time.py --preset cpu --model PATH --data harmless-base-test.jsonl.gz
"""

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import stats as S  # noqa: E402

CLAIM_MEMORY = "ORPO needs about half the memory of DPO (no frozen reference model)."
CLAIM_TIME = "An ORPO step costs about 2x an SFT step (chosen and rejected responses instead of chosen only)."
METHODS = ("sft", "orpo", "dpo")
LAM, BETA = 1.0, 0.1  # ORPO's lambda, DPO's beta (the memory and the time do not depend on them)
HALF = (0.4, 0.6)  # "about half": the ORPO / DPO peak-memory ratio within this range
TWICE = (1.6, 2.4)  # "about 2x": the ORPO / SFT step-time ratio's 95% interval inside this range

PRESETS = {
    "paper": {"model": "facebook/opt-350m", "data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
              "max_length": 1024, "max_prompt_length": 512, "batch_size": 8, "lora_r": 16, "time_reps": 10,
              "time_modes": ["full", "lora"], "memory_modes": ["full", "lora"]},
    "cpu": {"data": C.DEFAULT_DATA, "data_files": "harmless-base/test.jsonl.gz",
            "max_length": 128, "max_prompt_length": 64, "batch_size": 2, "lora_r": 16, "time_reps": 6,
            "time_modes": ["lora"], "memory_modes": ["full", "lora"]},
    "smoke": {"max_length": 48, "max_prompt_length": 24, "batch_size": 2, "lora_r": 4, "time_reps": 2,
              "time_modes": ["lora"], "memory_modes": ["full", "lora"]},
}


def sft_step_loss(model, batch, chunk_size):
    """L_SFT from the chosen rows only: what a plain SFT step computes."""
    from minorpo.loss import nll_loss
    from minorpo.logprobs import IGNORE_INDEX, shift_labels, token_logps

    targets = shift_labels(batch["chosen_labels"], batch["chosen_attention_mask"])  # [B, T]
    hidden = model(batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"], return_hidden=True)
    logps = token_logps(hidden, model.lm_head.weight, targets, chunk_size)  # [B, T]
    return nll_loss(logps, targets != IGNORE_INDEX, "sequence_mean")


class Setup:
    """A model in one mode (full or lora), its optimizer, and for DPO a frozen reference copy (full mode)."""

    def __init__(self, base, mode: str, method: str, r: int, device):
        from minorpo.lora import apply_lora
        self.model = copy.deepcopy(base).to(device).train()
        if mode == "lora":
            apply_lora(self.model, r=r, alpha=2 * r, targets="all-linear")
        else:
            for p in self.model.parameters():
                p.requires_grad_(True)
        self.reference = None
        if method == "dpo" and mode == "full":
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-6)
        self.method = method

    def step(self, batch, spec, counts):
        from minorpo.forward import pair_logps, reference_logps
        from minorpo.loss import objective_sums
        if self.method == "sft":
            loss = sft_step_loss(self.model, batch, spec.chunk_size)
        else:  # as train.py's step loop
            tl = pair_logps(self.model, batch, spec)
            ref = reference_logps(self.model, batch, spec, self.reference) if self.method == "dpo" else None
            nll, pairs, _ = objective_sums(tl, self.method, LAM, BETA, spec.nll_normalization, ref)
            loss = nll / counts["nll"] + pairs / counts["pairs"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def measure_memory(base, mode, method, r, batch, spec, counts, device) -> tuple[int, dict]:
    """Peak bytes of a steady-state training step, and what they are made of.

    One warm-up step first creates the AdamW state (exp_avg, exp_avg_sq: 2 x the trainable bytes), which then
    lives for the whole run; the measured second step adds gradients, activations and temporaries on top of the
    resident weights (policy, and the reference for full-fine-tuning DPO) and that optimizer state.
    """
    from minorpo.tools.memtrack import LiveTensorBytes
    setup = Setup(base, mode, method, r, device)
    setup.step(batch, spec, counts)  # warm-up: the optimizer state now exists
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in {id(p): p for p in ps}.values())  # noqa: E731
    state = sum(t.numel() * t.element_size() for st in setup.optimizer.state.values() for t in st.values()
                if torch.is_tensor(t) and t.dim() > 0)
    breakdown = {"weights": nbytes(setup.model.parameters()),
                 "reference_weights": nbytes(setup.reference.parameters()) if setup.reference is not None else 0,
                 "adamw_state": state}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        setup.step(batch, spec, counts)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        breakdown["grads_activations_temporaries"] = peak - sum(breakdown.values())
    else:
        with LiveTensorBytes() as mem:  # counts only what the step creates: gradients, activations, temporaries
            setup.step(batch, spec, counts)
        breakdown["grads_activations_temporaries"] = mem.peak
        peak = sum(breakdown.values())
    del setup
    return peak, breakdown


def time_steps(base, mode, r, batch, spec, counts, device, reps) -> dict:
    """Wall time per step of each method (the same ForwardSpec for all), interleaved, after one warm-up step each."""
    setups = {m: Setup(base, mode, m, r, device) for m in METHODS}
    times = {m: [] for m in METHODS}
    for rep in range(reps + 1):
        for m in METHODS:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            setups[m].step(batch, spec, counts)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep:  # rep 0 is the warm-up
                times[m].append(time.perf_counter() - t0)
    return times


def ratio_interval(num, den, n_boot=2000, seed=0):
    """Ratio of medians and its 95% percentile-bootstrap interval."""
    g = torch.Generator().manual_seed(seed)
    num_t, den_t = torch.tensor(num), torch.tensor(den)
    boots = []
    for _ in range(n_boot):
        a = num_t[torch.randint(len(num), (len(num),), generator=g)].median()
        b = den_t[torch.randint(len(den), (len(den),), generator=g)].median()
        boots.append(float(a / b))
    b = torch.tensor(boots)
    return statistics.median(num) / statistics.median(den), float(torch.quantile(b, 0.025)), float(torch.quantile(b, 0.975))


def main(argv=None):
    args = C.parse_args(__doc__, PRESETS, argv)
    rec = C.Recorder(args, "memory_and_time")
    s = args.settings
    from minorpo.batches import collate, count_targets, pad_token_id
    from minorpo.forward import ForwardSpec

    base, tok = C.load_model(args)
    base.requires_grad_(False)
    pad_id = pad_token_id(tok)
    # one batch of the batch_size pairs whose padded rows are longest (the worst case at this max_length)
    pairs = sorted(C.load_pairs(args, tok, 64), key=lambda p: -(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))))
    chosen = pairs[: s["batch_size"]]
    batch = collate(chosen, pad_id, rec.device)
    spec = ForwardSpec(preset="paper", pad_id=pad_id)  # the same forward for every method ("sft": its chunk size)
    counts = count_targets(chosen, "paper", pad_id)
    shape = {"pairs": len(chosen), "padded_length": int(batch["chosen_input_ids"].shape[1]),
             "params": sum(p.numel() for p in base.parameters())}
    print(f"batch: {shape}", flush=True)

    memory, breakdowns = {}, {}
    for mode in s["memory_modes"]:
        for m in METHODS:
            memory[f"{mode}/{m}"], breakdowns[f"{mode}/{m}"] = measure_memory(base, mode, m, s["lora_r"], batch,
                                                                              spec, counts, rec.device)
            print(f"  peak memory {mode:4s} {m:4s}: {memory[f'{mode}/{m}'] / 2**20:8.1f} MiB", flush=True)
    times, ratios = {}, {}
    for mode in s["time_modes"]:
        t = time_steps(base, mode, s["lora_r"], batch, spec, counts, rec.device, s["time_reps"])
        for m in METHODS:
            times[f"{mode}/{m}"] = t[m]
            print(f"  step time {mode:4s} {m:4s}: median {statistics.median(t[m]):.3f} s over {len(t[m])}", flush=True)
        ratios[f"{mode}: orpo / sft"] = ratio_interval(t["orpo"], t["sft"])
        ratios[f"{mode}: dpo / orpo"] = ratio_interval(t["dpo"], t["orpo"])

    # Two unrelated claims, two verdicts. Memory is deterministic (bytes), so one measurement decides: the ratio
    # inside HALF holds, outside does not. Time: the bootstrap interval of the ratio of medians inside TWICE holds,
    # entirely outside does not, else inconclusive. Each setting (full, LoRA) is a sub-claim; all must hold.
    mem_ratios = {mode: memory[f"{mode}/orpo"] / memory[f"{mode}/dpo"] for mode in s["memory_modes"]}
    mem_tests = {f"{mode}": S.fixed(S.HOLDS if HALF[0] <= q <= HALF[1] else S.FAILS, ratio=q)
                 for mode, q in mem_ratios.items()}
    time_tests = {}
    for mode in s["time_modes"]:
        q, lo, hi = ratios[f"{mode}: orpo / sft"]
        inside = TWICE[0] <= lo and hi <= TWICE[1]
        outside = hi < TWICE[0] or lo > TWICE[1]
        time_tests[mode] = S.fixed(S.HOLDS if inside else S.FAILS if outside else S.INCONCLUSIVE, ratio=q, ci95=[lo, hi])
    plt = C.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    modes = s["memory_modes"]
    parts = [("weights", "tab:blue"), ("reference_weights", "tab:orange"), ("adamw_state", "tab:green"),
             ("grads_activations_temporaries", "tab:gray")]
    xs, names = [], []
    for j, mode in enumerate(modes):
        for i, m in enumerate(METHODS):
            x = j * (len(METHODS) + 1) + i
            bottom = 0.0
            for part, color in parts:
                v = breakdowns[f"{mode}/{m}"][part] / 2**20
                ax.bar(x, v, 0.8, bottom=bottom, color=color, label=part.replace("_", " ") if (j, i) == (0, 0) else None)
                bottom += v
            xs.append(x)
            names.append(f"{m}\n{'full' if mode == 'full' else 'LoRA'}")
    ax.set_xticks(xs, names)
    ax.set(ylabel="peak memory of a training step (MiB)", title="Peak memory of a steady-state step (after a warm-up)")
    ax.grid(alpha=0.3, axis="y"), ax.legend(fontsize=7)
    ax = axes[1]
    labels, data = [], []
    for key, v in times.items():
        labels.append(key.replace("/", "\n"))
        data.append(v)
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set(ylabel="wall time per training step (s)", title=f"Step time ({s['time_reps']} interleaved repetitions)")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"ORPO vs DPO vs SFT, batch of {shape['pairs']} pairs x {shape['padded_length']} tokens\n{C.subtitle(args)}")
    figures = [rec.save_figure(fig, "memory_time")]

    mem_v, mem_each = S.combine(mem_tests)
    time_v, time_each = S.combine(time_tests)
    mem_reason = ("peak memory ORPO / DPO: " + ", ".join(f"{mode} {q:.2f}" for mode, q in mem_ratios.items())
                  + f" (claim: about half, {HALF[0]}-{HALF[1]}). A full-fine-tuning DPO reference adds the weights only "
                    "(no gradients, no AdamW state), and a LoRA reference is the same weights with the adapters off: "
                    "it adds nothing.")
    time_reason = ("step time ORPO / SFT: " + ", ".join(f"{k.split(':')[0]} {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]"
                                                        for k, v in ratios.items() if k.endswith("orpo / sft"))
                   + f" (claim: about 2x, the 95% interval inside {TWICE[0]}-{TWICE[1]})")
    claims = {"memory: ORPO about half of DPO": C.claim(CLAIM_MEMORY, {args.seed: mem_v}, {args.seed: mem_reason},
                                                       {"settings": mem_each}),
              "time: ORPO step about 2x SFT": C.claim(CLAIM_TIME, {args.seed: time_v}, {args.seed: time_reason},
                                                     {"settings": time_each})}
    measured = {"batch": shape, "peak_memory_bytes": memory, "peak_memory_breakdown_bytes": breakdowns,
                "memory_ratio_orpo_over_dpo": mem_ratios,
                "step_times_s": times, "time_ratios_median_and_95ci": ratios}
    rec.finish(measured, claims, figures)


if __name__ == "__main__":
    main()
