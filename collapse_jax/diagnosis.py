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

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import metrics, model, results
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


def equal_probability(cfg: DecoderConfig, params, tokens_T, ns, dtype, *,
                      query_chunk: int | None = None) -> dict:
  """Float64 predictions of how often rows n-1 and n of a ``dtype`` pass are bitwise equal.

  If a stored coordinate's exact value fell at a uniformly random offset from the ``dtype``
  grid, a coordinate whose two rows differ by d_i would round alike with probability
  max(0, 1 - |d_i| / ulp_i), and a stage (one stored tensor's row) with probability
  prod_i of that. Two models, with d from ONE float64 causal pass (``params`` float32 as
  ``model.init_params`` gives them; x64 must be on):

  - 'attention' (sufficient): between the two rows, new information enters only through
    attention (the compared token's embeddings are equal; every other stage is a function
    of its row's earlier stages), so y is equal if every layer's per-head attention output
    rounds alike in every coordinate: the product over the L 'heads' stages. An
    underestimate: a later rounding can absorb a one-ulp difference.
  - 'output': y alone rounds alike, from the exact difference of y. An overestimate: it
    ignores the rounding differences that earlier stages pass down.

  Returns {'n': [K], 'p_attention': [K], 'p_output': [K], 'p_heads': [L, K] (per layer),
  'expected_differing': {'heads L<l>': [K], 'y': [K]} (sum_i min(1, |d_i|/ulp_i): the
  expected count of stored coordinates that differ, comparable with
  :func:`stage_differences`' counts)}."""
  from collapse_jax.precision import get_policy
  pol = get_policy("float64")
  ns = np.asarray([int(n) for n in ns])
  if ns.size == 0 or ns.min() < 1 or ns.max() >= len(tokens_T):
    raise ValueError(f"lengths must lie in [1, {len(tokens_T) - 1}] for {len(tokens_T)} tokens")
  out = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("heads",),
                                           query_chunk=query_chunk))(
      pol.cast_params(params), jnp.asarray(tokens_T, jnp.int32)[None])
  heads = np.asarray(out["heads"][:, 0]).reshape(cfg.num_layers, len(tokens_T), -1)
  stages = {f"heads L{l}": heads[l] for l in range(cfg.num_layers)}
  stages["y"] = np.asarray(out["y"][0])
  p, expected = {}, {}
  for name, t in stages.items():
    a, b = t[ns - 1], t[ns]
    ratio = np.minimum(np.abs(a - b) / (2 * np.asarray(metrics.half_ulp(a, dtype))), 1.0)
    p[name], expected[name] = np.prod(1 - ratio, axis=-1), ratio.sum(-1)
  p_heads = np.stack([p[f"heads L{l}"] for l in range(cfg.num_layers)])
  return {"n": ns.tolist(), "p_attention": np.prod(p_heads, axis=0), "p_output": p["y"],
          "p_heads": p_heads, "expected_differing": expected}


def octaves(ns, **series) -> list[dict]:
  """Means of per-n ``series`` (name -> [K] values at ``ns``, e.g. measured equality and
  predicted probabilities) over each octave [2^k, 2^(k+1)) that holds swept n:
  [{'lo', 'hi', 'count', <name>: mean, ...}]."""
  ns = np.asarray(ns)
  vals = {k: np.asarray(v, np.float64) for k, v in series.items()}
  lo_K = np.asarray([metrics.octave_lo(n) for n in ns])
  return [{"lo": lo, "hi": 2 * lo, "count": int((lo_K == lo).sum()),
           **{name: float(v[lo_K == lo].mean()) for name, v in vals.items()}}
          for lo in map(int, np.unique(lo_K))]


def from_sweep_run(path: str, heads: int, seed: int, dtypes) -> tuple:
  """What experiments/bf16_floor.py explains of a finished ``precision_sweep`` run of the
  prefix_repeat family in directory ``path``: (config with ``num_heads=heads``, the family's
  keyword arguments {token, prefix_len, prefix_ids}, the grid of n [G] int, the records of
  ``heads`` and ``seed`` for each name in ``dtypes``, reference ones included). ValueError
  (one line, naming --sweep_dir) for a missing results.json, another experiment or family,
  or a missing record."""
  try:
    with open(os.path.join(path, "results.json")) as f:
      run = results.from_jsonable(json.load(f))
  except OSError as e:
    raise ValueError(f"--sweep_dir {path!r}: no results.json ({e.strerror})") from None
  fl = run["flags"]
  if run.get("experiment") != "precision_sweep" or run.get("family") != "prefix_repeat":
    raise ValueError(f"--sweep_dir {path!r} is not a prefix_repeat precision_sweep run")
  recs = [r for r in run["runs"] + run.get("reference", [])
          if r["heads"] == heads and r["seed"] == seed and r["dtype"] in dtypes]
  if {r["dtype"] for r in recs} != set(dtypes):
    raise ValueError(f"--sweep_dir {path!r} holds no record for heads={heads} seed={seed} of "
                     f"every --dtype {sorted(dtypes)}")
  cfg = DecoderConfig(**run["config"]).replace(num_heads=heads, num_kv_heads=None)
  fam = dict(token=fl["token"], prefix_len=fl["prefix_len"],
             prefix_ids=[int(i) for i in fl["prefix_ids"]] if fl["prefix_ids"] else None)
  return cfg, fam, np.asarray(recs[0]["lengths"]), recs
