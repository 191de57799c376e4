"""collapse_jax.theory.sensitivity: Theorem 5.1 / B.5 on a tiny decoder, the frozen-attention
policy it differentiates through, and the model intermediates the bound reads."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import model
from collapse_jax.theory import sensitivity


@pytest.fixture(scope="module")
def tiny_decoder():
  with jax.enable_x64(True):
    cfg, pol, params, _ = sensitivity.vector_decoder(16, layers=2, d_model=8, heads=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8), jnp.float64)
    yield cfg, pol, params, x


def test_vector_decoder_inputs_are_the_same_in_every_policy():
  _, _, _, x32 = sensitivity.vector_decoder(8, d_model=8, policy="float32")
  _, pol, _, xb = sensitivity.vector_decoder(8, d_model=8, policy="bfloat16")
  assert xb.dtype == pol.storage_dtype
  np.testing.assert_array_equal(np.asarray(xb), np.asarray(x32.astype(jnp.bfloat16)))


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
  s, b = r["frozen"]["spectral"], r["bound"]
  assert np.all(s <= b["bound_tight"] * (1 + 1e-9))
  assert np.all(b["bound_tight"] <= b["bound"] * (1 + 1e-9))
  assert np.all(s <= b["bound"])
  assert r["bound_check"]["frozen_le_bound_all"]
  assert r["bound_check"]["frozen_le_bound_fraction"] == 1
  # freezing the attention changes the derivative (the assumption is not vacuous)
  assert np.max(np.abs(r["full"]["spectral"] - s)) > 1e-6
  lam = b["Lambda"]
  np.testing.assert_allclose(lam.sum(-1), 1.0, atol=1e-12)
  assert np.all(np.triu(lam, 1) == 0)
  assert r["ushape"]["last_token"] == r["full"]["spectral"][-1]


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
