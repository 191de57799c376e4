"""diagnosis.stage_differences against direct exact-length forwards (the bf16_floor app is
run end to end in tests/test_experiments.py)."""
import jax
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax import diagnosis, model

CFG = cj.DecoderConfig(num_layers=2, d_model=16, num_heads=2, vocab_size=8, mlp="swiglu")


@pytest.mark.slow
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


def _bf16_spacing(x):
  """bf16 spacing at |x| from ml_dtypes alone: the gap to the next bf16 value above |x|'s
  rounded-down bf16 neighbour (normal numbers)."""
  import ml_dtypes
  bf = ml_dtypes.bfloat16
  lo = np.abs(x).astype(np.float32).astype(bf)  # round to nearest, then step down if above
  lo = np.where(lo.astype(np.float64) > np.abs(x), np.nextafter(lo, bf(0)), lo)
  return np.nextafter(lo, bf(np.inf)).astype(np.float64) - lo.astype(np.float64)


@pytest.mark.slow
def test_equal_probability_against_separate_float64_forwards():
  """The rounding models from one float64 pass, recomputed from exact-length float64
  forwards of A_n and B_n with an ml_dtypes spacing; a pair set whose two rows are equal in
  exact arithmetic (a^n with RoPE: every value vector the same) is predicted equal."""
  params = model.init_params(CFG, jax.random.key(1))
  toks = np.asarray([3, 5, 2] + [1] * 60, np.int32)
  ns = [10, 40]
  r = diagnosis.equal_probability(CFG, params, toks, ns, "bfloat16", query_chunk=16)
  pol = cj.get_policy("float64")
  p64 = pol.cast_params(params)
  for k, n in [(1, 40)]:  # one n against separate forwards (each length compiles)
    fa, fb = (model.forward(CFG, pol, p64, toks[None, :m], collect=("heads",)) for m in (n, n + 1))
    prod = 1.0
    for l in range(CFG.num_layers):
      a = np.asarray(fa["heads"][l, 0, -1]).ravel()
      b = np.asarray(fb["heads"][l, 0, -1]).ravel()
      q = np.prod(1 - np.minimum(np.abs(a - b) / _bf16_spacing(a), 1))
      np.testing.assert_allclose(r["p_heads"][l, k], q, rtol=1e-6, atol=1e-12)
      prod *= q
    np.testing.assert_allclose(r["p_attention"][k], prod, rtol=1e-6, atol=1e-12)
    ya, yb = np.asarray(fa["y"][0, -1]), np.asarray(fb["y"][0, -1])
    np.testing.assert_allclose(
        r["p_output"][k], np.prod(1 - np.minimum(np.abs(ya - yb) / _bf16_spacing(ya), 1)),
        rtol=1e-6, atol=1e-12)
  assert np.all(r["p_attention"] <= 1) and np.all(r["p_attention"] >= 0)
  assert r["p_attention"][0] < 0.5  # n=10: the prefix is still near
  same = diagnosis.equal_probability(CFG, params, np.ones(40, np.int32), [5, 30], "bfloat16")
  np.testing.assert_allclose(same["p_attention"], 1.0, rtol=0, atol=1e-9)  # f64 rounding only
  np.testing.assert_allclose(same["p_output"], 1.0, rtol=0, atol=1e-9)


def test_octaves_average_per_power_of_two():
  rows = diagnosis.octaves(np.asarray([3, 4, 5, 7, 8, 20]), m=[1, 0, 1, 1, 0, 1])
  assert [(o["lo"], o["hi"], o["count"]) for o in rows] == [(2, 4, 1), (4, 8, 3), (8, 16, 1),
                                                             (16, 32, 1)]
  assert [o["m"] for o in rows] == [1.0, 2 / 3, 0.0, 1.0]
