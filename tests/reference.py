"""Independent numpy references for the decoder (no JAX, no collapse_jax.model/positional).

Written from the math of the paper's section 2 (pre-LN decoder) and the conventions in
``collapse_jax.config.DecoderConfig``'s docstring, *not* from model.py:

    v0 = round_embed(E[x] * s + PE);   z = Attn(norm1(v)) + v;   v' = MLP(norm2(z)) + z;
    y = norm3(v^(L));                  logits = y @ E^T (tied) or y @ W_lm (untied).

One implementation, two modes, selected by the numpy policy :class:`NumpyPolicy`:

* :func:`reference_forward_f64` -- every value float64, no rounding at all (ground truth).
* :func:`emulate_forward` -- step-by-step emulation of a ``collapse_jax.precision.Policy``:
  values are held in the policy's compute dtype (numpy float32, or float64), rounded to
  the storage dtype with ml_dtypes ``astype`` (round-to-nearest-even) exactly at the named
  rounding points of ``policy.round_at`` and to the softmax dtype after every
  softmax/norm primitive.

What the emulator assumes about XLA:CPU's float32 arithmetic (each measured with jaxlib
0.10.2 on random data, see the test module docstrings):

* dots with contraction K <= the policy's ``accum_block`` accumulate sequentially in
  contraction order, one FMA per term, in float32 (operands of bf16/f16/fp8 values have
  exact f32 products anyway); longer ones are blocks of that many terms whose partial sums
  are added in order (``Policy.accum_block``, explicit in the model);
* the softmax sum over keys on the length-invariant schedule (``Policy.row_tile``) is the
  model's own order, not XLA's: per block of ``accum_block`` keys (zero-padded), a pairwise
  sum of halves in float32, then the blocks' sums added in order (``key_sum``);
* jnp.sum over <= 32 elements is a sequential float32 left-to-right sum (exact match);
  a sum of squares ``sum(v*v)`` matches a sequential sum of products in ~98% of rows (1 ulp
  off otherwise, treated as uncertainty); longer sums are summed in float64 and rounded
  (XLA vectorises them);
* FMA contraction depends on the ISA XLA:CPU compiles for (``collapse_jax.isa``): with
  FMA hardware (effective ISA AVX2 or AVX512, i.e. ``COLLAPSE_JAX_ISA=native`` or a cap
  of AVX2+), ``a*b + c`` and ``a*b - c*d`` in one fusion are contracted to
  ``fma(a, b, +-(c*d))`` and a short sum of squares adds one FMA per term; on the
  reference path (max ISA AVX) every multiply and add is rounded separately;
* ``x / const`` is rewritten to ``x * (1/const)`` (f32 reciprocal), and so is a division by
  a broadcast, the softmax's ``e / total`` with total [..., 1]: ``e * (1/total)``, the
  reciprocal rounded once per row (measured 2026-12-07: 27% of a [64, 1024] division's
  elements differ from true division; tests/test_precision.py pins it);
* exp/tanh/sin/cos/rsqrt/logistic: float64 result rounded to float32 (XLA's own kernels
  are up to ~5 float32 ulps from this, see KERNEL_ULPS; with the sum of squares these are
  the only *inexact* parts of the emulation).

The emulator also records, for every rounding to storage whose pre-rounding value depends
on one of those inexact kernels, how far the value lies from the storage dtype's rounding
midpoint (``ambiguity`` tracking, see :class:`NumpyPolicy`), so a test can tell an
explained 1-ulp disagreement from a real bug.
"""
from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FP8 = (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2))
MLP_GLU = ("swiglu", "geglu")
SEQ_SUM_MAX = 32  # XLA:CPU sums up to this many f32 elements sequentially (measured)
EPS32 = 2.0 ** -23  # float32 ulp relative to the value (upper bound)

# Largest |XLA:CPU f32 kernel - float64 rounded to f32| in f32 ulps of the result, with
# margin. Measured on 4e6 random inputs each (jaxlib 0.10.2), error vs the exact value,
# worst over the ISAs (AVX-512 / AVX2 native / AVX reference path / SSE4_2): exp 1.01,
# tanh 6.46 (4.56-4.67 with FMA, 6.46 without), sin/cos 0.56, rsqrt 2.01 (1.49 with
# portable math), logistic 2.46; ours adds <= 0.5.
KERNEL_ULPS = {"exp": 2.0, "tanh": 7.5, "sincos": 2.0, "rsqrt": 3.0, "logistic": 4.0}


def xla_has_fma() -> bool:
  """Whether XLA:CPU contracts a*b+c into FMAs in this process (effective ISA >= AVX2)."""
  from collapse_jax import isa  # reads /proc/cpuinfo and XLA_FLAGS only; no JAX
  return isa.effective_isa() in ("AVX2", "AVX512")


def to_dtype(name) -> np.dtype:
  """'bfloat16' / 'float8_e4m3fn' / np.dtype -> numpy dtype (ml_dtypes for the small ones)."""
  if isinstance(name, np.dtype):
    return name
  s = str(name)
  if hasattr(ml_dtypes, s):
    return np.dtype(getattr(ml_dtypes, s))
  return np.dtype(s)


def ulp32(x) -> np.ndarray:
  """Spacing of float32 at |x| (float64 array)."""
  return np.spacing(np.abs(np.asarray(x, F32))).astype(F64)


def midpoint_distance(x32, storage) -> np.ndarray:
  """For float32 values ``x32`` about to be rounded to ``storage``: distance (float64) from
  x32 to the nearest rounding midpoint of ``storage`` (the value where round-to-nearest
  switches between two neighbouring storage values)."""
  x = np.asarray(x32, F64)
  r = np.asarray(x32, F32).astype(storage).astype(F64)
  # neighbours of r in storage: step to the next representable up and down
  big = float(ml_dtypes.finfo(storage).max)
  up = _storage_next(r, storage, +1)
  dn = _storage_next(r, storage, -1)
  m_up = np.where(np.isfinite(up), (r + up) / 2, np.inf)
  m_dn = np.where(np.isfinite(dn), (r + dn) / 2, -np.inf)
  d = np.minimum(np.abs(x - m_up), np.abs(x - m_dn))
  return np.where(np.abs(r) > big, np.inf, d)


def _storage_next(r64, storage, direction):
  """Next representable value of ``storage`` after r64 (exactly representable) in the given
  direction, as float64; +-inf past the largest finite value."""
  r = np.asarray(r64, F64).astype(storage)
  bits = r.view(np.uint8 if r.dtype.itemsize == 1 else np.uint16).astype(np.int64)
  nbits = 8 * r.dtype.itemsize
  sign = (bits >> (nbits - 1)) & 1
  mag = bits & ((1 << (nbits - 1)) - 1)
  # moving away from zero increments the magnitude, towards zero decrements it
  away = (sign == 0) == (direction > 0)
  is_zero = mag == 0
  new_mag = np.where(away, mag + 1, mag - 1)
  new_sign = sign
  # from +-0 towards the other side: smallest subnormal with the direction's sign
  new_mag = np.where(is_zero, 1, new_mag)
  new_sign = np.where(is_zero, 0 if direction > 0 else 1, new_sign)
  new_bits = (new_sign << (nbits - 1)) | new_mag
  ut = np.uint8 if nbits == 8 else np.uint16
  out = new_bits.astype(ut).view(storage).astype(F64)
  fmax = float(ml_dtypes.finfo(storage).max)
  return np.where(np.isfinite(out) & (np.abs(out) <= fmax), out, np.sign(direction) * np.inf)


class NumpyPolicy:
  """The numpy precision policy: dtypes, rounding points and how f32 arithmetic is done.

  Args:
    storage, param, operand, accum, compute, softmax: numpy dtypes (see precision.Policy).
    round_at: rounding points where values are rounded to ``storage``.
    stepwise: the policy's flag. Every softmax/norm primitive produces a softmax-dtype
      value (``sm``); with softmax dtype == compute dtype that is no rounding at all, and a
      softmax run *in* a narrower softmax dtype rounds after every primitive anyway, so the
      flag needs no separate code path.
    xla: emulate XLA:CPU's f32 evaluation order (sequential dots and short sums,
      reciprocal multiply, FMA contraction where ``fma``). False = plain math in the compute
      dtype.
    fma: XLA contracts a*b+c into one FMA (default :func:`xla_has_fma`, from the ISA).
    accum_block: the policy's dot accumulation block (None: one sequential sum).
    kernel_ulps: per kernel, the largest distance, in float32 ulps of the kernel's output,
      between XLA's f32 transcendental and ours (float64 rounded to f32); default
      :data:`KERNEL_ULPS`. A float scales every entry (0 disables ambiguity tracking).

  Ambiguity tracking (xla mode, storage/softmax dtype narrower than f32): an op whose
  output passes through an inexact kernel hands ``rnd``/``sm`` an absolute uncertainty
  band (float64, propagated from ``kernel_ulps`` through the op's own arithmetic plus 2 f32
  ulps of the value for the roundings that follow). An element is *ambiguous* when a
  rounding midpoint of the target dtype lies within the band: XLA may legitimately round
  it to the other neighbour. Ambiguous elements are counted in ``ambiguity_log`` and
  their token rows [B, N] flagged in ``ambiguous_rows`` (reset per compared segment).
  """

  def __init__(self, *, storage, param, operand, accum, compute, softmax, round_at,
               stepwise=False, xla=True, kernel_ulps=1.0, name="numpy", fma=None,
               accum_block=None, row_tile=None, rope_angle=None, kv_cache=None):
    self.name = name
    self.st, self.pd, self.od = to_dtype(storage), to_dtype(param), to_dtype(operand)
    self.ad, self.cd, self.sd = to_dtype(accum), to_dtype(compute), to_dtype(softmax)
    self.round_at = frozenset(round_at)
    self.stepwise = bool(stepwise)
    self.xla = bool(xla) and self.cd == F32
    self.fma_hw = xla_has_fma() if fma is None else bool(fma)
    self.accum_block = accum_block
    self.row_tile = row_tile
    self.rope_angle = None if rope_angle is None else to_dtype(rope_angle)  # None: compute
    self.kv = None if kv_cache is None else to_dtype(kv_cache)
    if not isinstance(kernel_ulps, dict):
      kernel_ulps = {k: float(kernel_ulps) * v for k, v in KERNEL_ULPS.items()}
    self.kernel_ulps = dict(kernel_ulps)
    self.ambiguous_rows = None  # bool [B, N] for the current segment, when tracking
    self.ambiguity_log: list[tuple[str, int, int]] = []  # (point, n_ambiguous, n_total)

  @classmethod
  def float64(cls) -> "NumpyPolicy":
    return cls(storage=F64, param=F64, operand=F64, accum=F64, compute=F64, softmax=F64,
               round_at=(), xla=False, name="reference_f64")

  @classmethod
  def from_policy(cls, policy, kernel_ulps=1.0) -> "NumpyPolicy":
    """From a collapse_jax Policy (or its describe() dict), reading only describe()."""
    d = policy.describe() if hasattr(policy, "describe") else dict(policy)
    if d.get("fp8_scaling"):
      raise NotImplementedError("the emulator does not implement fp8 per-tensor scaling")
    return cls(storage=d["storage_dtype"], param=d["param_dtype"],
               operand=d["matmul_operand_dtype"], accum=d["accum_dtype"],
               compute=d["compute_dtype"], softmax=d["softmax_dtype"],
               round_at=d["round_at"], stepwise=d["softmax_stepwise_rounding"],
               kernel_ulps=kernel_ulps, name=d["name"], accum_block=d.get("accum_block"),
               row_tile=d.get("row_tile"), rope_angle=d.get("rope_angle_dtype"),
               kv_cache=d.get("kv_cache_dtype"))

  # -- dtype handling --------------------------------------------------------------------
  @property
  def tracking(self) -> bool:
    return self.xla and max(self.kernel_ulps.values()) > 0

  def c(self, x):
    return np.asarray(x).astype(self.cd)

  def rnd(self, x, point, band=None, attn=False):
    """Round compute-dtype ``x`` to storage at a rounding point (no-op elsewhere).
    ``band``: absolute uncertainty of x (see class docstring); ``attn``: x is laid out
    [B, KV, G, N, M] instead of [B, N, ...]."""
    if point not in self.round_at:
      return x
    self._check(x, self.st, band, point, attn)
    return np.asarray(x).astype(self.st)

  def sm(self, x, band=None, attn=False, what="softmax/norm step"):
    """Result of one softmax/norm primitive, in the softmax dtype."""
    self._check(x, self.sd, band, what, attn)
    return np.asarray(x).astype(self.sd)

  def _check(self, x, target, band, what, attn):
    if band is None or not self.tracking or target.itemsize >= self.cd.itemsize:
      return
    amb = midpoint_distance(x, target) < band  # a zero band: exact, never ambiguous
    self.ambiguity_log.append((what, int(amb.sum()), int(amb.size)))
    if self.ambiguous_rows is not None and amb.any():
      if attn:  # [B, KV, G, N, M] -> query rows [B, N]
        rows = amb.any(axis=(1, 2, 4))
      else:
        rows = amb.reshape(amb.shape[0], amb.shape[1], -1).any(-1)
      self.ambiguous_rows |= rows

  def dot_band(self, spec, a, b):
    """Absolute band of a f32 dot's summation order: the backend's order inside a dot is
    its own (XLA:CPU matched a sequential f32 sum of bf16 products in 92-100% of elements
    for K <= 64, on every ISA cap), and any two orders of a K-term f32 sum differ by at
    most 2 (K-1) 2^-24 sum|a_i b_i| (Higham's bound, twice). Used where a dot's rounding is
    the last step, so a flip cannot cascade (the logits)."""
    k = _contracted_terms(spec, np.asarray(a))
    mag = np.einsum(spec, np.abs(np.asarray(a).astype(self.od).astype(F64)),
                    np.abs(np.asarray(b).astype(self.od).astype(F64)))
    return 2.0 * max(k - 1, 0) * 2.0 ** -24 * mag

  def kband(self, y, name):
    """Absolute error band of the f32 transcendental kernel ``name``'s output y."""
    return self.kernel_ulps[name] * ulp32(y)

  def krel(self, name):
    """Relative error band of kernel ``name`` (ulps of the value <= 2^-23 of it)."""
    return self.kernel_ulps[name] * EPS32

  def slack(self, x):
    """Two f32 ulps of x: roundings after an uncertain input may differ."""
    return 2.0 * ulp32(x)

  # -- arithmetic ------------------------------------------------------------------------
  def kernel(self, fn64, x):
    """Transcendental: evaluated in float64, rounded to the compute dtype."""
    return fn64(np.asarray(x, F64)).astype(self.cd)

  def fma(self, a, b, c):
    """a*b + c: one FMA in f32 (single rounding) where XLA contracts it, else rounded
    after the multiply and after the add."""
    if self.xla and self.fma_hw:
      return (np.asarray(a, F64) * np.asarray(b, F64) + np.asarray(c, F64)).astype(F32)
    return self.c(a) * self.c(b) + self.c(c)

  def div_const(self, x, d):
    if self.xla:
      return x * np.asarray(1.0 / d, F32)  # XLA: x / const -> x * (1/const)
    return x / np.asarray(d, self.cd)

  def sum(self, x, square=False):
    """Sum (of squares) over the last axis, keepdims."""
    x = self.c(x)
    if self.xla and x.shape[-1] <= SEQ_SUM_MAX:
      acc = np.zeros(x.shape[:-1] + (1,), F32)
      for k in range(x.shape[-1]):
        t = x[..., k:k + 1]
        acc = self.fma(t, t, acc) if square else acc + t
      return acc
    x64 = np.asarray(x, F64)
    return np.sum(x64 * x64 if square else x64, axis=-1, keepdims=True).astype(self.cd)

  def key_sum(self, e):
    """The softmax's sum over keys (last axis), keepdims. Tiled (row_tile set, XLA mode): the
    keys in blocks of accum_block from index 0, zero-padded; each block summed pairwise
    (pad to a power of two, add the two halves elementwise until one term is left), the
    block sums added in order to -0.0, all in the compute dtype. Otherwise :meth:`sum`."""
    if not (self.xla and self.row_tile):
      return self.sum(e)
    x, bk = self.c(e), self.accum_block
    nk = -(-x.shape[-1] // bk)
    p2 = 1 << max(0, (bk - 1).bit_length())
    x = np.concatenate([x, np.zeros(x.shape[:-1] + (nk * bk - x.shape[-1],), self.cd)], -1)
    total = np.full(x.shape[:-1] + (1,), -0.0, self.cd)
    for b in range(nk):
      blk = x[..., b * bk:(b + 1) * bk]
      blk = np.concatenate([blk, np.zeros(blk.shape[:-1] + (p2 - bk,), self.cd)], -1)
      while blk.shape[-1] > 1:
        h = blk.shape[-1] // 2
        blk = blk[..., :h] + blk[..., h:]
      total = total + blk
    return total

  def dot(self, spec, a, b, scale=None, at=()):
    """einsum(spec, a, b): operands in the operand dtype (the compute dtype where one of the
    rounding points ``at`` that produced an activation operand is dropped, as
    Policy.operand_dtype), accumulated in the accumulation dtype sequentially over the
    contracted indices (row-major in a's letter order), then converted to the compute dtype
    and optionally multiplied by ``scale``."""
    od = self.od if all(p in self.round_at for p in at) else self.cd
    a = np.asarray(a).astype(od)
    b = np.asarray(b).astype(od)
    if self.ad == F64 or not self.xla:
      out = np.einsum(spec, a.astype(F64), b.astype(F64)).astype(self.ad)
    else:
      out = _seq_einsum(spec, a, b, self.accum_block, fused=self.fma_hw)
    out = out.astype(self.cd)
    if scale is not None:
      out = out * np.asarray(scale, self.cd)
    return out


def _contracted_terms(spec, a) -> int:
  ins, out = spec.split("->")
  sa, sb = ins.split(",")
  return int(np.prod([a.shape[sa.index(ch)] for ch in sa if ch in sb and ch not in out]))


def _seq_einsum(spec, a, b, block=None, fused=True):
  """einsum with float32 accumulation, one FMA per contracted index, in order (``fused``
  False: each product rounded to f32 before its add, as XLA computes without FMA; the same
  for narrow operands, whose products are exact in f32); with
  ``block``, a contraction longer than ``block`` is summed in consecutive blocks (cut
  along the longest contracted axis, as Policy.accum_block does) whose f32 partial sums
  are added in order."""
  ins, out = spec.split("->")
  sa, sb = ins.split(",")
  con = [ch for ch in sa if ch in sb and ch not in out]
  ra = [ch for ch in sa if ch not in con]
  rb = [ch for ch in sb if ch not in con]
  a = np.moveaxis(a, [sa.index(ch) for ch in con], list(range(len(ra), len(sa))))
  b = np.moveaxis(b, [sb.index(ch) for ch in con], list(range(len(rb), len(sb))))
  ksize = int(np.prod([a.shape[len(ra) + i] for i in range(len(con))])) if con else 1
  if block is not None and ksize > block:
    c = max(con, key=lambda ch: a.shape[len(ra) + con.index(ch)])
    size, ax_a, ax_b = a.shape[len(ra) + con.index(c)], sa.index(c), sb.index(c)
    kb = max(1, block // (ksize // size))
    a0 = np.moveaxis(a, list(range(len(ra), len(sa))), [sa.index(ch) for ch in con])
    b0 = np.moveaxis(b, list(range(len(rb), len(sb))), [sb.index(ch) for ch in con])
    acc = None
    for s0 in range(0, size, kb):
      part = _seq_einsum(spec, np.take(a0, range(s0, min(s0 + kb, size)), axis=ax_a),
                         np.take(b0, range(s0, min(s0 + kb, size)), axis=ax_b), fused=fused)
      acc = part if acc is None else acc + part
    return acc
  a = a.reshape(a.shape[:len(ra)] + (ksize,)).astype(F64)
  b = b.reshape(b.shape[:len(rb)] + (ksize,)).astype(F64)
  sub = f"{''.join(ra)},{''.join(rb)}->{out}"
  acc = None
  for k in range(ksize):
    prod = np.einsum(sub, a[..., k], b[..., k])  # exact: f32*f32 fits in f64
    if not fused:
      prod = prod.astype(F32).astype(F64)
    acc = prod.astype(F32) if acc is None else (acc.astype(F64) + prod).astype(F32)
  return acc


# -- the math -------------------------------------------------------------------------------
def alibi_slopes(h: int) -> np.ndarray:
  """Press et al.: for a power of two h, slope_i = 2^(-8 i / h), i = 1..h; otherwise the
  slopes of the closest lower power of two c followed by every other slope of 2c."""
  def geo(n):
    return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
  c = 2 ** int(math.floor(math.log2(h)))
  if c == h:
    return np.asarray(geo(h), F64)
  return np.asarray(geo(c) + geo(2 * c)[0::2][: h - c], F64)


def _norm(P: NumpyPolicy, cfg, p, x, point):
  """LayerNorm (x-mu)/sqrt(var+eps)*w+b, RMSNorm x/sqrt(ms+eps)*w, Gemma x/..*(1+w).
  Statistics in the softmax dtype (every primitive's result is a softmax-dtype value)."""
  d = x.shape[-1]
  xs = P.sm(P.c(x))
  if cfg.norm == "layernorm":
    mean = P.sm(P.div_const(P.sum(xs), d))
    xs = P.sm(P.c(xs) - P.c(mean))
  ms = P.div_const(P.sum(xs, square=True), d)
  rel = 2 * EPS32  # XLA's sum of squares is not always our sequential FMA order (~2%)
  ms = P.sm(ms, band=rel * np.abs(ms.astype(F64)), what="norm: mean square")
  if P.sd.itemsize < P.cd.itemsize:
    rel = 0.0  # rounded to the softmax dtype: exact unless flagged ambiguous
  inv = P.kernel(lambda v: 1.0 / np.sqrt(v), P.c(ms) + np.asarray(cfg.norm_eps, P.cd))
  rel = 0.5 * rel + P.krel("rsqrt")
  inv = P.sm(inv, band=rel * np.abs(inv.astype(F64)), what="norm: rsqrt")
  if P.sd.itemsize < P.cd.itemsize:
    rel = 0.0
  xn = P.c(P.c(xs) * P.c(inv))
  rel = rel + EPS32 if rel else 0.0  # exact inputs -> the same f32 product
  xn = P.c(P.sm(xn, band=rel * np.abs(xn.astype(F64)), what="norm: x * rsqrt"))
  if P.sd.itemsize < P.cd.itemsize:
    rel = 0.0
  w = P.c(p["scale"])
  if cfg.norm == "gemma_rmsnorm":
    w = np.asarray(1.0, P.cd) + w
  out = P.fma(xn, w, P.c(p["bias"])) if cfg.norm == "layernorm" else xn * w
  band = rel * np.abs(xn.astype(F64) * w) + P.slack(out) if rel else None
  return P.rnd(out, point, band=band)


def _gelu_tanh(P: NumpyPolicy, x):
  """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Returns (value, band)."""
  x = P.c(x)
  if not P.xla:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), None
  f = lambda v: np.asarray(v, F32)
  x3 = (x * x) * x
  inner = P.fma(f(0.044715), x3, x)
  th = P.kernel(np.tanh, f(math.sqrt(2 / math.pi)) * inner)
  out = x * (f(0.5) * (f(1.0) + th))
  # tanh's absolute error passes through 0.5 (1 + th) unamplified, then times |x|
  return out, 0.5 * np.abs(x.astype(F64)) * P.kband(th, "tanh") + P.slack(out)


def _silu(P, x):
  """x * sigmoid(x), sigmoid = 1 / (1 + e^-x). Returns (value, band)."""
  sig = P.kernel(lambda v: 1.0 / (1.0 + np.exp(-v)), x)
  out = x * sig
  return out, np.abs(out.astype(F64)) * P.krel("logistic") + P.slack(out)


def _rope_freqs(inv, scaling):
  """RoPE scaling, frequency by frequency (float64): 'linear' divides every frequency by the
  factor; 'llama3' keeps the short wavelengths (< original_max_len / high_freq_factor),
  divides the long ones (> original_max_len / low_freq_factor) and blends the rest."""
  if not scaling:
    return inv
  if scaling[0] == "linear":
    return inv / scaling[1]
  if scaling[0] == "factors":  # llama.cpp's rope_freqs: one divisor per frequency
    return np.asarray([f / float(d) for f, d in zip(inv, scaling[1:])])
  factor, low, high, orig = (float(v) for v in scaling[1:])
  out = np.empty_like(inv)
  for i, f in enumerate(inv):
    wl = 2 * math.pi / f
    if wl < orig / high:
      out[i] = f
    elif wl > orig / low:
      out[i] = f / factor
    else:
      s = (orig / wl - low) / (high - low)
      out[i] = (1 - s) * f / factor + s * f
  return out


def _rope(P: NumpyPolicy, cfg, x, pos, theta):
  """Rotate pairs (x_a, x_b) by angle pos * theta^(-2i/Dh): (a cos - b sin, b cos + a sin).
  Pairs: 'half' = (i, i + Dh/2), 'interleaved' = (2i, 2i+1). x: [B, N, H, Dh].
  Returns (value, band)."""
  dh = x.shape[-1]
  inv = _rope_freqs(theta ** (-(np.arange(dh // 2, dtype=F64) * 2) / dh), cfg.rope_scaling)
  exact = P.rope_angle == F64 and P.cd != F64  # the angle and cos/sin in float64, then cast
  ad = F64 if exact else P.cd
  ang = pos.astype(ad)[:, :, None, None] * inv.astype(ad)  # [B, N, 1, Dh/2]
  cos, sin = P.kernel(np.cos, ang), P.kernel(np.sin, ang)
  if cfg.rope_layout == "half":
    a, b = x[..., : dh // 2], x[..., dh // 2:]
  else:
    a, b = x[..., 0::2], x[..., 1::2]
  ra = P.fma(a, cos, -(b * sin))
  rb = P.fma(b, cos, a * sin)
  kb = (lambda y: 2.0 ** -50 * np.abs(y.astype(F64))) if exact else (
      lambda y: P.kband(y, "sincos"))  # float64 kernels: within an ulp of f64 before the cast
  err = np.abs(a.astype(F64)) * kb(cos) + np.abs(b.astype(F64)) * kb(sin)
  ea, eb = err + P.slack(ra), err + P.slack(rb)
  if cfg.rope_layout == "half":
    return np.concatenate([ra, rb], axis=-1), np.concatenate([ea, eb], axis=-1)
  return (np.stack([ra, rb], axis=-1).reshape(x.shape),
          np.stack([ea, eb], axis=-1).reshape(x.shape))


def _sinusoidal(P: NumpyPolicy, pos, d):
  """PE[p, 2i] = sin(p w_i), PE[p, 2i+1] = cos(p w_i), w_i = 10000^(-2i/d)."""
  w = (10000.0 ** (-(np.arange(d // 2, dtype=F64) * 2) / d)).astype(P.cd)
  ang = pos.astype(P.cd)[..., None] * w
  return np.stack([P.kernel(np.sin, ang), P.kernel(np.cos, ang)], axis=-1).reshape(
      *pos.shape, d)


def _softcap(P: NumpyPolicy, x, cap, point, attn=False):
  """cap tanh(x / cap), x / cap as x times the f32 constant 1 / cap, rounded at ``point``;
  the tanh kernel's error, times cap, is the band. ``cap`` None: x unchanged."""
  if cap is None:
    return x
  x = P.c(x)
  if not P.xla:
    return P.rnd(cap * np.tanh(x / cap), point, attn=attn)
  th = P.kernel(np.tanh, x * np.asarray(1.0 / cap, P.cd))
  out = th * np.asarray(cap, P.cd)
  return P.rnd(out, point, band=cap * P.kband(th, "tanh") + P.slack(out), attn=attn)


def _softmax(P: NumpyPolicy, scores, mask, bias):
  """Masked softmax over the last axis, every primitive a softmax-dtype value; masked
  entries get weight exactly 0 (a fully masked row gives zeros). Layout [B,KV,G,N,M]."""
  narrow = P.sd.itemsize < P.cd.itemsize
  s = P.sm(P.c(scores))
  if bias is not None:
    s = P.sm(P.c(s) + P.c(bias))
  s = np.where(mask, s, np.asarray(ml_dtypes.finfo(P.sd).min, P.sd))
  mx = s.max(axis=-1, keepdims=True)
  e = P.kernel(np.exp, P.sm(P.c(s) - P.c(mx)))
  rel = P.krel("exp")
  e = P.sm(e, band=rel * np.abs(e.astype(F64)), attn=True, what="softmax: exp")
  if narrow:
    rel = 0.0
  e = np.where(mask, e, np.zeros((), P.sd))
  tot = P.key_sum(e)
  tot = P.sm(tot, band=(rel + EPS32) * np.abs(tot.astype(F64)) if rel else None, attn=True,
             what="softmax: sum")
  tot = np.where(tot > 0, tot, np.ones((), P.sd))
  if narrow:
    rel = 0.0
  p = P.c(e) * (np.asarray(1, P.cd) / P.c(tot))  # XLA: e / broadcast(tot) -> e * (1/tot)
  rel_p = 2 * rel if rel else 0.0
  p = P.sm(p, band=rel_p * np.abs(p.astype(F64)) if rel_p else None, attn=True,
           what="softmax: divide")
  p = P.c(p)
  return P.rnd(p, "probs", band=rel_p * np.abs(p.astype(F64)) + P.slack(p) if rel_p else None,
               attn=True)


def _attention(P, cfg, p, h, q_pos, k_pos, k_valid, cache_kv, teach, layer):
  B, N, D = h.shape
  H, KV, Dh = cfg.num_heads, cfg.kv_heads, cfg.dh
  G = H // KV
  window, theta = cfg.window(layer), cfg.rope_base(layer)
  def project(name):  # the dot, then its bias added in compute dtype (qkv_bias), one rounding
    out = P.dot("bnd,dhk->bnhk", h, p[name], at=("norm",))
    return P.rnd(out + P.c(p[f"{name}_bias"]) if cfg.qkv_bias else out, "qkv")
  q, k, v = project("q"), project("k"), project("v")
  if cfg.qk_norm:
    q = _norm(P, cfg, p["q_norm"], q, "qk_norm")
    k = _norm(P, cfg, p["k_norm"], k, "qk_norm")
  if cfg.pe == "rope":
    rq, bq = _rope(P, cfg, P.c(q), q_pos, theta)
    rk, bk = _rope(P, cfg, P.c(k), q_pos, theta)
    q, k = P.rnd(rq, "rope", band=bq), P.rnd(rk, "rope", band=bk)
  if P.kv is not None:  # the keys and values as the KV cache holds them (Policy.kv_cache_dtype)
    k, v = k.astype(P.kv), v.astype(P.kv)
  k, v = teach("k", k, reset=False), teach("v", v, reset=False)
  new_kv = (k, v)
  if cache_kv is not None:
    k = np.concatenate([np.asarray(cache_kv[0]).astype(k.dtype), k], axis=1)
    v = np.concatenate([np.asarray(cache_kv[1]).astype(v.dtype), v], axis=1)
  M = k.shape[1]
  # query head h = kv * G + g reads kv head kv = h // G
  qg = q.reshape(B, N, KV, G, Dh)
  qk_at = "rope" if cfg.pe == "rope" else "qk_norm" if cfg.qk_norm else "qkv"
  scores = P.rnd(P.dot("bnkgd,bmkd->bkgnm", qg, k, scale=cfg.qk_scale, at=(qk_at,)), "scores")
  scores = _softcap(P, scores, cfg.attn_softcap, "attn_softcap", attn=True)
  qp, kp = q_pos[:, :, None].astype(np.int64), k_pos[:, None, :].astype(np.int64)
  mask = np.broadcast_to(k_valid[:, None, :], (B, N, M))
  if cfg.causal:  # by sequence order (cache slots first, then the N new tokens), so a
    # token that repeats an earlier position still cannot see the tokens after it
    mask = mask & (np.arange(M)[None, None, :] <= (M - N + np.arange(N))[None, :, None])
  if window is not None:
    mask = mask & (np.abs(qp - kp) < window)
  bias = None
  if cfg.pe == "alibi":
    dist = (qp - kp).astype(P.cd)
    if not cfg.causal:
      dist = np.abs(dist)
    slopes = alibi_slopes(H).astype(P.cd).reshape(KV, G)
    bias = -slopes[None, :, :, None, None] * dist[:, None, None]  # [B, KV, G, N, M]
  probs = _softmax(P, scores, mask[:, None, None], bias)
  probs = teach("attn_weights", probs.reshape(B, H, N, M)).reshape(B, KV, G, N, M)
  heads = P.rnd(P.dot("bkgnm,bmkd->bnkgd", probs, v, at=("probs", "qkv")),
                "heads").reshape(B, N, H, Dh)
  heads = teach("heads", heads)
  out = P.rnd(P.dot("bnhk,hkd->bnd", heads, p["o"], at=("heads",)), "attn_out")
  return out, heads, probs.reshape(B, H, N, M), new_kv


def _mlp(P, cfg, p, h):
  up = P.rnd(P.dot("bnd,df->bnf", h, p["up"], at=("norm",)), "mlp_hidden")
  if cfg.mlp == "gelu":
    act, band = _gelu_tanh(P, up)
  else:
    g = P.c(P.rnd(P.dot("bnd,df->bnf", h, p["gate"], at=("norm",)), "mlp_hidden"))
    fn, band = (_silu if cfg.mlp == "swiglu" else _gelu_tanh)(P, g)
    act = fn * P.c(up)
    if band is not None:
      band = band * np.abs(P.c(up).astype(F64)) + P.slack(act)
  act = P.rnd(act, "mlp_act", band=band)
  return P.rnd(P.dot("bnf,fd->bnd", act, p["down"], at=("mlp_act",)), "mlp_out")


def _as_numpy_tree(params):
  if isinstance(params, dict):
    return {k: _as_numpy_tree(v) for k, v in params.items()}
  return np.asarray(params)


def run(P: NumpyPolicy, cfg, params, inputs, *, positions=None, key_valid=None, cache=None,
        teacher: dict | None = None, track: bool = False) -> dict:
  """Forward pass under the numpy policy ``P``. Returns the dict of model.forward with all
  intermediates ('y', 'residual', 'heads', 'attn_weights', 'k', 'v', 'logits' for token
  models). ``teacher``: stored JAX intermediates (same keys); after each such quantity is
  computed the computation continues from the teacher's value instead (step-by-step
  comparison; the returned values are the emulator's own). ``track``: flag token rows that
  saw an ambiguous rounding, per segment (returned as 'ambiguous_<key>' [.., B, N])."""
  params = _as_numpy_tree(params)
  inputs = np.asarray(inputs)
  B, N = inputs.shape[:2]
  positions = (np.broadcast_to(np.arange(N), (B, N)) if positions is None
               else np.asarray(positions))
  key_valid = np.ones((B, N), bool) if key_valid is None else np.asarray(key_valid, bool)
  layer_idx = [0]
  amb: dict[str, list] = {}

  def new_segment():
    if track:
      P.ambiguous_rows = np.zeros((B, N), bool)

  def end_segment(key):
    if track:
      amb.setdefault(key, []).append(P.ambiguous_rows.copy())

  def teach(key, value, layer=None, reset=True):
    """End of a compared quantity: record row flags, optionally start a new segment,
    and continue from the teacher's value if one is given."""
    end_segment(key)
    if reset:
      new_segment()
    if teacher is None or key not in teacher:
      return value
    t = np.asarray(teacher[key])[layer_idx[0] if layer is None else layer]
    return t.astype(value.dtype)

  new_segment()
  if cfg.vocab_size:
    table = params["embed"]["embedding"]
    x = P.c(table[inputs])
  else:
    x = P.c(inputs)
  pe = None
  if cfg.pe == "sinusoidal":
    pe = _sinusoidal(P, positions, cfg.d_model)
  elif cfg.pe == "learned":
    pe = P.c(params["pos_embed"]["embedding"][positions])
  if cfg.embed_scale:
    s = P.c(P.rnd(P.c(np.asarray(math.sqrt(cfg.d_model), F64)), "embed_scale"))
    x = x * s if pe is None else P.fma(x, s, pe)
  elif pe is not None:
    x = x + pe
  band = None
  if cfg.pe == "sinusoidal" and P.tracking:
    band = P.kband(pe, "sincos") + P.slack(x)
  v0 = P.rnd(x, "embed", band=band)
  v = teach("residual", v0, layer=0)

  if cache is not None:
    k_pos = np.concatenate([np.asarray(cache["pos"]), positions], axis=1)
    k_valid = np.concatenate([np.asarray(cache["valid"], bool), key_valid], axis=1)
  else:
    k_pos, k_valid = positions, key_valid
  residual, heads_l, probs_l, ks, vs = [v0], [], [], [], []
  for l in range(cfg.num_layers):
    layer_idx[0] = l
    p = params[f"layer_{l}"]
    cache_kv = None if cache is None else (np.asarray(cache["k"])[l], np.asarray(cache["v"])[l])
    a, heads, probs, (k, v_) = _attention(P, cfg, p["attn"], _norm(P, cfg, p["norm1"], v, "norm"),
                                          positions, k_pos, k_valid, cache_kv, teach, l)
    if cfg.post_norms:
      a = _norm(P, cfg, p["post_attn_norm"], a, "post_norm")
    z = P.rnd(P.c(v) + P.c(a), "residual")
    if cfg.use_mlp:
      m = _mlp(P, cfg, p["mlp"], _norm(P, cfg, p["norm2"], z, "norm"))
      if cfg.post_norms:
        m = _norm(P, cfg, p["post_mlp_norm"], m, "post_norm")
      z = P.rnd(P.c(z) + P.c(m), "residual")
    own = z
    v = teach("residual", z, layer=l + 1)
    residual.append(own); heads_l.append(heads); probs_l.append(probs); ks.append(k); vs.append(v_)
  y = _norm(P, cfg, params["final_norm"], v, "final_norm")
  end_segment("y")
  new_segment()
  out: dict[str, Any] = {"y": y, "residual": np.stack(residual), "heads": np.stack(heads_l),
                         "attn_weights": np.stack(probs_l), "k": np.stack(ks),
                         "v": np.stack(vs)}
  if cfg.vocab_size:
    yt = y if teacher is None or "y" not in teacher else np.asarray(teacher["y"]).astype(y.dtype)
    if cfg.tie_embeddings:
      spec, w = "bnd,vd->bnv", params["embed"]["embedding"]
    else:
      spec, w = "bnd,dv->bnv", params["lm_head"]["kernel"]
    logits = P.dot(spec, yt, w, at=("final_norm",))
    out["logits"] = P.rnd(logits, "logits")
    if track and P.tracking and "logits" in P.round_at:  # per element: nothing follows
      out["ambiguous_logits_elements"] = (
          midpoint_distance(logits, P.st) < P.dot_band(spec, yt, w))
    if cfg.final_softcap is not None:
      out["logits"] = _softcap(P, out["logits"], cfg.final_softcap, "logit_softcap")
    end_segment("logits")
  if track:
    for key, rows in amb.items():
      out["ambiguous_" + key] = rows[0] if key in ("y", "logits") else np.stack(rows)
  return out


def reference_forward_f64(cfg, params, inputs, **kw) -> dict:
  """Ground truth: every parameter, activation and op in float64, no rounding."""
  params = _cast_tree(params, F64)
  inp = np.asarray(inputs)
  if not cfg.vocab_size:
    inp = inp.astype(F64)
  return run(NumpyPolicy.float64(), cfg, params, inp, **kw)


def emulate_forward(cfg, policy, params_cast, inputs, *, kernel_ulps=1.0, **kw) -> dict:
  """Step-by-step numpy emulation of ``policy`` (a collapse_jax Policy or its describe()
  dict). ``params_cast``: the parameters after ``policy.cast_params`` (numpy or JAX
  arrays). Extra keywords go to :func:`run` (positions, key_valid, cache, teacher, track).
  ``out['ambiguity_log']`` lists (point, ambiguous elements, elements) per rounding."""
  P = NumpyPolicy.from_policy(policy, kernel_ulps=kernel_ulps)
  out = run(P, cfg, params_cast, inputs, **kw)
  out["ambiguity_log"] = P.ambiguity_log
  return out


def _cast_tree(tree, dtype):
  if isinstance(tree, dict):
    return {k: _cast_tree(v, dtype) for k, v in tree.items()}
  a = np.asarray(tree)
  return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) or a.dtype in FP8 or (
      a.dtype == np.dtype(ml_dtypes.bfloat16)) else a


# -- small numpy helpers shared by the tests ------------------------------------------------
def bits(a) -> np.ndarray:
  """Bit patterns of a float array (unsigned view of the same width)."""
  a = np.ascontiguousarray(np.asarray(a))
  return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def random_params(cfg, seed: int = 0) -> dict:
  """float32 parameters in the decoder's layout (model module docstring), every weight
  N(0, cfg.variance) as in C.3, norm scales 1 + N(0, 0.09) (Gemma: N(0, 0.09), it stores
  w of x*(1+w)) and LayerNorm biases N(0, 0.09), so that a wrong w or b shows."""
  rng = np.random.default_rng(seed)
  std = math.sqrt(cfg.variance)
  D, H, KV, Dh, F = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh, cfg.ff
  w = lambda *shape: np.asarray(std * rng.standard_normal(shape), F32)

  def norm(d=D):
    base = 0.0 if cfg.norm == "gemma_rmsnorm" else 1.0
    p = {"scale": np.asarray(base + 0.3 * rng.standard_normal(d), F32)}
    if cfg.norm == "layernorm":
      p["bias"] = np.asarray(0.3 * rng.standard_normal(d), F32)
    return p
  params: dict = {}
  if cfg.vocab_size:
    params["embed"] = {"embedding": w(cfg.vocab_size, D)}
  if cfg.pe == "learned":
    params["pos_embed"] = {"embedding": w(cfg.max_len, D)}
  for l in range(cfg.num_layers):
    layer = {"norm1": norm(), "attn": {"q": w(D, H, Dh), "k": w(D, KV, Dh), "v": w(D, KV, Dh),
                                       "o": w(H, Dh, D)}}
    if cfg.qk_norm:
      layer["attn"]["q_norm"], layer["attn"]["k_norm"] = norm(Dh), norm(Dh)
    if cfg.qkv_bias:  # N(0, 0.09): large enough that a dropped or misplaced bias shows
      for name, heads in (("q", H), ("k", KV), ("v", KV)):
        layer["attn"][f"{name}_bias"] = np.asarray(0.3 * rng.standard_normal((heads, Dh)), F32)
    if cfg.post_norms:
      layer["post_attn_norm"] = norm()
    if cfg.use_mlp:
      layer["norm2"] = norm()
      layer["mlp"] = {"up": w(D, F), "down": w(F, D)}
      if cfg.mlp in MLP_GLU:
        layer["mlp"]["gate"] = w(D, F)
      if cfg.post_norms:
        layer["post_mlp_norm"] = norm()
    params[f"layer_{l}"] = layer
  params["final_norm"] = norm()
  if cfg.vocab_size and not cfg.tie_embeddings:
    params["lm_head"] = {"kernel": w(D, cfg.vocab_size)}
  return params
