"""Positional encodings: RoPE, sinusoidal, ALiBi, learned absolute, none.

Every function takes integer ``positions`` (shape [B, N]) so that a KV cache, a padded
batch and a plain pass all use the same code. Frequencies/slopes are computed in float64
numpy at trace time and cast to the compute dtype; angles, sin/cos and the rotation are
computed in the policy's compute dtype (the caller rounds the result).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple = ()) -> np.ndarray:
  """[Dh/2] float64: theta^(-2i/Dh), changed by ``scaling`` (``DecoderConfig.rope_scaling``):
    ('linear', factor): every frequency / factor (positions interpolated);
    ('llama3', factor, low_freq_factor, high_freq_factor, original_max_len): Llama 3.1's
      frequency-dependent scaling. With wavelength w = 2 pi / f, lo = original_max_len /
      low_freq_factor and hi = original_max_len / high_freq_factor: w < hi keeps f, w > lo
      gives f / factor, and in between f is blended, s = (original_max_len / w -
      low_freq_factor) / (high_freq_factor - low_freq_factor), (1 - s) f / factor + s f;
    ('factors', f_0, .., f_(Dh/2-1)): frequency i divided by f_i (llama.cpp's ``rope_freqs``
      tensor: a Llama 3 GGUF stores 'llama3' as these, 1 / ((1 - s) / factor + s) blended)."""
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if not scaling:
    return inv
  kind, factor = scaling[0], float(scaling[1])
  if kind == "factors":
    return inv / np.asarray(scaling[1:], np.float64)
  if kind == "linear":
    return inv / factor
  low, high, orig = (float(v) for v in scaling[2:])
  wavelen = 2 * math.pi / inv
  scaled = np.where(wavelen > orig / low, inv / factor, inv)
  s = (orig / wavelen - low) / (high - low)
  medium = ~(wavelen < orig / high) & ~(wavelen > orig / low)
  return np.where(medium, (1 - s) * scaled / factor + s * scaled, scaled)


def apply_rope(x_BNHK, positions_BN, theta: float, layout: str = "half", scaling: tuple = (),
               angle_dtype=None):
  """Rotate q or k. x: [B, N, H, Dh] in compute dtype; returns the same shape/dtype.

  layout 'half' pairs dim i with i + Dh/2 (HF rotate_half); 'interleaved' pairs 2i with
  2i+1 (GGUF / original RoPE paper). ``scaling``: :func:`rope_inv_freq`'s. ``angle_dtype``:
  the angles and their cos/sin in this dtype, cast to x's after (``Policy.rope_angle_dtype``;
  None: x's dtype)."""
  dt = x_BNHK.dtype
  ad = dt if angle_dtype is None else angle_dtype
  dh = x_BNHK.shape[-1]
  inv = jnp.asarray(rope_inv_freq(dh, theta, scaling), ad)
  ang_BNF = positions_BN.astype(ad)[..., None] * inv  # [B, N, Dh/2]
  cos = jnp.cos(ang_BNF).astype(dt)[:, :, None, :]
  sin = jnp.sin(ang_BNF).astype(dt)[:, :, None, :]
  if layout == "half":
    x1, x2 = x_BNHK[..., : dh // 2], x_BNHK[..., dh // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  x1, x2 = x_BNHK[..., 0::2], x_BNHK[..., 1::2]
  out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.reshape(x_BNHK.shape)


def sinusoidal(positions_BN, d_model: int, dtype):
  """Vaswani et al. PE: [B, N, D], PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i),
  w_i = 10000^(-2i/D)."""
  w = jnp.asarray(1.0 / (10000.0 ** (np.arange(0, d_model, 2, dtype=np.float64) / d_model)), dtype)
  ang = positions_BN.astype(dtype)[..., None] * w
  return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(*positions_BN.shape, d_model)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """[H] float64 ALiBi slopes (Press et al.; non-powers of two interleave as in the paper)."""
  def pow2(n):
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]
  if math.log2(num_heads).is_integer():
    return np.asarray(pow2(num_heads), np.float64)
  closest = 2 ** math.floor(math.log2(num_heads))
  extra = pow2(2 * closest)[0::2][: num_heads - closest]
  return np.asarray(pow2(closest) + extra, np.float64)


def alibi_bias(q_pos_BN, k_pos_BM, num_heads: int, causal: bool, dtype):
  """[B, H, N, M] additive bias -slope_h * distance (|i-j| if bidirectional)."""
  dist = (q_pos_BN[:, :, None] - k_pos_BM[:, None, :]).astype(dtype)
  if not causal:
    dist = jnp.abs(dist)
  slopes = jnp.asarray(alibi_slopes(num_heads), dtype)
  return -slopes[None, :, None, None] * dist[:, None, :, :]
