"""Timing the sweep engines (``experiments/bench_sweep.py`` prints what these measure) and
greedy decoding (:func:`generate_timings`, ``experiments/bench_generate.py``).

Every time is wall-clock seconds around ``jax.block_until_ready``; "warm" times exclude
compilation (the first call is made and timed separately). Medians of ``repeats`` calls.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import engines, generate, memory, metrics, model, pairs
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import Policy


def timed(fn) -> float:
  """Seconds of one call of ``fn`` (its result blocked on)."""
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def median_time(fn, repeats: int) -> float:
  return float(np.median([timed(fn) for _ in range(repeats)]))


def best_of(fn, repeats: int) -> tuple[float, object]:
  """(seconds, result) of the fastest of ``repeats`` calls of ``fn`` (host results: no
  blocking here; ``fn`` returns when its work is done)."""
  runs = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    runs.append((time.perf_counter() - t, out))
  return min(runs, key=lambda r: r[0])


def generate_timings(cfg: DecoderConfig, pol: Policy, params, prompts: list, new_tokens: int,
                     repeats: int, on_path: bool = False) -> dict:
  """``generate.greedy_decode`` of a batch of B prompts (lists of token ids) for
  ``new_tokens`` greedy tokens each under ``pol`` (``params`` already cast): one call that
  compiles, then the best of ``repeats``. Returns prefill_s, decode_tok_s and e2e_tok_s
  (tokens of all rows per second: B new tokens per step; e2e over the whole call), compile_s
  (first call minus best), step_ms (per decode step), ids (each row's new tokens) and the
  run's P and S (``generate.Generation``). ``on_path``: ``greedy_decode(on_path=True)``."""
  run = lambda: generate.greedy_decode(cfg, pol, params, prompts, new_tokens, on_path=on_path)
  t = time.perf_counter()
  run()  # compiles
  first = time.perf_counter() - t
  total, g = best_of(run, repeats)
  B = len(prompts)
  return {"prefill_s": g.prefill_s,
          "decode_tok_s": B * g.steps / g.decode_s if g.steps else 0.0,
          "e2e_tok_s": B * new_tokens / total, "compile_s": first - total, "ids": g.ids,
          "step_ms": 1e3 * g.decode_s / max(g.steps, 1), "P": g.P, "S": g.S}


def scaling_cell(cfg: DecoderConfig, pol: Policy, N: int, *, repeats: int,
                 memory_budget_gib: float) -> dict:
  """One causal sweep (log grid of 200 n up to N) and one forward of N+1 tokens, chunked to
  the memory budget, each compiled once and then timed ``repeats`` times in alternation
  (forward, sweep, forward, sweep, ...: a load that comes and goes hits both alike); the
  medians, the query chunk, the estimated bytes and this process's peak RSS (so run one cell
  per fresh process)."""
  budget = memory_budget_gib * memory.GiB
  cfg = cfg.replace(max_len=N + 1)
  f = pairs.make_family("repeat", N, seed=0, vocab_size=cfg.vocab_size)
  lengths = pairs.parse_lengths(f"log:1:{N}:200")
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  params_B = jax.tree_util.tree_map(lambda x: x[None], params)
  plan = engines.plan(cfg, pol, f, lengths, memory_budget=budget)
  sweep = lambda: engines.launch(cfg, pol, params_B, [f], lengths, memory_budget=budget)
  fwd = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "heads"),
                                           query_chunk=plan.query_chunk))
  x = jnp.asarray(f.tokens[None])
  forward = lambda: fwd(params, x)
  first, first_fwd = timed(sweep), timed(forward)
  t_fwd, t_sweep = [], []
  for _ in range(repeats):
    t_fwd.append(timed(forward))
    t_sweep.append(timed(sweep))
  return {"N": N, "query_chunk": plan.query_chunk, "estimate_gib": plan.peak_bytes / memory.GiB,
          "peak_rss_gib": memory.process_rss_gib()[1],
          "sweep_first_s": first, "forward_first_s": first_fwd,
          "sweep_s": float(np.median(t_sweep)), "forward_s": float(np.median(t_fwd)),
          "ratios": [s / f for s, f in zip(t_sweep, t_fwd)]}


def engine_timings(cfg: DecoderConfig, pol: Policy, N: int, *, repeats: int,
                   loop_lengths: int) -> dict:
  """Seconds for every n in 1..N of the ``repeat`` family: the causal sweep (warm, and its
  first call with compilation), the same sweep in the backend's dot order (``accum_block``
  and ``row_tile`` None), the masked reference engine, one forward at length N+1, and a
  per-length loop of exact-shape forwards (compile included, as a user's loop pays it)
  measured on ``loop_lengths`` lengths: ``loop_each_s`` per length."""
  f = pairs.make_family("repeat", N, seed=0, vocab_size=cfg.vocab_size)
  lengths = np.arange(1, N + 1)
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  params_B = jax.tree_util.tree_map(lambda x: x[None], params)

  def run(engine, p=pol):
    return engines.run(cfg, p, params_B, [f], lengths, engine=engine)

  t = {"sweep_first_s": timed(lambda: run("causal"))}
  t["sweep_s"] = median_time(lambda: run("causal"), repeats)
  unblocked = dataclasses.replace(pol, accum_block=None, row_tile=None)
  run("causal", unblocked)
  t["unblocked_s"] = median_time(lambda: run("causal", unblocked), repeats)
  run("masked")
  t["masked_s"] = median_time(lambda: run("masked"), repeats)
  fwd = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "heads"))["y"])
  x_full = jnp.asarray(f.tokens[None])
  fwd(params, x_full)
  t["forward_s"] = median_time(lambda: fwd(params, x_full), repeats)
  loop_ns = np.unique(np.linspace(1, N, loop_lengths).astype(int))

  def loop():  # what a naive user does: exact-shape forwards for n and n+1, compared
    return [metrics.linf_distance(fwd(params, x_full[:, :n])[0, -1],
                                  fwd(params, x_full[:, :n + 1])[0, -1]) for n in loop_ns]

  t["loop_each_s"] = timed(loop) / len(loop_ns)
  t["loop_lengths"] = len(loop_ns)
  return t
