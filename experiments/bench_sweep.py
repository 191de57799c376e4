r"""Benchmark (not a test): the sweep engine vs one forward vs a per-length loop.

  python -m experiments.bench_sweep --max_len=512 --loop_lengths=24

Prints wall times (compile excluded unless stated, median of --repeats) and ratios:
  sweep (causal engine, every n in 1..N, all metrics)  vs  one forward at length N+1
  sweep                                                 vs  masked reference engine
  sweep                                                 vs  per-length loop of exact-shape
                                                            jitted forwards (compile included,
                                                            as a user's loop pays it), measured
                                                            on --loop_lengths lengths and
                                                            extrapolated linearly to all N.
  sweep (blocked accumulation, the default)             vs  the same sweep with the backend's
                                                            own dot order (accum_block=None, untiled)

  python -m experiments.bench_sweep --scaling=4096,16384,65536 --heads=1

runs instead one cell per N, each in a fresh process (so its peak RSS is its own): the causal
sweep over a log grid of 200 n up to N under --memory_budget (chunked attention when the
whole pass would not fit) and one forward of the same length, timed --repeats times in
alternation; prints the query chunk, the estimated and measured peak, the median times and
sweep/forward per N (and per timing pair).
"""
import dataclasses
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import collapse_jax as cj
from collapse_jax import cli, engines, memory, pairs, model, xla_env

F = flags.FLAGS
cli.define(dtype="bfloat16", max_len=512, heads=["4"], layers=2, d_model=64, memory_budget=2.0)
flags.DEFINE_list("scaling", None, "N values: one scaling cell per N (memory and time)")
flags.DEFINE_integer("scaling_cell", None, "internal: run the scaling cell of this N, print JSON")
flags.DEFINE_integer("loop_lengths", 16, "lengths timed in the per-length loop")
flags.DEFINE_integer("repeats", 3, "timing repeats (median)")


def _time(fn, repeats):
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def scaling_cell(cfg, pol, N: int, repeats: int) -> dict:
  """One causal sweep (log grid of 200 n up to N) and one forward of N+1 tokens, chunked to
  the memory budget, each compiled once and then timed ``repeats`` times in alternation
  (forward, sweep, forward, sweep, ...: a load that comes and goes hits both alike); the
  medians, the query chunk, the estimated bytes and this process's peak RSS."""
  budget = F.memory_budget * memory.GiB
  cfg = cfg.replace(max_len=N + 1)
  f = pairs.make_family("repeat", N, seed=0, vocab_size=32)
  lengths = pairs.parse_lengths(f"log:1:{N}:200")
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  params_B = jax.tree_util.tree_map(lambda x: x[None], params)
  plan = engines.plan(cfg, pol, f, lengths, memory_budget=budget)
  sweep = lambda: engines.launch(cfg, pol, params_B, [f], lengths, memory_budget=budget)
  fwd = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "heads"),
                                           query_chunk=plan.query_chunk))
  x = jnp.asarray(f.tokens[None])
  forward = lambda: fwd(params, x)
  t0 = time.perf_counter()
  jax.block_until_ready(sweep())
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(forward())
  first_fwd = time.perf_counter() - t0
  t_fwd, t_sweep = [], []
  for _ in range(repeats):
    t_fwd.append(_time(forward, 1))
    t_sweep.append(_time(sweep, 1))
  return {"N": N, "query_chunk": plan.query_chunk, "estimate_gib": plan.peak_bytes / memory.GiB,
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
          "sweep_first_s": first, "forward_first_s": first_fwd,
          "sweep_s": float(np.median(t_sweep)), "forward_s": float(np.median(t_fwd)),
          "ratios": [s / f for s, f in zip(t_sweep, t_fwd)]}


def scaling(Ns):
  print(f"scaling: dtype={F.dtype} L={F.layers} D={F.d_model} H={F.heads[0]} budget "
        f"{F.memory_budget} GiB, one fresh process per N, {F.repeats} alternating timings "
        "(medians)")
  print(f"{'N':>7s} {'chunk':>6s} {'est GiB':>8s} {'peak RSS GiB':>13s} {'sweep s':>8s} "
        f"{'(first)':>8s} {'forward s':>10s} {'(first)':>8s} {'sweep/fwd':>10s} (each pair)")
  for N in Ns:
    cmd = [sys.executable, "-m", "experiments.bench_sweep", f"--scaling_cell={N}",
           f"--dtype={F.dtype}", f"--heads={F.heads[0]}", f"--layers={F.layers}",
           f"--d_model={F.d_model}", f"--memory_budget={F.memory_budget}",
           f"--repeats={F.repeats}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
      print(f"{N:>7d} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
      continue
    c = json.loads(r.stdout.strip().splitlines()[-1])
    pairs_ = " ".join(f"{x:.2f}" for x in c["ratios"])
    print(f"{N:>7d} {str(c['query_chunk']):>6s} {c['estimate_gib']:8.2f} {c['peak_rss_gib']:13.2f} "
          f"{c['sweep_s']:8.2f} {c['sweep_first_s']:8.2f} {c['forward_s']:10.2f} "
          f"{c['forward_first_s']:8.2f} {c['sweep_s'] / c['forward_s']:10.2f} ({pairs_})",
          flush=True)


def main(argv):
  del argv
  with cli.usage_errors():
    pol = cli.one(cli.policies(F.dtype), "dtype")
    heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
    Ns = cli.int_list(F.scaling, "scaling") if F.scaling else None
  cfg = cj.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads, vocab_size=32)
  if F.scaling_cell:
    print(json.dumps(scaling_cell(cfg, pol, F.scaling_cell, F.repeats)))
    return
  if Ns:
    scaling(Ns)
    return
  N = F.max_len
  f = pairs.make_family("repeat", N, seed=0, vocab_size=32)
  lengths = np.arange(1, N + 1)
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  params_B = jax.tree_util.tree_map(lambda x: x[None], params)

  def run(engine, p=pol):
    return engines.run(cfg, p, params_B, [f], lengths, engine=engine)

  t0 = time.perf_counter(); run("causal"); compile_sweep = time.perf_counter() - t0
  t_sweep = _time(lambda: run("causal"), F.repeats)
  unblocked = dataclasses.replace(pol, accum_block=None, row_tile=None)
  run("causal", unblocked)
  t_unblocked = _time(lambda: run("causal", unblocked), F.repeats)
  run("masked")
  t_masked = _time(lambda: run("masked"), F.repeats)
  fwd = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "heads"))["y"])
  x_full = jnp.asarray(f.tokens[None])
  fwd(params, x_full)
  t_fwd = _time(lambda: fwd(params, x_full), F.repeats)

  loop_ns = np.unique(np.linspace(1, N, F.loop_lengths).astype(int))
  t = time.perf_counter()
  for n in loop_ns:  # what a naive user does: exact-shape forwards for n and n+1, compared
    a = fwd(params, x_full[:, :n])[0, -1]
    b = fwd(params, x_full[:, : n + 1])[0, -1]
    jax.block_until_ready(cj.metrics.linf_distance(a, b))
  t_loop_each = (time.perf_counter() - t) / len(loop_ns)
  t_loop_all = t_loop_each * N

  print(f"device={jax.devices()[0].device_kind} backend={jax.default_backend()} dtype={pol.name} "
        f"L={F.layers} D={F.d_model} H={heads} N={N}")
  print(f"  one forward at length N+1 (warm)           {t_fwd:9.4f} s")
  print(f"  sweep, causal engine, {N} lengths (warm)   {t_sweep:9.4f} s   (first call incl. compile {compile_sweep:.2f} s)")
  print(f"  sweep, backend dot order (accum_block=None) {t_unblocked:8.4f} s")
  print(f"  sweep, masked reference engine (warm)      {t_masked:9.4f} s")
  print(f"  per-length loop: {t_loop_each:.3f} s/length over {len(loop_ns)} lengths (compile incl.)"
        f" -> {t_loop_all:.1f} s extrapolated to {N}")
  print(f"RATIOS  sweep/forward = {t_sweep / t_fwd:.2f}   masked/sweep = {t_masked / t_sweep:.1f}   "
        f"loop/sweep = {t_loop_all / t_sweep:.0f}   loop/(sweep incl. compile) = "
        f"{t_loop_all / (t_sweep + compile_sweep):.1f}   blocked/backend order = "
        f"{t_sweep / t_unblocked:.2f}")
  print(f"numerics: {xla_env.numerics_path()['name']}")


if __name__ == "__main__":
  app.run(main)
