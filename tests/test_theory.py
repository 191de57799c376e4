"""Appendix-B checks (collapse_jax.theory) at small sizes, plus end-to-end runs of the
softmax_lemmas / oversquashing / counting / scorecard apps into a tmp dir."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import get_policy, model, theory
from collapse_jax.config import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Lemma B.4 -------------------------------------------------------------------------
def test_b4_limit_is_exact_in_float64():
  assert theory.B4_LIMIT == pytest.approx(0.924234314520, abs=1e-12)
  r = theory.lemma_b4_sweep([2, 4, 6, 100, 1000, 10000])
  assert np.all(r["abs_error_float64"] < 1e-12)
  with pytest.raises(ValueError):
    theory.lemma_b4_pair(7)


# --- Lemma B.2 -------------------------------------------------------------------------
def test_b2_float64_numbers_match_independent_estimate():
  r = theory.lemma_b2_sweep([1000, 10000], range(5))
  mean = r["tv_float64"].mean(1)
  # first-order estimate 2 dZ (Z - Z_k) / (Z Z*): 0.0164 at 1e3, 0.00203 at 1e4
  assert mean[0] == pytest.approx(0.017, rel=0.15)
  assert mean[1] == pytest.approx(0.002, rel=0.15)
  np.testing.assert_allclose(mean, r["mean_field"], rtol=0.1)
  assert np.all(r["tv_float64"].min(1) > 0)


def test_b2_mean_field_first_order():
  for n in (1000, 10000):
    m1 = math.e - 1
    z, dz = n * m1, 200 * m1 * ((math.exp(0.1) - 1) / 0.1 - 1)
    first_order = 2 * dz * (z - 200 * m1) / (z * (z + dz))
    assert theory.lemma_b2_mean_field(n) == pytest.approx(first_order, rel=0.05)


def test_b2_low_precision_goes_through_policy_softmax():
  r = theory.lemma_b2_sweep([500, 4000], range(2), precisions=["float32", "float8_e4m3fn"])
  np.testing.assert_allclose(r["tv_by_precision"]["float32"], r["tv_float64"], rtol=1e-3)
  # e4m3fn: probabilities ~1/(n(e-1)) < 2^-10 round to 0 at n=4000 -> distance exactly 0
  assert np.all(r["tv_by_precision"]["float8_e4m3fn"][1] == 0)
  assert r["underflow_by_precision"]["float8_e4m3fn"][1] == 1.0


# --- Lemma B.1 -------------------------------------------------------------------------
def test_b1_strictly_lower_and_decreasing():
  ns = [2, 3, 5, 10, 50, 200, 1000]
  r = theory.lemma_b1_sweep(ns, b=0.5, c=2.0, seed=3, precisions=["bfloat16"])
  assert np.all(r["w_x"] > r["w_xstar"])
  assert np.all(np.diff(r["gap"]) < 0)
  np.testing.assert_allclose(r["gap"], r["gap_closed_form"], rtol=1e-9)
  assert r["gap"][-1] < 1e-5
  assert r["gap_by_precision"]["bfloat16"].shape == (len(ns),)


# --- Theorem 5.1 / B.5 -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_decoder():
  with jax.enable_x64(True):
    cfg = DecoderConfig(num_layers=2, d_model=8, num_heads=2, vocab_size=0, pe="rope")
    pol = get_policy("float64")
    params = pol.cast_params(model.init_params(cfg, jax.random.PRNGKey(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8), jnp.float64)
    yield cfg, pol, params, x


def test_chunked_jacobian_equals_jacrev(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    J = theory.last_token_jacobian(cfg, pol, params, x, chunk=4)
    ref = jax.jacrev(lambda v: model.forward(cfg, pol, params, v[None])["y"][0, -1])(x)
  np.testing.assert_allclose(J, np.asarray(ref), atol=1e-12)


def test_bound_holds_where_assumptions_hold(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    frozen = theory.last_token_sensitivity(cfg, pol, params, x, frozen_attention=True)
    full = theory.last_token_sensitivity(cfg, pol, params, x)
    b = theory.oversquashing_bound(cfg, pol, params, x)
  s = frozen["spectral"]
  assert np.all(s <= b["bound_tight"] * (1 + 1e-9))
  assert np.all(b["bound_tight"] <= b["bound"] * (1 + 1e-9))
  assert np.all(s <= b["bound"])
  # freezing the attention changes the derivative (the assumption is not vacuous)
  assert np.max(np.abs(full["spectral"] - s)) > 1e-6
  lam = b["Lambda"]
  np.testing.assert_allclose(lam.sum(-1), 1.0, atol=1e-12)
  assert np.all(np.triu(lam, 1) == 0)


# --- Lemma B.6/B.7, Prop. B.8 ----------------------------------------------------------
def test_spectral_limit_and_rate():
  lam = theory.random_causal(32, seed=1)
  r = theory.spectral_convergence(lam, range(0, 1000))
  assert r["multiplicity_one"] == 1
  assert r["lambda2"] < 1
  assert r["err_full"][-1] < 1e-9 and r["err_last_row"][-1] < 1e-9
  assert r["rate"] == pytest.approx(r["lambda2"], rel=0.01)
  assert np.all(np.diff(r["err_full"][r["err_full"] > 1e-12]) < 0)
  ck = theory.stochastic_checks(lam @ theory.random_causal(32, seed=2))
  assert ck["row_sum_err"] < 1e-12 and ck["upper_max"] == 0


def test_spectral_limit_fails_without_two_nonzeros():
  lam = theory.uniform_causal(6)
  lam[3] = 0.0
  lam[3, 3] = 1.0  # row 4 attends only to itself: eigenvalue 1 twice
  r = theory.spectral_convergence(lam, [200])
  assert r["multiplicity_one"] == 2
  assert r["err_full"][-1] > 0.1


# --- Proposition B.9 -------------------------------------------------------------------
@pytest.fixture(scope="module")
def counting_models():
  cfg = DecoderConfig(num_layers=2, d_model=16, num_heads=2, vocab_size=2, pe="none",
                      causal=False)
  params = model.init_params(cfg, jax.random.PRNGKey(0))  # the mask has no parameters
  return {False: (cfg, params), True: (cfg.replace(causal=True), params)}


def test_b9_ratio_invariance_exact_for_power_of_two_in_bf16(counting_models):
  cfg, params = counting_models[False]
  rows = theory.ratio_invariance(cfg, "bfloat16", params, base="10", multipliers=(2,))
  assert [r["sequence"] for r in rows] == ["1100", "1010"]
  for r in rows:
    assert all(r["bitwise_equal"]), r
  # a different ratio is NOT the same representation
  a = theory.token_representations(cfg, get_policy("bfloat16"), params, "10")
  b = theory.token_representations(cfg, get_policy("bfloat16"), params, "110")
  assert not np.array_equal(a[-1, 1], b[-1, 2])


def test_b9_causal_breaks_invariance_from_depth_two(counting_models):
  cfg, params = counting_models[True]
  (r,) = theory.ratio_invariance(cfg, "bfloat16", params, base="10", multipliers=(2,),
                                 arrangements=("blocks",))
  assert r["bitwise_equal"][1]  # depth 1: the last token's causal window has the same ratio
  assert max(r["max_rel_diff"][2:]) > 4 * r["eps"]


# --- Corollary B.10 --------------------------------------------------------------------
def test_b10_finds_a_collapsed_count():
  cfg = DecoderConfig(num_layers=1, d_model=16, num_heads=1, vocab_size=3, pe="rope")
  params = model.init_params(cfg, jax.random.PRNGKey(0))
  with jax.enable_x64(True):
    r = theory.counting_collapse(cfg, "bfloat16", params, 160, confirm=1)
  wc = r["wrong_count"]
  assert wc is not None and wc["exact_length_confirmed"]
  n = wc["n"]
  assert r["equal"][n - 1] and wc["reference_linf"] > 0  # float64 still tells them apart


# --- end to end ------------------------------------------------------------------------
E2E = {
    "experiments.softmax_lemmas": (["--max_n=1000", "--num_n=4", "--seeds=2",
                                    "--precisions=bfloat16"], ["results.json", "softmax_lemmas.png"]),
    "experiments.oversquashing": (["--n=16", "--d_model=8", "--layers=1", "--spectral_n=4,8",
                                   "--spectral_max_L=20"], ["results.json", "oversquashing.png"]),
    "experiments.counting": (["--multipliers=2", "--precisions=bfloat16", "--layers=1",
                              "--d_model=8", "--b10_n=64", "--b10_precisions=bfloat16",
                              "--confirm=1"], ["results.json", "counting.png"]),
    "experiments.scorecard": (["--only=b4,b6_b7,b9"], ["scorecard.md", "scorecard.json"]),
}


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory):
  """Start every app at once (compile-bound, so they overlap well on 2 cores)."""
  root = tmp_path_factory.mktemp("e2e")
  procs = {}
  for module, (args, _) in E2E.items():
    out = root / module.split(".")[-1]
    procs[module] = (out, subprocess.Popen(
        [sys.executable, "-m", module, f"--out={out}", *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  done = {}
  for module, (out, proc) in procs.items():
    log, _ = proc.communicate(timeout=300)
    done[module] = (out, proc.returncode, log)
  return done


@pytest.mark.parametrize("module", list(E2E))
def test_experiment_end_to_end(e2e_runs, module):
  out, rc, log = e2e_runs[module]
  assert rc == 0, log[-3000:]
  for f in E2E[module][1]:
    path = out / f
    assert path.exists() and path.stat().st_size > 0, f
    if f.endswith(".json"):
      json.loads(path.read_text())
    if f.endswith(".png"):
      assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  if module == "experiments.scorecard":
    data = json.loads((out / "scorecard.json").read_text())
    assert {r["check"] for r in data["rows"]} == {"b4", "b6_b7", "b9"}
    assert all(r["passed"] is not False for r in data["rows"])  # PASS, or an info row
    assert sum(r["passed"] is True for r in data["rows"] if r["check"] == "b9") == 2
