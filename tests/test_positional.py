"""Positional encodings (collapse_jax/positional.py) against float64 numpy references:
RoPE in both layouts, the sinusoidal table, ALiBi's slopes (the paper's values) and bias."""
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import positional

B, N, H, DH = 2, 7, 3, 8


def _rope64(x, pos, theta, layout):
  """float64: pair (i, i + Dh/2) ('half') or (2i, 2i+1) ('interleaved'), each pair rotated
  by pos * theta^(-2i/Dh), as a complex multiplication."""
  x = x.astype(np.float64)
  if layout == "half":
    re, im = x[..., : DH // 2], x[..., DH // 2:]
  else:
    re, im = x[..., 0::2], x[..., 1::2]
  inv = theta ** (-np.arange(0, DH, 2) / DH)
  z = (re + 1j * im) * np.exp(1j * pos[:, :, None, None] * inv)
  if layout == "half":
    return np.concatenate([z.real, z.imag], -1)
  return np.stack([z.real, z.imag], -1).reshape(x.shape)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_is_the_rotation_of_each_pair(layout):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((B, N, H, DH)).astype(np.float32)
  pos = np.asarray([[0, 1, 2, 3, 10, 40, 63], [5, 5, 6, 7, 8, 9, 100]], np.int32)
  got = np.asarray(positional.apply_rope(jnp.asarray(x), jnp.asarray(pos), 10000.0, layout))
  want = _rope64(x, pos, 10000.0, layout)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5)
  np.testing.assert_array_equal(got[:, :1][pos[:, :1] == 0], x[:, :1][pos[:, :1] == 0])
  # q(p) . k(p') depends on p - p' only (checked in float64 on the reference)
  q, k = want[0, 1, 0], want[0, 2, 0]  # positions 1 and 2
  qs, ks = (_rope64(x[:1, i:i + 1], np.asarray([[p]]), 10000.0, layout)[0, 0, 0]
            for i, p in ((1, 31), (2, 32)))
  np.testing.assert_allclose(q @ k, qs @ ks, rtol=1e-12)


def test_sinusoidal_table():
  pos = np.asarray([[0, 1, 2, 50]], np.int32)
  got = np.asarray(positional.sinusoidal(jnp.asarray(pos), 6, jnp.float32))
  w = 10000.0 ** (-np.arange(0, 6, 2) / 6)
  want = np.zeros((1, 4, 6))
  want[..., 0::2], want[..., 1::2] = np.sin(pos[..., None] * w), np.cos(pos[..., None] * w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_alibi_slopes_are_the_papers_and_the_bias_their_distances():
  np.testing.assert_array_equal(positional.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
  np.testing.assert_array_equal(positional.alibi_slopes(4), 2.0 ** -np.arange(2, 10, 2))
  # 6 heads: the 4-head slopes, then every other slope of the 8-head set
  np.testing.assert_array_equal(positional.alibi_slopes(6),
                                [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])
  q, k = np.asarray([[3, 5]]), np.asarray([[0, 3, 5, 7]])
  for causal in (True, False):
    got = np.asarray(positional.alibi_bias(jnp.asarray(q), jnp.asarray(k), 4, causal,
                                           jnp.float32))
    d = (q[0, :, None] - k[0, None, :]).astype(np.float64)
    d = d if causal else np.abs(d)
    want = -positional.alibi_slopes(4)[:, None, None] * d[None]
    np.testing.assert_array_equal(got[0], want.astype(np.float32))


def test_rope_scaling_frequencies_by_band():
  """'linear' divides every frequency by the factor. 'llama3' (theta 5e5, Dh 12, original
  length 64, low/high factors 1/4: wavelengths 6.3, 56, 498, ...) keeps the short
  wavelength (< 64/4), divides the long ones (> 64/1) by the factor, and blends the middle
  one: s = (64/56 - 1)/(4 - 1), (1 - s) f/8 + s f, strictly between f/8 and f."""
  plain = positional.rope_inv_freq(12, 5e5)
  np.testing.assert_array_equal(positional.rope_inv_freq(12, 5e5, ("linear", 4.0)), plain / 4)
  got = positional.rope_inv_freq(12, 5e5, ("llama3", 8.0, 1.0, 4.0, 64))
  wavelen = 2 * np.pi / plain
  assert wavelen[0] < 16 < wavelen[1] < 64 < wavelen[2]
  assert got[0] == plain[0] and np.all(got[2:] == plain[2:] / 8)
  s = (64 / wavelen[1] - 1) / 3
  np.testing.assert_allclose(got[1], (1 - s) * plain[1] / 8 + s * plain[1], rtol=1e-15)
  assert plain[1] / 8 < got[1] < plain[1]



def test_rope_frequency_factors_are_llama3_as_a_gguf_stores_it():
  """('factors', ...) divides frequency i by factor i. llama.cpp stores 'llama3' as the
  divisors 1 / ((1 - s) / factor + s) (1 and factor at the ends): those reproduce 'llama3'
  to float64 rounding. A wrong count is refused in one line."""
  from collapse_jax.config import DecoderConfig
  try:  # rootdir import or package import, as the other tests
    from checkpoint_helpers import _llama3_rope_freqs
  except ImportError:
    from tests.checkpoint_helpers import _llama3_rope_freqs
  rope = {"rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
  f = _llama3_rope_freqs(rope, 12).astype(np.float64)
  assert f[0] == 1.0 and 1.0 < f[1] < 8.0 and np.all(f[2:] == 8.0)
  got = positional.rope_inv_freq(12, 5e5, ("factors",) + tuple(f))
  want = positional.rope_inv_freq(12, 5e5, ("llama3", 8.0, 1.0, 4.0, 64))
  np.testing.assert_allclose(got, want, rtol=1e-7)  # the divisors are stored in float32
  np.testing.assert_array_equal(got, positional.rope_inv_freq(12, 5e5) / f)
  with pytest.raises(ValueError, match=r"one per frequency: 6"):
    DecoderConfig(d_model=24, num_heads=2, rope_scaling=("factors", 1.0, 2.0))
