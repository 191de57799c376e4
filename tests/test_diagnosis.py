"""diagnosis.stage_differences against direct exact-length forwards, and the bf16_floor app."""
import os
import subprocess
import sys

import jax
import numpy as np

import collapse_jax as cj
from collapse_jax import diagnosis, model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = cj.DecoderConfig(num_layers=2, d_model=16, num_heads=2, vocab_size=8, mlp="swiglu")


def test_stage_differences_match_two_rows_of_one_pass():
  pol = cj.get_policy("bfloat16")
  params = pol.cast_params(model.init_params(CFG, jax.random.key(1)))
  toks = np.asarray([3, 5, 2] + [1] * 30, np.int32)
  r = diagnosis.stage_differences(CFG, pol, params, toks, [4, 20])
  assert r["stages"] == ["heads L0", "v^(1)", "heads L1", "v^(2)", "y"]
  out = model.forward(CFG, pol, params, toks[None], collect=("residual",))
  y = np.asarray(out["y"][0]).astype(np.float64)
  res = np.asarray(out["residual"][:, 0]).astype(np.float64)
  for k, n in enumerate((4, 20)):
    assert r["linf"][-1, k] == np.abs(y[n - 1] - y[n]).max()
    assert r["linf"][1, k] == np.abs(res[1, n - 1] - res[1, n]).max()
    assert r["coords_differ"][-1, k] == int((y[n - 1] != y[n]).sum())
  assert r["coords"] == [16, 16, 16, 16, 16]
  try:
    diagnosis.stage_differences(CFG, pol, params, toks, [33])
  except ValueError as e:
    assert "lengths must lie in" in str(e)
  else:
    raise AssertionError("a length beyond the sequence was accepted")


def test_bf16_floor_app_end_to_end(tmp_path):
  out = tmp_path / "floor"
  r = subprocess.run([sys.executable, "-m", "experiments.bf16_floor", f"--out={out}",
                      "--lengths=20,40", "--max_len=64", "--d_model=16"], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (out / "results.json").stat().st_size > 0
  assert (out / "bf16_floor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "float64 n=20" in r.stdout and "bfloat16 n=40" in r.stdout
