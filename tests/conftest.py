"""Shared test helpers. Tests are hermetic: tiny models and tokenizers are built in-process.

Real-model tests are opt-in: set MINORPO_TEST_MODEL to the folder printed by
../shared/tools/make-smollm2-fixture (and MINORPO_TEST_DATA to the HH-RLHF .jsonl.gz for data tests).
"""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixture_dir(variable: str, tool: str) -> Path:
    """The real-model folder named by the environment variable, or skip the test."""
    path = os.environ.get(variable)
    if not path:
        pytest.skip(f"{variable} not set (build it with ../shared/tools/{tool})")
    if not Path(path, "config.json").exists():
        pytest.skip(f"{variable}={path} has no config.json")
    return Path(path)


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The SmolLM2 fixture folder, or skip."""
    return fixture_dir("MINORPO_TEST_MODEL", "make-smollm2-fixture")


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    """The Gemma 3 270M base fixture folder (MINORPO_TEST_GEMMA), or skip."""
    return fixture_dir("MINORPO_TEST_GEMMA", "make-gemma3-fixture")


@pytest.fixture(scope="session")
def hh_rlhf_file() -> Path:
    """The HH-RLHF harmless-base test file from ../shared, or skip."""
    path = os.environ.get("MINORPO_TEST_DATA")
    if not path:
        guess = Path(__file__).resolve().parents[1].parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
        path = str(guess) if guess.exists() else ""
    if not path or not Path(path).exists():
        pytest.skip("HH-RLHF file not found (set MINORPO_TEST_DATA or keep ../shared beside the checkout)")
    return Path(path)


def assert_close(actual, expected, *, rtol, atol, what=""):
    """torch.testing.assert_close that also prints the max and mean absolute difference."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    diff = (actual.double() - expected.double()).abs()
    msg = f"{what}: max |diff| {diff.max().item():.3e}, mean |diff| {diff.mean().item():.3e}"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}")


def preset_loss(tl, preset="paper", lam=None, method="orpo", beta=1.0):
    """(loss, metrics) of one batch under a preset: minorpo.loss.batch_loss with the preset's NLL normalization and,
    unless lam is given, its lambda."""
    from minorpo.batches import get_conventions
    from minorpo.loss import batch_loss

    conv = get_conventions(preset)
    return batch_loss(tl, method, conv.lam if lam is None else lam, beta, conv.nll_normalization)


def logits_loss(chosen_logits, rejected_logits, batch, preset="paper", lam=None, pad_token_id=None, method="orpo",
                beta=1.0):
    """(loss, metrics) of a padded batch from given logits [B, T, V] (unchunked): forward.logps_from_logits, then
    preset_loss."""
    from minorpo.forward import logps_from_logits

    tl = logps_from_logits(chosen_logits, rejected_logits, batch, preset, pad_token_id)
    return preset_loss(tl, preset, lam, method, beta)


def model_loss(model, batch, preset="paper", lam=None, pad_token_id=0, chunk_size=1024, layout="padded"):
    """(loss, metrics) of a batch through the model (one forward, chunked log-probs): forward.pair_logps, then
    preset_loss."""
    from minorpo.forward import ForwardSpec, pair_logps

    spec = ForwardSpec(preset=preset, pad_id=pad_token_id, chunk_size=chunk_size, layout=layout)
    return preset_loss(pair_logps(model, batch, spec), preset, lam)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """pair(arch) -> (transformers model, minorpo model) of a tiny random architecture (tiny_models.ARCHS), built on
    first use and shared by the tests of one module."""
    from minorpo.hf.loader import load_model
    from tiny_models import saved
    cache = {}

    def get(arch):
        if arch not in cache:
            hf, folder = saved(arch, tmp_path_factory.mktemp(arch))
            cache[arch] = (hf, load_model(folder))
        return cache[arch]
    return get


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    """(model folder, data file) of a tiny training run (tiny_runs.tiny_run_files), built once per test module."""
    from tiny_runs import tiny_run_files
    return tiny_run_files(tmp_path_factory.mktemp("train"))
