"""collapse_jax.theory.sensitivity: Theorem 5.1 / B.5 on a tiny decoder, the frozen-attention
policy it differentiates through, and the model intermediates the bound reads."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import model
from collapse_jax.config import DecoderConfig
from collapse_jax.theory import sensitivity


@pytest.fixture(scope="module")
def tiny_decoder():
  with jax.enable_x64(True):
    cfg, pol, params, _ = sensitivity.vector_decoder(16, layers=2, d_model=8, heads=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8), jnp.float64)
    yield cfg, pol, params, x


@pytest.mark.slow
def test_vector_decoder_inputs_are_the_same_in_every_policy():
  _, _, _, x32 = sensitivity.vector_decoder(8, d_model=8, policy="float32")
  _, pol, _, xb = sensitivity.vector_decoder(8, d_model=8, policy="bfloat16")
  assert xb.dtype == pol.storage_dtype
  np.testing.assert_array_equal(np.asarray(xb), np.asarray(x32.astype(jnp.bfloat16)))


@pytest.mark.slow
def test_chunked_jacobian_equals_jacrev(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    J = sensitivity.last_token_jacobian(cfg, pol, params, x, chunk=4)
    ref = jax.jacrev(lambda v: model.forward(cfg, pol, params, v[None])["y"][0, -1])(x)
  np.testing.assert_allclose(J, np.asarray(ref), atol=1e-12)


def test_bound_holds_where_assumptions_hold(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    r = sensitivity.sensitivity_vs_bound(cfg, pol, params, x)
  s, b, f = r["frozen"]["spectral"], r["bound"], r["factorised"]
  assert b["constants"] == "analytic" and f["constants"] == "measured"
  for bnd in (b, f):
    assert np.all(s <= bnd["bound_tight"] * (1 + 1e-9))
    assert np.all(bnd["bound_tight"] <= bnd["bound"] * (1 + 1e-9))
    assert np.all(s <= bnd["bound"])
  bc = r["bound_check"]
  assert bc["frozen_le_bound_all"] and bc["frozen_le_bound_fraction"] == 1
  assert bc["frozen_le_factorised_all"] and bc["bound_ge_factorised_all"]
  # every analytic constant bounds the Jacobian norm it stands for
  assert np.all(b["inv_beta1"] >= f["inv_beta1"] * (1 - 1e-12))
  assert np.all(b["sigma_over_beta2"] >= f["sigma_over_beta2"] * (1 - 1e-12))
  assert b["inv_beta3"] >= f["inv_beta3"] * (1 - 1e-12)
  # freezing the attention changes the derivative (the assumption is not vacuous)
  assert np.max(np.abs(r["full"]["spectral"] - s)) > 1e-6
  lam = b["Lambda"]
  np.testing.assert_allclose(lam.sum(-1), 1.0, atol=1e-12)
  assert np.all(np.triu(lam, 1) == 0)
  np.testing.assert_array_equal(lam, f["Lambda"])
  assert r["ushape"]["last_token"] == r["full"]["spectral"][-1]


def _broken(params, scale):
  """``params`` with every head's output projection W_O times ``scale``."""
  out = {k: dict(v) for k, v in params.items()}
  for k in out:
    if k.startswith("layer_"):
      out[k]["attn"] = {**out[k]["attn"], "o": out[k]["attn"]["o"] * scale}
  return out


def test_bound_check_fails_on_constants_of_other_weights(tiny_decoder):
  """Broken input: the bound built from W_O / 1000 (weights the sensitivity was not taken
  of). Every path through attention then gets ~1000x too little credit, and the check must
  fail at some position before the last (measured: 3/8 of them, at up to 3x the bound);
  the factorisation check, from the same broken weights, fails too."""
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    frozen = sensitivity.last_token_sensitivity(cfg, pol, params, x, frozen_attention=True)
    full = sensitivity.last_token_sensitivity(cfg, pol, params, x)
    bad = _broken(params, 1e-3)
    b = sensitivity.oversquashing_bound(cfg, pol, bad, x, constants="analytic")
    f = sensitivity.oversquashing_bound(cfg, pol, bad, x, constants="measured")
  bc = sensitivity.bound_check(frozen["spectral"], full["spectral"], b, f)
  assert not bc["frozen_le_bound_all"] and not bc["frozen_le_tight_all"]
  assert bc["frozen_le_bound_fraction"] < 1 and bc["max_frozen_over_bound"] > 1
  assert not bc["frozen_le_factorised_all"]


def test_analytic_constants_in_closed_form():
  """gelu_max_slope is the tanh-GELU's largest slope (jax's own derivative, x64); the norm
  constant equals the Jacobian's spectral norm for a constant scale (RMSNorm: the bracket's
  top eigenvalue is 1) and bounds it otherwise (LayerNorm, RMSNorm, Gemma's 1 + w)."""
  with jax.enable_x64(True):
    xs = jnp.linspace(-4.0, 4.0, 80001, dtype=jnp.float64)
    slope = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=True)))(xs)
    top = float(jnp.max(slope))
    assert 0 <= sensitivity.gelu_max_slope() - top < 2e-6 and 1.12 < top < 1.14
    v = jax.random.normal(jax.random.PRNGKey(2), (6, 8), jnp.float64) * 3
    pol = sensitivity.get_policy("float64")
    base = DecoderConfig(num_layers=1, d_model=8, num_heads=2, vocab_size=0, max_len=8)
    for norm in ("rmsnorm", "layernorm", "gemma_rmsnorm"):
      cfg = base.replace(norm=norm)
      jac_fn = jax.jit(jax.vmap(jax.jacfwd(lambda p, u: model.Norm(cfg, pol).apply(
          {"params": p}, u[None, None])[0, 0], argnums=1), in_axes=(None, 0)))
      for const in (True, False):
        p = {"scale": jnp.ones(8, jnp.float64) * (0.0 if norm == "gemma_rmsnorm" else 1.0)}
        if norm == "layernorm":
          p["bias"] = jnp.zeros(8, jnp.float64)
        if not const:
          p = {k: w + jax.random.normal(jax.random.PRNGKey(5), w.shape) for k, w in p.items()}
        got = np.linalg.svd(np.asarray(jac_fn(p, v)), compute_uv=False)[:, 0]
        c = sensitivity.norm_lipschitz(cfg, p, v)
        assert np.all(got <= c * (1 + 1e-12)), (norm, const)
        if const and norm == "rmsnorm":
          np.testing.assert_allclose(got, c, rtol=1e-9)


@pytest.mark.slow
def test_frozen_attention_policy_same_forward_no_attention_gradient(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  frozen = dataclasses.replace(pol, frozen_attention=True)
  assert "frozen_attention" not in pol.describe() and frozen.describe()["frozen_attention"]
  with jax.enable_x64(True):
    y = lambda p, v: model.forward(cfg, p, params, v[None])["y"][0, -1]
    np.testing.assert_array_equal(np.asarray(y(pol, x)), np.asarray(y(frozen, x)))
    s = jnp.asarray(x[:4, :4])
    mask = jnp.ones((4, 4), bool)
    g = jax.grad(lambda v: jnp.sum(frozen.softmax(v, mask) ** 2))(s)
    g_norm = jax.grad(lambda v: jnp.sum(model.Norm(cfg, frozen).apply(
        {"params": params["final_norm"]}, v[None, None])))(x[0])
  assert np.all(np.asarray(g) == 0)  # no gradient through the attention weights
  assert np.any(np.asarray(g_norm) != 0)  # norm statistics stay differentiable


@pytest.mark.slow
def test_attn_out_and_mid_residual_are_the_models_own(tiny_decoder):
  cfg, pol, params, x = tiny_decoder
  with jax.enable_x64(True):
    plain = model.forward(cfg, pol, params, x[None], collect=("residual", "attn_weights"))
    out = model.forward(cfg, pol, params, x[None],
                        collect=("residual", "attn_weights", "attn_out", "mid_residual"))
    z = pol.round(pol.to_compute(out["residual"][:-1]) + pol.to_compute(out["attn_out"]),
                  "residual")
    no_mlp = cfg.replace(use_mlp=False)
    p0 = {k: {n: w for n, w in v.items() if n not in ("mlp", "norm2")} if k.startswith("layer_")
          else v for k, v in params.items()}
    a = model.forward(no_mlp, pol, p0, x[None], collect=("residual", "mid_residual"))
  for k in ("y", "residual", "attn_weights"):  # extra keys do not change the others' bits
    np.testing.assert_array_equal(np.asarray(plain[k]), np.asarray(out[k]))
  assert out["attn_out"].shape == out["mid_residual"].shape == (2, 1, 16, 8)
  np.testing.assert_array_equal(np.asarray(out["mid_residual"]), np.asarray(z))
  np.testing.assert_array_equal(np.asarray(a["mid_residual"]), np.asarray(a["residual"][1:]))
