"""The progress bar of a training run (--progress)."""

from tqdm import tqdm


class Progress:
    """One progress bar over the whole run, evaluations included, so its ETA covers them too.

    Its unit is the work of one pair's forward pass: a training step costs about 3 per pair (forward + backward),
    an evaluation 1 per held-out pair. The bar's text counts steps and evaluation batches. `evals`: how many
    evaluations the run still makes.
    """

    def __init__(self, cfg, start: int, global_batch: int, eval_pairs: int, evals: int, main: bool):
        self.bar, self.cfg, self.eval_pairs = None, cfg, eval_pairs
        self.step_cost = 3 * global_batch
        if not (cfg.progress and main):
            return
        total = (cfg.max_steps - start) * self.step_cost + evals * eval_pairs
        self.bar = tqdm(total=total, desc=f"{cfg.method} step {start}/{cfg.max_steps}", dynamic_ncols=True,
                        smoothing=0, bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}]{postfix}")

    def step(self, step: int, loss: float, lr: float):
        if self.bar is not None:
            self.bar.set_description_str(f"{self.cfg.method} step {step}/{self.cfg.max_steps}", refresh=False)
            self.bar.set_postfix_str(f"loss {loss:.4f}, lr {lr:.2e}", refresh=False)
            self.bar.update(self.step_cost)

    def eval_batch(self, done: int, total: int, n: int):
        """Called by forward.evaluate after each batch (n pairs, done of total)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"evaluating {done}/{total} held-out pairs", refresh=False)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
