"""collapse_jax.theory.spectral: Lemma B.6/B.7 and Proposition B.8."""
import numpy as np
import pytest

from collapse_jax.theory import spectral


def test_spectral_limit_and_rate():
  lam = spectral.random_causal(32, seed=1)
  r = spectral.spectral_convergence(lam, range(0, 1000))
  assert r["multiplicity_one"] == 1
  assert r["lambda2"] < 1
  assert r["err_full"][-1] < 1e-9 and r["err_last_row"][-1] < 1e-9
  assert r["rate"] == pytest.approx(r["lambda2"], rel=0.01)
  assert np.all(np.diff(r["err_full"][r["err_full"] > 1e-12]) < 0)
  ck = spectral.stochastic_checks(lam @ spectral.random_causal(32, seed=2))
  assert ck["row_sum_err"] < 1e-12 and ck["upper_max"] == 0


def test_spectral_limit_fails_without_two_nonzeros():
  lam = spectral.uniform_causal(6)
  lam[3] = 0.0
  lam[3, 3] = 1.0  # row 4 attends only to itself: eigenvalue 1 twice
  r = spectral.spectral_convergence(lam, [200])
  assert r["multiplicity_one"] == 2
  assert r["err_full"][-1] > 0.1


def test_uniform_rate_and_depth_grow_with_n():
  curves = spectral.convergence_curves([8, 64], range(0, 200),
                                       extra={"mine": spectral.uniform_causal(8)})
  assert list(curves) == ["uniform_n8", "random_n8", "uniform_n64", "random_n64", "mine"]
  assert curves["uniform_n8"]["lambda2"] == pytest.approx(0.75)
  assert curves["uniform_n8"]["err_full"] is not None and curves["mine"]["err_full"] is None
  assert curves["mine"]["layers_to_tol"] == curves["uniform_n8"]["layers_to_tol"] == 31
  d = spectral.convergence_depths(512, points=4)
  assert d["n"][0] == 3 and d["n"][-1] == 512
  assert np.all(np.diff(d["uniform"]) > 0)  # layers needed grow like log n
