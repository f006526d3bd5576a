"""Write each tutorial's notebook twin: `python tutorials/make_notebooks.py` (needs jupytext, in the test extra).

NN_name.ipynb is the jupytext conversion of the percent-format script NN_name.py, with numbered cell ids (jupytext
would draw random ones) and a Python 3 kernelspec, so that the conversion is reproducible:
tests/test_tutorial_notebooks.py checks that every committed notebook is exactly `to_notebook(its script)`. Edit the
script, never the notebook, then rerun this.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def scripts() -> list[Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def to_notebook(script: Path) -> str:
    """The .ipynb text of a percent-format script."""
    import jupytext

    notebook = jupytext.reads(script.read_text(), fmt="py:percent")
    for i, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{i:03d}"
    notebook.metadata["kernelspec"] = KERNELSPEC
    return jupytext.writes(notebook, fmt="ipynb")


if __name__ == "__main__":
    for script in scripts():
        target = script.with_suffix(".ipynb")
        target.write_text(to_notebook(script))
        print(f"wrote {target}")
