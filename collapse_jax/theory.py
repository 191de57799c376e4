"""The paper's appendix-B statements as measurable quantities (Barbero et al., NeurIPS 2024).

Everything here is a pure function of its arguments: float64 references are computed in
numpy (no x64 needed), reduced precisions go through ``Policy.softmax`` / the decoder with
the policy's rounding. Shapes are in the names (``x_N``, ``scores_RN``, ``J_DND``).

Sections
  * Lemma B.1   -- ``lemma_b1_sweep``: inserting a bounded token b before the last token c
    strictly lowers c's softmax weight; the gap e^(b+c) / (S (S + e^b)) -> 0 like 1/n^2.
  * Lemma B.2   -- ``lemma_b2_sweep`` (Figure 9): x ~ U[0,1]^n, x* = x + U[0, noise] on the
    first k entries; the L1 distance ("total variation", no 1/2) of the softmaxes -> 0.
    ``lemma_b2_mean_field`` is an independent first-principles estimate of its mean.
  * Lemma B.4   -- ``lemma_b4_sweep``: x = (1,0,1,0,...), x* = (0,1,0,1,...): the L1 distance
    is exactly 2(e-1)/(e+1) for every even n (``B4_LIMIT``).
  * Theorem 5.1 / B.5 -- ``last_token_sensitivity`` (||dy_n / dv_i^(0)|| for every i, reverse
    mode with chunked cotangents) and ``oversquashing_bound`` (path sums = products of
    (Lambda/beta_1 + I) from the model's measured attention, times the constant C).
  * Lemma B.6 / B.7, Proposition B.8 -- ``spectral_convergence``: ((Lambda + I)/2)^L -> a first
    column of ones; error vs L against the second-largest eigenvalue modulus.
  * Proposition B.9 -- ``ratio_invariance``: no PE + no causal mask => sequences with equal
    token ratios ('10' vs '1100') get the same representations; measured bit for bit.
  * Corollary B.10 -- ``counting_collapse``: one causal pass over [BOS, a, a, ..., a] finds
    counts c and c+1 whose final representations are bitwise equal in a precision.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers the fp8/bf16 numpy dtypes)
import numpy as np

from collapse_jax import metrics, model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy, get_policy

E = math.e
B4_LIMIT = 2.0 * (E - 1.0) / (E + 1.0)  # 0.9242343145200195


# ----------------------------------------------------------------------------------------
# Softmax helpers
# ----------------------------------------------------------------------------------------
def softmax_np(x_N: np.ndarray) -> np.ndarray:
  """float64 softmax over the last axis (max-subtracted). [..., N] -> [..., N]."""
  x = np.asarray(x_N, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def l1_np(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """The paper's total variation delta(p, q) = sum |p - q| (no 1/2), float64. [..., N] -> [...]."""
  return np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum(axis=-1)


@functools.lru_cache(maxsize=None)
def _softmax_fn(policy: Policy):
  return jax.jit(lambda s, m: policy.softmax(s, m))


def policy_softmax_rows(policy: Policy | str, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Softmax of each 1-D row through ``policy.softmax`` (its dtypes and rounding).

  The rows (float64, any lengths) are rounded to the policy's storage dtype (round to
  nearest even, numpy/ml_dtypes), right-padded into one [R, max_len] batch and masked,
  exactly as the decoder masks keys. Returns the stored probabilities of each row,
  converted exactly to float64 (list of [n_r])."""
  policy = get_policy(policy)
  policy.check_available()
  R = len(rows)
  width = max(len(r) for r in rows)
  scores_RN = np.zeros((R, width), np.float64)
  mask_RN = np.zeros((R, width), bool)
  for r, row in enumerate(rows):
    scores_RN[r, : len(row)] = row
    mask_RN[r, : len(row)] = True
  stored = scores_RN.astype(policy.storage_dtype)
  p_RN = np.asarray(_softmax_fn(policy)(jnp.asarray(stored), jnp.asarray(mask_RN)))
  p_RN = p_RN.astype(np.float64)
  return [p_RN[r, : len(row)] for r, row in enumerate(rows)]


def first_zero(ns: Sequence[int], values_SR: np.ndarray) -> int | None:
  """First n at which every repeat (axis 1) is exactly 0; None if never."""
  v = np.asarray(values_SR, np.float64).reshape(len(ns), -1)
  hit = np.all(v == 0, axis=1)
  return int(ns[int(np.argmax(hit))]) if hit.any() else None


# ----------------------------------------------------------------------------------------
# Lemma B.1
# ----------------------------------------------------------------------------------------
def lemma_b1_sweep(ns: Sequence[int], *, b: float = 1.0, c: float = 1.0, seed: int = 0,
                   precisions: Sequence[str] = ()) -> dict:
  """softmax(x)_n - softmax(x*)_{n+1} for x = [a, c] (length n) and x* = [a, b, c].

  ``a`` ~ U[0,1]^(n-1) are prefixes of ONE random vector (nested sequences), so the exact
  gap e^(b+c) / (S (S + e^b)), S = sum_k e^(a_k) + e^c, is strictly decreasing in n.
  Returns {'n' [S], 'w_x' [S], 'w_xstar' [S], 'gap' [S] (float64 numpy),
  'gap_closed_form' [S], 'gap_by_precision': {name: [S]} (stored weights, exact in f64),
  'first_zero_by_precision': {name: n or None}}."""
  ns = [int(n) for n in ns]
  a_long = np.random.default_rng(seed).uniform(0.0, 1.0, max(ns) - 1)
  xs = [np.concatenate([a_long[: n - 1], [c]]) for n in ns]
  xstars = [np.concatenate([a_long[: n - 1], [b, c]]) for n in ns]
  w_x = np.array([softmax_np(x)[-1] for x in xs])
  w_xs = np.array([softmax_np(x)[-1] for x in xstars])
  S = np.array([np.exp(a_long[: n - 1]).sum() + math.exp(c) for n in ns])
  out = {"n": np.array(ns), "b": b, "c": c, "seed": seed, "w_x": w_x, "w_xstar": w_xs,
         "gap": w_x - w_xs, "gap_closed_form": math.exp(b + c) / (S * (S + math.exp(b))),
         "gap_by_precision": {}, "first_zero_by_precision": {}}
  for name in precisions:
    p = policy_softmax_rows(name, xs + xstars)
    g = np.array([p[i][-1] - p[len(ns) + i][-1] for i in range(len(ns))])
    out["gap_by_precision"][name] = g
    out.setdefault("w_x_by_precision", {})[name] = np.array([p[i][-1] for i in range(len(ns))])
    out["first_zero_by_precision"][name] = first_zero(ns, g)
  return out


# ----------------------------------------------------------------------------------------
# Lemma B.2 / Figure 9
# ----------------------------------------------------------------------------------------
def lemma_b2_pair(n: int, seed: int, k: int = 200, noise: float = 0.1):
  """x ~ U[0,1]^n and x* = x + U[0, noise] on the first min(k, n) entries (float64 [n] each).
  Each (n, seed) draws independently (generator seeded with (seed, n))."""
  rng = np.random.default_rng([seed, n])
  x = rng.uniform(0.0, 1.0, n)
  xs = x.copy()
  kk = min(k, n)
  xs[:kk] += rng.uniform(0.0, noise, kk)
  return x, xs


def lemma_b2_mean_field(n: int, k: int = 200, noise: float = 0.1, grid: int = 20001) -> float:
  """Independent estimate of E[delta] for Lemma B.2's construction (no sampling).

  Replace the partition functions by their means, Z = n m1 and Z* = Z + k m1 (E e^eta - 1)
  with m1 = E e^x = e - 1 and E e^eta = (e^noise - 1)/noise; then
    delta ~= (n - k) m1 |1/Z - 1/Z*|  +  k m1 E_eta |1/Z - e^eta / Z*|,
  the second expectation by quadrature over eta ~ U[0, noise]. First order in 1/n this is
  2 (Z* - Z)(Z - Z_k) / (Z Z*), i.e. about 20/n for k = 200, noise = 0.1."""
  kk = min(k, n)
  m1 = E - 1.0
  z = n * m1
  zs = z + kk * m1 * ((math.exp(noise) - 1.0) / noise - 1.0)
  eta = np.linspace(0.0, noise, grid)
  inner = np.abs(1.0 / z - np.exp(eta) / zs)
  e_inner = float(np.trapezoid(inner, eta) / noise) if hasattr(np, "trapezoid") else float(
      np.trapz(inner, eta) / noise)
  return (n - kk) * m1 * abs(1.0 / z - 1.0 / zs) + kk * m1 * e_inner


def lemma_b2_sweep(ns: Sequence[int], seeds: Sequence[int] = (0, 1, 2, 3, 4), *, k: int = 200,
                   noise: float = 0.1, precisions: Sequence[str] = ()) -> dict:
  """L1 distance of softmax(x) and softmax(x*) for every n and seed.

  Returns {'n' [S], 'tv_float64' [S, R] (numpy float64 reference), 'mean_field' [S],
  'tv_by_precision': {name: [S, R]} (stored probabilities through the policy's softmax),
  'first_zero_by_precision': {name: first n where all seeds give exactly 0, or None},
  'underflow_by_precision': {name: [S] fraction of probabilities stored as exact 0}}."""
  ns = [int(n) for n in ns]
  pairs = [lemma_b2_pair(n, s, k, noise) for n in ns for s in seeds]
  R = len(seeds)
  tv64 = np.array([l1_np(softmax_np(x), softmax_np(xs)) for x, xs in pairs]).reshape(len(ns), R)
  out = {"n": np.array(ns), "seeds": list(seeds), "k": k, "noise": noise, "tv_float64": tv64,
         "mean_field": np.array([lemma_b2_mean_field(n, k, noise) for n in ns]),
         "tv_by_precision": {}, "first_zero_by_precision": {}, "underflow_by_precision": {}}
  for name in precisions:
    p = policy_softmax_rows(name, [x for x, _ in pairs] + [xs for _, xs in pairs])
    P = len(pairs)
    tv = np.array([l1_np(p[i], p[P + i]) for i in range(P)]).reshape(len(ns), R)
    zero = np.array([np.mean(p[i] == 0) for i in range(P)]).reshape(len(ns), R).mean(axis=1)
    out["tv_by_precision"][name] = tv
    out["first_zero_by_precision"][name] = first_zero(ns, tv)
    out["underflow_by_precision"][name] = zero
  return out


# ----------------------------------------------------------------------------------------
# Lemma B.4
# ----------------------------------------------------------------------------------------
def lemma_b4_pair(n: int):
  """x = (1,0,1,0,...), x* = (0,1,0,1,...), float64 [n] each (n even)."""
  if n % 2:
    raise ValueError(f"Lemma B.4 needs an even n, got {n}")
  x = np.tile([1.0, 0.0], n // 2)
  return x, 1.0 - x


def lemma_b4_sweep(ns: Sequence[int], precisions: Sequence[str] = ()) -> dict:
  """L1 distance for the alternating pair at every even n: float64 and per precision.
  Returns {'n', 'limit' (2(e-1)/(e+1)), 'tv_float64' [S], 'abs_error_float64' [S],
  'tv_by_precision': {name: [S]}, 'first_zero_by_precision'}."""
  ns = [int(n) for n in ns]
  pairs = [lemma_b4_pair(n) for n in ns]
  tv = np.array([l1_np(softmax_np(x), softmax_np(xs)) for x, xs in pairs])
  out = {"n": np.array(ns), "limit": B4_LIMIT, "tv_float64": tv,
         "abs_error_float64": np.abs(tv - B4_LIMIT), "tv_by_precision": {},
         "first_zero_by_precision": {}}
  for name in precisions:
    p = policy_softmax_rows(name, [x for x, _ in pairs] + [xs for _, xs in pairs])
    P = len(pairs)
    t = np.array([l1_np(p[i], p[P + i]) for i in range(P)])
    out["tv_by_precision"][name] = t
    out["first_zero_by_precision"][name] = first_zero(ns, t)
  return out


# ----------------------------------------------------------------------------------------
# Theorem 5.1 / B.5: sensitivity and the path-sum bound
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrozenAttentionPolicy(Policy):
  """A policy whose attention weights carry no gradient (``stop_gradient`` on the softmax
  output): the linearisation the paper's bound assumes ("attention weights independent of
  the input"). Norm statistics use ``sm_step``, not ``softmax``, so they stay differentiable."""

  def softmax(self, scores, mask, bias=None):
    return jax.lax.stop_gradient(super().softmax(scores, mask, bias))


def freeze_attention(policy: Policy | str) -> FrozenAttentionPolicy:
  policy = get_policy(policy)
  return FrozenAttentionPolicy(**{f.name: getattr(policy, f.name)
                                  for f in dataclasses.fields(Policy)})


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


def block_norms(J_DND: np.ndarray) -> dict:
  """Per-position norms of the D x D blocks: {'spectral' [N], 'frobenius' [N]} (float64)."""
  blocks = np.moveaxis(np.asarray(J_DND, np.float64), 1, 0)  # [N, D, D]
  return {"spectral": np.linalg.svd(blocks, compute_uv=False)[:, 0],
          "frobenius": np.sqrt((blocks ** 2).sum(axis=(1, 2)))}


def last_token_sensitivity(cfg, policy, params, x_ND, *, chunk: int = 8,
                           frozen_attention: bool = False) -> dict:
  """||d y_n / d v_i^(0)|| for every position i (spectral and Frobenius norms of the D x D
  blocks). ``frozen_attention`` differentiates with attention weights held constant."""
  pol = freeze_attention(policy) if frozen_attention else get_policy(policy)
  return block_norms(last_token_jacobian(cfg, pol, params, x_ND, chunk=chunk))


def _spec(J_NDD):
  return np.linalg.svd(np.asarray(J_NDD, np.float64), compute_uv=False)[:, 0]


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
  """jit: forward collecting residual/attention weights plus each layer's attention output
  (Flax capture_intermediates of layer_l/attn)."""
  def f(params, x_BND):
    dec = model.Decoder(cfg, policy, ("residual", "attn_weights"))
    out, state = dec.apply({"params": params}, x_BND, capture_intermediates=True,
                           mutable=["intermediates"])
    inter = state["intermediates"]
    attn_out = [inter[f"layer_{l}"]["attn"]["__call__"][0][0] for l in range(cfg.num_layers)]
    return out, attn_out
  return jax.jit(f)


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
  if cfg.sliding_window is not None:
    raise ValueError("bound implemented for global attention")
  H, KV = cfg.num_heads, cfg.kv_heads
  G = H // KV
  out, attn_out = _capture_fn(cfg, policy)(params, jnp.asarray(x_ND)[None])
  alpha = np.asarray(out["attn_weights"])[:, 0].astype(np.float64)  # [L, H, N, N]
  L, N = cfg.num_layers, x_ND.shape[0]

  norm_jac = lambda p, v_ND, point="norm": np.asarray(_norm_jac_fn(cfg, policy, point)(p, v_ND))

  M_paper = np.eye(N)
  M_tight = np.eye(N)
  inv_b1, s_b2, lambdas = [], [], []
  for l in range(L):
    p = params[f"layer_{l}"]
    v = jnp.asarray(np.asarray(out["residual"])[l, 0])
    c_i = _spec(norm_jac(p["norm1"], v))  # [N]
    wv = np.asarray(p["attn"]["v"], np.float64)  # [D, KV, Dh]
    wo = np.asarray(p["attn"]["o"], np.float64)  # [H, Dh, D]
    w_h = np.array([np.linalg.norm(wv[:, h // G, :] @ wo[h], 2) for h in range(H)])
    Lam = np.tensordot(w_h / w_h.sum(), alpha[l], axes=(0, 0))  # [N, N]
    ib1 = c_i.max() * w_h.sum()
    if cfg.use_mlp:
      a_out = attn_out[l][0]  # [N, D] attention output of layer l
      z = policy.round(policy.to_compute(v) + policy.to_compute(a_out), "residual")

      s_j = _spec(np.asarray(_mlp_jac_fn(cfg, policy)(p["norm2"], p["mlp"], z)))
    else:
      s_j = np.zeros(N)
    M_paper = ((1.0 + s_j.max()) * (Lam * ib1 + np.eye(N))) @ M_paper
    A_w = np.tensordot(w_h, alpha[l], axes=(0, 0)) * c_i[None, :]
    M_tight = ((1.0 + s_j)[:, None] * (A_w + np.eye(N))) @ M_tight
    inv_b1.append(ib1)
    s_b2.append(s_j.max())
    lambdas.append(Lam)
  v_last = jnp.asarray(np.asarray(out["residual"])[-1, 0, -1:])  # [1, D] stored dtype
  ib3 = _spec(norm_jac(params["final_norm"], v_last, "final_norm"))[0]
  C = ib3 * float(np.prod(1.0 + np.array(s_b2)))
  path = np.eye(N)
  for l in range(L):
    path = (lambdas[l] * inv_b1[l] + np.eye(N)) @ path
  return {"bound": ib3 * M_paper[-1], "bound_tight": ib3 * M_tight[-1], "C": C,
          "inv_beta1": np.array(inv_b1), "sigma_over_beta2": np.array(s_b2),
          "inv_beta3": float(ib3), "Lambda": np.stack(lambdas), "path_sum": path[-1]}


# ----------------------------------------------------------------------------------------
# Lemma B.6 / B.7, Proposition B.8: spectral convergence of ((Lambda + I)/2)^L
# ----------------------------------------------------------------------------------------
def uniform_causal(n: int) -> np.ndarray:
  """Causal uniform attention Lambda_ij = 1/i for j <= i (1-indexed), [n, n] float64."""
  return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]


def random_causal(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
  """Causal softmax of N(0, scale^2) scores, [n, n] float64 row-stochastic, lower-triangular."""
  s = np.random.default_rng(seed).normal(0.0, scale, (n, n))
  s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
  return softmax_np(s)


def lazy(Lam_NN: np.ndarray) -> np.ndarray:
  """Lambda~ = (Lambda + I)/2."""
  return 0.5 * (np.asarray(Lam_NN, np.float64) + np.eye(len(Lam_NN)))


def stochastic_checks(Lam_NN: np.ndarray) -> dict:
  """Lemma B.6/B.7 facts of a causal row-stochastic matrix: max |row sum - 1|, max |upper
  triangle|, the eigenvalues (= diagonal, triangular) of Lambda~, the multiplicity of
  eigenvalue 1 and the second-largest eigenvalue modulus lambda_2 (largest below 1)."""
  lt = lazy(Lam_NN)
  eig = np.sort(np.abs(np.diag(lt)))[::-1]
  ones = int(np.sum(np.isclose(eig, 1.0, rtol=0, atol=1e-12)))
  return {"row_sum_err": float(np.abs(Lam_NN.sum(1) - 1).max()),
          "upper_max": float(np.abs(np.triu(Lam_NN, 1)).max()) if len(Lam_NN) > 1 else 0.0,
          "multiplicity_one": ones,
          "lambda2": float(eig[ones]) if ones < len(eig) else 1.0,
          "eig_lazy_sorted": eig}


def spectral_convergence(Lam_NN: np.ndarray, Ls: Sequence[int], *, full: bool = True) -> dict:
  """Distance of Lambda~^L from its limit 1 e_1^T (first column of ones) for every L in Ls.

  'err_last_row' [len(Ls)]: max_i |(Lambda~^L)_{n,i} - [i = 1]| (the row that governs
  d y_n / d v_i^(0) in Prop. B.8); 'err_full' [len(Ls)] the max over all entries (only if
  ``full``, O(n^3) per step). 'rate' = geometric-mean ratio err(L+1)/err(L) over the last
  quarter of the L range, to compare with 'lambda2' (the slowest non-unit eigenvalue)."""
  lt = lazy(Lam_NN)
  n = len(lt)
  Ls = sorted(int(L) for L in Ls)
  target = np.zeros(n)
  target[0] = 1.0
  row = np.zeros(n)
  row[-1] = 1.0
  P = np.eye(n) if full else None
  errs_row, errs_full, L_cur = [], [], 0
  for L in Ls:
    while L_cur < L:
      row = row @ lt
      if full:
        P = P @ lt
      L_cur += 1
    errs_row.append(np.abs(row - target).max())
    if full:
      errs_full.append(np.abs(P - np.outer(np.ones(n), target)).max())
  errs_row = np.array(errs_row)
  ck = stochastic_checks(Lam_NN)
  # Fit on the resolvable part (err above 1e-12, i.e. well above float64 round-off):
  # the last quarter of those L values.
  Ls_arr = np.array(Ls)
  ok = errs_row > 1e-12
  okL, oke = Ls_arr[ok], errs_row[ok]
  q = max(2, len(okL) // 4)
  rate = (float(np.exp(np.polyfit(okL[-q:], np.log(oke[-q:]), 1)[0]))
          if len(okL) >= 2 else float("nan"))
  return {"L": np.array(Ls), "err_last_row": errs_row,
          "err_full": np.array(errs_full) if full else None, "lambda2": ck["lambda2"],
          "multiplicity_one": ck["multiplicity_one"], "rate": rate,
          "row_sum_err": ck["row_sum_err"], "upper_max": ck["upper_max"]}


def layers_to_converge(Lam_NN: np.ndarray, tol: float = 1e-3, max_L: int = 100000) -> int:
  """Smallest L with max_i |(Lambda~^L)_{n,i} - [i=1]| < tol (last row only, O(n^2) per L)."""
  lt = lazy(Lam_NN)
  n = len(lt)
  row = np.zeros(n)
  row[-1] = 1.0
  target = np.zeros(n)
  target[0] = 1.0
  for L in range(1, max_L + 1):
    row = row @ lt
    if np.abs(row - target).max() < tol:
      return L
  return -1


# ----------------------------------------------------------------------------------------
# Proposition B.9: ratio invariance without PE and causal mask
# ----------------------------------------------------------------------------------------
def expand(base: str, m: int, arrangement: str) -> str:
  """'blocks': every symbol repeated m times in place ('10' -> '1100');
  'tiled': the whole string repeated m times ('10' -> '1010'). Same token ratio."""
  if arrangement == "blocks":
    return "".join(ch * m for ch in base)
  if arrangement == "tiled":
    return base * m
  raise ValueError(f"unknown arrangement {arrangement!r}; valid: blocks, tiled")


@functools.lru_cache(maxsize=None)
def _tok_forward(cfg: DecoderConfig, policy: Policy):
  return jax.jit(lambda p, t: model.forward(cfg, policy, p, t, collect=("residual",)))


def token_representations(cfg: DecoderConfig, policy: Policy, params, seq: str) -> np.ndarray:
  """Residual stream v^(0..L) and y for a string of digit tokens: [L+2, N, D] stored dtype
  (index L+1 is the final normalised output y)."""
  t = jnp.asarray([[int(ch) for ch in seq]], jnp.int32)
  out = _tok_forward(cfg, policy)(params, t)
  return np.concatenate([np.asarray(out["residual"])[:, 0], np.asarray(out["y"])[None, 0]])


def ratio_invariance(cfg: DecoderConfig, policy: Policy | str, params, *, base: str = "10",
                     multipliers: Sequence[int] = (2, 3, 4, 8),
                     arrangements: Sequence[str] = ("blocks", "tiled")) -> list[dict]:
  """Compare the representations of ``base`` and of each ratio-preserving expansion.

  Non-causal: every position of the expansion is compared with the base position holding
  the same symbol (position-free model => same symbol, same representation). Causal: the
  LAST position (the next-token representation; base and expansions end in the same
  symbol) is compared. Per depth (v0..vL, and 'y'): bitwise equality, max ULP distance,
  max |difference| and that divided by max |reference| ('max_rel_diff'; compare with the
  storage dtype's 'eps'). Returns one row per (multiplier, arrangement).

  Why equality can be exact in floating point: per-token ops (norms, projections, MLP) see
  identical inputs; the only cross-token ops are the softmax (max: exact; sum of e_j) and
  sum_j p_j v_j. With multiplicity m, real arithmetic gives p_j -> p_j / m. The stored
  probability round(p/m) equals round(p)/m exactly when m is a power of two (scaling by
  2^-k commutes with rounding away from the subnormal range), and the f32 accumulation
  differences of the longer sums are absorbed when the result is rounded to a narrower
  storage dtype (bf16/f16). For other m, or f32 storage, equality holds only to rounding."""
  policy = get_policy(policy)
  params = policy.cast_params(params)
  ref = token_representations(cfg, policy, params, base)
  pos_of = {ch: base.index(ch) for ch in set(base)}
  rows = []
  for m in multipliers:
    for arr in arrangements:
      seq = expand(base, m, arr)
      rep = token_representations(cfg, policy, params, seq)
      if cfg.causal:
        a, b = rep[:, -1:], ref[:, -1:]
      else:
        a = rep
        b = ref[:, [pos_of[ch] for ch in seq]]
      eq = np.asarray(metrics.bitwise_equal(jnp.asarray(a), jnp.asarray(b), axis=(1, 2)))
      ulp = np.asarray(metrics.ulp_distance(jnp.asarray(a), jnp.asarray(b))).max(axis=(1, 2))
      diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=(1, 2))
      scale = np.abs(b.astype(np.float64)).max(axis=(1, 2))
      rows.append({"policy": policy.name, "causal": cfg.causal, "multiplier": m,
                   "arrangement": arr, "sequence": seq,
                   "depth": ["v0"] + [f"v{l}" for l in range(1, cfg.num_layers + 1)] + ["y"],
                   "bitwise_equal": eq.tolist(), "max_ulp": ulp.astype(np.int64).tolist(),
                   "max_abs_diff": diff.tolist(),
                   "max_rel_diff": (diff / np.where(scale > 0, scale, 1.0)).tolist(),
                   "eps": float(ml_dtypes.finfo(policy.storage_dtype).eps)})
  return rows


# ----------------------------------------------------------------------------------------
# Corollary B.10: a count that must be wrong
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _y_fn(cfg: DecoderConfig, policy: Policy):
  return jax.jit(lambda p, t: model.forward(cfg, policy, p, t)["y"])


def repeated_token_sequence(N: int, bos: int = 0, a: int = 1) -> np.ndarray:
  """[BOS, a, a, ..., a] of length N (int32 [1, N]); the prefix of length n holds n-1 a's."""
  t = np.full((1, N), a, np.int32)
  t[0, 0] = bos
  return t


def counting_collapse(cfg: DecoderConfig, policy: Policy | str, params, N: int, *,
                      reference: Policy | str | None = "float64", bos: int = 0, a: int = 1,
                      confirm: int = 5) -> dict:
  """One causal pass over [BOS, a * (N-1)]: row n-1 is the last-token output y for the
  length-n prefix (n-1 a's). Finds lengths n with y_n == y_{n+1} bit for bit, i.e. counts
  c = n-1 and c+1 that the model cannot tell apart: any readout gives both the same answer,
  so at least one count is wrong.

  Rows of one masked causal pass need not match exact-length forwards bit for bit (matmul
  blocking depends on shape), so the first ``confirm`` collapsed n are re-checked with two
  exact-length forwards. ``reference`` (float64, needs x64) gives the distance the
  infinite-precision-like model keeps between the two. Returns a dict (see keys)."""
  policy = get_policy(policy)
  cfg.check_length(N)
  t = repeated_token_sequence(N, bos, a)
  y = np.asarray(_y_fn(cfg, policy)(policy.cast_params(params), jnp.asarray(t)))[0]  # [N, D]
  eq = np.asarray(metrics.bitwise_equal(jnp.asarray(y[:-1]), jnp.asarray(y[1:])))  # [N-1]
  lengths = np.arange(1, N)  # eq[j]: length j+1 vs j+2
  dist = np.abs(y[:-1].astype(np.float64) - y[1:].astype(np.float64)).max(-1)
  out = {"policy": policy.name, "N": N, "lengths": lengths, "equal": eq, "linf": dist,
         "first_collapse_n": int(metrics.collapse_onset(eq, lengths)),
         "sustained_collapse_n": int(metrics.sustained_onset(eq, lengths)),
         "fraction_equal": float(eq.mean())}
  if reference is not None:
    ref = get_policy(reference)
    if ref.needs_x64 and not jax.config.jax_enable_x64:
      out["reference"] = None
    else:
      yr = np.asarray(_y_fn(cfg, ref)(ref.cast_params(params), jnp.asarray(t)))[0]
      out["reference"] = ref.name
      out["reference_linf"] = np.abs(yr[:-1].astype(np.float64) - yr[1:]).max(-1)
  confirmed = []
  for n in lengths[eq][:confirm]:
    y1 = np.asarray(_y_fn(cfg, policy)(policy.cast_params(params), jnp.asarray(t[:, :n])))[0, -1]
    y2 = np.asarray(_y_fn(cfg, policy)(policy.cast_params(params),
                                       jnp.asarray(t[:, :n + 1])))[0, -1]
    confirmed.append({"n": int(n), "exact_length_equal": bool(
        np.asarray(metrics.bitwise_equal(jnp.asarray(y1), jnp.asarray(y2))))})
  out["confirmed"] = confirmed
  first_conf = [c["n"] for c in confirmed if c["exact_length_equal"]]
  n_star = first_conf[0] if first_conf else out["first_collapse_n"]
  out["wrong_count"] = None if n_star < 0 else {
      "n": n_star, "counts": [n_star - 1, n_star],
      "exact_length_confirmed": bool(first_conf),
      "reference_linf": (float(out["reference_linf"][n_star - 1])
                         if out.get("reference") else None)}
  return out
