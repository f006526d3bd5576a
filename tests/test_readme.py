"""The README's first screen: its `minorpo train` command parses, and is the run the README describes (chat
template, checkpoints written, evaluations inside the run, the time it took written next to it).

Oracle: the command line itself, parsed by minorpo's own argument parser (what a user pasting it gets).
"""

import re
import shlex
from pathlib import Path

from minorpo.tools.cli import build_parser
from minorpo.tools.train_cli import config_from_args

README = Path(__file__).resolve().parents[1] / "README.md"


def _first_block():
    return re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)


def test_first_screen_train_command_is_the_described_run():
    block = _first_block()
    lines = block.replace("\\\n", " ").splitlines()
    [train] = [ln for ln in lines if ln.lstrip().startswith("minorpo train")]
    command, _, comment = train.partition("#")
    argv = shlex.split(re.sub(r'"\$\([^)]*\)"', "MODEL", command))[1:]
    cfg = config_from_args(build_parser("train").parse_args(argv))
    assert cfg.chat_template  # SmolLM2-135M-Instruct has one: raw text would not be what it was tuned on
    assert 0 < cfg.save_every <= cfg.max_steps  # the demo writes checkpoints (and one at the end in any case)
    assert 0 < cfg.eval_every <= cfg.max_steps and cfg.eval_pairs > 0  # held-out numbers to watch rise
    assert re.search(r"\d+ min", comment) and "2 CPU cores" in comment, comment  # the measured time, and where
    assert "python -m pytest -q" in block and "pip install torch==2.13.0" in block


def test_first_screen_says_how_to_run_elsewhere():
    """Outside this project's machines: the CPU wheel index and the hub id instead of ../shared."""
    top = README.read_text().split("## ")[0]
    assert "download.pytorch.org/whl/cpu" in top
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in top and "../shared" in top
