"""Every tutorial has a notebook twin that is exactly the jupytext conversion of its percent-format script.

Oracle: tutorials/make_notebooks.py's to_notebook (jupytext, plus numbered cell ids and a kernelspec) applied to the
script must reproduce the committed .ipynb byte for byte; a stale notebook (the script edited, the notebook not
regenerated) fails here. The scripts themselves run in CI (test_tutorials.py); the notebooks were executed top to
bottom in a fresh kernel when they were made (tutorials/README.md).
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("jupytext")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
make_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_notebooks)
SCRIPTS = make_notebooks.scripts()


def test_one_notebook_per_script():
    assert len(SCRIPTS) == 6
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == [p.stem for p in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_notebook_is_the_conversion_of_its_script(script):
    committed = script.with_suffix(".ipynb").read_text()
    assert committed == make_notebooks.to_notebook(script), (
        f"{script.with_suffix('.ipynb').name} is stale: run `python tutorials/make_notebooks.py`")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_percent_format(script):
    """Cells are `# %%` blocks; prose cells hold only comments (a code line left in one would become prose)."""
    lines = script.read_text().splitlines()
    assert lines[0] == "# %% [markdown]"
    markdown = False
    for number, line in enumerate(lines, 1):
        if line.startswith("# %%"):
            markdown = "[markdown]" in line
        elif markdown and line.strip():
            assert line.startswith("#"), f"{script.name}, line {number}: code inside a markdown cell: {line!r}"
