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
                                                            own dot order (accum_block=None)
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import collapse_jax as cj
from collapse_jax import cli, engines, pairs, model, xla_env

F = flags.FLAGS
cli.define(dtype="bfloat16", max_len=512, heads=["4"], layers=2, d_model=64)
flags.DEFINE_integer("loop_lengths", 16, "lengths timed in the per-length loop")
flags.DEFINE_integer("repeats", 3, "timing repeats (median)")


def _time(fn, repeats):
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return float(np.median(ts))


def main(argv):
  del argv
  with cli.usage_errors():
    pol = cli.one(cli.policies(F.dtype), "dtype")
    heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
  cfg = cj.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads, vocab_size=32)
  N = F.max_len
  f = pairs.make_family("repeat", N, seed=0, vocab_size=32)
  lengths = np.arange(1, N + 1)
  params = pol.cast_params(model.init_params(cfg, jax.random.key(0)))
  params_B = jax.tree_util.tree_map(lambda x: x[None], params)

  def run(engine, p=pol):
    return engines.run(cfg, p, params_B, [f], lengths, engine=engine)

  t0 = time.perf_counter(); run("causal"); compile_sweep = time.perf_counter() - t0
  t_sweep = _time(lambda: run("causal"), F.repeats)
  unblocked = dataclasses.replace(pol, accum_block=None)
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
