"""Parameter init: the float32 C.3 Gaussian init of ``model.Decoder``, with the bits of
``jax.jit(Decoder.init)`` (tests/test_model.py), compiled in parts that configs share.

A whole-init program took 2-3 s to compile per config on CPU, almost all of it the
Gaussian draws (threefry and erf_inv per shape), and op-by-op Flax init takes seconds too;
the default test tier spent 74 of its 572 s there. Here one small program per config runs
Flax's init with each Gaussian initializer recording (key, shape, std) instead of drawing
(``model.PLAN``) and returns the keys and the constant leaves (norm scales, biases); the
draws come from one program per power-of-two size (:func:`_draw`). jax's partitionable
threefry (its default) makes element i of a draw a function of (key, i) alone and normal's
transform is elementwise, so a draw of shape S is the first prod(S) values of a longer one.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import model, precision
from collapse_jax.config import DecoderConfig


def init_params(config: DecoderConfig, key) -> dict:
  """float32 parameters for ``config`` from ``key`` (typed or raw), as ``model.Decoder``
  lays them out. Reads the draws on the host: call it outside jit."""
  keys_fn, plan = _init_fn(config)
  fixed, keys = keys_fn(key)
  fixed = iter(fixed)
  leaves = []
  for i in plan["slots"]:
    if i is None:
      leaves.append(next(fixed))
      continue
    shape, std = plan["draws"][i]
    size = math.prod(shape)
    flat = np.asarray(_draw(max(256, 1 << (size - 1).bit_length()))(keys[i], np.float32(std)))
    leaves.append(jnp.asarray(flat[:size].reshape(shape)))
  return jax.tree_util.tree_unflatten(plan["treedef"], leaves)


@functools.lru_cache(maxsize=None)
def _draw(size: int):
  """``std`` times a float32 Gaussian draw of ``size`` values: the init's own ``std *
  normal`` (the product rounds once in float32 whether ``std`` is a constant or an
  argument)."""
  return jax.jit(lambda key, std: std * jax.random.normal(key, (size,), jnp.float32))


def flax_init_args(config: DecoderConfig) -> tuple:
  """(``model.Decoder`` in float32 with the untied head collected, a [1, 2] dummy input):
  what ``Decoder.init`` takes to create every parameter (tests/test_model.py's reference,
  ``jax.jit(Decoder.init)``, uses it too)."""
  dec = model.Decoder(config, precision.get_policy("float32"), collect=("logits",) if (
      config.vocab_size and not config.tie_embeddings) else ())
  dummy = (jnp.zeros((1, 2), jnp.int32) if config.vocab_size
           else jnp.zeros((1, 2, config.d_model), jnp.float32))
  return dec, dummy


@functools.lru_cache(maxsize=None)
def _init_fn(config: DecoderConfig):
  """(jitted key -> (constant leaves, one key per draw), plan): the plan (filled when the
  program is traced) holds the params treedef, each leaf's draw number (None: a constant
  leaf) and each draw's (shape, std)."""
  dec, dummy = flax_init_args(config)
  plan = {}

  def keys_and_constants(key):
    draws = []
    token = model.PLAN.set(draws)
    try:
      params = dec.init(key, dummy)["params"]
    finally:
      model.PLAN.reset(token)
    leaves, plan["treedef"] = jax.tree_util.tree_flatten(params)
    where = {id(d[3]): i for i, d in enumerate(draws)}  # Flax stores the stand-in itself
    plan["slots"] = [where.get(id(x)) for x in leaves]
    plan["draws"] = [(shape, std) for _, shape, std, _ in draws]
    if sorted(i for i in plan["slots"] if i is not None) != list(range(len(draws))):
      raise RuntimeError("init_params: the Gaussian draws do not map one to one onto the "
                         "parameter leaves")
    return ([x.astype(jnp.float32) for x, i in zip(leaves, plan["slots"]) if i is None],
            [d[0] for d in draws])
  return jax.jit(keys_and_constants), plan
