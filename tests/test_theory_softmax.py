"""collapse_jax.theory.softmax: Lemmas B.1, B.2 (Figure 9) and B.4 at small sizes."""
import math

import numpy as np
import pytest

from collapse_jax.theory import softmax


def test_pair_tv_is_the_papers_l1_without_half():
  p = [np.array([0.5, 0.5]), np.array([1.0, 0.0, 0.0])]
  q = [np.array([0.25, 0.75]), np.array([0.0, 0.0, 1.0])]
  np.testing.assert_array_equal(softmax.pair_tv(p, q), [0.5, 2.0])  # sum |p - q|, no 1/2


def test_log_lengths_include_decades_and_even():
  ns = softmax.log_lengths(10, 20000, 5)
  assert 1000 in ns and 10000 in ns and ns == sorted(set(ns))
  assert all(n % 2 == 0 for n in softmax.log_lengths(3, 999, 6, even=True))


# --- Lemma B.4 -------------------------------------------------------------------------
def test_b4_limit_is_exact_in_float64():
  assert softmax.B4_LIMIT == pytest.approx(0.924234314520, abs=1e-12)
  r = softmax.lemma_b4_sweep([2, 4, 6, 100, 1000, 10000])
  assert np.all(r["abs_error_float64"] < 1e-12)
  with pytest.raises(ValueError):
    softmax.lemma_b4_pair(7)


# --- Lemma B.2 -------------------------------------------------------------------------
def test_b2_float64_numbers_match_independent_estimate():
  r = softmax.lemma_b2_sweep([1000, 10000], range(5))
  mean = r["tv_float64"].mean(1)
  # first-order estimate 2 dZ (Z - Z_k) / (Z Z*): 0.0164 at 1e3, 0.00203 at 1e4
  assert mean[0] == pytest.approx(0.017, rel=0.15)
  assert mean[1] == pytest.approx(0.002, rel=0.15)
  np.testing.assert_allclose(mean, r["mean_field"], rtol=0.1)
  assert np.all(r["tv_float64"].min(1) > 0)
  f = softmax.lemma_b2_facts(r)
  assert f["mean_at_1e3"] == mean[0] and f["mean_at_1e5"] is None
  assert f["slope_n_ge_1e3"] < -0.8


def test_b2_mean_field_first_order():
  for n in (1000, 10000):
    m1 = math.e - 1
    z, dz = n * m1, 200 * m1 * ((math.exp(0.1) - 1) / 0.1 - 1)
    first_order = 2 * dz * (z - 200 * m1) / (z * (z + dz))
    assert softmax.lemma_b2_mean_field(n) == pytest.approx(first_order, rel=0.05)


def test_b2_low_precision_goes_through_policy_softmax():
  r = softmax.lemma_b2_sweep([500, 4000], range(2), precisions=["float32", "float8_e4m3fn"])
  np.testing.assert_allclose(r["tv_by_precision"]["float32"], r["tv_float64"], rtol=1e-3)
  # e4m3fn: probabilities ~1/(n(e-1)) < 2^-10 round to 0 at n=4000 -> distance exactly 0
  assert np.all(r["tv_by_precision"]["float8_e4m3fn"][1] == 0)
  assert r["underflow_by_precision"]["float8_e4m3fn"][1] == 1.0
  assert r["first_zero_by_precision"] == {"float32": None, "float8_e4m3fn": 4000}


# --- Lemma B.1 -------------------------------------------------------------------------
def test_b1_strictly_lower_and_decreasing():
  ns = [2, 3, 5, 10, 50, 200, 1000]
  r = softmax.lemma_b1_sweep(ns, b=0.5, c=2.0, seed=3, precisions=["bfloat16"])
  assert np.all(r["w_x"] > r["w_xstar"])
  assert np.all(np.diff(r["gap"]) < 0)
  np.testing.assert_allclose(r["gap"], r["gap_closed_form"], rtol=1e-9)
  assert r["gap"][-1] < 1e-5
  assert r["gap_by_precision"]["bfloat16"].shape == (len(ns),)
  f = softmax.lemma_b1_facts(r)
  assert f["all_positive"] and f["strictly_decreasing"]
  assert f["max_rel_error_vs_closed_form"] < 1e-9


def test_summary_reads_all_three_sweeps():
  ns = [10, 1000]
  s = softmax.lemmas_summary(softmax.lemma_b1_sweep(ns, precisions=["bfloat16"]),
                             softmax.lemma_b2_sweep(ns, range(2), precisions=["bfloat16"]),
                             softmax.lemma_b4_sweep(ns, precisions=["bfloat16"]))
  assert s["b2_float64_mean_at_1e3"] > 0 and s["b2_float64_mean_at_1e4"] is None
  assert s["b1_negative_gap_count_by_precision"] == {"bfloat16": 0}
  assert s["b4_max_abs_error_float64"] < 1e-12
