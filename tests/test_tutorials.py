"""Every tutorial runs to the end: each is a script whose checks are asserts, so a nonzero exit is a failure.

Oracles live inside the tutorials (hand arithmetic, finite differences, autograd, an independent forward pass, the
golden vectors); this file only runs them. They run on tiny in-process models: MINORPO_TEST_MODEL is removed from
the environment so the default run stays fast. The real SmolLM2 fixture is exercised by
test_tutorial_3_on_the_real_model (opt-in, like the other real-model tests).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9][0-9]_*.py"))


def run_tutorial(path: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MINORPO_TEST_MODEL"}
    env.update(env_extra or {})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads only add overhead on a shared 2-core machine
    return subprocess.run([sys.executable, str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_tutorials_exist():
    """The six tutorials of issue 6 (5 needs the training loop; all are numbered 01-06)."""
    numbers = sorted(p.name[:2] for p in TUTORIALS)
    assert numbers == ["01", "02", "03", "04", "05", "06"], numbers


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    proc = run_tutorial(path, {"MINORPO_TUTORIAL_OUT": str(tmp_path)})
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "all checks passed" in proc.stdout  # each tutorial prints this as its last line
    # each draws at least one figure, as a PNG in its output folder (minorpo.tools.plot.tutorial_folder), not the checkout
    figures = [Path(line[len("figure: "):]) for line in proc.stdout.splitlines() if line.startswith("figure: ")]
    assert figures, f"{path.name} drew no figure"
    for fig in figures:
        assert fig.parent == tmp_path / path.stem, fig
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.stat().st_size > 10_000, fig


@pytest.mark.real_model
def test_tutorial_3_on_the_real_model(real_model_dir):
    """The hand-written forward pass against minorpo's model on real SmolLM2 weights."""
    proc = run_tutorial(REPO / "tutorials" / "03_inside_a_decoder.py", {"MINORPO_TEST_MODEL": str(real_model_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the real checkpoint" in proc.stdout
