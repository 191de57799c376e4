"""Precision policy: presets, errors, softmax/mask safety, fp8 scaling, dot accumulation."""
import dataclasses
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax import precision
from collapse_jax.precision import get_policy

LOW = ["bfloat16", "bfloat16_pure", "float16", "float8_e4m3fn", "float8_e5m2"]


def test_unknown_preset_lists_valid_names():
  with pytest.raises(ValueError) as e:
    get_policy("bf16")
  for name in precision.PRESETS:
    assert name in str(e.value)


def test_presets_name_every_dtype_and_rounding_point():
  for name in precision.PRESETS:
    d = get_policy(name).describe()
    for key in ("param_dtype", "storage_dtype", "accum_dtype", "softmax_dtype", "round_at"):
      assert key in d
    assert set(d["round_at"]) == set(precision.ROUNDING_POINTS)
  assert get_policy("bfloat16").softmax_dtype == jnp.float32
  assert get_policy("bfloat16_pure").softmax_dtype == jnp.bfloat16
  assert get_policy("float8_e4m3fn").dot_operand_dtype == jnp.bfloat16


def test_float64_needs_x64():
  pol = get_policy("float64")
  with jax.enable_x64(False):
    with pytest.raises(RuntimeError, match="float64"):
      pol.check_available()


def test_fp8_scaling_only_for_fp8():
  assert get_policy("float8_e4m3fn", fp8_scaling=True).fp8_scaling
  with pytest.raises(ValueError):
    get_policy("bfloat16", fp8_scaling=True)


@pytest.mark.parametrize("name", LOW + ["float32"])
def test_masked_softmax_never_nan_and_rounded(name):
  pol = get_policy(name)
  s = (jax.random.normal(jax.random.key(0), (3, 8, 8)) * 3).astype(pol.storage_dtype)
  mask = jnp.tril(jnp.ones((8, 8), bool))[None] & jnp.asarray([True, True, False])[:, None, None]
  p = jax.jit(pol.softmax)(s, mask)
  p32 = np.asarray(p.astype(jnp.float32))
  assert p.dtype == pol.storage_dtype and np.all(np.isfinite(p32))
  assert np.all(p32[~np.broadcast_to(np.asarray(mask), p32.shape)] == 0)  # masked: exactly 0
  assert np.all(p32[2] == 0)  # fully masked rows: zeros, not NaN
  np.testing.assert_allclose(p32[:2].sum(-1), 1.0, atol=0.2 if pol.is_fp8 else 2e-2)


def test_xla_divides_by_a_row_total_as_a_reciprocal_multiply():
  """A fact of XLA:CPU that the softmax's last step (``sm_step(jnp.divide, e, total)``,
  total [..., 1]) and tests/reference.py's emulation of it rest on: x / t with t broadcast
  along a row is computed as x * (1 / t), the reciprocal rounded once per row. It differs
  from true division in about a quarter of the elements, so this fails on a jaxlib that
  divides (the emulator's softmax divide must then follow)."""
  e = np.random.default_rng(0).random((64, 1024)).astype(np.float32)
  t = e.sum(-1, keepdims=True, dtype=np.float32)
  recip = e * (np.float32(1) / t)
  got = np.asarray(jax.jit(lambda a, b: a / b)(e, t))
  np.testing.assert_array_equal(got, recip)
  step = np.asarray(jax.jit(lambda a, b: get_policy("float32").sm_step(jnp.divide, a, b))(e, t))
  np.testing.assert_array_equal(step, recip)
  assert (got != e / t).mean() > 0.1


def test_pure_softmax_rounds_every_step():
  s = (jax.random.normal(jax.random.key(1), (64, 32)) * 2).astype(jnp.bfloat16)
  mask = jnp.ones((64, 32), bool)
  prod = np.asarray(get_policy("bfloat16").softmax(s, mask)).astype(np.float32)
  pure = np.asarray(get_policy("bfloat16_pure").softmax(s, mask)).astype(np.float32)
  # emulate the stepwise chain in numpy/ml_dtypes: each step in f64, rounded to bf16
  bf = ml_dtypes.bfloat16
  x = np.asarray(s).astype(np.float64)
  d = (x - x.max(-1, keepdims=True)).astype(bf).astype(np.float64)
  e = np.exp(d).astype(bf).astype(np.float64)
  z = e.sum(-1, keepdims=True).astype(np.float32).astype(bf).astype(np.float64)
  ref = (e / z).astype(bf).astype(np.float32)
  assert (pure == ref).mean() > 0.999
  assert (prod != pure).any()  # the two bf16 presets are really different


def test_quantize_scaled_is_power_of_two_exact():
  x = jax.random.normal(jax.random.key(2), (256,)) * 1e-6
  for dt in precision.FP8_DTYPES:
    q = precision.quantize_scaled(x, dt)
    s = 2.0 ** np.ceil(np.log2(np.abs(np.asarray(x)).max() / float(ml_dtypes.finfo(dt).max)))
    r = np.asarray(q) / s
    np.testing.assert_array_equal(r.astype(dt).astype(np.float32), r)
    # unscaled fp8 flushes most of these tiny values; scaled keeps them
    assert np.count_nonzero(np.asarray(x.astype(dt))) < np.count_nonzero(r)


@pytest.mark.parametrize("name", LOW)
def test_dot_accumulates_in_f32_and_rounds_once(name):
  pol = get_policy(name)
  a = jax.random.normal(jax.random.key(3), (4, 48)).astype(pol.storage_dtype)
  b = (jax.random.normal(jax.random.key(4), (48, 8)) / 4).astype(pol.param_dtype)
  got = np.asarray(jax.jit(lambda a, b: pol.round(pol.dot("nk,km->nm", a, b), "qkv"))(a, b))
  exact = np.asarray(a).astype(np.float64) @ np.asarray(b).astype(np.float64)
  ref = exact.astype(np.float32).astype(pol.storage_dtype)  # f32 accumulate, round once
  assert (got.view(np.uint8) == ref.view(np.uint8)).mean() > 0.99


@pytest.mark.bitwise
@pytest.mark.parametrize("name", ["float32", "bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("spec,a_shape,b_shape", [
    ("bnd,df->bnf", (2, 3, 600), (600, 40)),     # blocked, padded (600 -> 3 x 256)
    ("bnd,df->bnf", (2, 3, 512), (512, 40)),     # blocked, no padding
    ("bnhk,hkd->bnd", (2, 3, 9, 64), (9, 64, 40)),  # two contracted axes (the output proj.)
    ("bnd,vd->bnv", (2, 3, 600), (50, 600)),     # contracted axis last (a tied lm_head)
    ("bnd,df->bnf", (2, 3, 100), (100, 40)),     # not blocked: the cast only
])
def test_preblocked_weight_gives_the_same_bits(name, spec, a_shape, b_shape):
  """``dot(spec, a, preblock(spec, w))`` is the same dot, on the same values and shapes, as
  ``dot(spec, a, w)``: bit for bit, whether the weight was split in another program or not."""
  pol = get_policy(name)
  a = jax.random.normal(jax.random.key(1), a_shape).astype(pol.storage_dtype)
  w = (jax.random.normal(jax.random.key(2), b_shape) / 8).astype(pol.param_dtype)
  plain = jax.jit(lambda a, w: pol.dot(spec, a, w))(a, w)
  wb = jax.jit(lambda w: pol.preblock(spec, w))(w)
  assert wb.x.dtype == pol.dot_operand_dtype
  pre = jax.jit(lambda a, wb: pol.dot(spec, a, wb))(a, wb)
  assert pre.shape == plain.shape and pre.dtype == plain.dtype
  np.testing.assert_array_equal(np.asarray(pre).view(np.uint8), np.asarray(plain).view(np.uint8))


def test_preblocked_weight_is_laid_out_for_the_dot():
  """A tied lm_head [V, D] (contracted axis last): the blocked dot reads it as [blocks, D, V],
  so XLA:CPU transposes the whole weight at every call (SmolLM2's [1, 576] x lm_head dot on a
  2-core AVX2 EPYC: 156 ms pre-blocked without this layout, 5.7 ms with it, in a 200 ms
  decode step); ``preblock`` stores that layout once, and the compiled dot has no transpose
  left."""
  pol = get_policy("float32")
  spec, a, w = "bnd,vd->bnv", jnp.ones((1, 1, 600)), jnp.ones((300, 600))
  wb = pol.preblock(spec, w)
  assert wb.layout == "Zdv" and wb.x.shape == (3, 256, 300)
  hlo = lambda b: jax.jit(lambda a, b: pol.dot(spec, a, b)).lower(a, b).compile().as_text()
  assert "transpose" in hlo(w)         # the plain call: the weight is transposed in the program
  assert "transpose" not in hlo(wb)


def test_preblocked_weight_refuses_another_dot():
  pol = get_policy("float32")
  wb = pol.preblock("bnd,df->bnf", jnp.ones((600, 4)))
  with pytest.raises(ValueError, match="pre-blocked for 'bnd,df->bnf'"):
    pol.dot("nd,df->nf", jnp.ones((2, 600)), wb)
  with pytest.raises(ValueError, match="pre-blocked"):
    get_policy("bfloat16").dot("bnd,df->bnf", jnp.ones((1, 2, 600)), wb)


def test_the_rope_angle_and_kv_cache_knobs():
  """Both knobs default to None (described as the compute dtype / null); only a float64 one
  needs x64 (an unset knob must not count: np.dtype(None) == float64)."""
  bf16 = get_policy("bfloat16")
  assert bf16.rope_angle_dtype is None and bf16.kv_cache_dtype is None and not bf16.needs_x64
  d = bf16.describe()
  assert d["rope_angle_dtype"] == "float32" and d["kv_cache_dtype"] is None
  f64 = dataclasses.replace(bf16, rope_angle_dtype="float64", kv_cache_dtype="float8_e4m3fn")
  assert f64.needs_x64 and f64.describe()["rope_angle_dtype"] == "float64"
  assert f64.describe()["kv_cache_dtype"] == "float8_e4m3fn"
