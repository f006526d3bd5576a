"""The grader of the graded exercises (minorpo/exercises, stubs in tutorials/exercises).

Oracle: each exercise has known solutions. minorpo's own implementations (tests/exercise_solutions/exNN_reference.py,
thin wrappers) and solutions written without minorpo (exNN_student.py) must pass every check; every stub as shipped
must fail every check; each realistic wrong solution (the mistakes the teacher's note names) must fail the check
aimed at it, with that check's message. Grading runs in-process here (worker.grade) to keep the tests fast; the CLI
tests run the real subprocess path (exit status, --json, the time limit, files that do not import).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minorpo.exercises import EXERCISES, STUBS, harness
from minorpo.exercises.worker import grade

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "tests" / "exercise_solutions"


@pytest.fixture(autouse=True)
def fewer_examples(monkeypatch):
    monkeypatch.setattr(harness, "EXAMPLES", 25)  # the traps are in the strategies' ranges; 25 draws find them


def results(number: int, path: Path, only=None) -> dict:
    return {e["test"]: e for e in grade(number, path, only) if "test" in e}


@pytest.mark.parametrize("number", sorted(EXERCISES))
def test_every_stub_fails(number):
    got = results(number, STUBS / EXERCISES[number].stub_name)
    assert got and not any(r["passed"] for r in got.values())
    assert all("NotImplementedError" in r["message"] for r in got.values()), got


PASSING = sorted(SOLUTIONS.glob("ex*_reference.py")) + sorted(SOLUTIONS.glob("ex*_student.py"))


@pytest.mark.parametrize("path", PASSING, ids=[p.stem for p in PASSING])
def test_known_solutions_pass(path):
    got = results(int(path.name[2:4]), path)
    failed = {k: v for k, v in got.items() if not v["passed"]}
    assert not failed, failed


def test_every_exercise_has_a_reference():
    assert sorted(int(p.name[2:4]) for p in SOLUTIONS.glob("ex*_reference.py")) == sorted(EXERCISES)


# file -> {check (a prefix of its name): a phrase its failure message must contain}
WRONG = {
    "ex01_naive": {"near 0": "got -inf", "far below 0": "got 0"},
    "ex01_expm1_only": {"far below 0": "got 0"},
    "ex01_where_nan_grad": {"gradient": "got nan"},
    "ex02_mean_over_padding": {"padding does not count": "expected -1.5, got -0.75"},
    "ex02_multiply_mask": {"padded positions holding": "got nan", "a row with no masked token": "instead of raising"},
    "ex02_pooled": {"hand case": "returned shape ()"},
    "ex03_naive_odds": {"near-certain": "got nan"},
    "ex03_log_of_sigmoid": {"a certain rejected": "got inf"},
    "ex03_wrong_sign": {"hand case": "odds_ratio_loss differs", "L_OR falls": "does not fall"},
    "ex04_paper_sign": {"hand case": "expected -1, got 1", "random pairs: grad_a": "vs finite differences"},
    "ex04_no_one_minus_p": {"hand case": "expected -1, got -0.2"},
    "ex05_pooled_odds_ratio": {"hand case, sequence_mean": "loss differs"},
    "ex05_ignores_normalization": {"hand case, token_mean": "loss differs"},
    "ex05_nll_over_response_mask": {"the NLL covers nll_mask": "loss (token_mean) differs"},
    "ex06_interleaved": {"the pairs are": "apply_rope differs"},
    "ex06_index_positions": {"the given position ids": "apply_rope differs"},
    "ex07_plain_causal": {"no rejected token": "(rejected) must not attend to key 3 (chosen)"},
    "ex07_positions_continue": {"hand case from batches.py: prompt": "position_ids differ"},
    "ex07_transposed": {"hand case from batches.py: mask": "mask[0, 0, 1] is True, expected False"},
    "ex08_random_B": {"a new layer is exactly": "layer(x) at initialization differs"},
    "ex08_scale_alpha": {"with B != 0": "layer(x) differs"},
    "ex08_merge_twice": {"merge()": "weight after merging twice differs"},
    "ex08_disabled_ignores_merge": {"disabled = True": "disabled merged layer(x) differs"},
    "ex09_no_softmax_term": {"random sizes: gradients": "gradient w.r.t."},
    "ex09_plain_autograd": {"a custom autograd Function": "no custom torch.autograd.Function"},
    "ex09_drops_last_chunk": {"random sizes and chunk sizes": "chunked_token_logps differs"},
    "ex10_mean_of_means": {"hand case, token_mean": "share per micro-batch differs", "random splits": "differs"},
    "ex10_no_division": {"hand case, sequence_mean": "share per micro-batch differs"},
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_wrong_solutions_fail_with_the_right_message(name):
    aimed = WRONG[name]
    # only the checks aimed at the mistake: shrinking every other failure to its smallest input would take minutes
    got = results(int(name[2:4]), SOLUTIONS / f"{name}.py", only=lambda t: t.startswith(tuple(aimed)))
    for prefix, phrase in aimed.items():
        [check] = [r for t, r in got.items() if t.startswith(prefix)]
        assert not check["passed"], (name, prefix)
        assert phrase in check["message"], (name, prefix, check["message"])
        assert check["hint"]  # and one hint


def test_each_exercise_has_two_wrong_solutions():
    counts = {n: sum(int(w[2:4]) == n for w in WRONG) for n in EXERCISES}
    assert min(counts.values()) >= 2, counts


def test_importing_minorpo_is_noted():
    notes = [e for e in grade(4, SOLUTIONS / "ex04_reference.py", only=lambda t: False) if "note" in e]
    assert len(notes) == 1 and "imports minorpo" in notes[0]["note"]
    assert not [e for e in grade(4, SOLUTIONS / "ex04_student.py", only=lambda t: False) if "note" in e]


def test_smallest_failing_input_is_reported():
    """hypothesis shrinks: the naive log1mexp fails the random check on a single value, reported with its dtype."""
    [r] = results(1, SOLUTIONS / "ex01_naive.py", only=lambda t: t.startswith("random x")).values()
    assert r["input"].startswith("values = [") and r["input"].count(",") == 1 and "dtype = " in r["input"], r["input"]


def test_broken_files_are_reported():
    got = results(1, SOLUTIONS / "broken_syntax.py")
    assert all(r["message"].startswith("your file does not import: SyntaxError at line 4") for r in got.values())
    got = results(1, SOLUTIONS / "broken_import.py")
    assert all("NameError" in r["message"] and "line 3" in r["message"] for r in got.values())
    got = results(1, SOLUTIONS / "broken_raises.py")
    assert all("raised RuntimeError" in r["message"] and "(your file, line 2)" in r["message"] for r in got.values())
    [r] = results(1, SOLUTIONS / "broken_dtype.py", only=lambda t: t.startswith("near 0")).values()
    assert "returned dtype torch.float64, expected torch.float32" in r["message"]
    assert "Returns:" in r["hint"]  # a wrong type, shape or dtype points at the stub's Returns line


def minorpo(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MINORPO_EXERCISE_EXAMPLES": "25", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minorpo", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_check_exit_status_and_json():
    ok = minorpo("exercises", "check", "4", str(SOLUTIONS / "ex04_reference.py"), "--json")
    assert ok.returncode == 0, ok.stderr
    line = json.loads(ok.stdout)
    assert line == {"exercise": 4, "slug": "gradient", "file": str(SOLUTIONS / "ex04_reference.py"), "score": 1.0,
                    "passed": 3, "total": 3, "failed": [], "imports_minorpo": True}  # the reference wraps minorpo
    bad = minorpo("exercises", "check", "4", str(SOLUTIONS / "ex04_no_one_minus_p.py"))
    assert bad.returncode == 1
    assert "FAIL  hand case" in bad.stdout and "hint:" in bad.stdout and "checks passed" in bad.stdout
    assert "note: your file imports minorpo" not in bad.stdout  # written without it


@pytest.mark.slow
def test_cli_time_limit():
    """A solution that loops forever on float32 inputs: the float64 hand case passes, the next check is cut off at the
    time limit, the rest are not run (and the grader itself returns)."""
    proc = minorpo("exercises", "check", "1", str(SOLUTIONS / "broken_hangs.py"), "--time-limit", "2", "--json")
    assert proc.returncode == 1
    line = json.loads(proc.stdout)
    assert line["passed"] == 1 and line["total"] == 5
    proc = minorpo("exercises", "check", "1", str(SOLUTIONS / "broken_hangs.py"), "--time-limit", "2")
    assert "did not finish within the time limit of 2 s" in proc.stdout
    assert proc.stdout.count("not run: the time limit was reached") == 3


def test_cli_user_errors(tmp_path):
    for args, phrase in ((["check", "1", str(tmp_path / "missing.py")], "missing.py: no such file"),
                         (["check", "99", str(SOLUTIONS / "ex01_naive.py")], "exercise 99: no such exercise"),
                         (["start", "0"], "exercise 0: no such exercise")):
        proc = minorpo("exercises", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("minorpo: error: ") and phrase in proc.stderr, proc.stderr


def test_cli_start_and_list(tmp_path):
    proc = minorpo("exercises", "start", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "03_odds_ratio.py").read_text() == (STUBS / "03_odds_ratio.py").read_text()
    again = minorpo("exercises", "start", "3", cwd=tmp_path)
    assert again.returncode == 2 and "already exists: not overwriting" in again.stderr
    proc = minorpo("exercises", "start", "3", str(tmp_path / "mine.py"))
    assert proc.returncode == 0 and (tmp_path / "mine.py").exists()
    listing = minorpo("exercises", "list")
    assert listing.returncode == 0 and all(e.stub_name in listing.stdout for e in EXERCISES.values())
