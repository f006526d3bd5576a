"""Graded exercises: the stubs students fill in (tutorials/exercises/), and the checks that grade them.

`minorpo exercises list | start N [DEST] | check N FILE [--json]` (grader.py). Each exercise has one checks
module here (exNN_*.py) holding its TESTS; worker.py runs them on a student's file in a subprocess with a time
limit. tutorials/exercises/README.md is the teacher's note for each exercise.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Exercise:
    number: int
    slug: str  # stub file tutorials/exercises/NN_<slug>.py, checks module minorpo/exercises/exNN_<slug>.py
    title: str
    tutorial: int  # the tutorial it goes with

    @property
    def stub_name(self) -> str:
        return f"{self.number:02d}_{self.slug}.py"

    @property
    def module(self) -> str:
        return f"minorpo.exercises.ex{self.number:02d}_{self.slug}"


EXERCISES = {e.number: e for e in [
    Exercise(1, "log1mexp", "log(1 - e^x), accurate near 0 and far from it", 1),
    Exercise(2, "sequence_logps", "Eq. 3: the masked mean log-prob of each response", 2),
    Exercise(3, "odds_ratio", "Eq. 4-7: log odds, log odds ratio and L_OR", 1),
    Exercise(4, "gradient", "Eq. 8-10: the gradient of L_OR by hand, delta and h", 2),
    Exercise(5, "batch_loss", "Eq. 6: the ORPO loss of a batch under a chosen NLL convention", 2),
    Exercise(6, "rope", "rotary position embeddings (RoPE), rotate-half layout", 3),
    Exercise(7, "shared_prompt_mask", "the shared-prompt layout: position ids and attention mask", 3),
    Exercise(8, "lora", "a LoRA linear layer with merge, unmerge and disable", 4),
    Exercise(9, "chunked_logps", "chunked token log-probs with a custom autograd Function", 5),
    Exercise(10, "accumulation", "exact gradient-accumulation normalization", 5),
]}

STUBS = Path(__file__).resolve().parents[2] / "tutorials" / "exercises"  # a checkout's (or editable install's)
