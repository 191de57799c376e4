"""The one decoder (Flax Linen) for synthetic models and real Llama/Gemma checkpoints.

Pre-LN, exactly the paper's section 2:
    z = Attn(norm1(v)) + v;   v' = MLP(norm2(z)) + z;   y = norm3(v^(L)).
Options (config.DecoderConfig) give the real architectures without a second model: Gemma 3's
post-norms (z = v + norm(Attn(norm1(v))), likewise for the MLP), per-head q/k norms, Qwen2's
q/k/v biases, Gemma 2's tanh softcapping of attention and output logits, and a
per-layer sliding window and RoPE base (``cfg.window(l)``, ``cfg.rope_base(l)``).

Every arithmetic op asks the precision policy (``precision.Policy``): operands are upcast,
computed in the compute/accumulation dtype and rounded at named points. Parameter layout
(what checkpoint loaders fill; all kernels are [in, out...]):

    embed/embedding [V, D]            (token input only)
    pos_embed/embedding [max_len, D]  (pe='learned' only)
    layer_{l}/norm1/scale [D] (+ bias [D] for layernorm)
    layer_{l}/attn/{q [D,H,Dh], k [D,KV,Dh], v [D,KV,Dh], o [H,Dh,D]}
    layer_{l}/attn/{q_norm, k_norm}/scale [Dh]          (qk_norm only)
    layer_{l}/attn/{q_bias [H,Dh], k_bias [KV,Dh], v_bias [KV,Dh]}   (qkv_bias only)
    layer_{l}/post_attn_norm/scale [D]                   (post_norms only)
    layer_{l}/norm2/...
    layer_{l}/mlp/{up [D,F], gate [D,F] (GLU only), down [F,D]}
    layer_{l}/post_mlp_norm/scale [D]                    (post_norms only)
    final_norm/...
    lm_head/kernel [D, V]             (token input, untied only)

Intermediates (``collect``) come from the same forward, never a second copy:
    'residual'      [L+1, B, N, D]     v^(0..L) (the residual stream entering each layer + output)
    'attn_out'      [L, B, N, D]       each layer's attention block output Attn(norm1(v^(l)))
                                       as added to the residual (after the output projection
                                       and, with post_norms, the post-attention norm)
    'mid_residual'  [L, B, N, D]       z^(l) = v^(l) + attn_out^(l), the residual stream between
                                       attention and MLP (the MLP block's input; = v^(l+1)
                                       without MLP)
    'heads'         [L, B, N, H, Dh]   per-head attention outputs sum_j p_ij v_j
    'attn_weights'  [L, B, H, N, M]    attention matrices (M = cache + N keys)
    'kv'            [L, B, N, KV, Dh]  keys (post-RoPE) and values, for a KV cache
    'cache'         {'k','v': [L, B, M0, KV, Dh]}  with a cache 'length' only: the cache with
                                       the new rows' keys and values written in (one array per
                                       key and value, updated layer by layer in place, where
                                       per-layer slices would be copies: on XLA:CPU every
                                       layer's copy of its M0 slots stayed alive together)
    'q'             [L, B, N, H, Dh]   queries as the score dot takes them (post-RoPE)
    'logits'        [B, N, V]          (token models)
    'last_logits'   [B, V]             the logits of the last row only (token models): what
                                       generation needs, without a [B, N, V] array
    'blocked'       pytree             every weight as its dot uses it (``Policy.preblock``:
                                       cast, padded, split into blocks, laid out for the dot), the
                                       used weights only (the lm_head only with logits);
                                       pass it back as ``forward(blocked=...)`` to skip that
                                       copy in a loop (generation's decode steps)
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from collapse_jax import attention, positional
from collapse_jax.attention import QUERY_AXIS  # the mesh axis over which query tiles are spread
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy

COLLECTABLE = ("residual", "attn_out", "mid_residual", "heads", "attn_weights", "kv", "q",
               "cache", "logits", "last_logits", "blocked")
BLOCKED = "blocked"  # the variable collection of pre-blocked weights (``Policy.preblock``)


def _wdot(mod: nn.Module, spec: str, x, name: str, w, first: int = 0, at: str = "norm"):
  """``mod.policy.row_dot(spec, x, w, first, at=(at,))`` (rows x [B, N, ...] with stream
  indices from ``first``, last rounded at the point ``at``) for the weight ``w`` that
  ``mod`` names ``name``: with its pre-blocked copy
  (``Policy.preblock``) from the :data:`BLOCKED` collection where one is given, and storing
  that copy there where the collection is being made."""
  pol = mod.policy
  if mod.has_variable(BLOCKED, name):
    w = mod.get_variable(BLOCKED, name)
  elif mod.is_mutable_collection(BLOCKED):
    w = pol.preblock(spec, w)
    mod.put_variable(BLOCKED, name, w)
  return pol.row_dot(spec, x, w, first, at=(at,))


# param_init's plan pass: a list that records each Gaussian draw (key, shape, std, stand-in)
# instead of making it; None (the default) draws.
PLAN = contextvars.ContextVar("collapse_jax_init_plan", default=None)


def _normal(var: float):
  std = math.sqrt(var)

  def init(key, shape, dtype=jnp.float32):
    plan = PLAN.get()
    if plan is None:
      return std * jax.random.normal(key, shape, dtype)
    stand_in = jnp.zeros(shape, dtype)
    plan.append((key, tuple(shape), std, stand_in))
    return stand_in
  return init


class Norm(nn.Module):
  """LayerNorm / RMSNorm / Gemma (1+w) RMSNorm, statistics in the policy's softmax dtype."""
  config: DecoderConfig
  policy: Policy

  @nn.compact
  def __call__(self, x, point="norm"):
    cfg, pol = self.config, self.policy
    d = x.shape[-1]
    scale_init = nn.initializers.zeros if cfg.norm == "gemma_rmsnorm" else nn.initializers.ones
    w = self.param("scale", scale_init, (d,), jnp.float32)
    step = pol.sm_step
    xs = step(lambda v: v, x)
    if cfg.norm == "layernorm":
      mean = step(lambda v: jnp.sum(v, -1, keepdims=True) / d, xs)
      xs = step(jnp.subtract, xs, mean)
    ms = step(lambda v: jnp.sum(v * v, -1, keepdims=True) / d, xs)
    inv = step(lambda v: jax.lax.rsqrt(v + cfg.norm_eps), ms)
    xn = step(jnp.multiply, xs, inv)
    wc = pol.to_compute(w)
    out = pol.to_compute(xn) * ((1.0 + wc) if cfg.norm == "gemma_rmsnorm" else wc)
    if cfg.norm == "layernorm":
      out = out + pol.to_compute(self.param("bias", nn.initializers.zeros, (d,), jnp.float32))
    return pol.round(out, point)


class Attention(nn.Module):
  """Multi-head (GQA) attention: the projections, q/k norms and RoPE here, the attention
  itself in ``attention.attend`` on ``schedule`` (whole, query chunks, key blocks, a device
  mesh; on the length-invariant schedule, ``policy.row_tile`` set: fixed query tiles and key
  blocks)."""
  config: DecoderConfig
  policy: Policy
  schedule: attention.Schedule = attention.Schedule()
  layer: int = 0  # which layer: its window and RoPE base (cfg.window, cfg.rope_base)

  @nn.compact
  def __call__(self, h_BND, q_pos_BN, k_pos_BM, k_valid_BM, cache_kv=None, first=None):
    """``first``: a traced stream index of row 0 whose new keys are written into the cache's
    slots first .. first + N - 1 (``Decoder``'s cache 'length'); None: the rows follow the
    whole cache (index M0 = the cache's length)."""
    cfg, pol = self.config, self.policy
    D, H, KV, Dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh
    init = _normal(cfg.variance)
    wq = self.param("q", init, (D, H, Dh), jnp.float32)
    wk = self.param("k", init, (D, KV, Dh), jnp.float32)
    wv = self.param("v", init, (D, KV, Dh), jnp.float32)
    wo = self.param("o", init, (H, Dh, D), jnp.float32)
    insert = first is not None
    if not insert:
      first = 0 if cache_kv is None else cache_kv[0].shape[1]  # stream index of row 0
    def project(name, w, heads):  # the dot, its bias (qkv_bias) in compute dtype, one rounding
      out = _wdot(self, "bnd,dhk->bnhk", h_BND, name, w, first)
      if cfg.qkv_bias:
        out = out + pol.to_compute(self.param(f"{name}_bias", nn.initializers.zeros,
                                              (heads, Dh), jnp.float32))
      return pol.round(out, "qkv")
    q, k, v = project("q", wq, H), project("k", wk, KV), project("v", wv, KV)
    if cfg.qk_norm:  # per head, over Dh
      q = Norm(cfg, pol, name="q_norm")(q, point="qk_norm")
      k = Norm(cfg, pol, name="k_norm")(k, point="qk_norm")
    if cfg.pe == "rope":
      theta = cfg.rope_base(self.layer)
      rope = lambda x: pol.round(positional.apply_rope(
          pol.to_compute(x), q_pos_BN, theta, cfg.rope_layout, cfg.rope_scaling,
          pol.rope_angle_dtype), "rope")
      q, k = rope(q), rope(k)
    if pol.kv_cache_dtype is not None:  # the keys and values as a KV cache holds them
      k, v = k.astype(pol.kv_cache_dtype), v.astype(pol.kv_cache_dtype)
    new_kv = (k, v, q, None)  # (and the queries, for collect 'q'; the whole cache, below)
    if insert and cache_kv[0].ndim == 5:  # the whole cache [L, B, M0, KV, Dh] (collect
      # 'cache'): this layer's rows written in place, the layer's slots read from it
      if cache_kv[0].dtype != k.dtype or cache_kv[1].dtype != v.dtype:
        raise ValueError(f"collect 'cache': the cache holds {cache_kv[0].dtype}, the keys are "
                         f"{k.dtype}; give it the keys' dtype")
      at = tuple(jnp.asarray(i, jnp.int32) for i in (self.layer, 0, first, 0, 0))
      whole = tuple(jax.lax.dynamic_update_slice(c, x[None], at)
                    for c, x in zip(cache_kv, (k, v)))
      new_kv = (k, v, q, whole)
      k, v = whole[0][self.layer], whole[1][self.layer]
    elif insert:  # written into the cache's slots first.. (later slots: causally unseen)
      k = jax.lax.dynamic_update_slice_in_dim(cache_kv[0].astype(k.dtype), k, first, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache_kv[1].astype(v.dtype), v, first, axis=1)
    elif cache_kv is not None:  # prefix keys/values [B, M0, KV, Dh] (stored dtype)
      k = jnp.concatenate([cache_kv[0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([cache_kv[1].astype(v.dtype), v], axis=1)
    B, N = h_BND.shape[:2]
    heads, probs = attention.attend(
        pol, q.reshape(B, N, KV, H // KV, Dh), k, v, k_pos_BM, k_valid_BM, q_pos_BN,
        causal=cfg.causal, window=cfg.window(self.layer),
        alibi_heads=H if cfg.pe == "alibi" else None, qk_scale=cfg.qk_scale,
        schedule=self.schedule, softcap=cfg.attn_softcap, q_start=first if insert else None,
        qk_at="rope" if cfg.pe == "rope" else "qk_norm" if cfg.qk_norm else "qkv")
    heads = heads.reshape(B, N, H, Dh)
    out = pol.round(_wdot(self, "bnhk,hkd->bnd", heads, "o", wo, first, "heads"), "attn_out")
    return out, heads, probs, new_kv


class MLP(nn.Module):
  config: DecoderConfig
  policy: Policy

  @nn.compact
  def __call__(self, h_BND, first=0):
    """``first``: the stream index of row 0 (the row tiles' alignment; may be traced)."""
    cfg, pol = self.config, self.policy
    init = _normal(cfg.variance)
    up = pol.round(_wdot(self, "bnd,df->bnf", h_BND, "up",
                         self.param("up", init, (cfg.d_model, cfg.ff)), first), "mlp_hidden")
    if cfg.mlp == "gelu":
      act = jax.nn.gelu(pol.to_compute(up), approximate=True)
    else:
      gate = pol.round(_wdot(self, "bnd,df->bnf", h_BND, "gate",
                             self.param("gate", init, (cfg.d_model, cfg.ff)), first),
                       "mlp_hidden")
      g = pol.to_compute(gate)
      fn = jax.nn.silu(g) if cfg.mlp == "swiglu" else jax.nn.gelu(g, approximate=True)
      act = fn * pol.to_compute(up)
    act = pol.round(act, "mlp_act")
    return pol.round(_wdot(self, "bnf,fd->bnd", act, "down",
                           self.param("down", init, (cfg.ff, cfg.d_model)), first, "mlp_act"),
                     "mlp_out")


class Block(nn.Module):
  config: DecoderConfig
  policy: Policy
  schedule: attention.Schedule = attention.Schedule()
  layer: int = 0

  @nn.compact
  def __call__(self, v_BND, q_pos, k_pos, k_valid, cache_kv=None, first=None):
    """Returns (v^(l+1), heads, probs, kv, attention output a, z = v + a), all [B, N, ...];
    kv is (keys, values, queries, whole): the new rows' keys and values, for collect 'q' their
    queries, and for collect 'cache' the whole cache (k, v) with them written in (else None).
    ``first``: :class:`Attention`'s."""
    cfg, pol = self.config, self.policy
    a, heads, probs, kv = Attention(cfg, pol, self.schedule, self.layer, name="attn")(
        Norm(cfg, pol, name="norm1")(v_BND), q_pos, k_pos, k_valid, cache_kv, first)
    if cfg.post_norms:
      a = Norm(cfg, pol, name="post_attn_norm")(a, point="post_norm")
    z = pol.round(pol.to_compute(v_BND) + pol.to_compute(a), "residual")
    if not cfg.use_mlp:
      return z, heads, probs, kv, a, z
    if first is None:
      first = 0 if cache_kv is None else cache_kv[0].shape[1]
    m = MLP(cfg, pol, name="mlp")(Norm(cfg, pol, name="norm2")(z), first)
    if cfg.post_norms:
      m = Norm(cfg, pol, name="post_mlp_norm")(m, point="post_norm")
    return pol.round(pol.to_compute(z) + pol.to_compute(m), "residual"), heads, probs, kv, a, z


class Decoder(nn.Module):
  """Decoder-only Transformer. See module docstring for parameters and intermediates."""
  config: DecoderConfig
  policy: Policy
  collect: Sequence[str] = ()
  schedule: attention.Schedule = attention.Schedule()  # how attention runs (want_probs: set
  #                                                     from collect)

  @nn.compact
  def __call__(self, inputs, positions=None, key_valid=None, cache=None):
    """Args:
      inputs: int [B, N] token ids (vocab_size > 0) or float [B, N, D] vectors.
      positions: int [B, N] absolute positions (default 0..N-1).
      key_valid: bool [B, N] which of the N new tokens may be attended to (padding mask;
        default all True).
      cache: optional prefix {'k','v': [L, B, M0, KV, Dh], 'pos': int [B, M0],
        'valid': bool [B, M0]}: new tokens attend to valid prefix keys too. With 'length' (an
        int, may be traced) the new tokens are stream indices length .. length + N - 1: their
        keys are written into those slots (M0 >= length + N) and later slots are not seen;
        without it they follow all M0 slots.
    Returns: dict with 'y' [B, N, D] (final normalised output) and requested intermediates.
    """
    cfg, pol = self.config, self.policy
    unknown = set(self.collect) - set(COLLECTABLE)
    if unknown:
      raise ValueError(f"unknown intermediates {sorted(unknown)}; valid: {COLLECTABLE}")
    sched = dataclasses.replace(self.schedule, want_probs="attn_weights" in self.collect)
    sched.check(inputs.shape[1])
    B, N = inputs.shape[:2]
    if positions is None and cache is not None:
      raise ValueError("pass the new tokens' positions with a cache (the default 0..N-1 would "
                       "silently mis-position RoPE/ALiBi/absolute PEs after the prefix)")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
    if key_valid is None:
      key_valid = jnp.ones((B, N), bool)
    init = _normal(cfg.variance)
    if cfg.vocab_size:
      table = self.param("embed", lambda k, s: {"embedding": init(k, s)}, (cfg.vocab_size, cfg.d_model))
      x = pol.to_compute(jnp.take(table["embedding"], inputs, axis=0))
    else:
      if inputs.ndim != 3 or inputs.shape[-1] != cfg.d_model:
        raise ValueError(f"vector inputs must be [B, N, {cfg.d_model}], got {inputs.shape}")
      table = None
      x = pol.to_compute(inputs)
    if cfg.embed_scale:  # a compute-dtype scalar (HF: a float32 buffer) rounded at embed_scale
      scale = pol.round(jnp.asarray(math.sqrt(cfg.d_model), pol.compute_dtype), "embed_scale")
      x = x * pol.to_compute(scale)
    if cfg.pe == "sinusoidal":
      x = x + positional.sinusoidal(positions, cfg.d_model, pol.compute_dtype)
    elif cfg.pe == "learned":
      pe = self.param("pos_embed", lambda k, s: {"embedding": init(k, s)}, (cfg.max_len, cfg.d_model))
      x = x + pol.to_compute(jnp.take(pe["embedding"], positions, axis=0))
    v = pol.round(x, "embed")

    first = None if cache is None else cache.get("length")  # traced: written into slots
    if first is not None:
      k_pos = jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions.astype(
          cache["pos"].dtype), first, axis=1)
      k_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], key_valid, first, axis=1)
    elif cache is not None:
      k_pos = jnp.concatenate([cache["pos"], positions], axis=1)
      k_valid = jnp.concatenate([cache["valid"], key_valid], axis=1)
    else:
      k_pos, k_valid = positions, key_valid
    whole = "cache" in self.collect  # the cache threaded through the layers, written in place
    if whole and first is None:
      raise ValueError("collect 'cache' needs a cache with a 'length' (the slots to write)")
    residual, heads, weights, ks, vs, qs, attn_out, mid = [v], [], [], [], [], [], [], []
    for l in range(cfg.num_layers):
      cache_kv = (None if cache is None else (cache["k"], cache["v"]) if whole else
                  (cache["k"][l], cache["v"][l]))
      v, h, p, kv, a, z = Block(cfg, pol, sched, l, name=f"layer_{l}")(
          v, positions, k_pos, k_valid, cache_kv, first)
      if whole:
        cache = {**cache, "k": kv[3][0], "v": kv[3][1]}
      residual.append(v); heads.append(h); weights.append(p); ks.append(kv[0]); vs.append(kv[1])
      qs.append(kv[2])
      attn_out.append(a); mid.append(z)
    y = Norm(cfg, pol, name="final_norm")(v, point="final_norm")

    out: dict[str, Any] = {"y": y}
    if "residual" in self.collect:
      out["residual"] = jnp.stack(residual)
    if "attn_out" in self.collect:
      out["attn_out"] = jnp.stack(attn_out)
    if "mid_residual" in self.collect:
      out["mid_residual"] = jnp.stack(mid)
    if "heads" in self.collect:
      out["heads"] = jnp.stack(heads)
    if "attn_weights" in self.collect:
      out["attn_weights"] = jnp.stack(weights)
    if "kv" in self.collect:
      out["k"], out["v"] = jnp.stack(ks), jnp.stack(vs)
    if "q" in self.collect:
      out["q"] = jnp.stack(qs)
    if whole:
      out["cache"] = {"k": cache["k"], "v": cache["v"]}
    wants = [k for k in ("logits", "last_logits") if k in self.collect]
    if wants and not cfg.vocab_size:
      raise ValueError(f"{wants[0]!r} needs a token model (vocab_size > 0)")
    if wants and not cfg.tie_embeddings:
      w = self.param("lm_head", lambda k, s: {"kernel": init(k, s)}, (cfg.d_model, cfg.vocab_size))
    if first is None:
      first = 0 if cache is None else cache["k"].shape[2]  # stream index of row 0
    for key in wants:  # the same dot and rounding point for all rows or the last one
      y_rows, at = (y, first) if key == "logits" else (y[:, -1:], first + N - 1)
      if cfg.tie_embeddings:
        lg = pol.round(_wdot(self, "bnd,vd->bnv", y_rows, "lm_head", table["embedding"], at,
                             "final_norm"), "logits")
      else:
        lg = pol.round(_wdot(self, "bnd,dv->bnv", y_rows, "lm_head", w["kernel"], at,
                             "final_norm"), "logits")
      lg = pol.softcap(lg, cfg.final_softcap, "logit_softcap")
      out[key] = lg if key == "logits" else lg[:, 0]
    return out


def init_params(config: DecoderConfig, key) -> dict:
  """float32 parameters (C.3 Gaussian init), the bits of ``jax.jit(Decoder.init)``, compiled
  in parts that configs share (collapse_jax/param_init.py). Cast with
  ``policy.cast_params`` before use; call it outside jit."""
  from collapse_jax import param_init  # it builds on Decoder
  return param_init.init_params(config, key)


def forward(config: DecoderConfig, policy: Policy, params, inputs, *, collect=(),
            positions=None, key_valid=None, cache=None, query_chunk: int | None = None,
            query_mesh=None, blocked=None, key_block: int | None = None) -> dict:
  """Pure forward: ``params`` must already be cast by ``policy.cast_params``.
  jit/vmap/grad-safe; ``collect``, ``query_chunk`` and ``query_mesh`` must be static under jit.
  ``query_chunk``: attention over query rows in chunks of this size (memory linear in N for
  a fixed chunk; see ``attention.Schedule``). ``query_mesh``: spread those chunks over the devices of
  this 1-D mesh (axis ``QUERY_AXIS``; :func:`chunk_mesh`). ``blocked``: the weights as
  ``collect=("blocked",)`` returned them for this policy (same values, no per-call copy).
  ``key_block`` (static): with ``query_chunk`` on a causal model, each chunk attends only to
  the keys it can see, in multiples of this many (``attention.Schedule``; low bits may differ)."""
  policy.check_available()
  shape = getattr(inputs, "shape", None)
  if shape is not None and (len(shape) < 2 or shape[1] == 0):
    raise ValueError(f"forward: inputs must be [B, N{', D' if not config.vocab_size else ''}] "
                     f"with N >= 1 tokens; got shape {tuple(shape)}")
  dec = Decoder(config, policy, tuple(c for c in collect if c != BLOCKED),
                attention.Schedule(query_chunk, query_mesh, key_block))
  if BLOCKED in collect:
    if blocked is not None:
      raise ValueError("forward: collect 'blocked' or pass blocked=, not both")
    out, made = dec.apply({"params": params}, inputs, positions, key_valid, cache,
                          mutable=[BLOCKED])
    return {**out, BLOCKED: made[BLOCKED]}
  variables = {"params": params} if blocked is None else {"params": params, BLOCKED: blocked}
  return dec.apply(variables, inputs, positions, key_valid, cache)


def chunk_mesh(devices) -> jax.sharding.Mesh:
  """The 1-D mesh (axis ``QUERY_AXIS``) that spreads a forward's query chunks over these
  devices (``forward(query_mesh=...)``)."""
  import numpy as np
  return jax.sharding.Mesh(np.asarray(list(devices)), (QUERY_AXIS,))
