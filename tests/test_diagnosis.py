"""diagnosis.stage_differences against direct exact-length forwards (the bf16_floor app is
run end to end in tests/test_experiments.py)."""
import jax
import numpy as np

import collapse_jax as cj
from collapse_jax import diagnosis, model

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
