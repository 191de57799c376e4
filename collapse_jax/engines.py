"""The sweep engines: last-token representations of (A_n, B_n) for many n, and the one
engine registry. Words (n, A_n, B_n, stream, one pass, appended, copy): collapse_jax/pairs.py.

  * ``causal``   (one-pass sets, copy='token'): one causal pass over the stream; A_n's and
    B_n's compared tokens are the rows ``pair_set.rows(ns)``.
  * ``kv_cache`` (appended sets): one pass over the stream collects every layer's K/V; then,
    per n, the two tokens [a, a] at positions [len(A_n)-1, len(A_n)] (copy='vector': both at
    len(A_n)-1) are written into the cache at stream indices len(A_n)-1 and len(A_n) and
    attend to the first len(A_n)-1 cached keys. Token 0 is A_n's last token, token 1 is B_n's.
  * ``masked``   (appended sets; the reference): per n one forward over B_n padded to
    len(B_max) with a key-padding mask, one after another (lax.map).
  * ``exact``    (any set): exact-shape forwards of A_n and B_n (one compile per sequence
    length: for small grids and for pairs no one-pass form holds). On the length-invariant
    schedule a sequence that prefixes another needed one is read from that one's rows
    (:func:`_shared_prefixes`; setting (d): three forwards for every n).
Every engine but ``exact`` is jit-compiled ONCE per (policy, config, engine): lengths and seeds
are data. On the length-invariant schedule (``Policy.row_tile`` set) every engine computes a
row as an exact-length forward does: the same tiles and key blocks at the same stream indices,
so the same bits (BUILD_NOTES.md, issue 24); off it (``Policy.untiled()``) the bits depend on
shapes.

A pass longer than ``SEGMENT_ROWS`` (the causal engine's, kv_cache's prefix, a long exact
forward) runs as :func:`segmented_pass`: segments with a KV cache, the same bits, memory
linear in the length.

Per n, :func:`pair_metrics` compares A and B for the final output y, the residual stream at
every layer (v^(0..L)) and every head's attention output at the last layer.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import memory
from collapse_jax import metrics
from collapse_jax import model as model_lib
from collapse_jax import pairs as pairs_lib
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy

ENGINES = ("causal", "kv_cache", "masked", "exact")
COLLECT = ("residual", "heads")
# Rows per step of a long causal pass (:func:`segment_rows`): 8 tiles of 128 rows. A
# Gemma 3 270M segment takes about 0.5 GiB of activations in bf16 (measured).
SEGMENT_ROWS = 1024
# The causal engine's metrics are computed this many n at a time (:func:`chunked_pair_metrics`)
METRIC_CHUNK = 1024
# After a segmented prefix pass, the kv_cache engine's appended stage runs about this many n
# per call (:func:`_kv_stage_in_steps`), so that a long run reports progress between calls
KV_STEP = 256
# Number of times each (policy name, num_heads, engine) sweep program was traced: a test
# checks it stays 1 however many lengths are swept.
TRACE_COUNT: collections.Counter = collections.Counter()


def resolve(engine: str | None, pair_set: pairs_lib.PairSet) -> str:
  """The engine for a pair set: ``None``/'auto' picks causal for one-pass sets (copy
  'token'), else kv_cache for appended sets, else exact. A named engine that cannot hold
  the set's pairs is a ValueError saying which can."""
  name = pair_set.name
  if engine in (None, "auto"):
    if pair_set.one_pass and pair_set.copy == "token":
      return "causal"
    return "kv_cache" if pair_set.appended else "exact"
  if engine not in ENGINES:
    raise ValueError(f"unknown engine {engine!r}; valid: auto, {', '.join(ENGINES)}")
  if engine == "causal" and not pair_set.one_pass:
    raise ValueError(f"pair set {name!r} has no single shared sequence: the causal engine "
                     "cannot hold its pairs; use kv_cache, masked or exact")
  if engine == "causal" and pair_set.copy == "vector":
    raise ValueError("copy='vector' (the copied last token keeps A_n's last position) needs "
                     "the kv_cache, masked or exact engine")
  if engine in ("kv_cache", "masked") and not pair_set.appended:
    raise ValueError(f"pair set {name!r}: B_n is not A_n plus a repeated last token, so "
                     f"{engine} does not apply; use causal or exact")
  return engine


def _rows(out, idx_S):
  """Gather rows idx (int [S]) of a batch-1 forward: y [S,D], residual [L+1,S,D], heads [S,H,Dh]."""
  return {"y": out["y"][0, idx_S], "residual": out["residual"][:, 0, idx_S],
          "heads": out["heads"][-1, 0, idx_S]}


def segment_rows(pol: Policy, tokens: int, devices: int = 1) -> int | None:
  """Rows per step of the segmented causal pass (:func:`segmented_pass`) for a pass of
  ``tokens`` on ``devices``: ``SEGMENT_ROWS`` rounded down to whole row tiles, or None (one
  whole forward) for a pass that fits in one segment, off the length-invariant schedule
  (there a segment's rows would see other shapes) and for a pass spread over devices."""
  if pol.row_tile is None or devices > 1:
    return None
  seg = max(pol.row_tile, SEGMENT_ROWS // pol.row_tile * pol.row_tile)
  return seg if tokens > seg else None


def segmented_pass(cfg: DecoderConfig, pol: Policy, params_B, tokens_BT, segment: int,
                   collect=COLLECT, put=lambda x: x, progress=None) -> dict:
  """One causal pass per seed over tokens_BT (int [B, T]) as a Python loop over segments of
  ``segment`` rows: each step is one jitted forward of a segment (:func:`_segment_step`,
  compiled once) whose earlier keys come from the KV cache (on the device, donated) that the
  steps before it wrote; its rows are copied into host (numpy) arrays. On the
  length-invariant schedule the rows have the bits of one whole forward: a row sees the same
  tiles and key blocks at the same stream indices (tested). Memory: the cache, the host
  arrays and one segment's activations, where one whole forward on XLA:CPU keeps buffers of
  every layer alive together (0.5 MB per token on Gemma 3 270M in bfloat16), and a
  ``lax.scan`` over the segments hoists loop-invariant converts of whole arrays (the
  embedding table in float32; both measured). ``put``: places a new array on the run's
  device. ``progress(message)``: called at most every 30 s with the rows done and an ETA.
  Returns numpy y [B, T, D], residual [B, L+1, T, D], heads [B, T, H, Dh] (the last
  layer's) for what ``collect`` asks, and with 'kv' jax k, v [B, L, T, KV, Dh]."""
  B, T = tokens_BT.shape
  steps = -(-T // segment)
  M = steps * segment
  toks = np.zeros((B, M), np.int32)
  toks[:, :T] = np.asarray(tokens_BT)  # rows after T: causally unseen by the first T
  want = _want(collect)
  one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), params_B)
  got = jax.eval_shape(lambda p: model_lib.forward(cfg, pol, p, jnp.zeros((1, 1), jnp.int32),
                                                   collect=want), one)
  fn = _segment_step(cfg, pol, segment, M, want)
  L, D, H, KV, Dh = cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh
  cache = {k: put(jnp.zeros((B, L, 1, M, KV, Dh), got[k].dtype)) for k in ("k", "v")}
  shapes = {"y": (B, T, D), "residual": (B, L + 1, T, D), "heads": (B, T, H, Dh)}
  host = {k: np.empty(shapes[k], got[k].dtype) for k in ("y", *want) if k in shapes}
  axis = {"y": 1, "residual": 2, "heads": 1}  # each array's row axis
  params_B = put(params_B)
  t0 = last = time.perf_counter()
  for i in range(steps):
    first = i * segment
    cache, rows = fn(params_B, put(jnp.asarray(toks[:, first:first + segment])),
                     put(jnp.asarray(first, jnp.int32)), cache)
    n = min(segment, T - first)
    for k, arr in host.items():
      part = np.asarray(rows[k])
      idx = [slice(None)] * arr.ndim
      idx[axis[k]] = slice(first, first + n)
      arr[tuple(idx)] = np.take(part, np.arange(n), axis=axis[k]) if n < segment else part
    now = time.perf_counter()
    if progress is not None and now - last >= 30 and i + 1 < steps:
      last, done = now, (i + 1) * segment
      # attention grows with the row: the rows left cost at least as much each as the rows done
      progress(f"rows {done} of {T} in {now - t0:.0f}s; at least {(now - t0) * (T - done) / done:.0f}s "
               "to go")
  out = dict(host)
  if "kv" in collect:
    out["k"], out["v"] = (jax.lax.slice_in_dim(cache[k][:, :, 0], 0, T, axis=2)
                          for k in ("k", "v"))
  return out


def _host_rows(out: dict, idx) -> dict:
  """Rows ``idx`` (an int or int [S]) of :func:`segmented_pass`'s host arrays, as jax arrays
  with the seed axis first: y [B, (S,) D], residual [B, L+1, (S,) D], heads [B, (S,) H, Dh]."""
  return {"y": jnp.asarray(out["y"][:, idx]), "residual": jnp.asarray(out["residual"][:, :, idx]),
          "heads": jnp.asarray(out["heads"][:, idx])}


def _want(collect) -> tuple:
  """What a segment's forward collects: residual and heads where asked, and always kv."""
  return tuple(c for c in collect if c in ("residual", "heads")) + ("kv",)


@functools.lru_cache(maxsize=16)
def _segment_step(cfg: DecoderConfig, pol: Policy, segment: int, M: int, collect: tuple):
  """The jitted step of :func:`segmented_pass` for M rows in all: step(params_B, toks_BC,
  first, cache) -> (cache, rows): the K/V cache {k, v} [B, L, 1, M, KV, Dh] (donated; the
  forward's own layout [L, 1, M, KV, Dh] per seed, so that no reshape copies it) with rows
  first .. first + C - 1 written, and the segment's y [B, C, D] and what ``collect`` asks of
  residual [B, L+1, C, D] and heads [B, C, H, Dh] (the last layer's)."""
  slots = jnp.arange(M, dtype=jnp.int32)[None]

  def one(params, toks_C, first, cache):
    kv = {"k": cache["k"], "v": cache["v"], "length": first,
          "pos": slots, "valid": slots < first}
    pos = (first + jnp.arange(segment, dtype=jnp.int32))[None]
    # collect 'cache': written layer by layer in place (per-layer slices were copies, all alive
    # together: 74 KB per key on Gemma 3 f32, measured with memory_analysis)
    out = model_lib.forward(cfg, pol, params, toks_C[None], positions=pos, cache=kv,
                            collect=tuple(c for c in collect if c != "kv") + ("cache",))
    cache = out["cache"]
    rows = {"y": out["y"][0]}
    if "residual" in collect:
      rows["residual"] = out["residual"][:, 0]
    if "heads" in collect:
      rows["heads"] = out["heads"][-1, 0]
    return cache, rows

  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)), donate_argnums=3)


def _pairs_causal(cfg, pol, params, tokens_T, rows_2S, query_chunk=None, query_mesh=None):
  """rows_2S: int [2, S] rows of the one causal pass holding A_n's and B_n's compared token.
  ``query_chunk``: attention in chunks of query rows (memory linear in the pass length),
  spread over the devices of ``query_mesh`` if given."""
  out = model_lib.forward(cfg, pol, params, tokens_T[None], collect=COLLECT,
                          query_chunk=query_chunk, query_mesh=query_mesh)
  return _rows(out, rows_2S[0]), _rows(out, rows_2S[1])


def _pairs_kv(cfg, pol, params, stream_T, token, len_a_S, chunk, copy_vector=False,
              query_chunk=None):
  """KV-cache engine. stream_T: A_n = stream[:len(A_n)-1] + [a]. ``query_chunk``: the
  prefix pass's attention in chunks of query rows."""
  pre = model_lib.forward(cfg, pol, params, stream_T[None], collect=("kv",),
                          query_chunk=query_chunk)
  return _kv_stage(cfg, pol, params, pre["k"], pre["v"], token, len_a_S, chunk, copy_vector)


def _kv_stage(cfg, pol, params, k, v, token, len_a_S, chunk, copy_vector=False):
  """The kv_cache engine after its prefix pass: k, v [L, 1, M, KV, Dh] the stream's keys
  and values (M tokens); per n the two tokens [a, a] (below)."""
  M = k.shape[2]
  # two spare slots, so that the two new keys always fit at slots n - 1 and n
  room = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, 2)] + [(0, 0)] * (x.ndim - 3))
  kc, vc = room(k), room(v)

  def one(n):
    """A_n's and B_n's last tokens, [a, a] at stream indices n - 1 and n, written into the
    cache there: the rows of an exact-length forward (the length-invariant schedule: their
    tiles sit where a pass's would, the later slots are causally unseen). B = 1 per n."""
    pos = jnp.stack([n - 1, n - 1 if copy_vector else n]).astype(jnp.int32)[None]
    cache = {"k": kc, "v": vc, "length": n - 1,
             "pos": jnp.arange(M + 2, dtype=jnp.int32)[None],
             "valid": (jnp.arange(M + 2) < n - 1)[None]}
    out = model_lib.forward(cfg, pol, params, jnp.full((1, 2), token, jnp.int32),
                            positions=pos, cache=cache, collect=COLLECT)
    return {"y": out["y"][0], "residual": out["residual"][:, 0], "heads": out["heads"][-1, 0]}

  def one_chunk(n_C):
    r = jax.lax.map(one, n_C)  # y [C,2,D], residual [C,L+1,2,D], heads [C,2,H,Dh]
    pick = lambda j: {"y": r["y"][:, j], "residual": r["residual"][:, :, j],
                      "heads": r["heads"][:, j]}
    return pick(0), pick(1)

  return _map_chunks(one_chunk, len_a_S, chunk)


def _pairs_masked(cfg, pol, params, tokens_T, token, len_a_S, chunk, one_pass, total,
                  copy_vector=False):
  """Reference engine: one padded forward per n (B_n), vmapped over n in chunks."""
  def one(n):
    if one_pass:
      seq = jnp.where(jnp.arange(total) <= n, tokens_T[:total], 0).astype(jnp.int32)
    else:
      seq = pairs_lib.appended_pair_tokens(tokens_T, token, n, total)
    valid = (jnp.arange(total) <= n)[None]
    pos = jnp.arange(total, dtype=jnp.int32)
    if copy_vector:  # B_n's copy of the last token keeps A_n's last position
      pos = jnp.minimum(pos, n - 1)
    out = model_lib.forward(cfg, pol, params, seq[None], positions=pos[None], key_valid=valid,
                            collect=COLLECT)
    return _rows(out, jnp.stack([n - 1, n]))

  def one_chunk(n_C):
    # one B = 1 forward after another (lax.map), not vmap: a vmapped axis joins the dots'
    # rows, so each forward here has the shape of an exact-length forward's tiles
    r = jax.lax.map(one, n_C)  # y [C,2,D], residual [C,L+1,2,D], heads [C,2,H,Dh]
    pick = lambda j: {"y": r["y"][:, j], "residual": r["residual"][:, :, j], "heads": r["heads"][:, j]}
    return pick(0), pick(1)

  return _map_chunks(one_chunk, len_a_S, chunk)


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
  out["y_absmax"] = metrics.absmax(a["y"], -1)
  out["head_absmax"] = metrics.absmax(a["heads"], (-2, -1))
  return out


def chunked_pair_metrics(out: dict, rows_2S, chunk: int, put=lambda x: x) -> dict:
  """:func:`pair_metrics` per seed of the rows rows_2S (int [2, S]: A_n's, B_n's) of
  :func:`segmented_pass`'s ``out``, ``chunk`` n per jitted call (one compile; the last chunk
  padded by repeating its last n), so the gathered rows and their differences take O(chunk)
  memory. Every metric reduces over one n's vector, so chunks change no value (tested).
  Returns metrics with leading axis B, n last."""
  rows_2S = np.asarray(rows_2S, np.int32)
  S = rows_2S.shape[1]
  fn = _chunk_metrics_fn()
  get = lambda i: put(_host_rows(out, i))
  parts = []
  for i in range(0, S, chunk):
    idx = rows_2S[:, i:i + chunk]
    idx = np.concatenate([idx, np.repeat(idx[:, -1:], chunk - idx.shape[1], axis=1)], axis=1)
    parts.append(fn(get(idx[0]), get(idx[1])))
  return {k: jnp.concatenate([p[k] for p in parts], axis=-1)[..., :S] for k in parts[0]}


@functools.lru_cache(maxsize=1)
def _chunk_metrics_fn():
  """jit(vmap over seeds) of pair_metrics of gathered rows: y [B, C, D], residual [B, L+1,
  C, D], heads [B, C, H, Dh]."""
  return jax.jit(jax.vmap(pair_metrics))


def _kv_stage_in_steps(cfg, pol, params_B, k, v, pair_set, len_a_S, chunk, put, progress):
  """The kv_cache stage after a segmented prefix pass (k, v [B, L, M, KV, Dh]), in calls of
  about :data:`KV_STEP` n (equal sizes; the last padded by repeating its last n), one
  compiled program: each n's tokens run alone (``lax.map``, B = 1), so the split changes no
  value (tested). ``progress(message)`` between calls, about every 30 s, with a lower bound
  on the time left (a later n attends to more keys, so it costs at least as much)."""
  S = len(len_a_S)
  step = -(-S // -(-S // KV_STEP))
  prog = _kv_stage_program(cfg, pol, int(min(chunk, step)), pair_set.copy == "vector")
  token = put(jnp.asarray(pair_set.token, jnp.int32))
  parts, t0 = [], time.perf_counter()
  tick = t0
  for i in range(0, S, step):
    part = np.asarray(len_a_S[i:i + step], np.int32)
    part = np.concatenate([part, np.repeat(part[-1:], step - len(part))])
    parts.append(prog(params_B, k, v, token, put(jnp.asarray(part))))
    if progress is not None and i + step < S:
      jax.block_until_ready(parts[-1])
      now, done = time.perf_counter(), i + step
      if now - tick >= 30:
        tick = now
        progress(f"kv_cache lengths {done} of {S} in {now - t0:.0f}s; at least "
                 f"{(now - t0) * (S - done) / done:.0f}s to go")
  return {key: jnp.concatenate([p[key] for p in parts], axis=-1)[..., :S] for key in parts[0]}


@functools.lru_cache(maxsize=16)
def _kv_stage_program(cfg: DecoderConfig, pol: Policy, chunk: int, copy_vector: bool):
  """jit(vmap over seeds) of :func:`_kv_stage` and its metrics: f(params_B, k_B, v_B, token,
  len_a_S), k_B/v_B [B, L, M, KV, Dh] as :func:`segmented_pass` returns them."""
  def one(params, k, v, token, len_a_S):
    a, b = _kv_stage(cfg, pol, params, k[:, None], v[:, None], token, len_a_S, chunk,
                     copy_vector)
    return pair_metrics(a, b)
  return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None)))


@functools.lru_cache(maxsize=64)
def sweep_program(cfg: DecoderConfig, pol: Policy, engine: str, one_pass: bool,
                  total: int, chunk: int, copy_vector: bool = False,
                  query_chunk: int | None = None, query_devices: tuple | None = None):
  """The jitted program for one (policy, config, engine) of causal/kv_cache/masked:
  f(params_B, tokens_BT, token, len_a_S, rows_2S) -> metrics with a leading seed axis B.
  Lengths, tokens and seeds are data. ``query_devices``: the causal pass's query chunks are
  spread over these devices (inputs replicated on them)."""
  if engine not in ENGINES[:3]:
    raise ValueError(f"sweep_program builds causal, kv_cache or masked, not {engine!r}")
  mesh = None if query_devices is None else model_lib.chunk_mesh(query_devices)

  def per_seed(params, tokens_T, token, len_a_S, rows_2S):
    if engine == "causal":
      a, b = _pairs_causal(cfg, pol, params, tokens_T, rows_2S, query_chunk, mesh)
    elif engine == "kv_cache":
      a, b = _pairs_kv(cfg, pol, params, tokens_T, token, len_a_S, chunk, copy_vector,
                       query_chunk)
    else:
      a, b = _pairs_masked(cfg, pol, params, tokens_T, token, len_a_S, chunk, one_pass,
                           total, copy_vector)
    return pair_metrics(a, b)

  def program(params_B, tokens_BT, token, len_a_S, rows_2S):
    TRACE_COUNT[(pol.name, cfg.num_heads, engine)] += 1
    return jax.vmap(per_seed, in_axes=(0, 0, None, None, None))(
        params_B, tokens_BT, token, len_a_S, rows_2S)

  return jax.jit(program)


@functools.lru_cache(maxsize=16)
def _exact_fn(cfg: DecoderConfig, pol: Policy):
  """One jitted exact-length forward per (config, policy): the compared (last) token's y,
  residual [L+1, D] and last-layer heads [H, Dh]. jit compiles once per sequence length.
  ``positions_T`` None: the plain 0..T-1 (built inside the program, as a user's forward)."""
  @jax.jit
  def last(params, tokens_T, positions_T):
    pos = None if positions_T is None else positions_T[None]
    out = model_lib.forward(cfg, pol, params, tokens_T[None], positions=pos, collect=COLLECT)
    return {"y": out["y"][0, -1], "residual": out["residual"][:, 0, -1],
            "heads": out["heads"][-1, 0, -1]}
  return last


def _shared_prefixes(seqs: list) -> list:
  """Group token sequences by prefix: [(host index, [(sequence index, row), ...]), ...] such
  that every sequence is rows 0..row of its host (row = its length - 1), each host once.
  Lexicographic order puts a prefix right before the sequences that extend it (anything
  between shares it), so one pass from the end finds each sequence's longest extension."""
  order = sorted(range(len(seqs)), key=lambda i: seqs[i].tobytes())
  host = {}
  for j in range(len(order) - 1, -1, -1):
    i = order[j]
    nxt = order[j + 1] if j + 1 < len(order) else None
    ext = (nxt is not None and len(seqs[nxt]) >= len(seqs[i])
           and np.array_equal(seqs[nxt][:len(seqs[i])], seqs[i]))
    host[i] = host[nxt] if ext else i
  groups: dict = {}
  for i in range(len(seqs)):
    groups.setdefault(host[i], []).append((i, len(seqs[i]) - 1))
  return sorted(groups.items())


@functools.lru_cache(maxsize=16)
def _rows_fn(cfg: DecoderConfig, pol: Policy):
  """One jitted forward returning every row (compiled once per length): y [T, D], residual
  [L+1, T, D], heads [T, H, Dh] (the last layer's)."""
  @jax.jit
  def rows(params, tokens_T):
    return _rows(model_lib.forward(cfg, pol, params, tokens_T[None], collect=COLLECT),
                 slice(None))
  return rows


# The exact engine reads a sequence that is a prefix of another needed one from the longer
# one's forward, on the length-invariant schedule only (there row i of a forward has the bits
# of the last row of an exact forward of i + 1 tokens: tested). Tests switch it off to compare
# with one forward per sequence.
EXACT_SHARES_PREFIXES = True


def _exact(cfg, pol, params_B, seed, pair_set, ns, progress=None) -> dict:
  """Exact engine for seed ``seed`` of params_B (weights with a seed axis): metrics as
  pair_metrics returns them. Every distinct sequence (tokens and positions) is computed once
  (B_n is often A_{n+1}). On the length-invariant schedule a sequence with plain positions
  that is a prefix of another needed one is read from that one's forward
  (:func:`_shared_prefixes`; Figure 5's setting (d): A_n is a prefix of A_{n+3}, so three
  forwards hold every n). A forward longer than one segment runs as :func:`segmented_pass`.
  ``progress(message)``: about every 30 s."""
  keys: dict = {}
  seqs, poss = [], []
  idx = np.empty((2, len(ns)), np.int64)
  for j, n in enumerate(ns):
    (ta, tb), (pa, pb) = pair_set.pair_tokens(int(n)), pair_set.positions(int(n))
    for side, (t, p) in enumerate(((ta, pa), (tb, pb))):
      t, p = np.asarray(t, np.int32), np.asarray(p, np.int32)
      key = t.tobytes() + p.tobytes()
      if key not in keys:
        cfg.check_token_ids(t, "pair tokens")
        keys[key] = len(seqs)
        seqs.append(t)
        poss.append(p)
      idx[side, j] = keys[key]
  plain = [np.array_equal(p, np.arange(len(p))) for p in poss]
  share = EXACT_SHARES_PREFIXES and pol.row_tile is not None
  shared = [i for i in range(len(seqs)) if plain[i]] if share else []
  alone = sorted(set(range(len(seqs))) - set(shared))
  groups = ([(shared[h], [(shared[i], r) for i, r in g])
             for h, g in _shared_prefixes([seqs[i] for i in shared])]
            + [(i, [(i, len(seqs[i]) - 1)]) for i in alone])
  last, every = _exact_fn(cfg, pol), _rows_fn(cfg, pol)
  # the seed's weights, without (for exact forwards) and with (segmented passes) a seed axis:
  # each a copy, made only when a forward needs it (a float32 model is 0.5-1 GiB)
  made: dict = {}

  def weights(axis: bool):
    if axis not in made:
      one = axis and len(jax.tree_util.tree_leaves(params_B)[0]) == 1
      made[axis] = params_B if one else jax.tree_util.tree_map(
          lambda x: x[seed:seed + 1] if axis else x[seed], params_B)
    return made[axis]
  host: dict = {}
  t0 = tick = time.perf_counter()
  for g, (h, members) in enumerate(groups):
    tokens = seqs[h]
    segment = segment_rows(pol, len(tokens)) if plain[h] else None
    if segment is not None:  # a long forward: in segments (the same bits, less memory)
      note = None if progress is None else (
          lambda msg, g=g: progress(f"exact forward {g + 1} of {len(groups)}: {msg}"))
      out = segmented_pass(cfg, pol, weights(True), tokens[None], segment, progress=note)
      got = {k: np.asarray(v)[0] for k, v in _host_rows(out, [r for _, r in members]).items()}
      del out
    elif len(members) == 1 and members[0][1] == len(tokens) - 1:  # its last row only
      got = last(weights(False), jnp.asarray(tokens), None if plain[h] else jnp.asarray(poss[h]))
      got = {k: np.asarray(v)[None] if k != "residual" else np.asarray(v)[:, None]
             for k, v in got.items()}
    else:
      rows = np.asarray([r for _, r in members])
      got = {k: np.take(np.asarray(v), rows, axis=1 if k == "residual" else 0)
             for k, v in every(weights(False), jnp.asarray(tokens)).items()}
    if not host:  # every sequence's rows: y [1, R, D], residual [1, L+1, R, D], heads [1, R, H, Dh]
      R = len(seqs)
      host = {k: np.empty((1, v.shape[0], R) + v.shape[2:] if k == "residual"
                          else (1, R) + v.shape[1:], v.dtype) for k, v in got.items()}
    at = [i for i, _ in members]
    for k, v in got.items():
      if k == "residual":
        host[k][0][:, at] = v
      else:
        host[k][0][at] = v
    now = time.perf_counter()
    if progress is not None and now - tick >= 30 and g + 1 < len(groups):
      tick = now
      progress(f"exact forwards {g + 1} of {len(groups)} ({len(seqs)} sequences) in "
               f"{now - t0:.0f}s")
  return {k: v[0] for k, v in chunked_pair_metrics(host, idx, METRIC_CHUNK).items()}


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one engine run fits the memory budget: the pass length ``tokens``, the causal (or
  kv_cache prefix) pass's ``query_chunk`` (None: whole) and the estimated ``peak_bytes``."""
  engine: str
  tokens: int
  query_chunk: int | None
  peak_bytes: int


def plan(cfg: DecoderConfig, pol: Policy, pair_set: pairs_lib.PairSet, ns, engine=None, *,
         chunk: int = 32, min_tokens: int = 0, memory_budget: float | None = None,
         seeds: int = 1) -> Plan:
  """Plan a run of ``engine`` (None: the set's own) over ``ns`` within ``memory_budget``
  bytes, before anything is compiled. causal: the one pass, its attention in query chunks
  when the whole would not fit (:func:`memory.plan_query_chunk`). kv_cache: the prefix pass
  likewise, then ``chunk`` lengths at a time. masked: ``chunk`` padded forwards at a time.
  exact: one forward at a time, not planned. ValueError with one line (what it needs, the
  budget, the flag that lowers it) when it cannot fit."""
  engine = resolve(engine, pair_set)
  ns = pair_set.check(ns)
  if engine == "exact":
    return Plan(engine, int(pair_set.lengths_ab(ns[-1:]).max()), None, 0)
  if engine == "causal":
    tokens = int(max(pair_set.rows(ns).max() + 1, min_tokens))
  else:
    tokens = int(pair_set.lengths_ab(ns)[0][-1]) + 1
  chunk = int(min(chunk, ns.size))
  qc = None
  if engine in ("causal", "kv_cache"):
    qc = memory.plan_query_chunk(cfg, pol, seeds, tokens, memory_budget)
    peak = memory.causal_peak_bytes(cfg, pol, seeds, tokens, qc)
    segment = segment_rows(pol, tokens)
    if engine == "causal" and segment is not None:  # one device runs it in segments
      peak = memory.segmented_peak_bytes(cfg, pol, seeds, tokens, segment, METRIC_CHUNK)
  if engine == "kv_cache":
    stage = memory.appended_peak_bytes(cfg, pol, seeds, tokens, chunk, ns.size)
    peak = max(peak, stage)
  elif engine == "masked":
    peak = stage = chunk * memory.causal_peak_bytes(cfg, pol, seeds, tokens, None)
  if engine != "causal" and memory_budget is not None and stage > memory_budget:
    raise ValueError(
        f"the {engine} engine over {tokens} tokens x {seeds} seeds needs about "
        f"{memory.size(stage)} for {chunk} lengths at a time; the budget is "
        f"{memory.size(memory_budget)}: lower --chunk"
        + (" (1 needs " + memory.size(stage // chunk) + ")" if chunk > 1 else "")
        + ", raise --memory_budget (if the machine has it), lower --max_len, or use the "
        "causal engine where the pair set allows it")
  return Plan(engine, tokens, qc, int(peak))


def chunked(cfg: DecoderConfig, pol: Policy, pair_set: pairs_lib.PairSet, ns, engine=None,
            min_tokens: int = 0, memory_budget: float | None = None, seeds: int = 1) -> bool:
  """Whether this run is a causal pass whose attention ``memory_budget`` splits into query
  chunks: a long cell, whose chunks can be spread over several devices."""
  if resolve(engine, pair_set) != "causal":
    return False
  p = plan(cfg, pol, pair_set, ns, engine, min_tokens=min_tokens, memory_budget=memory_budget,
           seeds=seeds)
  return p.engine == "causal" and p.query_chunk is not None


def run(cfg: DecoderConfig, pol: Policy, params_B, pair_sets: Sequence[pairs_lib.PairSet],
        ns, *, engine: str | None = None, chunk: int = 32, min_tokens: int = 0,
        memory_budget: float | None = None, devices=None) -> dict:
  """Run one engine over a batch of seeds and wait for it: :func:`launch`, then fetch.
  Returns numpy metrics (:func:`pair_metrics`) with leading axis B."""
  return fetch(launch(cfg, pol, params_B, pair_sets, ns, engine=engine, chunk=chunk,
                      min_tokens=min_tokens, memory_budget=memory_budget, devices=devices))


def fetch(launched: dict) -> dict:
  """Wait for a :func:`launch` and copy its metrics to numpy."""
  return {k: np.asarray(v) for k, v in launched.items()}


def launch(cfg: DecoderConfig, pol: Policy, params_B, pair_sets: Sequence[pairs_lib.PairSet],
           ns, *, engine: str | None = None, chunk: int = 32, min_tokens: int = 0,
           memory_budget: float | None = None, devices=None, progress=None) -> dict:
  """Start one engine over a batch of seeds, without waiting (JAX dispatches asynchronously,
  so launches on several devices run at once).

  Args:
    params_B: policy-cast params with a leading seed axis B.
    pair_sets: B pair sets of one kind (one per seed; e.g. a family per seed, or the same
      prompt setting), sharing lengths and rows.
    ns: int [S] the swept n (strictly increasing, >= min_n).
    engine: an ENGINES name, or None/'auto' (:func:`resolve`).
    min_tokens: causal engine: pad the one pass to at least this many tokens (continuing the
      pattern; rows are unchanged), so pair sets with other lengths share one compiled program.
    memory_budget: bytes the causal engine may use on the device (``memory.plan_query_chunk``): the
      attention runs in chunks of query rows when the whole pass would not fit; None:
      unchunked.
    devices: the jax devices that run it (None: the default device). One device: the program
      is the same on every device, so the bits do not depend on which one ran it. Several:
      only a chunked causal pass (:func:`chunked`), whose query chunks are spread over them
      (``model.forward(query_mesh=...)``; bit-identical to one device, measured).
    progress: a long causal or kv_cache pass (more than ``SEGMENT_ROWS`` rows, one device)
      runs as :func:`segmented_pass`, which calls ``progress(message)`` every 30 s or so.
  Returns metrics (:func:`pair_metrics`, leading axis B) as jax arrays still being computed
  (the exact engine, driven from Python, and a segmented pass have finished).
  """
  pol.check_available()
  if not cfg.causal:
    raise ValueError("the sweep engines read A_n's last token from B_n's causal pass (or a "
                     "causal exact-length forward); a bidirectional model (causal=False) is "
                     "not supported")
  first = pair_sets[0]
  engine = resolve(engine, first)
  ns = first.check(ns)
  max_n = int(ns[-1])
  devices = None if devices is None else tuple(devices)
  if devices is not None and len(devices) > 1 and not chunked(
      cfg, pol, first, ns, engine, min_tokens, memory_budget, len(pair_sets)):
    raise ValueError("only a causal pass in query chunks (one that --memory_budget does not "
                     "hold whole) spreads over several devices")
  if devices is None:
    put = lambda x: x
  else:
    where = (devices[0] if len(devices) == 1 else jax.sharding.NamedSharding(
        model_lib.chunk_mesh(devices), jax.sharding.PartitionSpec()))
    put = lambda x: jax.device_put(x, where)
  params_B = put(params_B)
  if engine == "exact":
    out = [_exact(cfg, pol, params_B, i, s, ns, progress) for i, s in enumerate(pair_sets)]
    return {k: np.stack([np.asarray(o[k]) for o in out]) for k in out[0]}
  planned = plan(cfg, pol, first, ns, engine, chunk=chunk, min_tokens=min_tokens,
                 memory_budget=memory_budget, seeds=len(pair_sets))
  len_a = first.lengths_ab(ns)[0].astype(np.int32)
  total = planned.tokens
  if engine == "causal":
    rows = first.rows(ns)
  else:
    rows = np.stack([len_a - 1, len_a]).astype(np.int32)
  streams = [s.stream(max_n, total if first.one_pass else 0) for s in pair_sets]
  width = {len(x) for x in streams}
  if len(width) != 1:
    raise ValueError(f"the pair sets' streams differ in length ({sorted(width)}): one batch "
                     "needs one shape")
  tokens_BT = np.stack(streams)
  if first.one_pass and tokens_BT.shape[1] < total:
    raise ValueError(f"shared sequence has {tokens_BT.shape[1]} tokens; need {total}")
  cfg.check_token_ids(tokens_BT, "sweep tokens")
  cfg.check_token_ids([first.token], "the repeated token")
  if engine == "causal":
    tokens_BT = tokens_BT[:, :total]
  spread = devices if devices is not None and len(devices) > 1 else None
  segment = (segment_rows(pol, tokens_BT.shape[1], len(spread or (0,)))
             if engine in ("causal", "kv_cache") else None)
  if segment is not None:  # a long pass: one segment at a time
    if engine == "causal":
      out = segmented_pass(cfg, pol, params_B, tokens_BT, segment, COLLECT, put, progress)
      return chunked_pair_metrics(out, rows, METRIC_CHUNK, put)
    out = segmented_pass(cfg, pol, params_B, tokens_BT, segment, ("kv",), put, progress)
    return _kv_stage_in_steps(cfg, pol, params_B, out["k"], out["v"], first, len_a, chunk,
                              put, progress)
  prog = sweep_program(cfg, pol, engine, first.one_pass, total, int(min(chunk, ns.size)),
                       first.copy == "vector", planned.query_chunk, spread)
  args = [jnp.asarray(x, jnp.int32) for x in (tokens_BT, first.token, len_a, rows)]
  return prog(params_B, *[put(x) for x in args])
