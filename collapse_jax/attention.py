"""Attention on the length-invariant schedule: one pure function, one fixed tile shape.

Vocabulary. A row is a query at stream index i (its place in the sequence, cache slots
first); a key is at index j in [0, M). R = ``Policy.row_tile`` and Bk = ``Policy.accum_block``.
  * query tile t: rows with index in [t R, (t + 1) R);  key block b: keys in [b Bk, (b + 1) Bk).
    Both are aligned at index 0, whatever the number of rows or keys, and padded with rows
    that see nothing and keys that nobody sees.
  * For each query tile, three passes over the key blocks in order (``lax.scan``):
      1. scores s = q.k * scale (one [R, Dh] x [Dh, Bk] dot per block), bias, mask; the
         row maximum (exact in any order);
      2. e = exp(s - max), masked entries 0; each block's sum in a fixed pairwise order
         (``precision.pairwise_sum``), the blocks' sums added in block order;
      3. p = e / sum rounded at ``probs``; heads += p . v (one [R, Bk] x [Bk, Dh] dot per
         block, accumulated in ``accum_dtype`` in block order), rounded at ``heads``.
    A block that no row of the tile may see is skipped (``lax.cond``): it would only add
    exact zeros. That is the causal pass's saving (about half the blocks) and a sliding
    window's.

Why it holds the bits. Every dot has the same shape for every tile and block, and a row sits
at the same place in it (index i: tile i // R, row i % R), so the backend computes its
elements in the same order whatever the sequence length (XLA:CPU's dot kernels treat the
last rows of a dot differently: measured). A key that a row cannot see has weight exactly 0,
and a block the row cannot see adds exactly 0 (or is skipped), so row i of a pass over N
tokens and the last row of a forward of exactly i + 1 tokens take the same values through
the same ops: the same bits, on any backend whose kernels are deterministic for a shape.
Within a block the dot's order is the backend's (it may differ between CPUs); the softmax
sum's order is this module's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from collapse_jax import positional
from collapse_jax.precision import Policy, pairwise_sum

QUERY_AXIS = "query_chunks"  # the mesh axis over which query tiles are spread
# Up to this many key blocks the passes are unrolled and compute every block (a block no row
# sees adds exact zeros, as a skipped one would): a short sequence compiles as straight-line
# code, without the loops and conditionals that only pay off for long ones. Same ops, same
# shapes, same order: the same bits either way (tests/test_model.py crosses the threshold).
UNROLL_BLOCKS = 2


def _over_blocks(body, carry, xs, n: int):
  """``lax.scan(body, carry, xs)`` over ``n`` blocks, unrolled in Python when n is at most
  :data:`UNROLL_BLOCKS` (``body(carry, x, skip)``: skip=True may skip a block no row sees)."""
  if n > UNROLL_BLOCKS:
    return jax.lax.scan(lambda c, x: body(c, x, True), carry, xs)
  ys = []
  for i in range(n):
    carry, y = body(carry, jax.tree_util.tree_map(lambda a: a[i], xs), False)
    ys.append(y)
  return carry, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *ys)


def _maybe(skip: bool, mask, live, dead):
  """``live()`` where some row sees the block, else ``dead()``; without ``skip``, live()."""
  return jax.lax.cond(jnp.any(mask), live, dead) if skip else live()


def _pad_axis(x, axis: int, before: int, after: int, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (before, after)
  return jnp.pad(x, pad, constant_values=value) if before or after else x


def tiled_attention(pol: Policy, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, *,
                    causal: bool, window: int | None, alibi_heads: int | None,
                    qk_scale: float, want_probs: bool = False, mesh=None):
  """Attention of N new rows (the last N of the M keys' indices) on the schedule above.

  Args:
    q_BNKGD: queries [B, N, KV, G, Dh] (stored dtype, after RoPE); rows have indices
      M - N .. M - 1.
    k_BMKD, v_BMKD: keys and values [B, M, KV, Dh] (cache slots first).
    k_pos_BM, k_valid_BM: key positions and which keys may be attended to [B, M].
    q_pos_BN: query positions [B, N] (windows and ALiBi use positions, causality indices).
    alibi_heads: H for an ALiBi bias (None: no bias). mesh: a 1-D mesh (axis QUERY_AXIS)
      over which the query tiles are spread (shard_map; keys and values replicated).
  Returns: heads [B, N, KV, G, Dh] (stored; NaN in rows that may see a non-finite value)
    and, with ``want_probs``, the attention weights [B, KV * G, N, M] (else None).
  """
  R, Bk = pol.row_tile, pol.accum_block
  B, N, KV, G, Dh = q_BNKGD.shape
  M = k_BMKD.shape[1]
  sd, cd = pol.softmax_dtype, pol.compute_dtype
  lowest = jnp.asarray(jnp.finfo(sd).min, sd)
  step = pol.sm_step

  # queries: tiles aligned at index 0; padding rows get index -1 (they see nothing)
  first = (M - N) % R
  nd = 1 if mesh is None else mesh.size
  T = -(-(first + N) // (R * nd)) * nd
  after = T * R - first - N
  q = _pad_axis(q_BNKGD, 1, first, after)
  idx = _pad_axis(jnp.arange(M - N, M), 0, first, after, -1)
  qpos = _pad_axis(q_pos_BN, 1, first, after)
  q_tiles = (jnp.moveaxis(q.reshape((B, T, R) + q.shape[2:]), 1, 0), idx.reshape(T, R),
             jnp.moveaxis(qpos.reshape(B, T, R), 1, 0))

  # keys: blocks aligned at index 0; a non-finite value is zeroed for the dot (0 * inf would
  # leak NaN into rows that cannot see it) and its rows are marked NaN afterwards
  nk = -(-M // Bk)
  kp = nk * Bk - M
  bad = ~jnp.all(jnp.isfinite(v_BMKD), axis=-1)  # [B, M, KV]
  v_safe = jnp.where(jnp.isfinite(v_BMKD), v_BMKD, jnp.zeros((), v_BMKD.dtype))
  blocks = lambda x, value=0: jnp.moveaxis(
      _pad_axis(x, 1, 0, kp, value).reshape((B, nk, Bk) + x.shape[2:]), 1, 0)
  k_blocks = (blocks(k_BMKD), blocks(v_safe), blocks(bad, False), blocks(k_valid_BM, False),
              blocks(k_pos_BM), jnp.arange(nk * Bk).reshape(nk, Bk))

  def tile(q_BRKGD, idx_R, qpos_BR, kb):
    def mask_of(valid_BK, kidx_K, kpos_BK):  # [B, R, Bk]
      m = valid_BK[:, None, :] & (idx_R >= 0)[None, :, None]
      if causal:
        m = m & (kidx_K[None, None, :] <= idx_R[None, :, None])
      if window is not None:
        m = m & (jnp.abs(qpos_BR[:, :, None] - kpos_BK[:, None, :]) < window)
      return m[:, None, None]  # [B, 1, 1, R, Bk]

    shape = (B, KV, G, R, Bk)

    def scores(carry, blk, skip):
      k_j, _, _, valid_j, kpos_j, kidx_j = blk
      mask = mask_of(valid_j, kidx_j, kpos_j)

      def live():
        s = pol.round(pol.dot("bnhgk,bmhk->bhgnm", q_BRKGD, k_j, scale=qk_scale), "scores")
        s = step(lambda x: x, s)
        if alibi_heads is not None:
          bias = positional.alibi_bias(qpos_BR, kpos_j, alibi_heads, causal, cd)
          s = step(jnp.add, s, bias.reshape(shape))
        return jnp.where(mask, s, lowest)

      s = _maybe(skip, mask, live, lambda: jnp.full(shape, lowest))
      return jnp.maximum(carry, jnp.max(s, axis=-1, keepdims=True)), (s, mask)

    row_max, (s_all, masks) = _over_blocks(scores, jnp.full(shape[:-1] + (1,), lowest), kb, nk)

    def exps(total, blk, skip):
      s, mask = blk

      def live():
        e = step(jnp.exp, step(jnp.subtract, s, row_max))
        e = jnp.where(mask, e, jnp.zeros((), sd))
        return total + pairwise_sum(e.astype(cd)), e

      return _maybe(skip, mask, live, lambda: (total, jnp.zeros(shape, sd)))

    # -0.0 + x == x for every x (+0.0 too): starting there, skipped blocks change nothing
    total, e_all = _over_blocks(exps, jnp.full(shape[:-1] + (1,), -0.0, cd), (s_all, masks), nk)
    total = total.astype(sd)  # the sum's one rounding to the softmax dtype
    total = jnp.where(total > 0, total, jnp.ones((), sd))

    def values(carry, blk, skip):
      acc, sees_bad = carry
      e, mask, (_, v_j, bad_j, *_) = blk

      def live():
        p = pol.round(step(jnp.divide, e, total).astype(cd), "probs")
        if pol.frozen_attention:
          p = jax.lax.stop_gradient(p)
        part = pol.dot_accum("bhgnm,bmhk->bnhgk", p, v_j)
        hit = jnp.any(mask[:, 0, 0, :, :, None] & bad_j[:, None, :, :], axis=2)  # [B, R, KV]
        return (acc + part, sees_bad | hit), p if want_probs else jnp.zeros((), p_dtype)

      return _maybe(skip, mask, live, lambda: (
          (acc, sees_bad), jnp.zeros(shape if want_probs else (), p_dtype)))

    p_dtype = jax.eval_shape(lambda x: pol.round(x, "probs"),
                             jax.ShapeDtypeStruct(shape, cd)).dtype
    init = (jnp.full((B, R, KV, G, Dh), -0.0, pol.accum_dtype), jnp.zeros((B, R, KV), bool))
    (acc, sees_bad), p_all = _over_blocks(values, init, (e_all, masks, kb), nk)
    heads = pol.round(acc.astype(cd), "heads")
    heads = jnp.where(sees_bad[..., None, None], jnp.asarray(jnp.nan, heads.dtype), heads)
    return (heads, p_all) if want_probs else (heads, None)

  run = lambda qt, kb: jax.lax.map(lambda a: tile(*a, kb), qt)
  if mesh is None and T == 1:  # one tile: the same program without a loop around it
    heads, probs = jax.tree_util.tree_map(
        lambda x: x[None], tile(*jax.tree_util.tree_map(lambda x: x[0], q_tiles), k_blocks))
  elif mesh is None:
    heads, probs = run(q_tiles, k_blocks)
  else:  # only the tiles are split; everything around them is pinned replicated
    P = jax.sharding.PartitionSpec
    whole = lambda x: jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(mesh, P()))
    run = jax.shard_map(run, mesh=mesh, in_specs=(P(QUERY_AXIS), P()),
                        out_specs=P(QUERY_AXIS), check_vma=False)
    q_tiles, k_blocks = jax.tree_util.tree_map(whole, (q_tiles, k_blocks))
    heads, probs = jax.tree_util.tree_map(whole, run(q_tiles, k_blocks))
  heads = jnp.moveaxis(heads, 0, 1).reshape((B, T * R, KV, G, Dh))[:, first:first + N]
  if want_probs:  # [T, nk, B, KV, G, R, Bk] -> [B, KV * G, N, M]
    probs = jnp.transpose(probs, (2, 3, 4, 0, 5, 1, 6)).reshape(B, KV * G, T * R, nk * Bk)
    probs = probs[:, :, first:first + N, :M]
  return heads, probs
