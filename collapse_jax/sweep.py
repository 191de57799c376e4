"""The sweep: every (model, policy, pair set) of a grid through one engine, into records.

Words (n, A_n, B_n, pair set, stream, copy): collapse_jax/pairs.py. Engines:
collapse_jax/engines.py. Records: collapse_jax/records.py. Synthetic decoders and real
checkpoints go through the same :func:`run_grid`: a :class:`Model` is a config plus float32
params per seed, and a pair set per seed says which tokens to compare.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from typing import Mapping, Sequence

import jax
import numpy as np

from collapse_jax import engines
from collapse_jax import memory
from collapse_jax import metrics
from collapse_jax import model as model_lib
from collapse_jax import pairs as pairs_lib
from collapse_jax import prompts
from collapse_jax import records as records_lib
from collapse_jax.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Model:
  """A model to sweep: ``cfg``, float32 ``params`` (one entry per seed, in the order of the
  grid's seeds) and ``labels`` copied into each of its records (e.g. {"heads": 4})."""
  cfg: DecoderConfig
  params: Sequence[dict]
  labels: Mapping = dataclasses.field(default_factory=dict)


def synthetic_models(base_cfg: DecoderConfig, heads_list, seeds,
                     weight_quant: str | None = None) -> list[Model]:
  """One initialised model per head count (params per seed, C.3 init). Head counts change
  parameter shapes, so each is its own compile (they cannot be vmapped together).
  ``weight_quant``: a GGUF type (e.g. 'Q4_1'): the weight matrices as that quantization
  holds them (``checkpoints.gguf.quantize_round_trip``)."""
  out = []
  for heads in heads_list:
    cfg = base_cfg.replace(num_heads=heads, num_kv_heads=None)
    params = [model_lib.init_params(cfg, jax.random.key(s)) for s in seeds]
    if weight_quant is not None:
      from collapse_jax.checkpoints import gguf
      params = [gguf.quantize_round_trip(p, weight_quant) for p in params]
    out.append(Model(cfg, params, {"heads": heads}))
  return out


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell of a grid: (model, policy, pair set, seed), run by one compiled program on one
  device and summarised as one record. ``id`` is stable (it names the cell's shard and
  decides which process runs it): '<dtype>/<label>=<v>/.../<pair set>/seed=<s>'."""
  model: int  # index into the grid's models
  policy: object  # precision.Policy
  pairs: str  # pair set name
  seed_index: int
  seed: int
  id: str


def grid_cells(models: Sequence[Model], policies, pair_sets: Mapping[str, Sequence],
               seeds) -> list[Cell]:
  """Every cell, in the records' order: model, then policy, then pair set, then seed."""
  out = []
  for mi, m in enumerate(models):
    tag = "".join(f"{k}={v}/" for k, v in m.labels.items())
    for pol in policies:
      for name in pair_sets:
        out += [Cell(mi, pol, name, i, s, f"{pol.name}/{tag}{name}/seed={s}")
                for i, s in enumerate(seeds)]
  ids = [c.id for c in out]
  if len(set(ids)) != len(ids):
    raise ValueError("two cells share an id: give the models distinct labels")
  return out


def run_grid(models: Sequence[Model], policies, pair_sets: Mapping[str, Sequence],
             lengths, seeds, *, engine: str | None = None, chunk: int = 32,
             memory_budget: float | None = None, log=print, cells=None, devices=None,
             on_cell=None, drop_compiled: bool = False) -> list[dict]:
  """Run the cells of a grid (``cells``: a subset of :func:`grid_cells`, default all) and
  return one record (``records.summarize``) per cell, in the cells' order, labelled with
  dtype, the model's labels, seed, engine, pairs (the set's name), copy and seconds.

  ``pair_sets``: name -> one pair set per seed. Each (model, policy, pair set) compiles ONE
  engine program (``engines.launch``) that runs every n of a seed. Cells run one per device
  at a time over ``devices`` (default: the local devices; launches are asynchronous, so the
  devices work at once). A long cell, one whose causal attention ``memory_budget`` (bytes per
  device) splits into query chunks (``engines.chunked``), waits for the devices to be free
  and spreads its chunks over all of them. Either way a cell's bits equal a one-device run's
  (measured; BUILD_NOTES). One-pass sets resolved to the causal engine are padded to a
  common length so that they share one program. ``on_cell(cell, record)`` is called as each
  cell finishes (e.g. to save it). After each cell, ``memory.end_cell(drop_compiled)`` gives
  freed memory back (real-model cells drop their compiled programs too: each compiles its
  own, and held programs built up over a run); the record's 'rss_gib' and 'peak_rss_gib' are
  the process's then."""
  for name, sets in pair_sets.items():
    if len(sets) != len(seeds):
      raise ValueError(f"pair set {name!r}: {len(sets)} sets for {len(seeds)} seeds")
    lengths = sets[0].check(lengths)
  for m in models:
    if len(m.params) != len(seeds):
      raise ValueError(f"model {dict(m.labels)}: {len(m.params)} params for {len(seeds)} seeds")
  resolved = {name: engines.resolve(engine, sets[0]) for name, sets in pair_sets.items()}
  longest = max(int(sets[0].lengths_ab(lengths[-1:]).max()) for sets in pair_sets.values())
  causal_tokens = max([int(sets[0].rows(lengths).max()) + 1 for name, sets in pair_sets.items()
                       if resolved[name] == "causal"] or [0])
  for m in models:
    m.cfg.check_length(longest)
  cells = grid_cells(models, policies, pair_sets, seeds) if cells is None else list(cells)
  every = list(devices or jax.local_devices())
  free = list(every)
  cast: dict = {}  # (params object, policy) -> cast params with a seed axis [1, ...]; real
  #                 models share one per seed
  records, running = [], collections.deque()

  def finish():
    cell, devs, t1, launched = running.popleft()
    m, name = models[cell.model], cell.pairs
    rec = records_lib.summarize(engines.fetch(launched), lengths, 0)
    where = "+".join(str(d) for d in devs)
    seconds = round(time.perf_counter() - t1, 2)
    rec.update(dtype=cell.policy.name, **m.labels, seed=cell.seed, engine=resolved[name],
               pairs=name, copy=pair_sets[name][cell.seed_index].copy, seconds=seconds,
               device=where, **memory.end_cell(drop_compiled))  # freed memory back to the OS
    records.append(rec)
    free.extend(devs)
    log(f"{cell.id} [{resolved[name]}] {seconds:.1f}s on {where}, RSS {rec['rss_gib']:.2f} "
        f"GiB (process peak {rec['peak_rss_gib']:.2f}): y collapse onset "
        f"{rec['collapse_onset']}, sustained from {rec['sustained_onset']}")
    if on_cell is not None:
      on_cell(cell, rec)

  for cell in cells:  # finished in order
    m, pol, name = models[cell.model], cell.policy, cell.pairs
    sets = pair_sets[name]
    pol.check_available()
    if len(every) > 1 and engines.chunked(m.cfg, pol, sets[cell.seed_index], lengths,
                                          resolved[name], causal_tokens, memory_budget):
      while running:  # a long cell: its query chunks over every device
        finish()
      devs, free = tuple(free), []
    else:
      if not free:
        finish()
      devs = (free.pop(0),)
    p = m.params[cell.seed_index]
    key = (id(p), pol)
    if key not in cast:
      params_B = None  # the last cell's, if dropped below, is freed before the new cast
      cast = {k: v for k, v in cast.items() if k[1] == pol and k[0] in map(id, m.params)}
      # leaf by leaf, so that the cast copy of the whole model never sits beside the one with
      # the seed axis (1 GiB for Gemma 3 in float32)
      cast[key] = jax.tree_util.tree_map(lambda x: pol.cast_params(x)[None], p)
    params_B = cast[key]
    t1 = time.perf_counter()
    running.append((cell, devs, t1, engines.launch(
        m.cfg, pol, params_B, [sets[cell.seed_index]], lengths, engine=resolved[name],
        chunk=chunk, min_tokens=causal_tokens, memory_budget=memory_budget, devices=devs,
        progress=lambda msg, cell=cell: log(f"{cell.id}: {msg}"))))
  while running:
    finish()
  return records


def family_setup(base_cfg: DecoderConfig, heads_list, family: str, lengths, seeds, *,
                 token: int = 1, prefix_len: int = 16, prefix_ids=None, copy: str = "token",
                 alphabet=None, weight_quant: str | None = None) -> tuple[list[Model], dict]:
  """A synthetic family's grid: models per head count (``synthetic_models``, with
  ``weight_quant``) and {family: the family per seed} (``pairs.make_family``), as
  :func:`run_grid` takes them."""
  lengths = np.asarray(lengths)
  fams = [pairs_lib.make_family(family, int(lengths[-1]), seed=s, vocab_size=base_cfg.vocab_size,
                                token=token, prefix_len=prefix_len, prefix_ids=prefix_ids,
                                alphabet=alphabet, copy=copy) for s in seeds]
  return synthetic_models(base_cfg, heads_list, seeds, weight_quant), {family: fams}


def family_grid(base_cfg: DecoderConfig, policies, heads_list, family: str, lengths, seeds, *,
                engine: str | None = None, token: int = 1, prefix_len: int = 16,
                prefix_ids=None, chunk: int = 32, copy: str = "token", alphabet=None,
                memory_budget: float | None = None, log=print) -> list[dict]:
  """The precision sweep of a synthetic family: :func:`family_setup`, then :func:`run_grid`."""
  models, sets = family_setup(base_cfg, heads_list, family, lengths, seeds, token=token,
                              prefix_len=prefix_len, prefix_ids=prefix_ids, copy=copy,
                              alphabet=alphabet)
  return run_grid(models, policies, sets, np.asarray(lengths), list(seeds), engine=engine,
                  chunk=chunk, memory_budget=memory_budget, log=log)


def check_cells_fit(cfg: DecoderConfig, policies, heads_list, pair_set, lengths,
                    engine: str | None, *, chunk: int, memory_budget: float | None,
                    notes: Mapping[str, str] = {}) -> None:
  """Refuse what cannot fit before anything starts: ValueError (one line) naming the first
  cell (policy, heads) whose engine plan (``engines.plan``, one seed per cell) exceeds
  ``memory_budget`` bytes, with ``notes[policy name]`` appended where given."""
  for h in heads_list:
    for p in policies:
      try:
        engines.plan(cfg.replace(num_heads=h), p, pair_set, lengths, engine, chunk=chunk,
                     memory_budget=memory_budget)
      except ValueError as e:
        note = f"; {notes[p.name]}" if p.name in notes else ""
        raise ValueError(f"cell {p.name}, heads={h}: {e}{note}") from None


# Thinned grids (real_model_collapse's default grid past THIN_ABOVE n). An engine in
# PER_N_ENGINES pays for every swept n (kv_cache: one 128-row tile per n through every layer
# and every key block of the cache, about 1-2 s per n at an 8k SmolLM2 context on 2 cores;
# BUILD_NOTES), where causal and the prefix-sharing exact engine pay for one pass whatever
# the n. Such a cell runs every n up to THIN_DENSE, then THIN_PER_OCTAVE log-spaced n per
# octave; where y is bitwise equal at some n of that grid, the cell runs again with every n of
# the dense grid in the octave [2^k, 2^(k+1)) of the first equal n (the issue's "a log grid
# dense enough to find isolated equal n, then every n in the octave where equality first
# appears"), so an onset it reports is one that every n around it was measured for.
PER_N_ENGINES = ("kv_cache",)
THIN_ABOVE, THIN_DENSE, THIN_PER_OCTAVE = 1024, 128, 32


def thinned(grid) -> np.ndarray:
  """The n of ``grid`` (sorted, shape [N]) that a per-n engine runs: ``grid`` itself up to
  THIN_ABOVE n, else every n <= THIN_DENSE and the n of ``grid`` nearest to THIN_PER_OCTAVE
  log-spaced points per octave after it, and the last n."""
  grid = np.asarray(grid)
  if len(grid) <= THIN_ABOVE:
    return grid
  dense = grid[grid <= THIN_DENSE]
  rest = grid[grid > THIN_DENSE]
  lo, hi = np.log2(max(THIN_DENSE, 1)), np.log2(rest[-1])
  points = 2.0 ** np.linspace(lo, hi, max(2, int(np.ceil((hi - lo) * THIN_PER_OCTAVE)) + 1))
  near = rest[np.clip(np.searchsorted(rest, points), 0, len(rest) - 1)]
  return np.unique(np.concatenate([dense, near, rest[-1:]]))


def first_equal_octave(grid, ran, first_equal: int) -> tuple[int, int, np.ndarray] | None:
  """Where a thinned cell (run on ``ran``, a subset of ``grid``) found y bitwise equal first
  at n = ``first_equal`` (-1: never): (lo, hi, the n of the octave [lo, hi) = [2^k, 2^(k+1))
  holding it, with those of ``ran``, sorted) when ``grid`` has n there that ``ran`` lacked;
  else None."""
  if first_equal < 1:
    return None
  lo = metrics.octave_lo(first_equal)
  grid, ran = np.asarray(grid), np.asarray(ran)
  octave = grid[(grid >= lo) & (grid < 2 * lo)]
  if np.isin(octave, ran).all():
    return None
  return lo, 2 * lo, np.union1d(ran, octave)


def setting_groups(keys: Sequence[str], ckpt, grid, seeds: Sequence[int], position: str,
                   engine: str | None) -> list[tuple[dict[str, list], list[int]]]:
  """Figure 5's pair sets on a real model (``prompts.make_setting`` with ``ckpt``'s tokenizer
  and prompt format) as groups for :func:`run_grid`, each (pair sets by setting, seeds): the
  seed-free settings once (first seed), setting (b) once per seed. Checks each setting's
  tokenization and that ``engine`` can hold its pairs (ValueError, one line)."""
  tok = ckpt.tokenizer
  make = lambda k, s: prompts.make_setting(k, tok, max_n=int(grid[-1]) + 1, seed=s,
                                           vocab_size=ckpt.config.vocab_size, position=position,
                                           prompt_format=ckpt.prompt_format)
  fixed = {k: [make(k, seeds[0])] for k in keys if k != "b" or len(seeds) == 1}
  groups = [(fixed, list(seeds[:1]))] if fixed else []
  if "b" in keys and len(seeds) > 1:
    groups.append(({"b": [make("b", s) for s in seeds]}, list(seeds)))
  for sets, _ in groups:
    for s in sets.values():
      prompts.check_tokenization(s[0], tok)
      engines.resolve(engine, s[0])  # the engine can hold this setting's pairs
  return groups


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
