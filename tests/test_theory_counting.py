"""collapse_jax.theory.counting: Proposition B.9 and Corollary B.10 at small sizes."""
import jax
import numpy as np
import pytest

from collapse_jax import get_policy
from collapse_jax.theory import counting


@pytest.fixture(scope="module")
def counting_models():
  return counting.b9_models(layers=2, d_model=16, heads=2, base="10")


@pytest.mark.slow
def test_b9_models_share_weights_and_differ_in_mask(counting_models):
  (cfg, params), (cfg_c, params_c) = counting_models[False], counting_models[True]
  assert not cfg.causal and cfg_c.causal and cfg.pe == "none" and cfg.vocab_size == 2
  assert params is params_c
  assert counting.expand("10", 3, "blocks") == "111000"
  assert counting.expand("10", 3, "tiled") == "101010"


@pytest.mark.slow
def test_b9_ratio_invariance_exact_for_power_of_two_in_bf16(counting_models):
  cfg, params = counting_models[False]
  rows = counting.ratio_invariance(cfg, "bfloat16", params, base="10", multipliers=(2,))
  assert [r["sequence"] for r in rows] == ["1100", "1010"]
  for r in rows:
    assert all(r["bitwise_equal"]), r
  # a different ratio is NOT the same representation
  a = counting.token_representations(cfg, get_policy("bfloat16"), params, "10")
  b = counting.token_representations(cfg, get_policy("bfloat16"), params, "110")
  assert not np.array_equal(a[-1, 1], b[-1, 2])


def test_b9_causal_breaks_invariance_from_depth_two(counting_models):
  cfg, params = counting_models[True]
  (r,) = counting.ratio_invariance(cfg, "bfloat16", params, base="10", multipliers=(2,),
                                   arrangements=("blocks",))
  assert r["bitwise_equal"][1]  # depth 1: the last token's causal window has the same ratio
  assert max(r["max_rel_diff"][2:]) > 4 * r["eps"]


def test_b9_sweep_and_summary(counting_models):
  b9 = counting.b9_sweep(counting_models, ["bfloat16"], multipliers=(2,))
  assert list(b9) == ["bidirectional/bfloat16", "causal/bfloat16"]
  s = counting.b9_summary(b9)
  assert s["bidirectional/bfloat16"]["all_bitwise_equal_every_depth"] == [(2, "blocks"),
                                                                          (2, "tiled")]
  assert s["causal/bfloat16"]["max_rel_diff_depth1"] == 0
  assert s["causal/bfloat16"]["max_rel_diff_depth>=2"] > 4 * s["causal/bfloat16"]["eps"]


@pytest.mark.slow
def test_b10_finds_a_collapsed_count():
  cfg, params = counting.b10_model(160)
  with jax.enable_x64(True):
    r = counting.counting_collapse(cfg, "bfloat16", params, 160, confirm=1)
  wc = r["wrong_count"]
  assert wc is not None and wc["exact_length_confirmed"]
  n = wc["n"]
  assert r["equal"][n - 1] and wc["reference_linf"] > 0  # float64 still tells them apart
  assert counting.b10_summary({"bfloat16": r})["bfloat16"]["wrong_count"] == wc
