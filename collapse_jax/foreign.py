"""The collapse curve of a model the suite did not build (issue 28, item 5).

Bring any JAX model as ``apply_fn(params, tokens_BN) -> states_BND``: int32 token ids
[B, N] in, the last layer's states [B, N, D] out, in whatever dtype your model computes
them (bfloat16 states are compared as bfloat16 bits). The pair sets (:mod:`collapse_jax.pairs`:
(A_n, B_n) per n, the words defined there) say which tokens to feed, and
:mod:`collapse_jax.metrics` compares the compared tokens' states:

  * ``causal=True`` and a one-pass pair set: ONE call over the pair set's stream; row
    len(A_n) - 1 and row len(B_n) - 1 hold A_n's and B_n's compared token. Correct only for a
    causal model. Whether that row has the bits of a forward of exactly len(A_n) tokens
    is your model's business (collapse_jax's own decoder guarantees it: BUILD_NOTES, "One
    answer per model and precision"); check with ``causal=False`` on a few n.
  * otherwise: one call per sequence, A_n and B_n apart (each compiles for its length).

The result has the fields of a sweep run record that concern y (``records.summarize``): the
lengths, ``linf``/``l1``/``max_ulp``/``bitwise_equal``/``nonfinite``/``absmax`` [S] and the
onsets, so ``collapse_jax.figures`` and ``attribution.summarize``-style code read it alike.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import metrics
from collapse_jax.pairs import PairSet


def collapse_curve(apply_fn: Callable, params, pair_set: PairSet, lengths, *,
                   causal: bool = True) -> dict:
  """y_n vs y*_(n+1) of ``apply_fn``'s last-layer states for every n of ``lengths`` (int
  [S], strictly increasing, each >= pair_set.min_n). See the module docstring."""
  ns = pair_set.check(lengths)
  if pair_set.copy != "token":
    raise ValueError(f"pair set {pair_set.name!r} copies A_n's last input vector "
                     "(copy='vector'): an apply_fn takes token ids only")
  if causal and pair_set.one_pass:
    states = apply_fn(params, jnp.asarray(pair_set.stream(int(ns[-1])))[None])[0]
    rows = pair_set.rows(ns)
    a, b = states[rows[0]], states[rows[1]]
    engine = "causal"
  else:
    last = lambda toks: apply_fn(params, jnp.asarray(toks)[None])[0, -1]
    pairs = [pair_set.pair_tokens(int(n)) for n in ns]
    a = jnp.stack([last(p[0]) for p in pairs])
    b = jnp.stack([last(p[1]) for p in pairs])
    engine = "exact"
  if a.ndim != 2:
    raise ValueError(f"apply_fn must return states [B, N, D]; a compared row has shape "
                     f"{tuple(a.shape)}")
  m = jax.tree_util.tree_map(np.asarray, metrics.summarize_pair(a, b))
  equal = m["bitwise_equal"]
  return {"lengths": ns, "engine": engine, "dtype": str(a.dtype), **m,
          "absmax": np.asarray(metrics.absmax(a)),
          "collapse_onset": int(metrics.collapse_onset(equal, ns)),
          "sustained_onset": int(metrics.sustained_onset(equal, ns))}
