"""RoPE's relative-position invariance under finite precision: AnchorAttention's check
(Wang et al. 2024, "When Precision Meets Position", arXiv 2411.13476; issue 26).

Words (used here and in ``experiments.rope_shift``):

  shift       Δ: every position id p of a sequence becomes p + Δ; the tokens stay.
  logits      s_lh[i, j] = q_i . k_j * scale of layer l, query head h, as the policy stores
              them (rounded at 'scores'), recomputed with the policy's dot from the
              forward's own stored queries and keys (``collect=('q', 'kv')``), before any
              softcap, bias or mask; for the pairs a layer sees: j <= i and, in a windowed
              layer, i - j < window.
  D           D(X, Δ1, Δ2) = sum over layers and heads of the mean over the seen pairs of
              |s(X, Δ1) - s(X, Δ2)|. Exact arithmetic gives 0: a RoPE logit depends on
              i - j only. Averaged over sequences by the caller.
  first share the part of sum |s(X, Δ1) - s(X, Δ2)| (all layers, heads, pairs) that comes
              from the first token's column j = 0.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import model as model_lib
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy


@functools.lru_cache(maxsize=16)
def _forward(cfg: DecoderConfig, pol: Policy):
  return jax.jit(lambda params, tokens, pos: model_lib.forward(
      cfg, pol, params, tokens, positions=pos, collect=("q", "kv")))


@functools.lru_cache(maxsize=16)
def _layer_sums(cfg: DecoderConfig, pol: Policy, window: int | None):
  """(sum over seen pairs of |Δs| [B], the same for column 0 [B], seen pairs) of one layer's
  two runs' queries [B, N, H, Dh] and keys [B, N, KV, Dh]."""
  def logits(q, k):
    B, N, H, Dh = q.shape
    KV = k.shape[2]
    s = pol.dot("bnhgk,bmhk->bhgnm", q.reshape(B, N, KV, H // KV, Dh), k, scale=cfg.qk_scale,
                at=("rope",))
    return pol.round(s, "scores").astype(jnp.float64)

  @jax.jit
  def sums(q1, k1, q2, k2):
    N = q1.shape[1]
    i, j = jnp.arange(N)[:, None], jnp.arange(N)[None, :]
    seen = j <= i
    if window is not None:
      seen = seen & (i - j < window)
    d = jnp.where(seen, jnp.abs(logits(q1, k1) - logits(q2, k2)), 0.0)  # [B, KV, G, N, N]
    return d.sum((1, 2, 3, 4)), d[..., 0].sum((1, 2, 3)), seen.sum()
  return sums


def shift_distance(cfg: DecoderConfig, pol: Policy, params, tokens_BN, shift1: int,
                   shift2: int) -> dict:
  """D and the first share for each sequence of ``tokens_BN`` (int [B, N]) between position
  shifts ``shift1`` and ``shift2`` under ``pol`` (``params`` cast by it; needs x64 for the
  float64 sums). Returns float64 arrays [B]: 'D', 'first_share', and 'per_layer' [L, B] (each
  layer's sum over heads of its mean |Δs|)."""
  if cfg.pe != "rope":
    raise ValueError(f"the shift check needs a RoPE model, not pe={cfg.pe!r}")
  B, N = np.shape(tokens_BN)
  pos = lambda d: jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32) + d, (B, N))
  fwd = _forward(cfg, pol)
  a, b = fwd(params, tokens_BN, pos(shift1)), fwd(params, tokens_BN, pos(shift2))
  per_layer, total, first = [], np.zeros(B), np.zeros(B)
  for l in range(cfg.num_layers):
    s, s0, pairs = _layer_sums(cfg, pol, cfg.window(l))(a["q"][l], a["k"][l], b["q"][l],
                                                         b["k"][l])
    s, s0 = np.asarray(s, np.float64), np.asarray(s0, np.float64)
    per_layer.append(s / float(pairs))
    total, first = total + s, first + s0
  per_layer = np.stack(per_layer)
  share = np.divide(first, total, out=np.full(B, np.nan), where=total > 0)
  return {"D": per_layer.sum(0), "first_share": share, "per_layer": per_layer}


def cell(cfg: DecoderConfig, params32, pol: Policy, n: int, shifts, samples: int, seed: int,
         first_token: int | None = None) -> dict:
  """One (policy, N) cell of ``experiments.rope_shift``: ``samples`` random token sequences
  of ``n`` tokens (seeded by (seed, n); ``first_token`` first, if given) and
  :func:`shift_distance` between shift 0 and each of ``shifts``, under ``pol`` (``params32``
  float32, cast here). Returns {'policy', 'N', 'rows': [{'shift', 'D' [samples],
  'first_share' [samples], 'per_layer' [L] (mean over samples)}], 'seconds'}."""
  t = time.perf_counter()
  toks = np.random.default_rng([seed, n]).integers(0, cfg.vocab_size, (samples, n))
  toks = toks.astype(np.int32)
  if first_token is not None:
    toks[:, 0] = first_token
  params = pol.cast_params(params32)
  rows = []
  for d in shifts:
    r = shift_distance(cfg, pol, params, toks, 0, d)
    rows.append({"shift": d, "D": r["D"].tolist(), "first_share": r["first_share"].tolist(),
                 "per_layer": r["per_layer"].mean(1).tolist()})
  return {"policy": pol.name, "N": n, "rows": rows, "seconds": time.perf_counter() - t}
