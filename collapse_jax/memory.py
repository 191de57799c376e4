"""Memory planning: estimated peak bytes of the sweep engines, from shapes alone, and the
query chunk that fits a budget. Nothing here compiles or runs a model; ``engines.plan``
uses these estimates to pick a run's query chunk (or refuse it in one line) before anything
is compiled. BUILD_NOTES compares the estimates with measured peak RSS.

Words: N / M tokens of the pass (or the kv_cache prefix), C query rows per attention chunk,
L layers, H heads (KV key/value heads) of Dh, D the model width, F the MLP width; a
"length" is one n of the sweep (its compared rows of A_n and B_n).
"""
from __future__ import annotations

import ctypes
import gc
import os
import resource

import jax
import jax.numpy as jnp

from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy


# Smallest query chunk the planner picks: a chunk of 1 or 2 rows becomes a matrix-vector
# product whose low bits differ from the unchunked pass (measured); >= 8 gave the same bits.
MIN_QUERY_CHUNK = 16
GiB = 2 ** 30


def release(drop_compiled: bool = False) -> None:
  """Give freed memory back to the OS between cells: collect Python's cycles (which can hold
  device buffers) and, on glibc, ``malloc_trim(0)``; with ``drop_compiled`` also drop every
  compiled program (``jax.clear_caches()``: the next cell compiles its own again). glibc
  keeps what a cell freed in its arenas, and held programs add up over a run's cells: a
  SmolLM2 kv_cache cell (n to 256, float32) left 2.64 GiB resident, 2.04 after gc.collect
  and 0.40 after malloc_trim; over SmolLM2's cells to n = 128 the resident memory after
  each cell grew 2.05 -> 2.71 GiB in four cells without dropping programs and stayed at
  1.9-2.0 GiB with it (BUILD_NOTES, issue 27)."""
  if drop_compiled:
    jax.clear_caches()
  gc.collect()
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


def end_cell(drop_compiled: bool = False) -> dict:
  """:func:`release`, then the process's RSS as a record's keys {'rss_gib', 'peak_rss_gib'}
  (:func:`process_rss_gib`; ``records.RUN_KEYS``): what sweep and task cells store."""
  release(drop_compiled)
  rss, peak = process_rss_gib()
  return {"rss_gib": rss, "peak_rss_gib": peak}


def _glibc():
  try:
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") else None
  except OSError:
    return None


_LIBC = _glibc()


def process_rss_gib() -> tuple[float, float]:
  """(resident, peak resident) GiB of this process now: /proc/self/statm (Linux; the peak
  where that is missing) and getrusage's ru_maxrss (KiB on Linux). The kernel updates
  ru_maxrss lazily, so it can trail statm by a few pages; the peak returned is never below
  the resident figure."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  try:
    with open("/proc/self/statm") as f:
      now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GiB
  except (OSError, ValueError, IndexError):
    now = peak
  return round(now, 3), round(max(peak, now), 3)


def _itemsizes(pol: Policy) -> tuple[int, int, int, int]:
  """Bytes per element: storage, compute, softmax and accumulation dtypes."""
  return tuple(jnp.dtype(d).itemsize for d in (pol.storage_dtype, pol.compute_dtype,
                                               pol.softmax_dtype, pol.accum_dtype))


def _rows_bytes(cfg: DecoderConfig, pol: Policy, lengths: int) -> int:
  """The compared rows of A_n and B_n for ``lengths`` n (y, residual [L+1], last-layer
  heads) stored, plus one difference of them in the metrics' dtype (f32, or f64 for f64)."""
  s = _itemsizes(pol)[0]
  elems = lengths * ((cfg.num_layers + 2) * cfg.d_model + cfg.num_heads * cfg.dh)
  return elems * (2 * s + (8 if s == 8 else 4))


def causal_peak_bytes(cfg: DecoderConfig, pol: Policy, seeds: int, tokens: int,
                      query_chunk: int | None) -> int:
  """Estimated peak bytes of the causal engine for ``seeds`` (vmapped) passes of ``tokens``
  as one whole forward: the collected residual stream and heads; one layer's activations and
  one chunk of attention (:func:`_step_bytes`); and the compared rows of every n with their
  metrics. An estimate from the shapes; BUILD_NOTES compares it with measured peak RSS.
  XLA:CPU keeps more than one layer's activations alive in a whole forward (Gemma 3 bf16,
  N = 8204: 4.5 GiB of temporaries measured, against 7.0 GiB estimated for the whole run);
  a long pass on one device runs in segments instead (:func:`segmented_peak_bytes`)."""
  s = _itemsizes(pol)[0]
  N, D, L, H, Dh = tokens, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.dh
  C = N if query_chunk is None else min(query_chunk, N)
  if pol.row_tile is not None:  # the length-invariant schedule attends a whole tile at a time
    C = max(C, min(pol.row_tile, N))
  collected = N * ((L + 1) * D + L * H * Dh) * s
  return int(seeds * (collected + _step_bytes(cfg, pol, N, N, C)
                      + _rows_bytes(cfg, pol, N)))


def segmented_peak_bytes(cfg: DecoderConfig, pol: Policy, seeds: int, tokens: int,
                         segment: int, metric_chunk: int) -> int:
  """Estimated peak bytes of a causal pass of ``tokens`` run in segments of ``segment`` rows
  (``engines.segmented_pass``): the host rows of the whole pass (residual [L+1], y, the last
  layer's heads), stored; one segment's step (:func:`segment_step_bytes`); and the compared
  rows of ``metric_chunk`` n with their metrics (the metrics run that many n per call).
  Like every estimate here it leaves out the weights."""
  s = _itemsizes(pol)[0]
  D, L, H, Dh = cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.dh
  host = tokens * ((L + 2) * D + H * Dh) * s
  M = -(-tokens // segment) * segment
  return int(seeds * (host + segment_step_bytes(cfg, pol, segment, M)
                      + _rows_bytes(cfg, pol, min(metric_chunk, tokens))))


def segment_step_bytes(cfg: DecoderConfig, pol: Policy, segment: int, cache_tokens: int) -> int:
  """Estimated bytes of one step of a segmented pass (one seed) beyond the weights: the K/V
  cache of every layer over M = ``cache_tokens`` slots, stored (written in place); one
  layer's activations for the segment's rows; one row tile's attention over all M keys
  (:func:`_step_bytes`). Per key that is 2 L KV Dh stored bytes plus a tile's scores: on
  Gemma 3 float32, 36 + 6.4 KB, where ``memory_analysis`` of the compiled step grows 36 + 6.5
  KB (its argument and temporaries; tested on a small config)."""
  s = _itemsizes(pol)[0]
  cache = 2 * cfg.num_layers * cache_tokens * cfg.kv_heads * cfg.dh * s
  C = min(pol.row_tile or segment, segment)
  return cache + _step_bytes(cfg, pol, segment, cache_tokens, C)


def _step_bytes(cfg: DecoderConfig, pol: Policy, rows: int, keys: int, C: int) -> int:
  """One layer's activations for ``rows`` query rows (q, k, v, MLP hidden, norms) in the
  compute dtype, plus their stored copies where the storage dtype differs; one chunk of C
  query rows attending to ``keys`` keys: scores in the accumulation dtype, the softmax's
  exponentials and probabilities in its dtype, stored copies of scores and probabilities
  where the storage dtype differs, the mask, and the blocked value dot's partial sums."""
  s, c, sm, acc = _itemsizes(pol)
  D, H, KV, Dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dh
  F = cfg.ff if cfg.use_mlp else 0
  copy = lambda wide: wide + (s if s != wide else 0)  # a rounding point makes a new array
  layer = rows * ((H + 2 * KV) * Dh + 4 * D + 3 * F) * copy(c)
  blocks = -(-keys // (pol.accum_block or keys))
  per_score = copy(acc) + sm + copy(sm)  # scores, exp, probabilities
  attention = C * keys * (H * per_score + 1 + KV) + H * C * blocks * Dh * acc
  return layer + attention


def size(b: float) -> str:
  return f"{b / GiB:.2f} GiB" if b >= 0.1 * GiB else f"{b / 2 ** 20:.1f} MiB"


def plan_query_chunk(cfg: DecoderConfig, pol: Policy, seeds: int, tokens: int,
                     budget_bytes: float | None) -> int | None:
  """The largest query chunk whose estimated peak fits ``budget_bytes`` (None: no budget, or
  the whole pass fits: unchunked). ValueError with one line when even MIN_QUERY_CHUNK rows
  do not fit: what it needs, the budget, and which flags lower it."""
  if budget_bytes is None or causal_peak_bytes(cfg, pol, seeds, tokens, None) <= budget_bytes:
    return None
  lo = causal_peak_bytes(cfg, pol, seeds, tokens, MIN_QUERY_CHUNK)
  if lo > budget_bytes:
    raise ValueError(
        f"the causal pass over {tokens} tokens x {seeds} seeds needs about {size(lo)} even in "
        f"chunks of {MIN_QUERY_CHUNK} query rows; the budget is {size(budget_bytes)}: raise "
        "--memory_budget (if the machine has it), or lower "
        "--max_len, the number of --seeds or the model size")
  base = min(pol.row_tile or 0, tokens)  # below one tile, a chunk needs what the tile needs
  per_row = (causal_peak_bytes(cfg, pol, seeds, tokens, base + 1)
             - causal_peak_bytes(cfg, pol, seeds, tokens, base))
  fixed = causal_peak_bytes(cfg, pol, seeds, tokens, base) - base * per_row
  chunk = int((budget_bytes - fixed) // max(per_row, 1))
  return max(MIN_QUERY_CHUNK, min(chunk, tokens))


def appended_peak_bytes(cfg: DecoderConfig, pol: Policy, seeds: int, cache_tokens: int,
                        chunk: int, lengths: int | None = None) -> int:
  """Estimated peak bytes of the kv_cache engine's appended stage for ``seeds`` (vmapped):
  the prefix's K/V [L, M, KV, Dh]; per length of a ``chunk`` (one lax.map step) its
  broadcast copy of the cache, each layer's keys and values with the two new tokens, and
  the two queries' scores and probabilities over M keys with their mask; and the compared
  rows of all ``lengths`` n (default M) with their metrics."""
  s, c, sm, acc = _itemsizes(pol)
  M, L, H, KV, Dh = cache_tokens, cfg.num_layers, cfg.num_heads, cfg.kv_heads, cfg.dh
  copy = lambda wide: wide + (s if s != wide else 0)
  cache = 2 * L * M * KV * Dh * s
  per_length = (cache + 2 * (M + 2) * KV * Dh * copy(c)
                + 2 * M * (H * (copy(acc) + sm + copy(sm)) + 1 + KV) + M)
  rows = _rows_bytes(cfg, pol, M if lengths is None else lengths)
  return int(seeds * (cache + chunk * per_length + rows))
