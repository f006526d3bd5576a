"""`minorpo train`: one flag per TrainConfig field, with the field's help text; then train(config)."""

import argparse
from dataclasses import fields

from minorpo import train as training
from minorpo.errors import UserError
from minorpo.fast.config import SpeedConfig
from minorpo.run import folders
from minorpo.run.config import RunConfig
from minorpo.run.pairs import DataSettings
from minorpo.train import TrainConfig


def add_cli(subparsers):
    p = subparsers.add_parser("train", help="train with ORPO (or SFT / DPO for comparison)",
                              description=training.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="a JSON object of settings (the options below, with _ for -; a "
                                                     "run's own config.json works): options given here override it")
    add_flags(p)
    p.add_argument("--lambda", dest="lam", type=float, default=argparse.SUPPRESS, help="same as --lam")
    p.set_defaults(func=_cli_main)


# the groups of `minorpo train --help`: the training itself first, then the machinery, each group where it is defined
GROUPS = [(TrainConfig, "training (minorpo/train.py)"), (DataSettings, "data (minorpo/run/pairs.py)"),
          (SpeedConfig, "speed, memory and precision (minorpo/fast/config.py)"),
          (RunConfig, "run folder, devices and processes (minorpo/run/config.py)")]


def add_flags(p, names=None):
    """One flag per TrainConfig field, in GROUPS (or one per field in `names`: `data inspect` takes train's data
    fields)."""
    by_name = {f.name: f for f in fields(TrainConfig)}
    if names is not None:
        for name in names:
            _add_flag(p, by_name[name])
        return
    inherited = {f.name for cls, _ in GROUPS[1:] for f in fields(cls)}
    for cls, title in GROUPS:
        group = p.add_argument_group(title)
        own = [f for f in fields(TrainConfig) if f.name not in inherited] if cls is TrainConfig else fields(cls)
        for f in own:
            _add_flag(group, by_name[f.name])


def _add_flag(p, f):
    flag = "--" + f.name.replace("_", "-")
    kw = {"help": (f.metadata.get("help", "") + f" (default: {f.default!r})").replace("%", "%%"),
          "default": argparse.SUPPRESS}  # SUPPRESS: what was typed is told apart from defaults (--config)
    if f.name == "resume":
        p.add_argument(flag, nargs="?", const="latest", metavar="PATH", **kw)
    elif f.type in (bool, "bool"):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    else:
        typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag, type=typ, **kw)


def config_from_args(args) -> TrainConfig:
    """TrainConfig from defaults, then --config FILE, then the options typed on the command line."""
    settings = folders.read_config_file(args.config, TrainConfig) if args.config else {}
    names = {f.name for f in fields(TrainConfig)}
    settings.update({k: v for k, v in vars(args).items() if k in names})
    for required in ("model", "data"):
        if not settings.get(required):
            raise UserError(f"--{required} is required (on the command line or in --config)")
    return TrainConfig(**settings)


def _cli_main(args) -> int:
    training.train(config_from_args(args))
    return 0
