"""collapse_jax.rope_shift: D(X, Δ1, Δ2), the logit change of the same tokens at shifted
positions, and the first token's share of it, against what the arithmetic implies."""
import dataclasses

import jax
import numpy as np
import pytest

from collapse_jax import model, precision, rope_shift
from collapse_jax.config import DecoderConfig

CFG = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, vocab_size=16,
                    max_len=2200)
TOKS = np.random.default_rng(0).integers(0, 16, (2, 64)).astype(np.int32)


def _d(name, d1, d2, cfg=CFG, **knobs):
  pol = dataclasses.replace(precision.get_policy(name), **knobs)
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  return rope_shift.shift_distance(cfg, pol, params, TOKS, d1, d2)


def test_equal_shifts_give_zero_and_float64_is_shift_invariant():
  same = _d("bfloat16", 700, 700)
  assert np.all(same["D"] == 0) and np.all(np.isnan(same["first_share"]))
  assert np.all(_d("float64", 0, 2000)["D"] < 1e-11)  # exact up to float64 rounding


def test_float32_angles_drift_with_the_shift_and_float64_angles_do_not():
  """An f32 angle p * theta_i is off by up to ulp(p)/2 radians, so the logit change grows
  with Δ; float64 angles leave only the rotation's own f32 rounding, the same for any Δ."""
  small, big = _d("float32", 0, 16)["D"], _d("float32", 0, 2000)["D"]
  assert np.all(big > 3 * small)
  exact_small = _d("float32", 0, 16, rope_angle_dtype="float64")["D"]
  exact_big = _d("float32", 0, 2000, rope_angle_dtype="float64")["D"]
  assert np.all(exact_big < 2 * exact_small) and np.all(exact_big < big / 3)


def test_bfloat16_breaks_the_invariance_by_orders_of_magnitude():
  bf16, f32 = _d("bfloat16", 0, 500), _d("float32", 0, 500)
  assert np.all(bf16["D"] > 100 * f32["D"])
  assert np.all((0 < bf16["first_share"]) & (bf16["first_share"] < 1))
  assert bf16["per_layer"].shape == (2, 2) and np.allclose(bf16["per_layer"].sum(0), bf16["D"])


@pytest.mark.slow
def test_a_windowed_layer_counts_only_the_pairs_it_sees_and_non_rope_is_refused():
  win = CFG.replace(layer_windows=(4, None))
  r = _d("bfloat16", 0, 500, cfg=win)
  assert np.all(r["per_layer"] > 0)
  with pytest.raises(ValueError, match="needs a RoPE model"):
    _d("bfloat16", 0, 5, cfg=CFG.replace(pe="alibi"))


def test_a_cell_is_shift_distance_over_its_seeded_sequences():
  pol = precision.get_policy("bfloat16")
  params32 = model.init_params(CFG, jax.random.key(0))
  c = rope_shift.cell(CFG, params32, pol, 24, [7, 300], samples=2, seed=3, first_token=5)
  assert c["policy"] == "bfloat16" and c["N"] == 24 and [r["shift"] for r in c["rows"]] == [7, 300]
  toks = np.random.default_rng([3, 24]).integers(0, 16, (2, 24)).astype(np.int32)
  toks[:, 0] = 5
  want = rope_shift.shift_distance(CFG, pol, pol.cast_params(params32), toks, 0, 300)
  assert c["rows"][1]["D"] == want["D"].tolist() and len(c["rows"][1]["per_layer"]) == 2
