"""The sweep: every (model, policy, pair set) of a grid through one engine, into records.

Words (n, A_n, B_n, pair set, stream, copy): collapse_jax/pairs.py. Engines:
collapse_jax/engines.py. Records: collapse_jax/records.py. Synthetic decoders and real
checkpoints go through the same :func:`run_grid`: a :class:`Model` is a config plus float32
params per seed, and a pair set per seed says which tokens to compare.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import engines
from collapse_jax import metrics
from collapse_jax import model as model_lib
from collapse_jax import pairs as pairs_lib
from collapse_jax import records as records_lib
from collapse_jax.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Model:
  """A model to sweep: ``cfg``, float32 ``params`` (one entry per seed, in the order of the
  grid's seeds) and ``labels`` copied into each of its records (e.g. {"heads": 4})."""
  cfg: DecoderConfig
  params: Sequence[dict]
  labels: Mapping = dataclasses.field(default_factory=dict)


def synthetic_models(base_cfg: DecoderConfig, heads_list, seeds) -> list[Model]:
  """One initialised model per head count (params per seed, C.3 init). Head counts change
  parameter shapes, so each is its own compile (they cannot be vmapped together)."""
  out = []
  for heads in heads_list:
    cfg = base_cfg.replace(num_heads=heads, num_kv_heads=None)
    out.append(Model(cfg, [model_lib.init_params(cfg, jax.random.key(s)) for s in seeds],
                     {"heads": heads}))
  return out


def run_grid(models: Sequence[Model], policies, pair_sets: Mapping[str, Sequence],
             lengths, seeds, *, engine: str | None = None, chunk: int = 32,
             memory_budget: float | None = None, log=print) -> list[dict]:
  """For each model, policy and named pair set, ONE compiled engine program runs every n and
  seed (``engines.run``). ``pair_sets``: name -> one pair set per seed. Returns one record
  (``records.summarize``) per (model, policy, pair set, seed), labelled with dtype, the
  model's labels, seed, engine, pairs (the name), copy and seconds (the engine call's wall
  time). One-pass sets resolved to the causal engine are padded to a common length so that
  they share one compiled program. ``memory_budget`` (bytes): the causal engine chunks its
  attention over query rows to fit (``engines.plan_query_chunk``)."""
  for name, sets in pair_sets.items():
    if len(sets) != len(seeds):
      raise ValueError(f"pair set {name!r}: {len(sets)} sets for {len(seeds)} seeds")
    lengths = sets[0].check(lengths)
  resolved = {name: engines.resolve(engine, sets[0]) for name, sets in pair_sets.items()}
  longest = max(int(sets[0].lengths_ab(lengths[-1:]).max()) for sets in pair_sets.values())
  causal_tokens = max([int(sets[0].rows(lengths).max()) + 1 for name, sets in pair_sets.items()
                       if resolved[name] == "causal"] or [0])
  records = []
  for m in models:
    if len(m.params) != len(seeds):
      raise ValueError(f"model {dict(m.labels)}: {len(m.params)} params for {len(seeds)} seeds")
    m.cfg.check_length(longest)
    for pol in policies:
      pol.check_available()
      t0 = time.perf_counter()
      cast = [pol.cast_params(p) for p in m.params]
      params_B = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *cast)
      for name, sets in pair_sets.items():
        t1 = time.perf_counter()
        raw = engines.run(m.cfg, pol, params_B, sets, lengths, engine=resolved[name],
                          chunk=chunk, min_tokens=causal_tokens, memory_budget=memory_budget)
        seconds = time.perf_counter() - t1
        for i, s in enumerate(seeds):
          rec = records_lib.summarize(raw, lengths, i)
          rec.update(dtype=pol.name, **m.labels, seed=s, engine=resolved[name], pairs=name,
                     copy=sets[i].copy, seconds=round(seconds, 2))
          records.append(rec)
        onsets = [r["collapse_onset"] for r in records[-len(seeds):]]
        tag = " ".join(f"{k}={v}" for k, v in m.labels.items())
        log(f"{pol.name:>14s} {tag} {name}: {len(lengths)} lengths x {len(seeds)} seeds "
            f"[{resolved[name]}] {time.perf_counter() - t0:6.1f}s  y collapse onset per seed: "
            f"{onsets}")
        t0 = time.perf_counter()
  return records


def family_grid(base_cfg: DecoderConfig, policies, heads_list, family: str, lengths, seeds, *,
                engine: str | None = None, token: int = 1, prefix_len: int = 16,
                prefix_ids=None, chunk: int = 32, copy: str = "token", alphabet=None,
                memory_budget: float | None = None, log=print) -> list[dict]:
  """The precision sweep of a synthetic family: models per head count (``synthetic_models``),
  the family per seed (``pairs.make_family``), then :func:`run_grid`."""
  lengths = np.asarray(lengths)
  fams = [pairs_lib.make_family(family, int(lengths[-1]), seed=s, vocab_size=base_cfg.vocab_size,
                                token=token, prefix_len=prefix_len, prefix_ids=prefix_ids,
                                alphabet=alphabet, copy=copy) for s in seeds]
  return run_grid(synthetic_models(base_cfg, heads_list, seeds), policies, {family: fams},
                  lengths, list(seeds), engine=engine, chunk=chunk,
                  memory_budget=memory_budget, log=log)


def predicted_onset(lengths, dist_ref, absmax_ref, dtype) -> int:
  """Predict where a dtype collapses from a float64 run: the first swept n from which the
  exact distance stays below half the dtype's ulp at the representation's magnitude
  (ulp(absmax) / 2) for every later n. -1 if never. A heuristic: bitwise equality needs
  every coordinate and every upstream rounding of the two paths to coincide, which the
  exact distance alone does not decide (BUILD_NOTES.md compares it with measurements)."""
  level = np.asarray(metrics.half_ulp(np.asarray(absmax_ref, np.float64), dtype), np.float64)
  below = np.asarray(dist_ref, np.float64) < level
  return int(metrics.sustained_onset(below, np.asarray(lengths)))


def synthetic_collapse_grid(pe: str, init_var: float, lengths, seeds, dtypes, *,
                            d_model: int = 64, vocab: int = 1024, copy: str = "vector",
                            log=print):
  """Appendix C.3 / Figs 8 and 10: one attention layer (no MLP, one head), weights
  N(0, init_var), a random token stream with its last token copied (``copy='vector'``: the
  copy keeps position n-1, i.e. the input vector, PE included, is copied). Runs float64
  plus ``dtypes``; every record gains ``attn_linf``/``attn_equal``/``attn_onset``/
  ``attn_sustained_onset`` (the last token's attention output sum_j alpha_nj v_j, the
  quantity of Theorem B.3's proof) and ``predicted_onset`` (from the float64 run).
  Returns (config, records)."""
  from collapse_jax import precision as precision_lib
  cfg = DecoderConfig(num_layers=1, d_model=d_model, num_heads=1, use_mlp=False, pe=pe,
                      vocab_size=vocab, init_var=init_var, max_len=int(np.max(lengths)) + 1)
  names = ["float64"] + [d for d in dtypes if d != "float64"]
  pols = [precision_lib.get_policy(d) for d in names]
  recs = family_grid(cfg, pols, [1], "stream_repeat_last", lengths, list(seeds), copy=copy,
                     log=log)
  ref = {r["seed"]: r["last_layer_heads"] for r in recs if r["dtype"] == "float64"}
  for r in recs:
    h, base = r["last_layer_heads"], ref[r["seed"]]
    r.update(pe=pe, attn_linf=h["linf_max"], attn_equal=h["all_heads_equal"],
             attn_onset=h["collapse_onset"], attn_sustained_onset=h["sustained_onset"],
             predicted_onset=predicted_onset(r["lengths"], base["linf_max"], base["absmax"],
                                             precision_lib.get_policy(r["dtype"]).storage_dtype))
  return cfg, recs
