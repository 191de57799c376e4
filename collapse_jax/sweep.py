"""Sweep engines: last-token representations of (A_n, B_n) for many n in ONE program.

Engines (all jit-compiled once per (policy, config); lengths and seeds are data):
  * ``causal``   (prefix families): one causal pass over the shared sequence of length
    max(n)+1; A_n's last token is row n-1 and B_n's is row n.
  * ``kv_cache`` (any family, made for ``stream_repeat_last``): one pass over the shared
    stream collects every layer's K/V; then, batched over n, the two tokens [a, a] at
    positions [n-1, n] attend to the first n-1 cached keys. Token 0 is A_n's last token,
    token 1 is B_n's.
  * ``masked``   (reference, any family): for each n a separate forward over B_n padded to
    max(n)+1 with a key-padding mask, vmapped over n (chunked with lax.map).
All three compute the same mathematical function; their bits can differ because XLA's
reduction order depends on shapes (BUILD_NOTES.md records where they agree bitwise).

Per n, ``pair_metrics`` compares A and B for the final output y, the residual stream at
every layer (v^(0..L)) and every head's attention output at the last layer.
"""
from __future__ import annotations

import collections
import functools
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from collapse_jax import families as fam
from collapse_jax import metrics
from collapse_jax import model as model_lib
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy

ENGINES = ("causal", "kv_cache", "masked")
COLLECT = ("residual", "heads")
# Number of times each (policy name, num_heads, engine) sweep program was traced: a test
# checks it stays 1 however many lengths are swept.
TRACE_COUNT: collections.Counter = collections.Counter()


def default_engine(family: str) -> str:
  return "kv_cache" if family == "stream_repeat_last" else "causal"


def _rows(out, idx_S):
  """Gather rows idx (int [S]) of a batch-1 forward: y [S,D], residual [L+1,S,D], heads [S,H,Dh]."""
  return {"y": out["y"][0, idx_S], "residual": out["residual"][:, 0, idx_S],
          "heads": out["heads"][-1, 0, idx_S]}


def _pairs_causal(cfg, pol, params, tokens_T, rows_2S):
  """rows_2S: int [2, S] rows of the one causal pass holding A_n's and B_n's last token
  (n-1 and n for the prefix families; any rows for prompt-based pairs)."""
  out = model_lib.forward(cfg, pol, params, tokens_T[None], collect=COLLECT)
  return _rows(out, rows_2S[0]), _rows(out, rows_2S[1])


def _pairs_kv(cfg, pol, params, stream_T, token, lengths_S, chunk, repeat_position=False):
  """KV-cache engine. stream_T: the shared tokens x_1.. (A_n uses the first n-1)."""
  M = stream_T.shape[0]
  pre = model_lib.forward(cfg, pol, params, stream_T[None], collect=("kv",))

  def one_chunk(n_C):
    C = n_C.shape[0]
    new = jnp.full((C, 2), token, jnp.int32)
    pos = jnp.stack([n_C - 1, n_C - 1 if repeat_position else n_C], axis=1).astype(jnp.int32)
    cache = {"k": jnp.broadcast_to(pre["k"], (cfg.num_layers, C) + pre["k"].shape[2:]),
             "v": jnp.broadcast_to(pre["v"], (cfg.num_layers, C) + pre["v"].shape[2:]),
             "pos": jnp.broadcast_to(jnp.arange(M, dtype=jnp.int32), (C, M)),
             "valid": jnp.arange(M)[None, :] < (n_C[:, None] - 1)}
    out = model_lib.forward(cfg, pol, params, new, positions=pos, cache=cache, collect=COLLECT)
    pick = lambda j: {"y": out["y"][:, j], "residual": jnp.moveaxis(out["residual"][:, :, j], 0, 1),
                      "heads": out["heads"][-1, :, j]}
    return pick(0), pick(1)

  return _map_chunks(one_chunk, lengths_S, chunk)


def _pairs_masked(cfg, pol, params, tokens_T, token, lengths_S, chunk, shared_prefix, total,
                  repeat_position=False):
  """Reference engine: one padded forward per n (B_n), vmapped over n in chunks."""
  def one(n):
    if shared_prefix:
      seq = jnp.where(jnp.arange(total) <= n, tokens_T[:total], 0).astype(jnp.int32)
    else:
      seq = fam.stream_pair_tokens(tokens_T, token, n, total)
    valid = (jnp.arange(total) <= n)[None]
    pos = jnp.arange(total, dtype=jnp.int32)
    if repeat_position:  # B_n's copy of the last token keeps position n-1
      pos = jnp.minimum(pos, n - 1)
    out = model_lib.forward(cfg, pol, params, seq[None], positions=pos[None], key_valid=valid,
                            collect=COLLECT)
    return _rows(out, jnp.stack([n - 1, n]))

  def one_chunk(n_C):
    r = jax.vmap(one)(n_C)  # y [C,2,D], residual [C,L+1,2,D], heads [C,2,H,Dh]
    pick = lambda j: {"y": r["y"][:, j], "residual": r["residual"][:, :, j], "heads": r["heads"][:, j]}
    return pick(0), pick(1)

  return _map_chunks(one_chunk, lengths_S, chunk)


def _map_chunks(one_chunk, lengths_S, chunk):
  """lax.map ``one_chunk`` over [chunk]-slices of lengths (padded by repeating the last n).
  one_chunk returns (a, b) dicts with n leading: y [C,D], residual [C,L+1,D], heads
  [C,H,Dh]; the result is in pair_metrics' layout (residual [L+1,S,D])."""
  S = lengths_S.shape[0]
  C = -(-S // chunk)
  padded = jnp.concatenate([lengths_S, jnp.broadcast_to(lengths_S[-1:], (C * chunk - S,))])
  pairs = jax.lax.map(one_chunk, padded.reshape(C, chunk))

  def join(tree):
    flat = {k: v.reshape((C * chunk,) + v.shape[2:])[:S] for k, v in tree.items()}
    flat["residual"] = jnp.moveaxis(flat["residual"], 0, 1)
    return flat
  return join(pairs[0]), join(pairs[1])


def pair_metrics(a: dict, b: dict) -> dict:
  """Metrics of A vs B per n. a/b: y [S,D], residual [L+1,S,D], heads [S,H,Dh].
  Returns y_* [S], layer_* [L+1,S], head_* [H,S] for linf/l1/max_ulp/equal/nonfinite,
  and y_absmax / head_absmax [S] (max |A| over the vector / over all heads: the magnitude
  that sets the dtype's ulp)."""
  out = {}
  for key, x, y in (("y", a["y"], b["y"]), ("layer", a["residual"], b["residual"]),
                    ("head", jnp.moveaxis(a["heads"], 1, 0), jnp.moveaxis(b["heads"], 1, 0))):
    m = metrics.summarize_pair(x, y)
    out.update({f"{key}_{k}": v for k, v in m.items()})
  absmax = lambda x, axis: jnp.max(jnp.abs(x.astype(metrics._dist_dtype(x))), axis=axis)
  out["y_absmax"] = absmax(a["y"], -1)
  out["head_absmax"] = absmax(a["heads"], (-2, -1))
  return out


@functools.lru_cache(maxsize=64)
def sweep_program(cfg: DecoderConfig, pol: Policy, engine: str, shared_prefix: bool,
                  total: int, chunk: int, repeat_position: bool = False):
  """The jitted program for one (policy, config, engine): f(params_B, tokens_BT, token,
  lengths_S) -> metrics with a leading seed axis B. Lengths, tokens and seeds are data."""
  if engine not in ENGINES:
    raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
  if not cfg.causal:
    raise ValueError("the sweep engines read A_n's last token from B_n's causal pass; a "
                     "bidirectional model (causal=False) needs separate exact-length forwards")
  if engine == "causal" and not shared_prefix:
    raise ValueError("the 'causal' engine needs a prefix family (repeat, prefix_repeat); "
                     "use 'kv_cache' or 'masked' for stream_repeat_last")
  if engine == "causal" and repeat_position:
    raise ValueError("repeat_position (the copied last token keeps position n-1) needs the "
                     "'kv_cache' or 'masked' engine")

  def per_seed(params, tokens_T, token, lengths_S, rows_2S):
    if engine == "causal":
      a, b = _pairs_causal(cfg, pol, params, tokens_T, rows_2S)
    elif engine == "kv_cache":
      a, b = _pairs_kv(cfg, pol, params, tokens_T, token, lengths_S, chunk, repeat_position)
    else:
      a, b = _pairs_masked(cfg, pol, params, tokens_T, token, lengths_S, chunk, shared_prefix,
                           total, repeat_position)
    return pair_metrics(a, b)

  def program(params_B, tokens_BT, token, lengths_S, rows_2S):
    TRACE_COUNT[(pol.name, cfg.num_heads, engine)] += 1
    return jax.vmap(per_seed, in_axes=(0, 0, None, None, None))(
        params_B, tokens_BT, token, lengths_S, rows_2S)

  return jax.jit(program)


def seed_mesh(num_seeds: int):
  """A 1-D mesh over local devices if the seed batch divides evenly, else None."""
  devs = jax.local_devices()
  if len(devs) > 1 and num_seeds % len(devs) == 0:
    return Mesh(np.asarray(devs), ("seeds",))
  return None


def run_sweep(cfg: DecoderConfig, pol: Policy, params_B, tokens_BT, token: int, lengths,
              *, engine: str, shared_prefix: bool, chunk: int = 32,
              repeat_position: bool = False, rows=None, total: int | None = None) -> dict:
  """Run one compiled sweep for a stack of seeds. params_B: policy-cast params with a
  leading seed axis; tokens_BT: int [B, T]. ``repeat_position``: B_n's copied last token
  keeps position n-1 (the whole token representation, PE included, is copied, as in C.3)
  instead of taking position n. ``rows`` (causal engine only): int [2, S] rows of the one
  pass to compare (default: n-1 and n). ``total``: pad the pass to at least this many
  tokens, so runs with different grids share one compiled program (tokens_BT must be that
  long). Returns numpy metrics with leading axis B."""
  pol.check_available()
  cfg.check_token_ids(tokens_BT, "sweep tokens")
  cfg.check_token_ids([token], "the repeated token")
  lengths = np.asarray(lengths, np.int32)
  if rows is None:
    rows = np.stack([lengths - 1, lengths])
  elif engine != "causal":
    raise ValueError("explicit rows need the 'causal' engine")
  rows = np.asarray(rows, np.int32)
  total = int(max(lengths[-1] + 1, rows.max() + 1, total or 0))
  if shared_prefix and tokens_BT.shape[1] < total:
    raise ValueError(f"shared sequence has {tokens_BT.shape[1]} tokens; need {total}")
  prog = sweep_program(cfg, pol, engine, shared_prefix, total, int(min(chunk, lengths.size)),
                       repeat_position)
  mesh = seed_mesh(tokens_BT.shape[0])
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if mesh is not None:  # shard the seed batch over local devices (data parallel)
    shard = NamedSharding(mesh, P("seeds"))
    params_B = jax.device_put(params_B, shard)
    tokens_BT = jax.device_put(tokens_BT, shard)
  out = prog(params_B, tokens_BT, jnp.int32(token), jnp.asarray(lengths), jnp.asarray(rows))
  return {k: np.asarray(v) for k, v in out.items()}


def _onsets(equal_S, lengths) -> tuple[int, int]:
  return (int(metrics.collapse_onset(equal_S, lengths)), int(metrics.sustained_onset(equal_S, lengths)))


def summarize(raw: dict, lengths, seed_index: int) -> dict:
  """One seed's sweep metrics -> a JSON-ready record (lists over n, onsets)."""
  r = {k: v[seed_index] for k, v in raw.items()}
  lengths = np.asarray(lengths)
  y_on, y_sus = _onsets(r["y_bitwise_equal"], lengths)
  layers = []
  for l in range(r["layer_linf"].shape[0]):
    on, sus = _onsets(r["layer_bitwise_equal"][l], lengths)
    layers.append({"layer": l, "linf": r["layer_linf"][l], "l1": r["layer_l1"][l],
                   "max_ulp": r["layer_max_ulp"][l], "bitwise_equal": r["layer_bitwise_equal"][l],
                   "collapse_onset": on, "sustained_onset": sus})
  head_onsets = [_onsets(r["head_bitwise_equal"][h], lengths)[0]
                 for h in range(r["head_linf"].shape[0])]
  all_heads = r["head_bitwise_equal"].all(0)
  return {
      "lengths": lengths,
      "linf": r["y_linf"], "l1": r["y_l1"], "max_ulp": r["y_max_ulp"],
      "bitwise_equal": r["y_bitwise_equal"],
      "collapse_onset": y_on, "sustained_onset": y_sus,
      "absmax": r["y_absmax"],
      "nonfinite": r["y_nonfinite"], "nonfinite_total": int(r["y_nonfinite"].sum() +
                                                            r["layer_nonfinite"].sum()),
      "layers": layers,
      "last_layer_heads": {"linf_mean": r["head_linf"].mean(0), "linf_min": r["head_linf"].min(0),
                           "linf_max": r["head_linf"].max(0),
                           "all_heads_equal": all_heads, "absmax": r["head_absmax"],
                           "collapse_onset": _onsets(all_heads, lengths)[0],
                           "sustained_onset": _onsets(all_heads, lengths)[1],
                           "collapse_onset_per_head": head_onsets},
  }


CSV_COLUMNS = ("dtype", "heads", "seed", "engine", "n", "linf", "l1", "max_ulp", "bitwise_equal",
               "nonfinite", "head_linf_mean", "head_linf_min", "head_linf_max")


def csv_rows(record: dict):
  """Rows (one per n) of a run record with its dtype/heads/seed/engine keys."""
  h = record["last_layer_heads"]
  for i, n in enumerate(record["lengths"]):
    row = {k: record[k] for k in ("dtype", "heads", "seed", "engine")}
    row.update(n=int(n), linf=float(record["linf"][i]), l1=float(record["l1"][i]),
               max_ulp=int(record["max_ulp"][i]), bitwise_equal=bool(record["bitwise_equal"][i]),
               nonfinite=int(record["nonfinite"][i]), head_linf_mean=float(h["linf_mean"][i]),
               head_linf_min=float(h["linf_min"][i]), head_linf_max=float(h["linf_max"][i]))
    for layer in record["layers"]:
      row[f"layer{layer['layer']}_linf"] = float(layer["linf"][i])
    yield row


def run_grid(base_cfg: DecoderConfig, policies, heads_list, family: str, lengths, seeds, *,
             engine: str | None = None, token: int = 1, prefix_len: int = 16, prefix_ids=None,
             chunk: int = 32, repeat_position: bool = False, alphabet=None,
             log=print) -> list[dict]:
  """The precision sweep: for each policy and head count, ONE compiled program runs every
  length and seed. Head counts change parameter shapes, so each is its own compile (they
  cannot be vmapped together). Returns one record (``summarize``) per (policy, heads, seed)."""
  import time
  engine = engine or default_engine(family)
  lengths = np.asarray(lengths)
  fams = [fam.make_family(family, int(lengths[-1]), seed=s, vocab_size=base_cfg.vocab_size,
                          token=token, prefix_len=prefix_len, prefix_ids=prefix_ids,
                          alphabet=alphabet) for s in seeds]
  lengths = fam.check_lengths(fams[0], lengths)
  base_cfg.check_length(int(lengths[-1]) + 1)
  tokens_BT = np.stack([f.tokens for f in fams])
  records = []
  for heads in heads_list:
    cfg = base_cfg.replace(num_heads=heads, num_kv_heads=None)
    params32 = [model_lib.init_params(cfg, jax.random.key(s)) for s in seeds]
    for pol in policies:
      t0 = time.perf_counter()
      params_B = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[pol.cast_params(p) for p in params32])
      raw = run_sweep(cfg, pol, params_B, tokens_BT, token, lengths, engine=engine,
                      shared_prefix=fams[0].shared_prefix, chunk=chunk,
                      repeat_position=repeat_position)
      for i, s in enumerate(seeds):
        rec = summarize(raw, lengths, i)
        rec.update(dtype=pol.name, heads=heads, seed=s, engine=engine,
                   repeat_position=repeat_position)
        records.append(rec)
      onsets = [r["collapse_onset"] for r in records[-len(seeds):]]
      log(f"{pol.name:>14s} H={heads:<3d} {len(lengths)} lengths x {len(seeds)} seeds "
          f"[{engine}] {time.perf_counter() - t0:6.1f}s  y collapse onset per seed: {onsets}")
  return records


def predicted_onset(lengths, dist_ref, absmax_ref, dtype) -> int:
  """Predict where a dtype collapses from a float64 run: the first swept n from which the
  exact distance stays below half the dtype's ulp at the representation's magnitude
  (ulp(absmax) / 2) for every later n. -1 if never. A heuristic: bitwise equality needs
  every coordinate and every upstream rounding of the two paths to coincide, which the
  exact distance alone does not decide (BUILD_NOTES.md compares it with measurements)."""
  import ml_dtypes
  eps = float(ml_dtypes.finfo(jnp.dtype(dtype)).eps)
  tiny = float(ml_dtypes.finfo(jnp.dtype(dtype)).smallest_subnormal)
  absmax = np.asarray(absmax_ref, np.float64)
  ulp = np.maximum(eps * 2.0 ** np.floor(np.log2(np.maximum(absmax, tiny))), tiny)
  below = np.asarray(dist_ref, np.float64) < ulp / 2
  return int(metrics.sustained_onset(below, np.asarray(lengths)))


def synthetic_collapse_grid(pe: str, init_var: float, lengths, seeds, dtypes, *,
                            d_model: int = 64, vocab: int = 1024, copy_vector: bool = True,
                            log=print):
  """Appendix C.3 / Figs 8 and 10: one attention layer (no MLP, one head), weights
  N(0, init_var), a random token stream with its last token copied (``copy_vector``: the
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
  recs = run_grid(cfg, pols, [1], "stream_repeat_last", lengths, list(seeds),
                  repeat_position=copy_vector, log=log)
  ref = {r["seed"]: r["last_layer_heads"] for r in recs if r["dtype"] == "float64"}
  for r in recs:
    h, base = r["last_layer_heads"], ref[r["seed"]]
    r.update(pe=pe, attn_linf=h["linf_max"], attn_equal=h["all_heads_equal"],
             attn_onset=h["collapse_onset"], attn_sustained_onset=h["sustained_onset"],
             predicted_onset=predicted_onset(r["lengths"], base["linf_max"], base["absmax"],
                                             precision_lib.get_policy(r["dtype"]).storage_dtype))
  return cfg, recs
