"""Where along the forward pass do two rows of one causal pass stop differing?

Vocabulary: for a sequence length n, rows ``n-1`` and ``n`` of ONE causal pass are the last
tokens of A_n and B_n (the ``prefix_repeat`` pair). A *stage* is a stored tensor of the
forward: the per-head attention output of layer l (``heads L<l>``), the residual stream after
layer l (``v^(l)``), and the final normalised output ``y``. For each stage and n,
:func:`stage_differences` reports the float64 max |difference| of the two rows and how many
of the stored coordinates differ at all. A bitwise collapse of y needs every coordinate of
every earlier stage to agree (BUILD_NOTES, "Why bf16 stops at ~1 ulp").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import metrics, model
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy


def stage_names(cfg: DecoderConfig) -> list[str]:
  names = []
  for l in range(cfg.num_layers):
    names += [f"heads L{l}", f"v^({l + 1})"]
  return names + ["y"]


def stage_differences(cfg: DecoderConfig, pol: Policy, params, tokens_T, ns) -> dict:
  """One causal pass over ``tokens_T`` (int [T], T > max(ns)); ``params`` already cast by
  ``pol``. Returns {'n': [K], 'stages': [S], 'linf': float [S, K] (float64 max |row n-1 -
  row n|), 'coords_differ': int [S, K] (stored coordinates not bitwise equal; NaN/inf never
  are, as in ``metrics.bitwise_equal``), 'coords': int
  [S] (coordinates per stage), 'absmax': float [S, K] (max |row n-1|)}."""
  ns = [int(n) for n in ns]
  if not ns or min(ns) < 1 or max(ns) >= len(tokens_T):
    raise ValueError(f"lengths must lie in [1, {len(tokens_T) - 1}] for {len(tokens_T)} tokens")
  out = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "heads")))(
      params, jnp.asarray(tokens_T, jnp.int32)[None])
  heads = np.asarray(out["heads"][:, 0])  # [L, T, H, Dh]
  res = np.asarray(out["residual"][:, 0])  # [L+1, T, D]
  tensors = []
  for l in range(cfg.num_layers):
    tensors += [heads[l].reshape(heads.shape[1], -1), res[l + 1]]
  tensors.append(np.asarray(out["y"][0]))
  rows = np.asarray(ns)
  linf, differ, absmax = [], [], []
  for t in tensors:
    a, b = t[rows - 1], t[rows]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    linf.append(np.abs(a64 - b64).max(-1))
    differ.append((~np.asarray(metrics.bitwise_equal_elementwise(a, b))).sum(-1))
    absmax.append(np.abs(a64).max(-1))
  return {"n": ns, "stages": stage_names(cfg), "linf": np.stack(linf),
          "coords_differ": np.stack(differ), "coords": [t.shape[-1] for t in tensors],
          "absmax": np.stack(absmax)}
