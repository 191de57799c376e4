"""Metric edge cases: signed zeros, NaN, subnormals, fp8 extremes, onsets; jit/vmap/grad."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax import metrics

FLOATS = [jnp.bfloat16, jnp.float16, jnp.float32, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]


def _np_ulp(a, b, dtype):
  """Independent reference: rank of each value among all bit patterns, sorted by value."""
  width = np.dtype(dtype).itemsize * 8
  if width == 32:  # too many patterns to enumerate: signed-magnitude ordering in int64
    def order(v):
      u = np.asarray(v, np.float32).view(np.uint32).astype(np.int64)
      return np.where(u >= 2 ** 31, -(u - 2 ** 31), u)
    return np.abs(order(a) - order(b))
  allbits = np.arange(2 ** width, dtype={8: np.uint8, 16: np.uint16}[width])
  vals = allbits.view(dtype).astype(np.float64)
  finite_or_inf = vals[~np.isnan(vals)]
  uniq = np.unique(finite_or_inf)  # -0.0 and +0.0 collapse to one value
  ra = np.searchsorted(uniq, np.asarray(a, np.float64))
  rb = np.searchsorted(uniq, np.asarray(b, np.float64))
  return np.abs(ra - rb)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_ulp_distance_matches_exhaustive_rank(dtype):
  rng = np.random.default_rng(0)
  width = np.dtype(dtype).itemsize * 8
  bits = rng.integers(0, 2 ** width, size=(2, 4000)).astype({8: np.uint8, 16: np.uint16}.get(width, np.uint32))
  a, b = bits[0].view(dtype), bits[1].view(dtype)
  ok = ~np.isnan(a.astype(np.float64)) & ~np.isnan(b.astype(np.float64))
  a, b = a[ok], b[ok]
  got = np.asarray(metrics.ulp_distance(jnp.asarray(a), jnp.asarray(b))).astype(np.int64)
  ref = _np_ulp(a, b, dtype)
  np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype", FLOATS)
def test_signed_zero_and_nan_conventions(dtype):
  z, nz, nan, one = (jnp.asarray(v, dtype) for v in (0.0, -0.0, np.nan, 1.0))
  assert not bool(metrics.bitwise_equal(z, nz, axis=None))
  assert bool(metrics.bitwise_equal(z, nz, axis=None, signed_zeros_equal=True))
  assert not bool(metrics.bitwise_equal(nan, nan, axis=None))  # identical NaN bits: never equal
  if ml_dtypes.finfo(dtype).max < np.inf and np.isinf(np.asarray(np.inf, dtype).astype(np.float64)):
    inf = jnp.asarray(np.inf, dtype)
    assert not bool(metrics.bitwise_equal(inf, inf, axis=None))  # overflow: never "collapsed"
  assert bool(metrics.bitwise_equal(one, one, axis=None))
  assert int(metrics.ulp_distance(z, nz)) == 0
  assert int(metrics.ulp_distance(nan, one)) == metrics.ulp_max(dtype)
  assert int(metrics.nonfinite_count(jnp.stack([nan, one]))) == 1


@pytest.mark.parametrize("dtype", FLOATS)
def test_subnormals_and_extremes(dtype):
  fi = ml_dtypes.finfo(dtype)
  tiny = jnp.asarray(fi.smallest_subnormal, dtype)
  assert int(metrics.ulp_distance(jnp.asarray(0.0, dtype), tiny)) == 1
  assert int(metrics.ulp_distance(-tiny, tiny)) == 2
  big = jnp.asarray(fi.max, dtype)
  # -max .. +max spans every finite value; the sentinel stays strictly larger.
  d = int(metrics.ulp_distance(-big, big))
  assert 0 < d < metrics.ulp_max(dtype)
  sn = jnp.asarray(fi.smallest_normal, dtype)
  assert int(metrics.ulp_distance(sn, jnp.asarray(float(fi.smallest_normal) - float(fi.smallest_subnormal), dtype))) == 1


def test_e4m3fn_has_no_inf_overflow_is_nan():
  x = jnp.asarray([1e4, -1e4], jnp.float32).astype(ml_dtypes.float8_e4m3fn)
  assert int(metrics.nonfinite_count(x)) == 2


def test_distances_and_total_variation():
  p = jnp.asarray([0.5, 0.25, 0.25]); q = jnp.asarray([0.25, 0.25, 0.5])
  assert float(metrics.total_variation(p, q)) == 0.5  # no factor 1/2
  assert float(metrics.linf_distance(p, q)) == 0.25
  x = jnp.asarray([[1.0, 2.0], [3.0, np.nan]], jnp.bfloat16)
  d = metrics.linf_distance(x, x)
  assert float(d[0]) == 0.0 and np.isnan(float(d[1]))


def test_onsets():
  lengths = jnp.asarray([1, 2, 4, 8, 16, 32])
  eq = jnp.asarray([[0, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(metrics.collapse_onset(eq, lengths), [2, -1, 1])
  np.testing.assert_array_equal(metrics.sustained_onset(eq, lengths), [8, -1, -1])


def test_softmax_last_weight_and_lemma_b1_direction():
  s = jnp.asarray([0.3, -1.0, 2.0])
  ref = np.exp(2.0) / np.exp([0.3, -1.0, 2.0]).sum()
  np.testing.assert_allclose(float(metrics.softmax_last_weight(s)), ref, rtol=1e-6)
  s_ins = jnp.asarray([0.3, -1.0, 0.7, 2.0])  # a bounded token inserted before the last
  assert float(metrics.softmax_last_weight(s_ins)) < float(metrics.softmax_last_weight(s))
  masked = metrics.softmax_last_weight(jnp.asarray([0.3, -1.0, 2.0, 9.0]),
                                       where=jnp.asarray([True, True, True, False]))
  np.testing.assert_allclose(float(masked), ref, rtol=1e-6)


def test_jit_vmap_grad_safe():
  x = jax.random.normal(jax.random.key(0), (5, 7, 3))
  y = x + 1e-3
  f = jax.jit(jax.vmap(lambda a, b: metrics.summarize_pair(a, b)))
  out = f(x, y)
  assert out["linf"].shape == (5, 7) and out["bitwise_equal"].dtype == jnp.bool_
  g = jax.grad(lambda a: metrics.l1_distance(a, y).sum() + metrics.total_variation(
      jax.nn.softmax(a), jax.nn.softmax(y)).sum())(x)
  assert np.all(np.isfinite(np.asarray(g)))
  onset = jax.jit(jax.vmap(metrics.collapse_onset, in_axes=(0, None)))(
      jnp.asarray([[0, 1], [0, 0]], bool), jnp.asarray([3, 4]))
  np.testing.assert_array_equal(onset, [4, -1])


def test_onsets_reject_flags_and_lengths_of_different_shapes():
  with pytest.raises(ValueError, match="one flag per swept length"):
    metrics.collapse_onset(np.ones(6, bool), np.arange(3))
  with pytest.raises(ValueError, match="one flag per swept length"):
    metrics.sustained_onset(np.ones((2, 6), bool), np.arange(3))


def test_absmax_is_the_largest_magnitude_in_the_distance_dtype():
  x = jnp.asarray([[-3.5, 2.0], [0.25, -0.5]], jnp.bfloat16)
  got = metrics.absmax(x)
  assert got.dtype == jnp.float32 and np.array_equal(np.asarray(got), [3.5, 0.5])
  assert metrics.absmax(jnp.asarray([1.0, -2.0], jnp.float64)).dtype == jnp.float64
  assert float(metrics.absmax(x, (-2, -1))) == 3.5
