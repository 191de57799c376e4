"""Contractions and sums in an order this code fixes, not the backend's.

* :func:`blocked_einsum`: a long contraction cut into consecutive blocks of at most
  ``block`` terms, one batched dot, the blocks' partial sums added in block order
  (``Policy.dot`` calls it with ``Policy.accum_block``).
* :class:`Blocked`: a weight already split for one blocked einsum (``Policy.preblock``).
* :func:`pairwise_sum`: a sum over the last axis in a fixed pairwise order (the softmax
  denominator in ``attention``).

Only the order inside one block is the backend's; everything around it is decided here, so
these bits do not depend on the CPU's blocking (BUILD_NOTES, "Portability").
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Blocked:
  """The second operand of ``blocked_einsum(spec, ., b)`` already split (``Policy.preblock``):
  ``x`` is b with its block axis padded and cut into [nb, kb] (or b itself where the
  contraction is not blocked), in the dot's operand dtype, its axes in the order of
  ``layout`` (the letters of the blocked einsum's second operand; None: b's own order).
  ``spec`` and ``block`` are the einsum and block size it was split for; any other use is
  an error."""
  x: Any
  spec: str = dataclasses.field(metadata=dict(static=True))
  block: int | None = dataclasses.field(metadata=dict(static=True))
  layout: str | None = dataclasses.field(default=None, metadata=dict(static=True))


def _plan(spec: str, shape, operand: int, block: int | None):
  """(c, kb, nb, z): the blocked contraction's axis letter, block length, number of blocks
  and block letter for ``spec``'s operand ``operand`` (0 or 1) of this shape; None where the
  contraction is one einsum (``block`` None or at most ``block`` terms)."""
  ins, out_spec = spec.split("->")
  sa, sb = ins.split(",")
  s_x = (sa, sb)[operand]
  con = [ch for ch in sa if ch in sb and ch not in out_spec]
  sizes = {ch: shape[s_x.index(ch)] for ch in con}
  total = 1
  for v in sizes.values():
    total *= v
  if block is None or total <= block:
    return None
  c = max(con, key=lambda ch: sizes[ch])
  kb = max(1, int(block) // (total // sizes[c]))
  nb = -(-sizes[c] // kb)
  z = next(ch for ch in "ZYXWVUTSRQPONMLKJIHGFEDCBA" if ch not in set(spec))  # block letter
  return c, kb, nb, z


def rhs_layout(spec: str, shape, block: int | None):
  """(letters of the (split) second operand, the order a batched dot reads them in): the
  batch letters (the block letter first, then the others in the output's order), the
  contracted letters in the first operand's order (the order ``jnp.einsum`` pairs them in),
  then the free letters in their own order."""
  (sa, sb), out = spec.split("->")[0].split(","), spec.split("->")[1]
  plan = _plan(spec, shape, 1, block)
  z = ""
  if plan is not None:
    c, _, _, z = plan
    sa, sb = sa.replace(c, z + c), sb.replace(c, z + c)
  batch = z + "".join(ch for ch in out if ch in sa and ch in sb)
  con = "".join(ch for ch in sa if ch in sb and ch not in out and ch != z)
  return sb, batch + con + "".join(ch for ch in sb if ch in out and ch not in sa)


def split_operand(spec: str, x, operand: int, block: int | None):
  """Operand ``operand`` of ``spec`` with the block axis c zero-padded to nb * kb and
  reshaped to [.., nb, kb, ..] (c's place); ``x`` itself where nothing is blocked."""
  plan = _plan(spec, x.shape, operand, block)
  if plan is None:
    return x
  c, kb, nb, _ = plan
  ax = spec.split("->")[0].split(",")[operand].index(c)
  pad = [(0, 0)] * x.ndim
  pad[ax] = (0, nb * kb - x.shape[ax])
  x = jnp.pad(x, pad) if nb * kb != x.shape[ax] else x
  return x.reshape(x.shape[:ax] + (nb, kb) + x.shape[ax + 1:])


def blocked_einsum(spec: str, a, b, accum_dtype, precision, block: int | None):
  """``einsum(spec, a, b)`` accumulated in ``accum_dtype``, with an explicit summation order
  for long contractions.

  With K the number of contracted terms (product of the contracted axes' sizes) and
  ``block`` not None and K > block: the longest contracted axis c is cut into nb
  consecutive blocks of kb = max(1, block // (K / |c|)) indices (zero-padded to nb * kb;
  a zero term adds exactly 0); each block is one dot of at most ``block`` terms, and the
  partial sums are added in block order: acc = dot_0; acc = acc + dot_i (each add rounded
  to ``accum_dtype``). Only the order inside a block is the backend's. Otherwise it is one
  einsum.

  Shapes are those of ``jnp.einsum``; ``b`` may be a :class:`Blocked` (already split for
  this spec and block). The blocks are the batch axis of ONE batched dot (one op to compile
  however many blocks), so the partial sums take nb times the output's memory before they
  are added."""
  sb_split = None
  if isinstance(b, Blocked):
    b, sb_split = b.x, b.layout
  plan = _plan(spec, a.shape, 0, block)
  if plan is None:
    if sb_split is not None:
      spec = f"{spec.split(',')[0]},{sb_split}->{spec.split('->')[1]}"
    return jnp.einsum(spec, a, b, preferred_element_type=accum_dtype, precision=precision)
  c, _, nb, z = plan
  ins, out_spec = spec.split("->")
  sa, sb = ins.split(",")
  if b.ndim == len(sb):  # not pre-split
    b = split_operand(spec, b, 1, block)
  sb_split = sb_split or sb.replace(c, z + c)
  parts = jnp.einsum(f"{sa.replace(c, z + c)},{sb_split}->{z}{out_spec}",
                     split_operand(spec, a, 0, block), b, preferred_element_type=accum_dtype,
                     precision=precision)
  acc = parts[0]
  for i in range(1, nb):
    acc = acc + parts[i]
  return acc


def pairwise_sum(x):
  """Sum over the last axis in an order this code fixes, not the backend: zero-padded to a
  power of two, then halves added elementwise (x[:h] + x[h:]) until one term is left.
  Every add is one IEEE add of the input's dtype (a zero pad adds exactly 0), so the bits
  are the same on every CPU and for any number of trailing zeros. Keeps the axis (size 1)."""
  n = x.shape[-1]
  p = 1 << max(0, (n - 1).bit_length())
  if p != n:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, p - n)])
  while x.shape[-1] > 1:
    h = x.shape[-1] // 2
    x = x[..., :h] + x[..., h:]
  return x
