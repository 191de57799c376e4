"""The fixed summation orders (collapse_jax/blocked.py): blocked contractions and the
pairwise sum, against explicit numpy loops over the same blocks (float64 references)."""
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import blocked, precision


def test_blocked_einsum_splits_the_longest_contracted_axis():
  """K <= block: one dot, bitwise the einsum; K > block: the blocks' partial sums added in
  order, equal to an explicit numpy loop over the same blocks of exactly-summable data."""
  rng = np.random.default_rng(0)
  a = rng.integers(-8, 8, (3, 600)).astype(np.float32)
  b = rng.integers(-8, 8, (600, 5)).astype(np.float32)
  f = lambda blk: np.asarray(blocked.blocked_einsum("nk,kd->nd", jnp.asarray(a), jnp.asarray(b),
                                                       jnp.float32, None, blk))
  np.testing.assert_array_equal(f(None), a @ b)  # integers: exact in any order
  np.testing.assert_array_equal(f(256), a @ b)
  np.testing.assert_array_equal(f(7), a @ b)
  # a contraction over two axes (heads x head_dim, like the output projection)
  h = rng.standard_normal((2, 9, 64)).astype(np.float32)
  w = rng.standard_normal((9, 64, 8)).astype(np.float32)
  got = blocked.blocked_einsum("bhk,hkd->bd", jnp.asarray(h), jnp.asarray(w), jnp.float32,
                                 None, 256)
  want = sum(np.einsum("bhk,hkd->bd", h[:, i:i + 4].astype(np.float64), w[i:i + 4])
             for i in (0, 4, 8))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  with pytest.raises(ValueError, match="accum_block"):
    dataclasses.replace(precision.get_policy("float32"), accum_block=0)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.float16])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_pairwise_sum_is_the_stated_order(dtype, n):
  """Zero-padded to a power of two, then halves added elementwise, each add one rounding to
  the dtype: the same bits as that loop written in numpy, and trailing zeros change nothing."""
  rng = np.random.default_rng(n)
  x = rng.standard_normal((3, n)).astype(np.float32).astype(dtype)
  got = np.asarray(blocked.pairwise_sum(jnp.asarray(x)))
  p = 1 << max(0, (n - 1).bit_length())
  want = np.concatenate([x, np.zeros((3, p - n), x.dtype)], axis=1)
  while want.shape[-1] > 1:
    h = want.shape[-1] // 2
    want = (want[:, :h] + want[:, h:]).astype(x.dtype)
  assert got.shape == (3, 1)
  np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))
  padded = np.asarray(blocked.pairwise_sum(jnp.asarray(np.pad(x, ((0, 0), (0, 3))))))
  np.testing.assert_array_equal(padded.astype(np.float64), got.astype(np.float64))
  np.testing.assert_allclose(got[:, 0].astype(np.float64),
                             x.astype(np.float64).sum(-1), rtol=2e-2 if n > 2 else 1e-2,
                             atol=1e-2)
