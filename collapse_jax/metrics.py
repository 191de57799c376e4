"""Collapse metrics: pure functions, safe under jit, vmap and grad (where differentiable).

Conventions
  * Vectors live on the last axis: ``x[..., D]``; reducing metrics return ``[...]``.
  * ``bitwise_equal`` compares bit patterns of same-dtype arrays: ``-0.0`` and ``+0.0``
    are DIFFERENT (distinct bit patterns) unless ``signed_zeros_equal=True``; a non-finite
    value (NaN or +-inf) is never equal to anything, itself included: it means the
    computation overflowed or failed, not that two inputs collapsed.
  * ``ulp_distance`` counts representable values between x and y in their own dtype
    (bf16, f16, fp8 e4m3fn/e5m2, f32, f64): ``+0.0``/``-0.0`` are 0 apart, and a NaN in
    either gives ``ulp_max(dtype)`` (the unsigned max of the dtype's width).
  * Distances (``linf``, ``l1``) are computed in float32 for <= 32-bit inputs (exact
    differences for bf16/f16/fp8 values of similar magnitude; sums rounded in f32) and
    in float64 for float64 inputs. NaN propagates into a distance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _bits(x):
  x = jnp.asarray(x)
  return jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize])


def _check_same_dtype(x, y):
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.dtype != y.dtype:
    raise TypeError(f"compare arrays of one dtype, got {x.dtype} and {y.dtype}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"expected floating arrays, got {x.dtype}")
  return x, y


def bitwise_equal_elementwise(x, y, *, signed_zeros_equal: bool = False):
  """Elementwise bit-pattern equality (NaN/inf never equal). Shapes broadcast; bool."""
  x, y = _check_same_dtype(x, y)
  eq = _bits(x) == _bits(y)
  if signed_zeros_equal:
    eq = eq | ((x == 0) & (y == 0))
  return eq & jnp.isfinite(x) & jnp.isfinite(y)


def bitwise_equal(x, y, axis=-1, *, signed_zeros_equal: bool = False):
  """True where x and y agree bit for bit along ``axis`` (None = whole array). [...] bool."""
  return jnp.all(bitwise_equal_elementwise(x, y, signed_zeros_equal=signed_zeros_equal),
                 axis=axis)


def ulp_max(dtype) -> int:
  """The sentinel ulp_distance returns for NaN: the unsigned max of the dtype's width."""
  return int(jnp.iinfo(_UINT[jnp.dtype(dtype).itemsize]).max)


def ulp_distance(x, y):
  """Number of representable steps between x and y in their (shared) dtype, elementwise.

  Unsigned result of the dtype's width (uint8 for fp8, uint16 for bf16/f16, uint32 for
  f32, uint64 for f64), so no x64 is needed below f64 and nothing overflows: the largest
  finite distance (-max to +max) is below the sentinel. +0.0 and -0.0 are 0 apart;
  infinities are the neighbours of the largest finite values; NaN in either input gives
  ``ulp_max(dtype)``."""
  x, y = _check_same_dtype(x, y)
  ux, uy = _bits(x), _bits(y)
  sign = jnp.asarray(1 << (8 * x.dtype.itemsize - 1), ux.dtype)
  mx, my = ux & ~sign, uy & ~sign
  same_sign = (ux & sign) == (uy & sign)
  d = jnp.where(same_sign, jnp.maximum(mx, my) - jnp.minimum(mx, my), mx + my)
  nan = jnp.isnan(x) | jnp.isnan(y)
  return jnp.where(nan, jnp.asarray(ulp_max(x.dtype), d.dtype), d)


def max_ulp_distance(x, y, axis=-1):
  """Max over ``axis`` of ulp_distance."""
  return jnp.max(ulp_distance(x, y), axis=axis)


def half_ulp(magnitude, dtype):
  """Half the spacing of ``dtype``'s values at |magnitude| (elementwise, in f64 if x64 is on
  else f32): eps * 2^floor(log2|m|) / 2, and at least half the smallest subnormal. Two exact
  values closer than this CAN round to the same stored value; the level below which a
  distance can become bitwise zero."""
  import ml_dtypes
  info = ml_dtypes.finfo(jnp.dtype(dtype))
  eps, tiny = float(info.eps), float(info.smallest_subnormal)
  m = jnp.abs(jnp.asarray(magnitude, jnp.result_type(float)))
  ulp = eps * jnp.exp2(jnp.floor(jnp.log2(jnp.maximum(m, tiny))))
  return jnp.maximum(ulp, tiny) / 2


def _dist_dtype(x):
  return jnp.float64 if jnp.asarray(x).dtype == jnp.float64 else jnp.float32


def linf_distance(x, y, axis=-1):
  """max |x - y| over ``axis`` (in f32, or f64 for f64 inputs). [...]"""
  dt = _dist_dtype(x)
  return jnp.max(jnp.abs(jnp.asarray(x).astype(dt) - jnp.asarray(y).astype(dt)), axis=axis)


def absmax(x, axis=-1):
  """max |x| over ``axis`` (in f32, or f64 for f64 inputs): the magnitude that sets a
  vector's ulp in its dtype. [...]"""
  return jnp.max(jnp.abs(jnp.asarray(x).astype(_dist_dtype(x))), axis=axis)


def l1_distance(x, y, axis=-1):
  """sum |x - y| over ``axis`` (in f32, or f64 for f64 inputs). [...]"""
  dt = _dist_dtype(x)
  return jnp.sum(jnp.abs(jnp.asarray(x).astype(dt) - jnp.asarray(y).astype(dt)), axis=axis)


def total_variation(p, q, axis=-1):
  """The paper's total variation delta(p, q) = sum_x |p(x) - q(x)| (NO factor 1/2)."""
  return l1_distance(p, q, axis=axis)


def nonfinite_count(x, axis=None):
  """Number of NaN/inf entries (over ``axis``; None = all)."""
  return jnp.sum(~jnp.isfinite(jnp.asarray(x)), axis=axis)


def octave_lo(n: int) -> int:
  """The start 2^k of the octave [2^k, 2^(k+1)) that holds n >= 1 (every octave grouping:
  ``sweep.first_equal_octave``, ``harness.summarize_octaves``, ``attribution``,
  ``diagnosis``)."""
  return 1 << (int(n).bit_length() - 1)


def _onset_args(equal_N, lengths_N):
  """Shapes are static under jit, so a mismatch raises here instead of indexing out of
  range (jnp clamps out-of-range indices: 6 flags and 3 lengths would report 30)."""
  equal_N = jnp.asarray(equal_N, bool)
  lengths_N = jnp.asarray(lengths_N)
  if lengths_N.ndim != 1 or equal_N.ndim < 1 or equal_N.shape[-1] != lengths_N.shape[0]:
    raise ValueError(f"onset: equal_N {tuple(equal_N.shape)} must end in the length axis of "
                     f"lengths_N {tuple(lengths_N.shape)} (one flag per swept length)")
  return equal_N, lengths_N


def collapse_onset(equal_N, lengths_N, *, none=-1):
  """First swept length n at which n and n+1 are bitwise equal.

  Args: equal_N bool [..., S] (equality per swept length, in sweep order); lengths_N int
  [S] (ascending). Returns int [...]: the length, or ``none`` if never equal."""
  equal_N, lengths_N = _onset_args(equal_N, lengths_N)
  idx = jnp.argmax(equal_N, axis=-1)
  return jnp.where(jnp.any(equal_N, axis=-1), lengths_N[idx], jnp.asarray(none, lengths_N.dtype))


def sustained_onset(equal_N, lengths_N, *, none=-1):
  """First swept length from which EVERY later swept length is equal too.
  Same arguments/returns as ``collapse_onset``; ``none`` if the last length is unequal."""
  equal_N, lengths_N = _onset_args(equal_N, lengths_N)
  suffix_all = jnp.flip(jnp.cumprod(jnp.flip(equal_N, -1).astype(jnp.int32), axis=-1), -1) > 0
  idx = jnp.argmax(suffix_all, axis=-1)
  return jnp.where(jnp.any(suffix_all, axis=-1), lengths_N[idx], jnp.asarray(none, lengths_N.dtype))


def softmax_last_weight(scores, axis=-1, where=None):
  """softmax(scores)[last] along ``axis``, computed stably in f32 (f64 for f64 input):
  exp(s_last - max) / sum exp(s - max). ``where``: optional bool mask of valid entries
  (the last valid entry is then the one at the largest valid index)."""
  s = jnp.moveaxis(jnp.asarray(scores), axis, -1)
  s = s.astype(_dist_dtype(s))
  if where is None:
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    return e[..., -1] / jnp.sum(e, axis=-1)
  w = jnp.moveaxis(jnp.asarray(where, bool), axis, -1)
  w = jnp.broadcast_to(w, s.shape)
  lowest = jnp.finfo(s.dtype).min
  m = jnp.max(jnp.where(w, s, lowest), axis=-1, keepdims=True)
  e = jnp.where(w, jnp.exp(jnp.where(w, s, m) - m), 0)
  last = s.shape[-1] - 1 - jnp.argmax(jnp.flip(w, -1), axis=-1)
  e_last = jnp.take_along_axis(e, last[..., None], axis=-1)[..., 0]
  return e_last / jnp.sum(e, axis=-1)


def summarize_pair(x, y, axis=-1) -> dict:
  """All per-vector metrics for a pair of same-dtype arrays [..., D] -> dict of [...]."""
  return {
      "linf": linf_distance(x, y, axis),
      "l1": l1_distance(x, y, axis),
      "max_ulp": max_ulp_distance(x, y, axis),
      "bitwise_equal": bitwise_equal(x, y, axis),
      "nonfinite": nonfinite_count(x, axis) + nonfinite_count(y, axis),
  }
