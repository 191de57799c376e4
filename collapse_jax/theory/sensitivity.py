"""Over-squashing (section 5, appendix B.2): Theorem 5.1 / B.5 and the U-shape.

``last_token_sensitivity`` measures ||d y_n / d v_i^(0)|| for every input position i
(reverse mode with chunked cotangents); ``oversquashing_bound`` is the theorem's right-hand
side built from the model's own measured attention (path sums of prod_l (Lambda/beta_1 + I)
times a constant C); ``sensitivity_vs_bound`` compares the two and summarises the U-shape.
The bound assumes attention weights independent of the input: ``frozen_attention=True``
differentiates through ``Policy(frozen_attention=True)``, whose softmax carries no gradient.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy, get_policy


def vector_decoder(n: int, *, layers: int = 2, d_model: int = 32, heads: int = 2,
                   pe: str = "rope", mlp: str = "gelu", policy: Policy | str = "float64",
                   seed: int = 0):
  """Theorem 5.1's setting, shared by experiments.oversquashing and the scorecard: a causal
  C.3 decoder (N(0, 1/d) weights) on vector inputs. Returns (cfg, policy, params cast by the
  policy, x_ND [n, d_model] in the storage dtype). x ~ N(0, 1) is drawn in float32, so every
  policy sees the same inputs up to its own rounding."""
  cfg = DecoderConfig(num_layers=layers, d_model=d_model, num_heads=heads, vocab_size=0, pe=pe,
                      mlp=mlp, causal=True, max_len=max(4096, n))
  pol = get_policy(policy)
  kp, kx = jax.random.split(jax.random.PRNGKey(seed))
  params = pol.cast_params(model.init_params(cfg, kp))
  x_ND = jax.random.normal(kx, (n, d_model), jnp.float32).astype(pol.storage_dtype)
  return cfg, pol, params, x_ND


@functools.lru_cache(maxsize=None)
def _sensitivity_fn(cfg: DecoderConfig, policy: Policy, chunk: int):
  D = cfg.d_model

  def jac(params, x_ND):
    def last_y(x):
      return model.forward(cfg, policy, params, x[None])["y"][0, -1].astype(x.dtype)

    _, vjp_fn = jax.vjp(last_y, x_ND)
    cot = jnp.eye(D, dtype=x_ND.dtype).reshape(D // chunk, chunk, D)
    J = jax.lax.map(lambda c: jax.vmap(vjp_fn)(c)[0], cot)  # [D/chunk, chunk, N, D]
    return J.reshape(D, *x_ND.shape)

  return jax.jit(jac)


def last_token_jacobian(cfg: DecoderConfig, policy: Policy, params, x_ND, *,
                        chunk: int = 8) -> np.ndarray:
  """J_DND[a, i, b] = d y_n[a] / d v_i^(0)[b] for the last position n (vector inputs).

  Reverse mode as in ``jax.jacrev`` (one forward, one VJP per output coordinate), but the D
  cotangents run in ``lax.map`` chunks of ``chunk`` vmapped VJPs, so peak memory is one
  forward's residuals plus ``chunk`` backward passes (what lets n reach the thousands).
  ``params`` already cast by the policy. Returns numpy [D, N, D] in the input dtype."""
  if cfg.vocab_size or cfg.embed_scale:
    raise ValueError("sensitivity is taken w.r.t. vector inputs: use vocab_size=0, "
                     "embed_scale=False (then d/dinputs = d/dv^(0))")
  D = cfg.d_model
  chunk = max(1, min(chunk, D))
  while D % chunk:
    chunk -= 1
  return np.asarray(_sensitivity_fn(cfg, policy, chunk)(params, jnp.asarray(x_ND)))


def _spec(J_NDD) -> np.ndarray:
  """Spectral norm of each D x D block. [N, D, D] -> float64 [N]."""
  return np.linalg.svd(np.asarray(J_NDD, np.float64), compute_uv=False)[:, 0]


def block_norms(J_DND: np.ndarray) -> dict:
  """Per-position norms of the D x D blocks: {'spectral' [N], 'frobenius' [N]} (float64)."""
  blocks = np.moveaxis(np.asarray(J_DND, np.float64), 1, 0)  # [N, D, D]
  return {"spectral": _spec(blocks), "frobenius": np.sqrt((blocks ** 2).sum(axis=(1, 2)))}


def last_token_sensitivity(cfg, policy, params, x_ND, *, chunk: int = 8,
                           frozen_attention: bool = False) -> dict:
  """||d y_n / d v_i^(0)|| for every position i (spectral and Frobenius norms of the D x D
  blocks, [N] each). ``frozen_attention`` differentiates with attention weights held
  constant (the policy with ``frozen_attention=True``; the forward is bit-identical)."""
  pol = dataclasses.replace(get_policy(policy), frozen_attention=frozen_attention)
  return block_norms(last_token_jacobian(cfg, pol, params, x_ND, chunk=chunk))


@functools.lru_cache(maxsize=None)
def _norm_jac_fn(cfg: DecoderConfig, policy: Policy, point: str):
  """jit: (norm params, v [N, D]) -> per-position Jacobians of the norm [N, D, D]."""
  def f(p, v_ND):
    one = lambda v: model.Norm(cfg, policy).apply({"params": p}, v[None, None], point)[0, 0]
    return jax.vmap(jax.jacfwd(one))(v_ND)
  return jax.jit(f)


@functools.lru_cache(maxsize=None)
def _mlp_jac_fn(cfg: DecoderConfig, policy: Policy):
  """jit: (norm2 params, mlp params, z [N, D]) -> Jacobians of MLP(norm2(z_j)) [N, D, D]."""
  def f(pn, pm, z_ND):
    def one(z):
      h = model.Norm(cfg, policy).apply({"params": pn}, z[None, None])
      return model.MLP(cfg, policy).apply({"params": pm}, h)[0, 0]
    return jax.vmap(jax.jacfwd(one))(z_ND)
  return jax.jit(f)


@functools.lru_cache(maxsize=None)
def _capture_fn(cfg: DecoderConfig, policy: Policy):
  """jit: forward collecting v^(l) ('residual' [L+1, B, N, D]), the attention matrices
  ('attn_weights' [L, B, H, N, N]) and z^(l) = v^(l) + Attn(norm1(v^(l))) ('mid_residual'
  [L, B, N, D], the MLP block's input)."""
  return jax.jit(lambda params, x_BND: model.forward(
      cfg, policy, params, x_BND, collect=("residual", "attn_weights", "mid_residual")))


def oversquashing_bound(cfg: DecoderConfig, policy: Policy, params, x_ND) -> dict:
  """Right-hand side of Theorem 5.1 / B.5 from the model's measured attention.

  For layer l with attention alpha^h (head h, [N, N]) the attention-frozen Jacobian is
    d z_j / d v_i = delta_ji I + sum_h alpha^h_ji  W_VO^h^T  J_norm1(v_i),
  W_VO^h = W_V^h W_O^h [D, D], and d v^(l+1)_j / d z_j = I + J_{MLP o norm2}(z_j). Hence
    ||d v^(l+1)_j / d v^(l)_i|| <= (1 + sigma_psi/beta_2) (Lambda_ji / beta_1 + delta_ji)
  with the constants (maxima over positions, so the bound is rigorous at this input):
    1/beta_1 = max_i ||J_norm1(v_i)||_2 * sum_h ||W_VO^h||_2   (the paper's beta_1 also
               absorbs the value/output projections, which it implicitly takes as identity),
    Lambda   = sum_h w_h alpha^h, w_h = ||W_VO^h|| / sum_h' ||W_VO^h'|| (row-stochastic),
    sigma_psi/beta_2 = max_j ||J_{MLP o norm2}(z_j)||_2,   1/beta_3 = ||J_norm3(v_n^(L))||_2,
    C = (1/beta_3) prod_l (1 + sigma_psi/beta_2^(l)),
    bound_i = C [ (Lambda^(L-1)/beta_1 + I) ... (Lambda^(0)/beta_1 + I) ]_{n,i}.
  'bound_tight' keeps the per-position factors instead of their maxima:
    M^(l)_ji = (1 + s_j)(delta_ji + sum_h alpha^h_ji ||W_VO^h|| c_i).
  Both hold for the attention-frozen sensitivity; the full sensitivity adds the
  derivative through the attention weights, which the theorem leaves out.

  Returns numpy float64: 'bound' [N], 'bound_tight' [N], 'C', 'inv_beta1' [L],
  'sigma_over_beta2' [L], 'inv_beta3', 'Lambda' [L, N, N], 'path_sum' [N]."""
  if cfg.windowed or cfg.post_norms or cfg.qk_norm:
    raise ValueError("bound implemented for global attention without post-norms or q/k norms")
  H, KV = cfg.num_heads, cfg.kv_heads
  G = H // KV
  out = _capture_fn(cfg, policy)(params, jnp.asarray(x_ND)[None])
  alpha = np.asarray(out["attn_weights"])[:, 0].astype(np.float64)  # [L, H, N, N]
  residual_LND = np.asarray(out["residual"])[:, 0]  # [L+1, N, D] stored dtype
  mid_LND = np.asarray(out["mid_residual"])[:, 0]  # [L, N, D] z^(l), stored dtype
  L, N = cfg.num_layers, x_ND.shape[0]

  norm_jac = lambda p, v_ND, point="norm": np.asarray(_norm_jac_fn(cfg, policy, point)(p, v_ND))

  M_paper = np.eye(N)
  M_tight = np.eye(N)
  inv_b1, s_b2, lambdas = [], [], []
  for l in range(L):
    p = params[f"layer_{l}"]
    c_i = _spec(norm_jac(p["norm1"], jnp.asarray(residual_LND[l])))  # [N]
    wv = np.asarray(p["attn"]["v"], np.float64)  # [D, KV, Dh]
    wo = np.asarray(p["attn"]["o"], np.float64)  # [H, Dh, D]
    w_h = np.array([np.linalg.norm(wv[:, h // G, :] @ wo[h], 2) for h in range(H)])
    Lam = np.tensordot(w_h / w_h.sum(), alpha[l], axes=(0, 0))  # [N, N]
    ib1 = c_i.max() * w_h.sum()
    if cfg.use_mlp:
      s_j = _spec(np.asarray(_mlp_jac_fn(cfg, policy)(p["norm2"], p["mlp"],
                                                      jnp.asarray(mid_LND[l]))))
    else:
      s_j = np.zeros(N)
    M_paper = ((1.0 + s_j.max()) * (Lam * ib1 + np.eye(N))) @ M_paper
    A_w = np.tensordot(w_h, alpha[l], axes=(0, 0)) * c_i[None, :]
    M_tight = ((1.0 + s_j)[:, None] * (A_w + np.eye(N))) @ M_tight
    inv_b1.append(ib1)
    s_b2.append(s_j.max())
    lambdas.append(Lam)
  v_last = jnp.asarray(residual_LND[-1, -1:])  # [1, D] stored dtype
  ib3 = _spec(norm_jac(params["final_norm"], v_last, "final_norm"))[0]
  C = ib3 * float(np.prod(1.0 + np.array(s_b2)))
  path = np.eye(N)
  for l in range(L):
    path = (lambdas[l] * inv_b1[l] + np.eye(N)) @ path
  return {"bound": ib3 * M_paper[-1], "bound_tight": ib3 * M_tight[-1], "C": C,
          "inv_beta1": np.array(inv_b1), "sigma_over_beta2": np.array(s_b2),
          "inv_beta3": float(ib3), "Lambda": np.stack(lambdas), "path_sum": path[-1]}


def sensitivity_vs_bound(cfg: DecoderConfig, policy: Policy, params, x_ND, *,
                         chunk: int = 8) -> dict:
  """Full and attention-frozen sensitivity next to the bound at every position, with the
  U-shape summary. Returns {'full', 'frozen' (``last_token_sensitivity`` dicts),
  'bound' (``oversquashing_bound``), 'bound_check': {...}, 'ushape': {...}} where the
  checks compare spectral norms with the bound (relative slack 1e-9 for round-off)."""
  full = last_token_sensitivity(cfg, policy, params, x_ND, chunk=chunk)
  frozen = last_token_sensitivity(cfg, policy, params, x_ND, chunk=chunk, frozen_attention=True)
  bnd = oversquashing_bound(cfg, policy, params, x_ND)
  sf, sz, b, bt = full["spectral"], frozen["spectral"], bnd["bound"], bnd["bound_tight"]
  n = len(sf)
  mid = slice(n // 4, 3 * n // 4)
  ushape = {
      "first_token": float(sf[0]), "first_1/32_mean": float(sf[: max(1, n // 32)].mean()),
      "middle_half_median": float(np.median(sf[mid])), "second_to_last": float(sf[-2]),
      "last_token": float(sf[-1]), "first_over_middle": float(sf[0] / np.median(sf[mid])),
      "argmin_position": int(np.argmin(sf)),
      "bound_first_over_middle": float(b[0] / np.median(b[mid])),
  }
  bound_check = {
      "frozen_le_bound_all": bool(np.all(sz <= b * (1 + 1e-9))),
      "frozen_le_tight_all": bool(np.all(sz <= bt * (1 + 1e-9))),
      "frozen_le_bound_fraction": float(np.mean(sz <= b)),
      "max_frozen_over_bound": float(np.max(sz / b)),
      "max_frozen_over_tight": float(np.max(sz / bt)),
      "full_le_bound_fraction": float(np.mean(sf <= b)),
      "max_full_over_bound": float(np.max(sf / b)),
      "C": bnd["C"], "inv_beta1": bnd["inv_beta1"], "sigma_over_beta2": bnd["sigma_over_beta2"],
      "inv_beta3": bnd["inv_beta3"],
  }
  return {"full": full, "frozen": frozen, "bound": bnd, "bound_check": bound_check,
          "ushape": ushape}
