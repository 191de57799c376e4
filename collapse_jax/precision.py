"""The precision policy: the ONLY place that decides dtypes and rounding.

Every op of the decoder asks a :class:`Policy` three questions:
  * what dtype do the operands of a matmul have, and in what dtype does it accumulate
    (:meth:`Policy.dot`; the operands' own rounding points decide: a dropped point feeds
    its dot in the compute dtype, :meth:`Policy.operand_dtype`);
  * in what dtype are pointwise ops, softmax and normalisation statistics computed
    (``compute_dtype`` / ``softmax_dtype``);
  * where is a result rounded to the activation storage dtype (:meth:`Policy.round`,
    called with one of :data:`ROUNDING_POINTS`).

Rounding is always explicit: an op upcasts its stored inputs to the compute dtype,
computes, and calls ``policy.round(x, point)``, which is a plain ``astype`` to the
storage dtype (round-to-nearest-even, identical to ml_dtypes on XLA:CPU). FP8 storage is
*emulated*: arithmetic never runs in fp8 (XLA:CPU would emulate it through f16 with
double rounding); values are computed in f32 and stored as real fp8 arrays.

Presets (``get_policy(name)``) are documented in BUILD_NOTES.md with their rounding
points; ``Policy.describe()`` spells a policy out for results files.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes

from collapse_jax.blocked import Blocked, rhs_layout, split_operand, blocked_einsum

# Named places where an activation is rounded to the storage dtype. A policy rounds at the
# points in its ``round_at``; at the others the compute-dtype value flows on unrounded.
ROUNDING_POINTS = {
    "embed_scale": "the sqrt(d_model) embedding multiplier (embed_scale models: Gemma), "
                   "rounded to storage as HF rounds it to the weight dtype",
    "embed": "input embedding after scaling and absolute PE (v^(0))",
    "norm": "output of norm1/norm2 (input of attention/MLP)",
    "qkv": "q, k, v projections (after their biases: qkv_bias models, Qwen2)",
    "qk_norm": "q and k after their per-head norm (qk_norm models: Gemma 3)",
    "rope": "q and k after the rotary rotation",
    "scores": "attention logits q.k*scale (before bias/mask/softmax)",
    "attn_softcap": "attention logits after tanh softcapping, cap tanh(s / cap) "
                    "(attn_softcap models: Gemma 2)",
    "probs": "softmax output (attention weights)",
    "heads": "per-head attention output sum_j p_ij v_j",
    "attn_out": "attention output projection",
    "post_norm": "outputs of the post-attention and post-MLP norms (post_norms models: Gemma 3)",
    "residual": "residual stream after each residual add (z and v^(l+1))",
    "mlp_hidden": "MLP up/gate projections",
    "mlp_act": "MLP activation output (act(gate)*up for GLUs)",
    "mlp_out": "MLP down projection",
    "final_norm": "final normalised output y = norm3(v^(L))",
    "logits": "output logits",
    "logit_softcap": "output logits after tanh softcapping (final_softcap models: Gemma 2)",
}
ALL_POINTS = frozenset(ROUNDING_POINTS)

FP8_DTYPES = (jnp.dtype(ml_dtypes.float8_e4m3fn), jnp.dtype(ml_dtypes.float8_e5m2))
# Rows per tile of the length-invariant schedule (``Policy.row_tile``; collapse_jax.attention)
ROW_TILE = 128


@dataclasses.dataclass(frozen=True)
class Policy:
  """A named precision policy.

  Attributes:
    name: preset name.
    param_dtype: dtype weights are stored in (``cast_params``).
    storage_dtype: dtype activations are stored in at the rounding points.
    accum_dtype: matmul accumulation dtype (``preferred_element_type``).
    compute_dtype: dtype pointwise ops (activations, RoPE rotation, residual adds,
      scaling) are computed in before they are rounded once.
    softmax_dtype: dtype of softmax and normalisation statistics. The result of every
      primitive step (max, sub, exp, sum, div; mean, rsqrt, mul) is rounded to it, so a
      softmax_dtype below compute_dtype means step-by-step rounding (``stepwise``); when it
      equals compute_dtype only the output is rounded (at ``probs``/``norm``).
    round_at: rounding points (keys of ROUNDING_POINTS) where values are rounded to
      ``storage_dtype``.
    fp8_scaling: per-tensor amax scaling at fp8 rounding points (power-of-two scale,
      so scaling itself is exact). Scaled tensors are held as compute-dtype arrays whose
      values are fp8 values times the tensor's scale.
    matmul_precision: lax precision for dots (HIGHEST: no TF32/bf16-pass shortcuts).
    accum_block: contractions longer than this many terms are accumulated in blocks of at
      most ``accum_block`` terms: each block is one dot (accumulated in ``accum_dtype``), and
      the blocks' partial sums are added in order, each add rounded to ``accum_dtype``
      (:func:`blocked_einsum`). Without it the summation order of a long contraction is
      chosen by the backend: XLA:CPU's Eigen splits contractions longer than ~512 terms
      differently for different core counts (BUILD_NOTES). None: one dot, backend order.
    frozen_attention: the attention weights carry no gradient (``stop_gradient`` on the
      output of :meth:`softmax`): derivatives are then taken with the weights held fixed,
      the linearisation Theorem 5.1/B.5 assumes ("attention weights independent of the
      input"; ``theory.sensitivity``). The forward values are unchanged, bit for bit.
      Normalisation statistics go through ``sm_step``, not ``softmax``, so they stay
      differentiable. ``describe()`` names it only when True.
    row_tile: the length-invariant schedule (``collapse_jax.attention``). Every dot over
      rows (projections, MLP, logits: :meth:`row_dot`) runs on tiles of ``row_tile`` rows
      aligned at stream index 0, and attention runs on query tiles of ``row_tile`` rows
      against key blocks of ``accum_block`` keys aligned at index 0, its softmax sum and
      value dot accumulated block by block in order. Every backend dot then has one shape
      and a row sits at one place in it whatever the sequence length, so row i of a pass
      has the bits of the last row of a forward of exactly i + 1 tokens. None: one dot over
      all rows and one softmax reduction per row (shape-dependent low bits; generation's
      fast decoder uses it, see ``untiled``).
    rope_angle_dtype: the dtype RoPE's angles p * theta_i and their cos/sin are computed in,
      the cos/sin then cast to the compute dtype (None: the compute dtype; float64 needs
      x64). In f32 the angle of a late position carries an absolute error that grows with
      p (issue 26, AnchorAttention); float64 makes the rotation that of the exact angle.
    kv_cache_dtype: the dtype keys (after 'rope') and values (after 'qkv') are held in
      between their rounding point and attention, in every engine, cached or not (a plain
      cast, e.g. an fp8 KV cache under bf16 compute). None: as rounded.
  """
  name: str
  param_dtype: Any
  storage_dtype: Any
  accum_dtype: Any
  compute_dtype: Any
  softmax_dtype: Any
  round_at: frozenset = ALL_POINTS
  fp8_scaling: bool = False
  matmul_precision: Any = jax.lax.Precision.HIGHEST
  accum_block: int | None = 256
  frozen_attention: bool = False
  row_tile: int | None = ROW_TILE
  rope_angle_dtype: Any = None
  kv_cache_dtype: Any = None

  def __post_init__(self):
    unknown = set(self.round_at) - ALL_POINTS
    if unknown:
      raise ValueError(f"unknown rounding points {sorted(unknown)}; valid: {sorted(ALL_POINTS)}")
    for f in ("param_dtype", "storage_dtype", "accum_dtype", "compute_dtype", "softmax_dtype"):
      object.__setattr__(self, f, jnp.dtype(getattr(self, f)))
    for f in ("rope_angle_dtype", "kv_cache_dtype"):
      if getattr(self, f) is not None:
        object.__setattr__(self, f, jnp.dtype(getattr(self, f)))
    if self.accum_block is not None and int(self.accum_block) < 1:
      raise ValueError(f"accum_block must be a positive number of terms or None, got "
                       f"{self.accum_block!r}")
    if self.row_tile is not None and (int(self.row_tile) < 1 or self.accum_block is None):
      raise ValueError(f"row_tile must be a positive number of rows, with accum_block set "
                       f"(the key block); got row_tile={self.row_tile!r}, "
                       f"accum_block={self.accum_block!r}")

  # -- dtype questions -----------------------------------------------------------------
  @property
  def stepwise(self) -> bool:
    """True if softmax/norm primitives are rounded step by step (softmax below compute)."""
    return self.softmax_dtype != self.compute_dtype

  @property
  def is_fp8(self) -> bool:
    return self.storage_dtype in FP8_DTYPES

  @property
  def needs_x64(self) -> bool:
    used = (self.storage_dtype, self.accum_dtype, self.compute_dtype, self.rope_angle_dtype,
            self.kv_cache_dtype)  # (a None must not be compared: np.dtype(None) is float64)
    return any(d is not None and d == jnp.float64 for d in used)

  @property
  def dot_operand_dtype(self):
    """Dtype matmul operands are fed in. fp8 values are exactly representable in bf16,
    so fp8 operands go in as bf16 (a native bf16 x bf16 -> f32 matmul on every backend)."""
    if self.storage_dtype in FP8_DTYPES or self.param_dtype in FP8_DTYPES:
      return jnp.dtype(jnp.bfloat16)  # fp8 values (scaled by 2^k too) are exact in bf16
    return self.storage_dtype

  def unavailable_reason(self) -> str | None:
    """Why this policy cannot run in this process (one line), or None."""
    if self.needs_x64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
      return (f"precision policy {self.name!r} needs float64: set JAX_ENABLE_X64=1 or call "
              "collapse_jax.xla_env.enable_x64() before creating arrays")
    if {self.storage_dtype, self.param_dtype} & {jnp.dtype(jnp.float16), *FP8_DTYPES}:
      from collapse_jax import isa
      if (isa.effective_isa() == "SSE4_2" and jax.default_backend() == "cpu"):
        return (f"precision policy {self.name!r} needs float16/fp8 conversions, which "
                "XLA:CPU fails to compile with --xla_cpu_max_isa=SSE4_2 (no F16C: 'Failed "
                "to materialize symbols'); use AVX or above")
    return None

  def check_available(self) -> None:
    reason = self.unavailable_reason()
    if reason:
      raise RuntimeError(reason)

  # -- ops -------------------------------------------------------------------------------
  def to_compute(self, x):
    return jnp.asarray(x).astype(self.compute_dtype)

  def round(self, x, point: str):
    """Round a compute-dtype value to storage at a named rounding point."""
    if point not in ALL_POINTS:
      raise KeyError(f"unknown rounding point {point!r}; valid: {sorted(ALL_POINTS)}")
    if point not in self.round_at:
      return x
    if self.fp8_scaling and self.is_fp8:
      return quantize_scaled(x.astype(self.compute_dtype), self.storage_dtype)
    return x.astype(self.storage_dtype)

  def softcap(self, x, cap: float | None, point: str):
    """cap * tanh(x / cap) in compute dtype (x / cap as x * (1 / cap), 1 / cap a float64
    constant cast to compute dtype), rounded at ``point``; ``cap`` None: x unchanged."""
    if cap is None:
      return x
    cd = self.compute_dtype
    t = jnp.tanh(jnp.asarray(x).astype(cd) * jnp.asarray(1.0 / cap, cd))
    return self.round(t * jnp.asarray(cap, cd), point)

  def operand_dtype(self, at: tuple = ()):
    """The dtype a dot's operands go in. ``at``: the rounding points that last produced its
    activation operands (a weight names none). Every one of them in ``round_at``:
    ``dot_operand_dtype``, the storage values as they are. One of them dropped: both
    operands in ``compute_dtype``, so that a dropped point is not rounded by the dot's own
    operand cast (storage and weight values go up exactly)."""
    unknown = set(at) - ALL_POINTS
    if unknown:
      raise KeyError(f"unknown rounding points {sorted(unknown)}; valid: {sorted(ALL_POINTS)}")
    if all(p in self.round_at for p in at):
      return self.dot_operand_dtype
    return self.compute_dtype

  def dot(self, spec: str, a, b, scale: float | None = None, at: tuple = ()):
    """einsum(spec, a, b) with operands in ``operand_dtype(at)`` and accumulation in
    ``accum_dtype``; optional scalar ``scale`` is applied to the accumulator (in
    compute_dtype) before the caller rounds. Returns compute_dtype."""
    out = self.dot_accum(spec, a, b, at).astype(self.compute_dtype)
    if scale is not None:
      out = out * jnp.asarray(scale, self.compute_dtype)
    return out

  def dot_accum(self, spec: str, a, b, at: tuple = ()):
    """:meth:`dot` without the final conversion: the sum in ``accum_dtype``, for a caller
    that adds partial sums itself (attention's key blocks). ``b`` may be pre-blocked."""
    od = self.operand_dtype(at)
    if isinstance(b, Blocked):  # made by self.preblock(spec, w): already cast and split
      if b.spec != spec or b.x.dtype != self.dot_operand_dtype or b.block != self.accum_block:
        raise ValueError(f"a weight pre-blocked for {b.spec!r} ({b.x.dtype}, block {b.block}) "
                         f"used in {spec!r} ({self.dot_operand_dtype}, block "
                         f"{self.accum_block})")
      if od != b.x.dtype:  # a dropped point: the weight goes up exactly
        b = dataclasses.replace(b, x=b.x.astype(od))
    else:
      b = jnp.asarray(b).astype(od)
    return blocked_einsum(spec, jnp.asarray(a).astype(od), b, self.accum_dtype,
                          self.matmul_precision, self.accum_block)

  def row_dot(self, spec: str, x_BN, w, first: int = 0, at: tuple = ()):
    """:meth:`dot` of rows x [B, N, ...] (``spec``'s first operand, rows on axis 1) with a
    weight, on the length-invariant schedule: the rows, whose stream indices are
    first .. first + N - 1, are cut into tiles of ``row_tile`` rows aligned at index 0
    (zero rows pad the first and last tile) and each tile is one dot of [B, row_tile, ...]
    (``lax.map``: one program, one shape). A row's bits then do not depend on N or on
    ``first``'s tile-mates. ``row_tile`` None: one dot over all rows. ``first`` may be a traced
    integer (a KV cache written at a data-dependent slot): the rows are then placed in
    ceil((R - 1 + N) / R) tiles at offset first % R, the same tiles with the same zero rows
    around them. ``at``: as :meth:`dot`."""
    R = self.row_tile
    if R is None:
      return self.dot(spec, x_BN, w, at=at)
    B, N = x_BN.shape[:2]

    def tile_dots(xp, T):  # xp [B, T * R, ...] -> [B, T * R, ...]: one dot per tile
      tiles = jnp.moveaxis(xp.reshape((B, T, R) + x_BN.shape[2:]), 1, 0)
      if T == 1:  # the same one dot of [B, R, ...], without a loop around it
        out = self.dot(spec, tiles[0], w, at=at)[None]
      else:
        out = jax.lax.map(lambda t: self.dot(spec, t, w, at=at), tiles)  # [T, B, R, ...]
      out = jnp.moveaxis(out, 0, 1)
      return out.reshape((B, T * R) + out.shape[3:])

    if not isinstance(first, int):
      f = jnp.asarray(first, jnp.int32) % R

      def tiled(T):
        def run():
          zeros = jnp.zeros((B, T * R) + x_BN.shape[2:], x_BN.dtype)
          xp = jax.lax.dynamic_update_slice_in_dim(zeros, x_BN, f, axis=1)
          return jax.lax.dynamic_slice_in_dim(tile_dots(xp, T), f, N, axis=1)
        return run
      T = -(-(R - 1 + N) // R)
      if T == 2:  # one tile unless the rows straddle two
        return jax.lax.cond(f + N <= R, tiled(1), tiled(2))
      return tiled(T)()
    f = first % R
    T = -(-(f + N) // R)
    xp = jnp.pad(x_BN, [(0, 0), (f, T * R - f - N)] + [(0, 0)] * (x_BN.ndim - 2))
    return tile_dots(xp, T)[:, f:f + N]

  def untiled(self) -> "Policy":
    """This policy off the length-invariant schedule (``row_tile`` None): same dtypes and
    rounding points, shape-dependent low bits. Generation's fast decoder builds on it
    (``generate.fast_policy``): a row in a tile of ``row_tile`` rows would cost ``row_tile``
    times the work."""
    return dataclasses.replace(self, row_tile=None) if self.row_tile is not None else self

  def preblock(self, spec: str, w) -> "Blocked":
    """``w`` as :meth:`dot` (``spec``, w second) would use it: cast to ``dot_operand_dtype``,
    split into the blocks of :func:`blocked_einsum`, and laid out as that batched dot reads
    its second operand, [blocks, contracted axes, free axes]. A loop that multiplies by the
    same weight many times (a decode loop) makes these copies once instead of at every use:
    XLA does not hoist them out of a loop (the padding is larger than its input, and it puts
    the transpose of a weight whose contracted axis is not leading, such as a tied
    [V, D] lm_head, inside the loop body). The dot's values and shapes are those of the
    unblocked call."""
    b = jnp.asarray(w).astype(self.dot_operand_dtype)
    sb, layout = rhs_layout(spec, b.shape, self.accum_block)
    if sb == layout:
      layout = None
    x = split_operand(spec, b, 1, self.accum_block)
    if layout is not None:
      x = jnp.transpose(x, [sb.index(ch) for ch in layout])
    return Blocked(x, spec, self.accum_block, layout)

  def sm_step(self, fn: Callable, *xs):
    """One softmax/norm primitive: computed in compute_dtype, rounded to softmax_dtype."""
    return fn(*[jnp.asarray(x).astype(self.compute_dtype) for x in xs]).astype(self.softmax_dtype)

  def softmax(self, scores, mask, bias=None):
    """Masked softmax over the last axis. ``scores``: stored logits [..., K]; ``mask``: bool
    broadcastable to scores (True = attend); ``bias``: optional additive bias (ALiBi).
    Never creates inf/NaN: masked entries use the dtype's lowest finite value and get
    weight exactly 0; a fully masked row gives all-zero weights. Returns stored probs
    (without gradient when ``frozen_attention``)."""
    step = self.sm_step
    s = step(lambda v: v, scores)
    if bias is not None:
      s = step(jnp.add, s, bias)
    lowest = jnp.finfo(self.softmax_dtype).min
    s = jnp.where(mask, s, jnp.asarray(lowest, self.softmax_dtype))
    row_max = jnp.max(s, axis=-1, keepdims=True)
    shifted = step(jnp.subtract, s, row_max)
    e = step(jnp.exp, shifted)
    e = jnp.where(mask, e, jnp.zeros((), self.softmax_dtype))
    total = step(lambda v: jnp.sum(v, axis=-1, keepdims=True), e)
    safe_total = jnp.where(total > 0, total, jnp.ones((), self.softmax_dtype))
    p = step(jnp.divide, e, safe_total)
    probs = self.round(p.astype(self.compute_dtype), "probs")
    return jax.lax.stop_gradient(probs) if self.frozen_attention else probs

  def cast_params(self, params):
    """Cast a float32 parameter pytree to ``param_dtype`` (fp8 with scaling: per-tensor
    power-of-two-scaled fp8 values held in compute dtype)."""
    def cast(p):
      p = jnp.asarray(p)
      if not jnp.issubdtype(p.dtype, jnp.floating):
        return p
      if self.fp8_scaling and self.param_dtype in FP8_DTYPES:
        return quantize_scaled(p.astype(self.compute_dtype), self.param_dtype)
      return p.astype(self.param_dtype)
    return jax.tree_util.tree_map(cast, params)

  def describe(self) -> dict:
    d = {
        "name": self.name,
        "param_dtype": str(self.param_dtype),
        "storage_dtype": str(self.storage_dtype),
        "matmul_operand_dtype": str(self.dot_operand_dtype),
        "accum_dtype": str(self.accum_dtype),
        "compute_dtype": str(self.compute_dtype),
        "softmax_dtype": str(self.softmax_dtype),
        "softmax_stepwise_rounding": self.stepwise,
        "round_at": sorted(self.round_at),
        "fp8_scaling": self.fp8_scaling,
        "matmul_precision": str(self.matmul_precision),
        "accum_block": self.accum_block,
        "row_tile": self.row_tile,
        "rope_angle_dtype": str(self.compute_dtype if self.rope_angle_dtype is None
                                else self.rope_angle_dtype),
        "kv_cache_dtype": None if self.kv_cache_dtype is None else str(self.kv_cache_dtype),
    }
    if self.frozen_attention:  # omitted when False: results files of plain runs unchanged
      d["frozen_attention"] = True
    return d


def quantize_scaled(x, fp8_dtype):
  """Per-tensor amax scaling: x -> fp8(x / s) * s with s a power of two such that
  amax / s <= max(fp8). Returns x.dtype. A zero tensor gets s = 1."""
  fmax = float(ml_dtypes.finfo(fp8_dtype).max)
  amax = jnp.max(jnp.abs(x))
  ratio = jnp.where(amax > 0, amax, fmax) / jnp.asarray(fmax, x.dtype)
  mant, e = jnp.frexp(ratio)  # ratio = mant * 2^e, mant in [0.5, 1): ceil(log2) exactly
  k = jnp.where(mant == 0.5, e - 1, e)
  s = jnp.ldexp(jnp.ones((), x.dtype), k)
  return (x / s).astype(fp8_dtype).astype(x.dtype) * s


def _preset(name, storage, *, param=None, softmax=jnp.float32, compute=jnp.float32,
            accum=jnp.float32, **kw):
  return Policy(name=name, param_dtype=param or storage, storage_dtype=storage,
                accum_dtype=accum, compute_dtype=compute, softmax_dtype=softmax,
                **kw)


PRESETS = {
    "float64": _preset("float64", jnp.float64, softmax=jnp.float64, compute=jnp.float64,
                       accum=jnp.float64),
    "float32": _preset("float32", jnp.float32),
    "bfloat16": _preset("bfloat16", jnp.bfloat16),
    "bfloat16_pure": _preset("bfloat16_pure", jnp.bfloat16, softmax=jnp.bfloat16),
    "float16": _preset("float16", jnp.float16),
    "float8_e4m3fn": _preset("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
    "float8_e5m2": _preset("float8_e5m2", ml_dtypes.float8_e5m2),
}


def preset_names() -> list[str]:
  return list(PRESETS)


def get_policy(name: str | Policy, *, fp8_scaling: bool | None = None) -> Policy:
  """Preset by name. ``fp8_scaling`` overrides the preset's (fp8 presets only)."""
  if isinstance(name, Policy):
    pol = name
  else:
    if name not in PRESETS:
      raise ValueError(f"unknown precision {name!r}; valid: {', '.join(PRESETS)}")
    pol = PRESETS[name]
  if fp8_scaling is not None and fp8_scaling != pol.fp8_scaling:
    if not pol.is_fp8:
      raise ValueError(f"fp8_scaling applies to fp8 presets only, not {pol.name!r}")
    pol = dataclasses.replace(pol, fp8_scaling=fp8_scaling,
                              name=pol.name + ("_scaled" if fp8_scaling else ""))
  return pol
