"""reproduce/fsdp_memory.py measures what rank 0 of 8 holds under --fsdp; the oracle is the arithmetic.

On a shape whose every dim 0 divides by 8 (no padding), FSDP's shards are exactly 1/8 of each tensor, so rank 0's
bytes must EQUAL 4 N / 8 (float32 parameters), 4 N_trainable / 8 (gradients) and 8 N_trainable / 8 (AdamW's two
moments), for full fine-tuning and LoRA alike; a parameter left unsharded or a replicated optimizer state would
add whole tensors. Checked both ways the script measures: meta-device shards with zeros_like gradients (how it
measures the 7B shapes), and a real CPU forward, backward and AdamW step (`--step`: FSDP's own gradients).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_measured_bytes_equal_the_arithmetic(tmp_path):
    code = ("import sys; sys.argv = ['x']; sys.path.insert(0, 'reproduce'); import fsdp_memory as f; import json; "
            f"json.dump([f.main(['--shape', 'tiny']), f.main(['--shape', 'tiny', '--step'])], "
            f"open({str(tmp_path / 'out.json')!r}, 'w'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for run in json.loads((tmp_path / "out.json").read_text()):
        tiny = run["tiny"]
        assert tiny["full"]["n_trainable"] == tiny["full"]["n_params"] > 0
        assert 0 < tiny["lora"]["n_trainable"] < tiny["lora"]["n_params"] / 4
        for mode in ("full", "lora"):
            m = tiny[mode]
            for k in ("params", "grads", "optimizer"):
                assert m[k] == m["arithmetic"][k], (mode, k)
            assert m["sharded_per_rank"] * 8 == m["replicated_per_rank"], mode
    assert "sharded state" in r.stdout and "left for activations" in r.stdout
