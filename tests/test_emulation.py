"""Policy faithfulness: the jitted JAX decoder vs the numpy step-by-step emulator
(tests/reference.py ``emulate_forward``), bit for bit.

Small models (D = 32, N = 16, Dh <= 16, F = 64) keep every contraction <= 64 long, so
XLA:CPU accumulates dots sequentially in f32 and the emulator can reproduce them exactly.

Measured on jaxlib 0.10.2 / XLA:CPU, 4 configs x 2 seeds per preset (fp8: 3 configs),
``python tests/test_emulation.py`` prints the table (BUILD_NOTES has it per ISA):
  * bfloat16, bfloat16_pure (108032 stored elements each), float8_e4m3fn, float8_e5m2
    (80896 each): every stored intermediate, y and the logits equal bit for bit,
    free-running -- 0 mismatches on the reference path (AVX), AVX2, SSE4_2 and AVX-512.
  * float16: ~420 of 108032 elements differ free-running (0.4%; one flip cascades through
    later layers). Their cause is XLA's own f32 kernels (measured max error vs exact:
    tanh 4.6-6.5 ulp depending on FMA, logistic 2.5, rsqrt 1.5-2.0, exp 1.0, sin/cos 0.6;
    the f32 sum of squares differs from a sequential sum by 1 ulp in ~2% of rows): with 13
    fewer mantissa bits than f32, a float16 rounding midpoint falls within a few f32 ulps of
    a value ~1e-3 of the time. Each compared quantity is therefore also recomputed from JAX's
    stored inputs (``teacher=``), and a mismatch is allowed only in a token row where the
    emulator saw an *ambiguous* rounding, i.e. a float16 (or softmax-dtype) rounding midpoint
    within the propagated f32 error band (reference.KERNEL_ULPS per transcendental + 2 ulps
    of the value) of the pre-rounding value, or, for a logit, within its dot's summation-
    order band: 0 unexplained; ~400 of 3200 compared rows (13%) were flagged. The flagged
    rows must stay a minority, so the check keeps its teeth.
  * Every narrow preset is held to that same criterion (_assert_faithful): the strict
    presets' 0 mismatches are a measurement on every ISA tried, not a guarantee of the path.
  * float32: no storage rounding hides the f32 kernel differences (57% of elements differ
    in the last bits); compared with max |jax - emu| / max |emu| <= 2e-6 (measured
    <= 8.3e-7).
"""
from __future__ import annotations

import dataclasses
import functools

import collapse_jax  # noqa: F401  (applies the XLA guards before any computation)
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from collapse_jax import model, precision
from collapse_jax.config import DecoderConfig

try:
  import reference as R
except ImportError:  # tests/ imported as a package
  from tests import reference as R

STRICT = ("bfloat16", "bfloat16_pure", "float8_e4m3fn", "float8_e5m2")
PRESETS = STRICT + ("float16", "float32")
ALL = ("residual", "heads", "attn_weights", "kv", "logits")
F32_TOL = 2e-6
# Per (config, seed): the fraction of compared token rows the step check may excuse, and
# the free-running mismatching elements, cascades included (a real bug mismatches nearly
# everything; measured worst cases in the module docstring). Index: [not strict, strict].
MAX_FLAGGED_ROWS = 0.3
MAX_FREE_MISMATCH = (0.05, 0.01)
SEEDS = (0, 1)
B, N = 2, 16

CONFIGS = {
    "rope-layernorm-gelu-gqa": DecoderConfig(  # with Qwen2's q/k/v biases, Llama 3's RoPE
        num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, pe="rope",
        norm="layernorm", mlp="gelu", mlp_dim=64, qkv_bias=True,
        rope_scaling=("llama3", 8.0, 1.0, 4.0, 64)),  # Dh 8: frequencies in all 3 bands
    "alibi-rmsnorm-swiglu-tokens": DecoderConfig(
        num_layers=2, d_model=32, num_heads=4, pe="alibi", norm="rmsnorm", mlp="swiglu",
        mlp_dim=64, vocab_size=48),
    "sinusoidal-gemma-geglu-scaled": DecoderConfig(
        num_layers=2, d_model=32, num_heads=2, pe="sinusoidal", norm="gemma_rmsnorm",
        mlp="geglu", mlp_dim=64, embed_scale=True),
    "rope-interleaved-untied-tokens": DecoderConfig(
        num_layers=2, d_model=32, num_heads=2, pe="rope", rope_layout="interleaved",
        norm="layernorm", mlp="swiglu", mlp_dim=64, vocab_size=40, tie_embeddings=False,
        embed_scale=True),
    "gemma3-style": DecoderConfig(  # d_model 48: RNE rounds sqrt(48) up in bf16, truncation not
        num_layers=2, d_model=48, num_heads=4, num_kv_heads=1, head_dim=8, pe="rope",
        norm="gemma_rmsnorm", mlp="geglu", mlp_dim=64, vocab_size=40, embed_scale=True,
        qk_norm=True, post_norms=True, layer_windows=(5, None), layer_rope_thetas=(10.0, 1e4),
        query_scale=0.25, attn_softcap=2.0, final_softcap=3.0),  # + Gemma 2's softcapping,
    # caps small enough that tanh bends the values
}
# the fp8 presets compile slowly on XLA:CPU: they get the first three configs
CASES = [(p, c) for p in PRESETS for c in CONFIGS
         if not (p.startswith("float8") and c in ("rope-interleaved-untied-tokens",
                                                  "gemma3-style"))]
# The default tier: bfloat16 on every config, every preset on one config of its own (so each
# config sees at least two presets), float16 and float32 on the configs fp8 skips; the rest
# of CASES is marked slow (CI's slow step).
DEFAULT_CASES = ({("bfloat16", c) for c in CONFIGS}
                 | {(p, list(CONFIGS)[i % 3]) for i, p in enumerate(PRESETS)}
                 | {("float32", "gemma3-style"), ("float16", "rope-interleaved-untied-tokens")})


def _collect(cfg):
  return ALL if cfg.vocab_size else ALL[:-1]


@functools.lru_cache(maxsize=None)
def _jitted(cfg, pol):
  return jax.jit(functools.partial(model.forward, cfg, pol, collect=_collect(cfg)))


def _inputs(cfg, seed, b=B, n=N):
  rng = np.random.default_rng(seed)
  if cfg.vocab_size:
    return rng.integers(0, cfg.vocab_size, (b, n)).astype(np.int32)
  return rng.standard_normal((b, n, cfg.d_model)).astype(np.float32)


def _setup(pol, cfg, seed):
  params = R.random_params(cfg, seed)
  pc = pol.cast_params(params)
  x = _inputs(cfg, seed + 100)
  out = {k: np.asarray(v) for k, v in _jitted(cfg, pol)(pc, x).items()}
  return R._as_numpy_tree(pc), x, out


def _mismatch(a, b):
  assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
  return R.bits(a) != R.bits(b)


def _allowed(key, mism_shape, rows):
  """Broadcast the emulator's flagged token rows to the layout of output ``key``."""
  if key == "attn_weights":  # [L, B, H, N, M], rows [L, B, N]
    return rows[:, :, None, :, None]
  return rows.reshape(rows.shape + (1,) * (len(mism_shape) - rows.ndim))


def compare(preset, cfg_name: str, seed: int) -> dict:
  """Run JAX and the emulator; return per-output counts and the step check. ``preset``: a
  preset name or a Policy. Outputs a policy leaves unrounded (compute-dtype values, when the
  storage dtype is narrower) carry the backend's own summation order: they are compared
  with F32_TOL (``max_rel_err_unrounded``), never bit for bit."""
  pol = precision.get_policy(preset)
  cfg = CONFIGS[cfg_name]
  pc, x, out = _setup(pol, cfg, seed)
  st = np.dtype(pol.storage_dtype)
  free = R.emulate_forward(cfg, pol, pc, x)
  res = {"elements": 0, "free_mismatch": 0, "step_mismatch": 0, "unexplained": 0,
         "flagged_rows": 0, "rows": 0, "ambiguous_roundings": 0, "max_rel_err": 0.0,
         "max_rel_err_unrounded": 0.0, "not_storage": []}
  rel = lambda a, b: float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) /
                           max(np.max(np.abs(b.astype(np.float64))), 1e-300))
  unrounded = {k for k, v in out.items() if st != np.float32 and v.dtype == np.float32}
  for key, val in out.items():
    if key in unrounded:
      res["max_rel_err_unrounded"] = max(res["max_rel_err_unrounded"], rel(val, free[key]))
      continue
    # every stored activation is a storage-dtype value
    if val.dtype != st or not np.array_equal(R.bits(val.astype(st).astype(val.dtype)),
                                             R.bits(val)):
      res["not_storage"].append(key)
    res["elements"] += val.size
    res["free_mismatch"] += int(_mismatch(val, free[key]).sum())
    res["max_rel_err"] = max(res["max_rel_err"], rel(val, free[key]))
  step = R.emulate_forward(cfg, pol, pc, x, teacher=out, track=True)
  res["ambiguous_roundings"] = sum(m for _, m, _ in step["ambiguity_log"])
  for key, val in out.items():
    if key in unrounded:
      continue
    mism = _mismatch(val, step[key])
    if key == "logits" and "ambiguous_logits_elements" in step:
      mism = mism & ~step["ambiguous_logits_elements"]  # the dot's own summation order
    rows = step.get("ambiguous_" + key)
    res["step_mismatch"] += int(mism.sum())
    if rows is None:
      res["unexplained"] += int(mism.sum())
      continue
    res["flagged_rows"] += int(rows.sum())
    res["rows"] += rows.size
    res["unexplained"] += int((mism & ~_allowed(key, mism.shape, rows)).sum())
  return res


def _assert_faithful(preset, r):
  """The bit-for-bit criterion of every narrow preset (module docstring)."""
  assert r["not_storage"] == [], r
  if preset == "float32":
    assert r["max_rel_err"] <= F32_TOL, r
    return
  assert r["unexplained"] == 0, r
  assert r["flagged_rows"] <= MAX_FLAGGED_ROWS * r["rows"], r
  assert r["free_mismatch"] <= MAX_FREE_MISMATCH[preset in STRICT] * r["elements"], r
  assert r["max_rel_err_unrounded"] <= F32_TOL, r


@pytest.mark.bitwise
@pytest.mark.parametrize("preset,cfg_name", [
    case if case in DEFAULT_CASES else pytest.param(*case, marks=pytest.mark.slow) for case in CASES])
def test_jit_forward_matches_emulator_bit_for_bit(preset, cfg_name):
  for seed in SEEDS:
    r = compare(preset, cfg_name, seed)
    try:
      _assert_faithful(preset, r)
    except AssertionError:
      if preset == "float16" and _native_isa_with_avx512_fp16():
        pytest.xfail(f"float16 on the native ISA of a CPU with AVX512-FP16: {r['unexplained']} "
                     f"of {r['elements']} values unexplained (known; the reference path, "
                     "which every bitwise claim is for, matches: BUILD_NOTES)")
      raise


def _native_isa_with_avx512_fp16() -> bool:
  """No ISA cap (COLLAPSE_JAX_ISA=native) on a CPU with AVX512-FP16. Measured 2026-12-06 on
  a 2-core Intel Xeon with it: float16 on rope-interleaved-untied-tokens leaves 1159 of 13568
  values unexplained there, against 0 on the reference path (the cause, probably float16
  arithmetic in the CPU's own instructions, is not pinned down)."""
  from collapse_jax import isa
  if isa.max_isa_flag() is not None:
    return False
  try:
    with open("/proc/cpuinfo") as f:
      return "avx512_fp16" in f.read().split()
  except OSError:
    return False


@pytest.mark.bitwise
def test_emulator_follows_a_custom_round_at():
  """A bfloat16 policy that skips some rounding points is emulated bit for bit too (its
  unrounded f32 'heads' and 'v' within F32_TOL)."""
  base = precision.get_policy("bfloat16")
  pol = dataclasses.replace(base, name="bf16_partial",
                            round_at=base.round_at - {"qkv", "scores", "mlp_hidden", "heads"})
  for seed in (3, 4):
    _assert_faithful("bfloat16", compare(pol, "rope-layernorm-gelu-gqa", seed))


# Gemma 2/3's options and the logits: rounding points only "gemma3-style" exercises
GEMMA_POINTS = ("embed_scale", "qk_norm", "post_norm", "attn_softcap", "logit_softcap",
                "logits")


def _minus(point):
  base = precision.get_policy("bfloat16")
  return dataclasses.replace(base, name=f"bf16_minus_{point}",
                             round_at=base.round_at - {point})


@pytest.mark.bitwise
@pytest.mark.parametrize("point", sorted(precision.ROUNDING_POINTS))
def test_dropping_any_rounding_point_changes_the_bits(point):
  """Every rounding point can be dropped: bf16 minus one point changes the model's outputs
  (the last residual, y or the logits) wherever the model uses the point, including the points whose value only feeds a matmul (norm,
  rope, probs, heads, mlp_act, final_norm), whose dropped value now goes into the dot in the
  compute dtype instead of being rounded by the dot's operand cast (issue 26)."""
  cfg = CONFIGS["gemma3-style" if point in GEMMA_POINTS else "rope-layernorm-gelu-gqa"]
  _, _, full = _setup(precision.get_policy("bfloat16"), cfg, 0)
  _, _, drop = _setup(_minus(point), cfg, 0)
  # the model's outputs, not the point's own collected value: the last residual, y, logits
  outs = lambda o: [o["residual"][-1], o["y"]] + ([o["logits"]] if "logits" in o else [])
  changed = [i for i, (a, b) in enumerate(zip(outs(full), outs(drop))) if not np.array_equal(
      a.astype(np.float64), b.astype(np.float64))]
  assert changed, f"dropping {point!r} changed no output"


@pytest.mark.slow
@pytest.mark.bitwise
@pytest.mark.parametrize("point", sorted(precision.ROUNDING_POINTS))
def test_emulator_follows_every_dropped_point(point):
  """bf16 minus any one point is emulated to the narrow presets' criterion (its unrounded
  values within F32_TOL)."""
  name = "gemma3-style" if point in GEMMA_POINTS else "rope-layernorm-gelu-gqa"
  _assert_faithful("bfloat16", compare(_minus(point), name, 0))


def _knob_runs(pol, cfg, positions):
  """(jax outputs, free-running emulator outputs) of ``pol`` on seed 0's inputs at these
  positions [B, N]."""
  pc = pol.cast_params(R.random_params(cfg, 0))
  x = _inputs(cfg, 100)
  fn = jax.jit(lambda p, x, pos: model.forward(cfg, pol, p, x, positions=pos,
                                               collect=_collect(cfg)))
  out = {k: np.asarray(v) for k, v in fn(pc, x, positions).items()}
  emu = R.emulate_forward(cfg, pol, R._as_numpy_tree(pc), x, positions=np.asarray(positions))
  return out, emu


@pytest.mark.bitwise
@pytest.mark.parametrize("knob,value,cfg_name", [
    ("rope_angle_dtype", "float64", "rope-layernorm-gelu-gqa"),
    pytest.param("rope_angle_dtype", "float64", "gemma3-style", marks=pytest.mark.slow),
    ("kv_cache_dtype", "float8_e4m3fn", "rope-layernorm-gelu-gqa"),
    pytest.param("kv_cache_dtype", "float8_e5m2", "alibi-rmsnorm-swiglu-tokens",
                 marks=pytest.mark.slow)])
def test_policy_knobs_change_the_bits_and_the_emulator_follows(knob, value, cfg_name):
  """RoPE's angle dtype and the KV cache's dtype are named policy knobs: at positions
  3000.. (where an f32 angle is off by up to ~2^-12 rad) each changes y against plain
  bf16, and the free-running emulator with the knob equals JAX bit for bit in every stored
  value (the strict presets' criterion, MAX_FREE_MISMATCH)."""
  cfg = CONFIGS[cfg_name]
  base = precision.get_policy("bfloat16")
  pol = dataclasses.replace(base, name=f"bf16_{knob}", **{knob: value})
  assert pol.describe()[knob] == value
  pos = np.broadcast_to(3000 + np.arange(N), (B, N)).astype(np.int32)
  plain, _ = _knob_runs(base, cfg, pos)
  out, emu = _knob_runs(pol, cfg, pos)
  assert not np.array_equal(plain["y"].astype(np.float64), out["y"].astype(np.float64))
  if knob == "kv_cache_dtype":
    assert out["k"].dtype == np.dtype(value) and out["v"].dtype == np.dtype(value)
  bad = sum(int(_mismatch(out[k], emu[k].astype(out[k].dtype)).sum()) for k in out)
  total = sum(out[k].size for k in out)
  assert bad <= MAX_FREE_MISMATCH[True] * total, (bad, total)


class _TruncatingPolicy(R.NumpyPolicy):
  """The emulator with one rounding point broken: bf16 by truncation instead of RNE."""
  bad_point = None

  def rnd(self, x, point, band=None, attn=False):
    if point == self.bad_point and point in self.round_at:
      x32 = np.ascontiguousarray(np.asarray(x, np.float32))
      return (x32.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(self.st)
    return super().rnd(x, point, band, attn)


@pytest.mark.bitwise
def test_perturbed_emulator_is_detected():
  """The bit comparison has teeth: breaking any single rounding point of the emulator
  (never of the model), dropping one, or computing softmax statistics in bf16 instead of
  f32 produces mismatches."""
  pol = precision.get_policy("bfloat16")
  cfg = CONFIGS["rope-layernorm-gelu-gqa"]
  pc, x, out = _setup(pol, cfg, 0)
  differs = lambda emu, o=out: any(o[k].dtype != emu[k].dtype or np.any(_mismatch(o[k], emu[k]))
                                  for k in o)
  assert not differs(R.run(R.NumpyPolicy.from_policy(pol), cfg, pc, x))
  g_cfg = CONFIGS["gemma3-style"]
  g_pc, g_x, g_out = _setup(pol, g_cfg, 0)
  assert not differs(R.run(R.NumpyPolicy.from_policy(pol), g_cfg, g_pc, g_x), g_out)
  for point in sorted(precision.ROUNDING_POINTS.keys() - {"logits"}):
    P = _TruncatingPolicy.from_policy(pol)
    P.bad_point = point
    if point in ("embed_scale", "qk_norm", "post_norm", "attn_softcap", "logit_softcap"):
      # Gemma 2/3's options only
      assert differs(R.run(P, g_cfg, g_pc, g_x), g_out), f"truncating at {point!r} went unnoticed"
      continue
    assert differs(R.run(P, cfg, pc, x)), f"truncating at {point!r} went unnoticed"
  # dropping a rounding point whose value is not cast to bf16 anyway by the next matmul
  for point in ("embed", "qkv", "scores", "attn_out", "residual", "mlp_out"):
    P = R.NumpyPolicy.from_policy(pol)
    P.round_at = P.round_at - {point}
    emu = {k: v.astype(out[k].dtype) for k, v in R.run(P, cfg, pc, x).items()}
    assert differs(emu), f"dropping {point!r} went unnoticed"
  P = R.NumpyPolicy.from_policy(pol)
  P.sd = np.dtype(ml_dtypes.bfloat16)
  assert differs(R.run(P, cfg, pc, x))


@pytest.mark.bitwise
@pytest.mark.parametrize("preset", PRESETS)
def test_stored_values_representable_under_vmap_and_jit(preset):
  """jit(vmap(forward)) over a batch of sequences, outputs upcast to f32 *inside* the
  computation: every value is a storage-dtype value (guaranteed: a cast), and the vmapped
  pass equals the emulator within one storage eps of the output scale (F32_TOL for
  float32). Measured: bit-identical for the strict presets on every ISA cap tried."""
  pol = precision.get_policy(preset)
  cfg = CONFIGS["rope-layernorm-gelu-gqa"]
  st = np.dtype(pol.storage_dtype)
  pc = pol.cast_params(R.random_params(cfg, 5))
  x = _inputs(cfg, 6, b=3)

  def one(xi):
    out = model.forward(cfg, pol, pc, xi[None], collect=_collect(cfg))
    return {k: v[0].astype(jnp.float32) if k == "y" else v[:, 0].astype(jnp.float32)
            for k, v in out.items()}
  got = {k: np.asarray(v) for k, v in jax.jit(jax.vmap(one))(x).items()}
  emu = R.emulate_forward(cfg, pol, R._as_numpy_tree(pc), x)
  for key, val in got.items():
    assert val.dtype == np.float32
    assert np.array_equal(R.bits(val.astype(st).astype(np.float32)), R.bits(val)), key
    e = emu[key].astype(np.float32)
    e = e if key == "y" else np.moveaxis(e, 1, 0)  # [L, B, ...] -> [B, L, ...]
    tol = F32_TOL if preset == "float32" else float(ml_dtypes.finfo(st).eps)
    assert np.max(np.abs(val - e)) <= tol * max(np.max(np.abs(e)), 1.0), key


@pytest.mark.bitwise
@pytest.mark.parametrize("preset", ["float8_e4m3fn", "float8_e5m2"])
def test_fp8_causal_mask_never_makes_nan(preset):
  """e4m3fn has no inf: a -inf mask would become NaN. 64 tokens, causal, all finite."""
  pol = precision.get_policy(preset)
  cfg = DecoderConfig(num_layers=2, d_model=32, num_heads=2, pe="rope", mlp="gelu",
                      mlp_dim=64)
  pc = pol.cast_params(R.random_params(cfg, 0))
  x = _inputs(cfg, 0, b=2, n=64)
  valid = np.ones((2, 64), bool)
  valid[1, 50:] = False
  out = jax.jit(functools.partial(model.forward, cfg, pol, collect=ALL[:-1]))(
      pc, x, key_valid=valid)
  for key, val in out.items():
    assert np.all(np.isfinite(np.asarray(val).astype(np.float32))), key
  p = np.asarray(out["attn_weights"]).astype(np.float32)
  i, j = np.indices((64, 64))
  assert np.all(p[..., j > i] == 0.0)
  assert np.all(p[:, 1, ..., 50:] == 0.0)


def _report():
  """Print the measured bit-exactness table (python tests/test_emulation.py)."""
  import collections
  tot = collections.defaultdict(lambda: collections.Counter())
  for preset, cfg_name in CASES:
    for seed in SEEDS:
      r = compare(preset, cfg_name, seed)
      t = tot[preset]
      for k in ("elements", "free_mismatch", "step_mismatch", "unexplained", "flagged_rows",
                "rows", "ambiguous_roundings"):
        t[k] += r[k]
      t["max_rel_err"] = max(t["max_rel_err"], r["max_rel_err"])
      print(preset, cfg_name, seed, {k: v for k, v in r.items() if k != "not_storage"})
  for preset, t in tot.items():
    unexplained = "n/a (tolerance)" if preset == "float32" else t["unexplained"]
    print(f"{preset:15s} elements={t['elements']} free-running mismatches={t['free_mismatch']}"
          f" step mismatches={t['step_mismatch']} unexplained={unexplained}"
          f" flagged rows={t['flagged_rows']}/{t['rows']}"
          f" ambiguous roundings={t['ambiguous_roundings']} max rel err={t['max_rel_err']:.2e}")


if __name__ == "__main__":
  jax.config.update("jax_enable_x64", True)  # as tests/conftest.py does
  _report()
