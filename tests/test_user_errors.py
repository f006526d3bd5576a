"""The bad-input suite: every user mistake is one line `minorpo: error: <message>` on stderr, exit status 2, no
traceback, a message naming the flag / file / row, and (train, generate) the failure comes before the model loads.

Each case runs the real command line in-process (minorpo.tools.cli.main). Oracle: the expected words of each message are
written in the table by hand from what the mistake is (the flag typed, the file given, the line broken). "Before
the model loads" is checked by replacing minorpo.hf.loader.load_model with a function that fails the test.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from minorpo.hf import loader
from minorpo.tools.cli import main
from tiny_models import saved
from tiny_tokenizers import word_tokenizer

GOOD = [{"prompt": f"hi {w} ?", "chosen": " fine thanks", "rejected": " go away"} for w in ("how", "what", "you")]


def lines(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model folder, its broken variants, and data files good and bad."""
    root = tmp_path_factory.mktemp("user_errors")
    model = root / "model"
    saved("llama-tied", model)
    word_tokenizer(model)
    d = {"root": root, "model": model}

    def variant(name, drop=None, config=None, tokenizer_kw=None):
        folder = root / name
        shutil.copytree(model, folder)
        if drop:
            (folder / drop).unlink()
        if config:
            c = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**c, **config}))
        if tokenizer_kw is not None:
            for f in ("tokenizer.json", "tokenizer_config.json"):
                (folder / f).unlink()
            word_tokenizer(folder, **tokenizer_kw)
        d[name] = folder

    variant("no_config", drop="config.json")
    variant("no_tokenizer", drop="tokenizer.json")
    variant("no_weights", drop="model.safetensors")
    variant("gpt_neox", config={"model_type": "gpt_neox"})
    variant("gpt2_arch", config={"architectures": ["GPT2LMHeadModel"]})
    variant("no_template", tokenizer_kw={"chat_template": None})
    (root / "bad_config").mkdir()
    shutil.copy(model / "tokenizer.json", root / "bad_config")
    (root / "bad_config" / "config.json").write_text('{"model_type": "llama",')
    d["bad_config"] = root / "bad_config"

    def data(name, text):
        path = root / name
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        d[name] = path

    data("good.jsonl", lines(GOOD))
    data("empty.jsonl", "")
    data("bad_json.jsonl", lines(GOOD[:1] + ['{"prompt": "hi", "chosen": "ok" "rejected": "no"}']))
    data("latin1.jsonl", lines(GOOD[:1]).encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    data("all_dropped.jsonl", lines([{"prompt": "hi", "chosen": " ok", "rejected": " ok"}] * 3))
    data("no_rejected.jsonl", lines([{"prompt": "hi", "chosen": " ok"}] * 3))
    data("unknown.jsonl", lines([{"text": "hello", "score": 3}] * 300))
    data("notes.csv", "prompt,chosen,rejected\n")
    (root / "no_data_files").mkdir()
    (root / "no_data_files" / "README.md").write_text("nothing here")
    d["no_data_files"] = root / "no_data_files"
    (root / "run_no_metrics").mkdir()
    d["run_no_metrics"] = root / "run_no_metrics"
    (root / "run_bad_metrics").mkdir()
    (root / "run_bad_metrics" / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "loss": \n')
    d["run_bad_metrics"] = root / "run_bad_metrics"
    return d


def train_args(env, *extra, model=None, data=None):
    return ["train", "--model", str(model or env["model"]), "--data", str(data or env["good.jsonl"]),
            "--out", str(env["root"] / "run"), "--no-progress", "--max-length", "32", *extra]


# (id, argv builder, words the message must contain). {root} in a word is the fixture folder.
TRAIN = [
    ("lam negative", lambda e: train_args(e, "--lam", "-1"), "--lam -1"),
    ("max-steps 0", lambda e: train_args(e, "--max-steps", "0"), "--max-steps 0"),
    ("lora-r negative", lambda e: train_args(e, "--lora-r", "-4"), "--lora-r -4"),
    ("batch-size 0", lambda e: train_args(e, "--batch-size", "0"), "--batch-size 0"),
    ("lr negative", lambda e: train_args(e, "--lr", "-1"), "--lr -1"),
    ("lr nan", lambda e: train_args(e, "--lr", "nan"), "--lr nan"),
    ("max-length 1", lambda e: train_args(e, "--max-length", "1"), "--max-length 1"),
    ("grad-accum 0", lambda e: train_args(e, "--grad-accum", "0"), "--grad-accum 0"),
    ("eval-every negative", lambda e: train_args(e, "--eval-every", "-5"), "--eval-every -5"),
    ("eval-pairs negative", lambda e: train_args(e, "--eval-pairs", "-1"), "--eval-pairs -1"),
    ("warmup negative", lambda e: train_args(e, "--warmup-steps", "-1"), "--warmup-steps -1"),
    ("lora-alpha 0", lambda e: train_args(e, "--lora-alpha", "0"), "--lora-alpha 0"),
    ("lora-dropout 1.5", lambda e: train_args(e, "--lora-dropout", "1.5"), "--lora-dropout 1.5"),
    ("lora-targets empty", lambda e: train_args(e, "--lora-targets", ","), "--lora-targets ','"),
    ("lora-targets match no layer", lambda e: train_args(e, "--lora-targets", "qkv"),
     "--lora-targets qkv: LoRA target modules ['qkv'] match no nn.Linear in the model; it has ['down_proj'"),
    ("beta 0", lambda e: train_args(e, "--method", "dpo", "--beta", "0"), "--beta 0"),
    ("max-grad-norm negative", lambda e: train_args(e, "--max-grad-norm", "-1"), "--max-grad-norm -1"),
    ("keep-checkpoints 0", lambda e: train_args(e, "--keep-checkpoints", "0"), "--keep-checkpoints 0"),
    ("max-prompt-length > max-length", lambda e: train_args(e, "--max-prompt-length", "40"),
     "--max-prompt-length 40 must be <= --max-length 32"),
    ("unknown method", lambda e: train_args(e, "--method", "orpoo"), "argument --method: invalid choice: 'orpoo'"),
    ("unknown preset", lambda e: train_args(e, "--preset", "hf"), "argument --preset: invalid choice: 'hf'"),
    ("unknown flag", lambda e: train_args(e, "--lamda", "0.1"), "unrecognized arguments: --lamda"),
    ("missing --data", lambda e: ["train", "--model", str(e["model"])], "--data is required"),
    ("unpadded without shared", lambda e: train_args(e, "--unpadded"), "--unpadded needs --layout shared"),
    ("chunk-size 0 with shared", lambda e: train_args(e, "--chunk-size", "0", "--layout", "shared"),
     "--chunk-size 0 (unchunked log-probs) works with --layout padded only"),
    ("flex on cpu", lambda e: train_args(e, "--attention", "flex", "--layout", "shared", "--device", "cpu"),
     "--attention flex trains on CUDA only"),
    ("device not a device", lambda e: train_args(e, "--device", "gpu0"), "--device 'gpu0': not a device"),
    ("model typo, no hub lookup", lambda e: train_args(e, model="tinyy"), "tinyy: no such model folder"),
    ("model hub id not found offline", lambda e: train_args(e, model="someorg/no-such-model"),
     "someorg/no-such-model: no such local folder, and fetching it from the Hugging Face Hub failed (HF_HUB_OFFLINE"),
    ("data hub id not found offline", lambda e: train_args(e, data="someorg/no-such-dataset"),
     "'someorg/no-such-dataset' is not a local file or folder, and fetching it as a hub dataset failed"),
    ("model path typo", lambda e: train_args(e, model=e["root"] / "modell" / "final"),
     "modell/final: no such model folder ({root} exists, modell/final in it does not)"),
    ("model is a file", lambda e: train_args(e, model=e["good.jsonl"]), "good.jsonl is a file, not a model folder"),
    ("model without config.json", lambda e: train_args(e, model=e["no_config"]), "no_config/config.json not found"),
    ("model config.json not JSON", lambda e: train_args(e, model=e["bad_config"]), "config.json is not valid JSON"),
    ("model without tokenizer.json", lambda e: train_args(e, model=e["no_tokenizer"]),
     "no_tokenizer/tokenizer.json not found"),
    ("model without safetensors", lambda e: train_args(e, model=e["no_weights"]),
     "no_weights has no model.safetensors"),
    ("unsupported model_type", lambda e: train_args(e, model=e["gpt_neox"]), "unsupported model_type 'gpt_neox'"),
    ("architectures disagree with model_type", lambda e: train_args(e, model=e["gpt2_arch"]),
     "architectures ['GPT2LMHeadModel'] does not match model_type 'llama'"),
    ("chat template missing", lambda e: train_args(e, "--chat-template", model=e["no_template"]),
     "--chat-template: the tokenizer of"),
    ("missing data file", lambda e: train_args(e, data=e["root"] / "nope.jsonl"), "nope.jsonl: no such data file"),
    ("data folder without data files", lambda e: train_args(e, data=e["no_data_files"]),
     "--data: no data file matches split='train'"),
    ("data-files glob matches nothing", lambda e: train_args(e, "--data-files", "*.parquet", data=e["root"]),
     "no data file matches split=None data_files='*.parquet'"),
    ("unsupported data file type", lambda e: train_args(e, data=e["notes.csv"]), "notes.csv: unsupported file type"),
    ("empty data file", lambda e: train_args(e, data=e["empty.jsonl"]), "--data {root}/empty.jsonl: no rows"),
    ("JSON syntax error", lambda e: train_args(e, data=e["bad_json.jsonl"]),
     "bad_json.jsonl:2: invalid JSON: Expecting ',' delimiter at column 33"),
    ("non-UTF-8 byte", lambda e: train_args(e, data=e["latin1.jsonl"]),
     "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)"),
    ("every row dropped", lambda e: train_args(e, data=e["all_dropped.jsonl"]),
     "no usable preference pairs: all 3 rows were dropped"),
    ("rows missing a key", lambda e: train_args(e, data=e["no_rejected.jsonl"]),
     "the rows have keys ['chosen', 'prompt'], which fit no known layout"),
    ("unknown layout", lambda e: train_args(e, data=e["unknown.jsonl"]),
     "the rows have keys ['score', 'text'], which fit no known layout (64 rows looked at). Known layouts: standard"),
    ("eval-data missing", lambda e: train_args(e, "--eval-data", str(e["root"] / "heldout.jsonl")),
     "--eval-data: {root}/heldout.jsonl: no such data file"),
    ("every pair held out", lambda e: train_args(e, "--eval-pairs", "3"), "no training pairs left: 3 usable pairs"),
]
if not torch.cuda.is_available():
    TRAIN.append(("device cuda without a GPU", lambda e: train_args(e, "--device", "cuda"),
                  "--device cuda: no CUDA GPU is visible"))

OTHER = [
    ("generate empty prompt", lambda e: ["generate", "--model", str(e["model"]), "--prompt", "  "], "--prompt is empty"),
    ("generate max-new-tokens 0", lambda e: ["generate", "--model", str(e["model"]), "--prompt", "hi",
                                             "--max-new-tokens", "0"], "--max-new-tokens 0"),
    ("generate top-p 0", lambda e: ["generate", "--model", str(e["model"]), "--prompt", "hi", "--top-p", "0"],
     "--top-p 0"),
    ("generate temperature negative", lambda e: ["generate", "--model", str(e["model"]), "--prompt", "hi",
                                                 "--temperature", "-1"], "--temperature -1"),
    ("generate model typo", lambda e: ["generate", "--model", "tinyy", "--prompt", "hi"], "tinyy: no such model folder"),
    ("generate system without chat", lambda e: ["generate", "--model", str(e["model"]), "--prompt", "hi",
                                                "--system", "be nice"], "--system needs --chat"),
    ("generate chat without template", lambda e: ["generate", "--model", str(e["no_template"]), "--prompt", "hi",
                                                  "--chat"], "--chat: the tokenizer of"),
    ("inspect max-length 1", lambda e: ["data", "inspect", "--model", str(e["model"]), "--data", str(e["good.jsonl"]),
                                        "--max-length", "1"], "--max-length 1"),
    ("inspect n negative", lambda e: ["data", "inspect", "--model", str(e["model"]), "--data", str(e["good.jsonl"]),
                                      "--n", "-1"], "--n -1"),
    ("inspect unknown layout", lambda e: ["data", "inspect", "--model", str(e["model"]), "--data",
                                          str(e["unknown.jsonl"])], "which fit no known layout"),
    ("inspect missing data", lambda e: ["data", "inspect", "--model", str(e["model"]), "--data", "nope.jsonl"],
     "nope.jsonl: no such data file"),
    ("plot missing run folder", lambda e: ["plot", str(e["root"] / "no_run")], "no_run: no such run folder"),
    ("plot folder without metrics", lambda e: ["plot", str(e["run_no_metrics"])],
     "run_no_metrics/metrics.jsonl not found"),
    ("plot bad metrics line", lambda e: ["plot", str(e["run_bad_metrics"])], "metrics.jsonl:2: not JSON"),
    ("conformance metric without value", lambda e: ["conformance", "--model", str(e["model"]), "--data",
                                                    str(e["good.jsonl"]), "--metric", "nll_loss"], "--metric"),
    ("conformance every row dropped", lambda e: ["conformance", "--model", str(e["model"]), "--data",
                                                 str(e["all_dropped.jsonl"]), "--loss", "1.0"],
     "no usable pair: 3 rows read, all dropped (identical_responses 3"),
]


# conformance reads its data after loading the model (its forward needs both): the one case here that may load it
AFTER_LOAD = {"conformance every row dropped"}


def fail_if_loaded(*args, **kwargs):
    raise AssertionError("the model was loaded before the mistake was reported")


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(loader, "load_model", fail_if_loaded)


def run_cli(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr()


@pytest.mark.parametrize("name,argv,words", TRAIN + OTHER, ids=[c[0] for c in TRAIN + OTHER])
def test_user_error_is_one_line(env, capsys, monkeypatch, name, argv, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub-looking id must never reach the network here
    if name not in AFTER_LOAD:
        monkeypatch.setattr(loader, "load_model", fail_if_loaded)
    monkeypatch.chdir(env["root"].parent)
    rc, out = run_cli(capsys, argv(env))
    err = out.err.strip().splitlines()
    assert rc == 2, out
    assert len(err) == 1 and err[0].startswith("minorpo: error: "), out.err
    assert "Traceback" not in out.err + out.out
    assert words.format(root=env["root"]) in err[0], err[0]


def test_drop_report_printed_once(env, capsys, no_model_load):
    """Every row dropped: the report is printed once (stdout), the error is one line that points at it."""
    rc, out = run_cli(capsys, train_args(env, data=env["all_dropped.jsonl"]))
    assert rc == 2
    assert out.out.count("rows read 3, kept 0, dropped 3") == 1, out.out
    assert out.out.count("identical_responses") >= 1 and "identical_responses" not in out.err


def test_subprocess_exit_status_and_debug(env):
    """The real console entry (python -m minorpo) in a subprocess: exit 2 and one line; --debug shows the traceback."""
    argv = [sys.executable, "-m", "minorpo", *train_args(env, "--lam", "-1")]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=env["root"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == ["minorpo: error: --lam -1: must be a weight >= 0 (the paper uses 0.1-1.0)"]
    debug = subprocess.run(argv[:3] + ["--debug"] + argv[3:], capture_output=True, text=True, cwd=env["root"])
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError: --lam -1" in debug.stderr
