"""Measure the collapse curve of YOUR JAX model with collapse_jax (README, "Your own model").

The model below is written here in plain JAX, not built by collapse_jax: a 2-layer causal
Transformer (RMSNorm, no positional encoding: the causal mask is its only sense of order,
one attention head, GELU MLP) run in
bfloat16 or float32. All the suite needs is ``apply_fn(params, tokens [B, N]) -> states
[B, N, D]``; ``foreign.collapse_curve`` feeds it the pair set's tokens and compares the
compared tokens' states bit for bit.

  python examples/own_model.py              # bf16 vs f32, prefix_repeat pairs, n <= 2048
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

import collapse_jax  # noqa: F401  (applies the XLA numerics guards before jax runs)
from collapse_jax import foreign, pairs

D, VOCAB = 32, 16


def init(key):
  k = iter(jax.random.split(key, 16))
  w = lambda *s: jax.random.normal(next(k), s) / np.sqrt(s[0])
  layer = lambda: {"qkv": w(D, 3 * D), "o": w(D, D), "up": w(D, 4 * D), "down": w(4 * D, D)}
  return {"embed": jax.random.normal(next(k), (VOCAB, D)), "layers": [layer(), layer()]}


def apply_fn(params, tokens_BN):
  """Last-layer states [B, N, D] in the params' dtype (softmax statistics in f32)."""
  dt = params["embed"].dtype
  N = tokens_BN.shape[1]
  rms = lambda x: x * jax.lax.rsqrt(jnp.mean(x.astype(jnp.float32) ** 2, -1, keepdims=True)
                                    + 1e-6).astype(dt)
  x = params["embed"][tokens_BN]
  mask = jnp.tril(jnp.ones((N, N), bool))
  for p in params["layers"]:
    q, k, v = jnp.split(rms(x) @ p["qkv"], 3, axis=-1)
    s = jnp.where(mask, (q @ jnp.swapaxes(k, -1, -2)).astype(jnp.float32) / np.sqrt(D), -1e30)
    x = x + (jax.nn.softmax(s, -1).astype(dt) @ v) @ p["o"]
    x = x + jax.nn.gelu(rms(x) @ p["up"]) @ p["down"]
  return rms(x)


def main(max_n: int = 2048) -> dict:
  pair_set = pairs.make_family("prefix_repeat", max_n, seed=0, vocab_size=VOCAB, prefix_len=8)
  ns = np.arange(9, max_n + 1)
  params = init(jax.random.key(0))
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    p = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    rec = foreign.collapse_curve(jax.jit(apply_fn), p, pair_set, ns)
    out[jnp.dtype(dtype).name] = rec
    print(f"{jnp.dtype(dtype).name:>9}: first equal n = {rec['collapse_onset']}, "
          f"{int(rec['bitwise_equal'].sum())} of {len(ns)} n equal, "
          f"min linf = {rec['linf'].min():.3g}")
  return out


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 2048)
