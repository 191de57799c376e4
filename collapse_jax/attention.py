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
         (``blocked.pairwise_sum``), the blocks' sums added in block order;
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

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from collapse_jax import positional
from collapse_jax.blocked import pairwise_sum
from collapse_jax.precision import Policy

QUERY_AXIS = "query_chunks"  # the mesh axis over which query tiles are spread
VALUE_AT = ("probs", "qkv")  # the rounding points of the value dot's operands (Policy.dot)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How attention runs, never what it computes: the one object ``model.Decoder`` passes down.

  On the length-invariant schedule (``Policy.row_tile`` set) the tiles and key blocks are the
  policy's; only ``query_mesh`` and ``want_probs`` apply. Off it (``row_tile`` None):
    * ``query_chunk``: queries in chunks of this many rows (``lax.map``), so scores take
      [B, H, chunk, M] memory, not [B, H, N, M]; each row's softmax is still one reduction.
    * ``key_block`` (causal, chunked, no mesh): a chunk attends only to the first keys it can
      see, rounded up to a multiple of this; the keys left out have weight exactly 0, but the
      reductions have other lengths, so low bits may differ from the whole pass.
  Both:
    * ``query_mesh``: a 1-D ``jax.sharding.Mesh`` (axis :data:`QUERY_AXIS`) over which the
      chunks or tiles are spread (``shard_map``; keys and values replicated).
    * ``want_probs``: return the attention weights [B, H, N, M] (the tiled path computes
      them only when asked)."""
  query_chunk: int | None = None
  query_mesh: Any = None
  key_block: int | None = None
  want_probs: bool = False

  def check(self, n: int) -> None:
    """One-line errors for a forward of ``n`` new rows."""
    if self.query_chunk is not None:
      if self.query_chunk < 1:
        raise ValueError(f"query_chunk must be >= 1, got {self.query_chunk}")
      if self.want_probs and self.query_chunk < n:
        raise ValueError("'attn_weights' needs the whole [N, M] attention matrix: collect it "
                         "without query_chunk")
    if self.key_block is not None and self.key_block < 1:
      raise ValueError(f"key_block must be >= 1, got {self.key_block}")
    if self.query_mesh is not None and (self.query_chunk is None or
                                        self.query_mesh.axis_names != (QUERY_AXIS,)):
      raise ValueError(f"query_mesh spreads query chunks: it needs query_chunk and a 1-D mesh "
                       f"with axis {QUERY_AXIS!r}")


def attend(pol: Policy, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, *,
           causal: bool, window: int | None, alibi_heads: int | None, qk_scale: float,
           schedule: Schedule = Schedule(), softcap: float | None = None, q_start=None,
           qk_at: str = "rope"):
  """Attention of N new rows (the last N of the M keys' indices): heads [B, N, KV, G, Dh]
  (stored; NaN in rows that may see a non-finite value) and the weights [B, H, N, M] or None
  (``schedule.want_probs``). Arguments as :func:`tiled_attention`'s; ``schedule`` says how it
  runs. ``pol.row_tile`` set: :func:`tiled_attention`; else :func:`_untiled_attention`.
  ``softcap``: the scores become cap tanh(s / cap) (``Policy.softcap``, rounded at
  'attn_softcap') before bias, mask and softmax (Gemma 2). ``q_start``: the index of row 0
  (a traced integer: a KV cache written at a data-dependent slot, whose later slots the
  rows cannot see); None: M - N, the rows are the last N keys. ``qk_at``: the rounding
  point that last produced q and k (the score dot's operands, ``Policy.dot(at=)``); the
  value dot's are 'probs' and 'qkv'."""
  kw = dict(causal=causal, window=window, alibi_heads=alibi_heads, qk_scale=qk_scale,
            softcap=softcap, q_start=q_start, qk_at=qk_at)
  if q_start is not None and (schedule.query_chunk is not None or
                              schedule.query_mesh is not None):
    raise ValueError("a data-dependent q_start runs the whole rows at once: no query_chunk "
                     "or query_mesh")
  if pol.row_tile is not None:
    return tiled_attention(pol, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, **kw,
                           want_probs=schedule.want_probs, mesh=schedule.query_mesh)
  return _untiled_attention(pol, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, **kw,
                            schedule=schedule)
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
                    qk_scale: float, want_probs: bool = False, mesh=None,
                    softcap: float | None = None, q_start=None, qk_at: str = "rope",
                    _tiles: int | None = None):
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
  nd = 1 if mesh is None else mesh.size
  if q_start is None:
    first = (M - N) % R
    T = -(-(first + N) // (R * nd)) * nd
    after = T * R - first - N
    q = _pad_axis(q_BNKGD, 1, first, after)
    idx = _pad_axis(jnp.arange(M - N, M), 0, first, after, -1)
    qpos = _pad_axis(q_pos_BN, 1, first, after)
  else:  # row 0 at a traced index: the same tiles, placed at offset q_start % R
    q_start = jnp.asarray(q_start, jnp.int32)
    first, T = q_start % R, _tiles or -(-(R - 1 + N) // R)
    if _tiles is None and T == 2:  # the rows fit one tile unless they straddle two
      again = lambda t: lambda: tiled_attention(
          pol, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, causal=causal,
          window=window, alibi_heads=alibi_heads, qk_scale=qk_scale, want_probs=want_probs,
          softcap=softcap, q_start=q_start, qk_at=qk_at, _tiles=t)
      return jax.lax.cond(first + N <= R, again(1), again(2))
    place = lambda x: jax.lax.dynamic_update_slice_in_dim(
        jnp.zeros((B, T * R) + x.shape[2:], x.dtype), x, first, axis=1)
    q, qpos = place(q_BNKGD), place(q_pos_BN)
    idx = q_start - first + jnp.arange(T * R)
    idx = jnp.where((idx >= q_start) & (idx < q_start + N), idx, -1)
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
        s = pol.round(pol.dot("bnhgk,bmhk->bhgnm", q_BRKGD, k_j, scale=qk_scale,
                              at=(qk_at,)), "scores")
        s = step(lambda x: x, pol.softcap(s, softcap, "attn_softcap"))
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
        part = pol.dot_accum("bhgnm,bmhk->bnhgk", p, v_j, at=VALUE_AT)
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
  # static: a plain slice (the program as before); traced: a dynamic slice
  rows = ((lambda x, axis: jax.lax.slice_in_dim(x, first, first + N, axis=axis))
          if isinstance(first, int) else
          (lambda x, axis: jax.lax.dynamic_slice_in_dim(x, first, N, axis=axis)))
  heads = rows(jnp.moveaxis(heads, 0, 1).reshape((B, T * R, KV, G, Dh)), 1)
  if want_probs:  # [T, nk, B, KV, G, R, Bk] -> [B, KV * G, N, M]
    probs = jnp.transpose(probs, (2, 3, 4, 0, 5, 1, 6)).reshape(B, KV * G, T * R, nk * Bk)
    probs = rows(probs, 2)[..., :M]
  return heads, probs


def _untiled_attention(pol: Policy, q_BNKGD, k_BMKD, v_BMKD, k_pos_BM, k_valid_BM, q_pos_BN, *,
                       causal: bool, window: int | None, alibi_heads: int | None,
                       qk_scale: float, schedule: Schedule, softcap: float | None = None,
                       q_start=None, qk_at: str = "rope"):
  """The schedule without row tiles (``Policy.row_tile`` None): the whole pass, or query
  chunks, each row's softmax over all its keys in one reduction (the backend's order)."""
  B, N, KV, G, Dh = q_BNKGD.shape
  M = k_BMKD.shape[1]
  # A non-finite value (overflow) in a key the row cannot see must not leak into it via
  # 0 * inf = NaN: zero bad values for the dot, then mark NaN only the rows that attend
  # to a bad key. Identity (same bits) when every value is finite.
  bad_BMK = ~jnp.all(jnp.isfinite(v_BMKD), axis=-1)  # [B, M, KV]
  v_safe = jnp.where(jnp.isfinite(v_BMKD), v_BMKD, jnp.zeros((), v_BMKD.dtype))
  # causal masking follows sequence order (cache slots first), not positions: a copied
  # token may repeat a position, yet must not see the tokens after it
  q_idx_N = jnp.arange(M - N, M) if q_start is None else q_start + jnp.arange(N)

  def mask_bias(q_idx_C, q_pos_BC, k_valid_BM, k_pos_BM):
    """Which keys rows C may see [B, C, M], and the ALiBi bias [B, H, C, M] or None."""
    mask_BCM = k_valid_BM[:, None, :]
    if causal:
      mask_BCM = mask_BCM & (jnp.arange(k_pos_BM.shape[1])[None, None, :] <= q_idx_C[None, :, None])
    if window is not None:
      mask_BCM = mask_BCM & (jnp.abs(q_pos_BC[:, :, None] - k_pos_BM[:, None, :]) < window)
    bias = None if alibi_heads is None else positional.alibi_bias(
        q_pos_BC, k_pos_BM, alibi_heads, causal, pol.compute_dtype)
    return mask_BCM, bias

  def sees_bad(mask_BCM, bad_BMK):  # [B, C, KV, 1, 1]: rows that attend to a bad value
    return jnp.any(mask_BCM[:, :, :, None] & bad_BMK[:, None, :, :], axis=2)[..., None, None]

  def rows(q_BCKGD, q_idx_C, q_pos_BC, k, v_safe, bad_BMK, k_valid_BM, k_pos_BM):
    """Rows C of the attention: heads [B, C, KV, G, Dh], probs [B, KV, G, C, M]."""
    C = q_idx_C.shape[0]
    scores = pol.round(pol.dot("bnhgk,bmhk->bhgnm", q_BCKGD, k, scale=qk_scale, at=(qk_at,)),
                       "scores")
    scores = pol.softcap(scores, softcap, "attn_softcap")
    mask_BCM, bias = mask_bias(q_idx_C, q_pos_BC, k_valid_BM, k_pos_BM)
    if bias is not None:
      bias = bias.reshape(B, KV, G, C, -1)
    probs = pol.softmax(scores, mask_BCM[:, None, None], bias)
    heads = pol.round(pol.dot("bhgnm,bmhk->bnhgk", probs, v_safe, at=VALUE_AT), "heads")
    nan = jnp.asarray(jnp.nan, heads.dtype)
    return jnp.where(sees_bad(mask_BCM, bad_BMK), nan, heads), probs

  def rows_by_head(q_BKCGD, q_idx_C, q_pos_BC, k_BKSD, v_BKSD, bad_BSK, k_valid_BS, k_pos_BS):
    """:func:`rows` (heads only) with queries [B, KV, C, G, Dh] and keys and values
    [B, KV, S, Dh] head-major: each dot is a plain batched matrix product over KV, a KV
    head's C * G rows one operand. Returns heads [B, KV, C, G, Dh]."""
    C, S = q_idx_C.shape[0], k_BKSD.shape[2]
    s = pol.dot("bhrd,bhmd->bhrm", q_BKCGD.reshape(B, KV, C * G, Dh), k_BKSD, scale=qk_scale,
                at=(qk_at,))
    s = pol.softcap(pol.round(s, "scores"), softcap, "attn_softcap").reshape(B, KV, C, G, S)
    mask_BCS, bias = mask_bias(q_idx_C, q_pos_BC, k_valid_BS, k_pos_BS)
    if bias is not None:
      bias = jnp.swapaxes(bias.reshape(B, KV, G, C, S), 2, 3)
    probs = pol.softmax(s, mask_BCS[:, None, :, None], bias).reshape(B, KV, C * G, S)
    heads = pol.round(pol.dot("bhrm,bhmd->bhrd", probs, v_BKSD, at=VALUE_AT), "heads")
    heads = jnp.where(jnp.moveaxis(sees_bad(mask_BCS, bad_BSK), 2, 1),
                      jnp.asarray(jnp.nan, heads.dtype), heads.reshape(B, KV, C, G, Dh))
    return heads

  keys = (k_BMKD, v_safe, bad_BMK, k_valid_BM, k_pos_BM)
  C, mesh = schedule.query_chunk, schedule.query_mesh
  if C is None or C >= N:
    heads, probs = rows(q_BNKGD, q_idx_N, q_pos_BN, *keys)
    return heads, probs.reshape(B, KV * G, N, M) if schedule.want_probs else None
  # pad the queries to whole chunks (padded rows are computed, then dropped)
  nd = 1 if mesh is None else mesh.size
  nc = -(-N // (C * nd)) * nd  # whole chunks, a share of equal size per device
  pad = nc * C - N
  qp = jnp.pad(q_BNKGD, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
  ip = jnp.pad(q_idx_N, (0, pad), constant_values=M - 1)
  pp = jnp.pad(q_pos_BN, ((0, 0), (0, pad)), mode="edge")
  KB = schedule.key_block
  if mesh is None and KB is not None and causal:
    # Key blocks, head-major: chunk i's rows see keys [0, seen_i) (their last index + 1 up
    # to a multiple of KB; the rest have weight exactly 0), one lax.map per seen_i. The
    # values of `rows`, other dot shapes: low bits may differ (tests/test_model.py).
    q_BKNGD = jnp.moveaxis(qp, 2, 1)
    k_BKMD, v_BKMD = jnp.moveaxis(k_BMKD, 2, 1), jnp.moveaxis(v_safe, 2, 1)
    parts, i = [], 0
    while i < nc:
      seen = min(M, -(-(M - N + (i + 1) * C) // KB) * KB)
      j = max(i + 1, min(nc, (seen - (M - N)) // C))  # chunks i..j-1 see at most `seen`
      chunk = lambda t, seen=seen: rows_by_head(
          jax.lax.dynamic_slice_in_dim(q_BKNGD, t * C, C, axis=2),
          jax.lax.dynamic_slice_in_dim(ip, t * C, C), jax.lax.dynamic_slice_in_dim(pp, t * C, C, 1),
          k_BKMD[:, :, :seen], v_BKMD[:, :, :seen], bad_BMK[:, :seen], k_valid_BM[:, :seen],
          k_pos_BM[:, :seen])
      parts.append(jax.lax.map(chunk, jnp.arange(i, j)))  # [j - i, B, KV, C, G, Dh]
      i = j
    heads = jnp.transpose(jnp.concatenate(parts, 0), (1, 0, 3, 2, 4, 5))
    return heads.reshape(B, nc * C, KV, G, Dh)[:, :N], None
  chunks = (jnp.moveaxis(qp.reshape(B, nc, C, KV, G, Dh), 1, 0), ip.reshape(nc, C),
            jnp.moveaxis(pp.reshape(B, nc, C), 1, 0))
  run = lambda chunks, *keys: jax.lax.map(lambda a: rows(*a, *keys)[0], chunks)
  if mesh is None:
    heads = run(chunks, *keys)  # [nc, B, C, KV, G, Dh]
  else:
    # Only the chunks are split. Everything around them is pinned replicated: left free,
    # XLA would propagate the split into the q projection and the output projection and
    # run them on half the rows, a dot of another shape whose f32 bits differ (measured).
    P = jax.sharding.PartitionSpec
    whole = lambda x: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, P()))
    run = jax.shard_map(run, mesh=mesh, in_specs=(P(QUERY_AXIS),) + (P(),) * 5,
                        out_specs=P(QUERY_AXIS), check_vma=False)
    chunks, keys = jax.tree_util.tree_map(whole, (chunks, keys))
    heads = whole(run(chunks, *keys))
  return jnp.moveaxis(heads, 0, 1).reshape(B, nc * C, KV, G, Dh)[:, :N], None
