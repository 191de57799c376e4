"""Over-squashing (section 5, appendix B.2): Theorem 5.1 / B.5 and the U-shape.

``last_token_sensitivity`` measures ||d y_n / d v_i^(0)|| for every input position i
(reverse mode with chunked cotangents); ``oversquashing_bound`` is the theorem's right-hand
side on the model's own measured attention (path sums of prod_l (Lambda/beta_1 + I) times a
constant C), with its constants either

  'analytic'  (the theorem's check) closed-form Lipschitz constants of the norms and the MLP,
              from the weights' spectral norms and the forward's activation statistics (each
              position's variance / mean square), computed without any Jacobian; or
  'measured'  the spectral norms of the per-position Jacobians (jacfwd) at this input. The
              sensitivity is then at most the bound by the chain rule and submultiplicativity
              alone: it verifies that the path decomposition counts every path, not the
              theorem's constants (the "factorised" bound).

``sensitivity_vs_bound`` compares the sensitivity with both and summarises the U-shape. The
bound assumes attention weights independent of the input: ``frozen_attention=True``
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


def vector_fixed(n: int) -> dict:
  """The DecoderConfig fields Theorem 5.1's setting fixes for ``n`` positions: vector inputs
  (vocab_size=0), a causal mask, max_len >= n."""
  return dict(vocab_size=0, causal=True, max_len=max(4096, n))


def vector_decoder(n: int, *, layers: int = 2, d_model: int = 32, heads: int = 2,
                   pe: str = "rope", mlp: str = "gelu", policy: Policy | str = "float64",
                   seed: int = 0):
  """Theorem 5.1's setting, shared by experiments.oversquashing and the scorecard: a causal
  C.3 decoder (N(0, 1/d) weights) on vector inputs. Returns (cfg, policy, params cast by the
  policy, x_ND [n, d_model] in the storage dtype). x ~ N(0, 1) is drawn in float32, so every
  policy sees the same inputs up to its own rounding."""
  cfg = DecoderConfig(num_layers=layers, d_model=d_model, num_heads=heads, pe=pe, mlp=mlp,
                      **vector_fixed(n))
  return init_vector_decoder(cfg, policy, n, seed=seed)


def init_vector_decoder(cfg: DecoderConfig, policy: Policy | str, n: int, *, seed: int = 0):
  """``vector_decoder`` for a config already built (``vector_fixed`` fields; the app builds it
  from its flags): (cfg, policy, params cast by the policy, x_ND [n, d_model])."""
  pol = get_policy(policy)
  kp, kx = jax.random.split(jax.random.PRNGKey(seed))
  params = pol.cast_params(model.init_params(cfg, kp))
  x_ND = jax.random.normal(kx, (n, cfg.d_model), jnp.float32).astype(pol.storage_dtype)
  return cfg, pol, params, x_ND


def check_bound(cfg: DecoderConfig, constants: str = "analytic") -> None:
  """The models ``oversquashing_bound`` covers (ValueError, one line, otherwise): global
  attention without post-norms, q/k norms or q/k/v biases, and for the 'analytic' constants a Lipschitz
  MLP ('gelu'). Needs no weights: the app checks its flags with it before running."""
  if constants not in ("analytic", "measured"):
    raise ValueError(f"constants must be 'analytic' or 'measured', got {constants!r}")
  if cfg.windowed or cfg.post_norms or cfg.qk_norm or cfg.qkv_bias or cfg.attn_softcap:
    raise ValueError("bound implemented for global attention without post-norms, q/k norms, "
                     "q/k/v biases or softcapping")
  if constants == "analytic" and cfg.use_mlp and cfg.mlp != "gelu":
    raise ValueError(f"the analytic bound needs a Lipschitz MLP ('gelu'), not {cfg.mlp!r}")


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


@functools.lru_cache(maxsize=None)
def gelu_max_slope() -> float:
  """sup_x |d/dx gelu(x)| for the tanh-approximate GELU the MLP uses (about 1.1290), from its
  closed-form derivative on a float64 grid of step 1e-5 over [-8, 8] (outside, the slope is
  within 1e-6 of 0 or 1), plus 1e-6: the grid misses the maximum by at most
  (max of the third derivative) h^2 / 8 < 1e-9."""
  x = np.linspace(-8.0, 8.0, 1_600_001)
  k, a = np.sqrt(2.0 / np.pi), 0.044715
  t = np.tanh(k * (x + a * x ** 3))
  slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * a * x * x)
  return float(np.abs(slope).max()) + 1e-6


def norm_lipschitz(cfg: DecoderConfig, p: dict, v_ND) -> np.ndarray:
  """Closed-form bound on ||J_norm(v_i)||_2 per position: float64 [N] from the norm's
  weights ``p`` and its inputs ``v_ND`` [N, D] (no Jacobian is taken).

  RMSNorm: J = diag(w)/r (I - v v^T/(D r^2)), r = sqrt(mean(v^2) + eps); the bracket is
  symmetric with eigenvalues 1 and eps/r^2, in [0, 1], so ||J|| <= max|w| / r. LayerNorm:
  the same on the centred v (mean(v^2) -> var(v)) times the centring projection, which
  commutes with it: ||J|| <= max|w| / sqrt(var(v) + eps). Gemma's (1 + w): max|1 + w|."""
  v = np.asarray(v_ND, np.float64)
  w = np.asarray(p["scale"], np.float64)
  if cfg.norm == "gemma_rmsnorm":
    w = 1.0 + w
  if cfg.norm == "layernorm":
    v = v - v.mean(-1, keepdims=True)
  return np.abs(w).max() / np.sqrt((v * v).mean(-1) + cfg.norm_eps)


def _w_vo(cfg: DecoderConfig, p: dict) -> np.ndarray:
  """||W_V^h W_O^h||_2 per head h: float64 [H] (the value-output map of one head, [D, D])."""
  H, G = cfg.num_heads, cfg.num_heads // cfg.kv_heads
  wv = np.asarray(p["attn"]["v"], np.float64)  # [D, KV, Dh]
  wo = np.asarray(p["attn"]["o"], np.float64)  # [H, Dh, D]
  return np.array([np.linalg.norm(wv[:, h // G, :] @ wo[h], 2) for h in range(H)])


def oversquashing_bound(cfg: DecoderConfig, policy: Policy, params, x_ND, *,
                        constants: str = "analytic") -> dict:
  """Right-hand side of Theorem 5.1 / B.5 on the model's measured attention.

  For layer l with attention alpha^h (head h, [N, N]) the attention-frozen Jacobian is
    d z_j / d v_i = delta_ji I + sum_h alpha^h_ji  W_VO^h^T  J_norm1(v_i),
  W_VO^h = W_V^h W_O^h [D, D], and d v^(l+1)_j / d z_j = I + J_{MLP o norm2}(z_j). Hence
    ||d v^(l+1)_j / d v^(l)_i|| <= (1 + s_j) (delta_ji + sum_h alpha^h_ji ||W_VO^h|| c_i)
  with c_i >= ||J_norm1(v_i)||, s_j >= ||J_{MLP o norm2}(z_j)||, c_3 >= ||J_norm3(v_n^(L))||:
    'analytic'  c_i = :func:`norm_lipschitz` (max|w| / sqrt(var(v_i) + eps)),
                s_j = ||W_up||_2 ||W_down||_2 sup|gelu'| c2_j (:func:`gelu_max_slope`;
                the 'gelu' MLP only: a gated MLP has no global Lipschitz constant);
    'measured'  the spectral norms of those Jacobians at this input (jacfwd). The bound then
                holds by the chain rule and submultiplicativity: it checks that the path
                decomposition is complete, not the theorem's constants.
  The paper's constants are the maxima over positions:
    1/beta_1 = max_i c_i * sum_h ||W_VO^h||   (the paper's beta_1 also absorbs the
               value/output projections, which it implicitly takes as identity),
    Lambda   = sum_h w_h alpha^h, w_h = ||W_VO^h|| / sum_h' ||W_VO^h'|| (row-stochastic),
    sigma_psi/beta_2 = max_j s_j,   1/beta_3 = c_3,   C = (1/beta_3) prod_l (1 + sigma_psi/beta_2^(l)),
    bound_i = C [ (Lambda^(L-1)/beta_1 + I) ... (Lambda^(0)/beta_1 + I) ]_{n,i}.
  'bound_tight' keeps the per-position factors instead of their maxima:
    M^(l)_ji = (1 + s_j)(delta_ji + sum_h alpha^h_ji ||W_VO^h|| c_i).
  Both hold for the attention-frozen sensitivity; the full sensitivity adds the
  derivative through the attention weights, which the theorem leaves out.

  Returns numpy float64: 'bound' [N], 'bound_tight' [N], 'C', 'inv_beta1' [L],
  'sigma_over_beta2' [L], 'inv_beta3', 'Lambda' [L, N, N], 'path_sum' [N], 'constants'."""
  check_bound(cfg, constants)
  out = _capture_fn(cfg, policy)(params, jnp.asarray(x_ND)[None])
  alpha = np.asarray(out["attn_weights"])[:, 0].astype(np.float64)  # [L, H, N, N]
  residual_LND = np.asarray(out["residual"])[:, 0]  # [L+1, N, D] stored dtype
  mid_LND = np.asarray(out["mid_residual"])[:, 0]  # [L, N, D] z^(l), stored dtype
  L, N = cfg.num_layers, x_ND.shape[0]

  def norm_c(p, v_ND, point="norm"):  # [N]
    if constants == "analytic":
      return norm_lipschitz(cfg, p, v_ND)
    return _spec(np.asarray(_norm_jac_fn(cfg, policy, point)(p, jnp.asarray(v_ND))))

  def mlp_s(p, z_ND):  # [N]
    if not cfg.use_mlp:
      return np.zeros(N)
    if constants == "analytic":
      up = np.linalg.norm(np.asarray(p["mlp"]["up"], np.float64), 2)
      down = np.linalg.norm(np.asarray(p["mlp"]["down"], np.float64), 2)
      return up * down * gelu_max_slope() * norm_lipschitz(cfg, p["norm2"], z_ND)
    return _spec(np.asarray(_mlp_jac_fn(cfg, policy)(p["norm2"], p["mlp"], jnp.asarray(z_ND))))

  M_paper = np.eye(N)
  M_tight = np.eye(N)
  inv_b1, s_b2, lambdas = [], [], []
  for l in range(L):
    p = params[f"layer_{l}"]
    c_i = norm_c(p["norm1"], residual_LND[l])  # [N]
    w_h = _w_vo(cfg, p)  # [H]
    Lam = np.tensordot(w_h / w_h.sum(), alpha[l], axes=(0, 0))  # [N, N]
    ib1 = c_i.max() * w_h.sum()
    s_j = mlp_s(p, mid_LND[l])  # [N]
    M_paper = ((1.0 + s_j.max()) * (Lam * ib1 + np.eye(N))) @ M_paper
    A_w = np.tensordot(w_h, alpha[l], axes=(0, 0)) * c_i[None, :]
    M_tight = ((1.0 + s_j)[:, None] * (A_w + np.eye(N))) @ M_tight
    inv_b1.append(ib1)
    s_b2.append(s_j.max())
    lambdas.append(Lam)
  ib3 = float(norm_c(params["final_norm"], residual_LND[-1, -1:], "final_norm")[0])
  C = ib3 * float(np.prod(1.0 + np.array(s_b2)))
  path = np.eye(N)
  for l in range(L):
    path = (lambdas[l] * inv_b1[l] + np.eye(N)) @ path
  return {"bound": ib3 * M_paper[-1], "bound_tight": ib3 * M_tight[-1], "C": C,
          "inv_beta1": np.array(inv_b1), "sigma_over_beta2": np.array(s_b2),
          "inv_beta3": ib3, "Lambda": np.stack(lambdas), "path_sum": path[-1],
          "constants": constants}


def bound_check(frozen_N, full_N, bound: dict, factorised: dict) -> dict:
  """The theorem's check and the factorisation's, from spectral norms [N] of the
  attention-frozen and full sensitivities and two :func:`oversquashing_bound` results
  ('analytic' ``bound``, 'measured' ``factorised``); a relative slack of 1e-9 for round-off.

  'frozen_le_bound_all': the theorem, with constants computed apart from the sensitivity
  (fails when the sensitivity exceeds the bound at some position); 'frozen_le_tight_all'
  the same for the per-position variant; 'frozen_le_factorised_all': the sensitivity is
  within the product of the measured per-layer Jacobian norms (consistency of the path
  decomposition); 'bound_ge_factorised_all': each analytic constant is at least the
  measured Jacobian norm it bounds, so the analytic bound lies above the factorised one."""
  sz, sf = np.asarray(frozen_N, np.float64), np.asarray(full_N, np.float64)
  b, bt, bm = bound["bound"], bound["bound_tight"], factorised["bound"]
  ok = lambda x, y: bool(np.all(x <= y * (1 + 1e-9)))
  return {
      "frozen_le_bound_all": ok(sz, b), "frozen_le_tight_all": ok(sz, bt),
      "frozen_le_bound_fraction": float(np.mean(sz <= b * (1 + 1e-9))),
      "max_frozen_over_bound": float(np.max(sz / b)),
      "max_frozen_over_tight": float(np.max(sz / bt)),
      "full_le_bound_fraction": float(np.mean(sf <= b * (1 + 1e-9))),
      "max_full_over_bound": float(np.max(sf / b)),
      "C": bound["C"], "inv_beta1": bound["inv_beta1"],
      "sigma_over_beta2": bound["sigma_over_beta2"], "inv_beta3": bound["inv_beta3"],
      "frozen_le_factorised_all": ok(sz, bm),
      "max_frozen_over_factorised": float(np.max(sz / bm)),
      "max_frozen_over_factorised_tight": float(np.max(sz / factorised["bound_tight"])),
      "C_factorised": factorised["C"],
      "bound_ge_factorised_all": ok(bm, b) and ok(factorised["bound_tight"], bt),
      "min_bound_over_factorised": float(np.min(b / bm)),
  }


def sensitivity_vs_bound(cfg: DecoderConfig, policy: Policy, params, x_ND, *,
                         chunk: int = 8) -> dict:
  """Full and attention-frozen sensitivity next to the bound at every position, with the
  U-shape summary. Returns {'full', 'frozen' (``last_token_sensitivity`` dicts), 'bound'
  (``oversquashing_bound``, analytic constants: the theorem's check), 'factorised' (the same
  with measured Jacobian norms), 'bound_check' (:func:`bound_check`), 'ushape': {...}}."""
  full = last_token_sensitivity(cfg, policy, params, x_ND, chunk=chunk)
  frozen = last_token_sensitivity(cfg, policy, params, x_ND, chunk=chunk, frozen_attention=True)
  bnd = oversquashing_bound(cfg, policy, params, x_ND, constants="analytic")
  fac = oversquashing_bound(cfg, policy, params, x_ND, constants="measured")
  sf, b = full["spectral"], bnd["bound"]
  n = len(sf)
  mid = slice(n // 4, 3 * n // 4)
  ushape = {
      "first_token": float(sf[0]), "first_1/32_mean": float(sf[: max(1, n // 32)].mean()),
      "middle_half_median": float(np.median(sf[mid])), "second_to_last": float(sf[-2]),
      "last_token": float(sf[-1]), "first_over_middle": float(sf[0] / np.median(sf[mid])),
      "argmin_position": int(np.argmin(sf)),
      "bound_first_over_middle": float(b[0] / np.median(b[mid])),
  }
  return {"full": full, "frozen": frozen, "bound": bnd, "factorised": fac,
          "bound_check": bound_check(frozen["spectral"], sf, bnd, fac), "ushape": ushape}
