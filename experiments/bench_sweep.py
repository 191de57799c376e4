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
import subprocess
import sys

import jax
from absl import app, flags

import collapse_jax as cj
from collapse_jax import bench, cli, xla_env

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="bfloat16", max_len=512, heads=["4"], layers=2, d_model=64,
             memory_budget=2.0)
  flags.DEFINE_list("scaling", None, "N values: one scaling cell per N (memory and time)",
                    flag_values=fv)
  flags.DEFINE_integer("scaling_cell", None, "internal: run the scaling cell of this N, print "
                       "JSON", flag_values=fv)
  flags.DEFINE_integer("loop_lengths", 16, "lengths timed in the per-length loop",
                       flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "timing repeats (median)", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A benchmark, parsed: one ``policy``; ``cfg`` (vocab 32, one head count); ``Ns``: the
  --scaling N (None: the engine comparison at --max_len)."""
  policy: cj.Policy
  cfg: cj.DecoderConfig
  Ns: list | None
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on a bad value. Reads no absl global."""
  pol = cli.one(cli.policies(fl["dtype"]), "dtype")
  cli.one(cli.int_list(fl["heads"], "heads"), "heads")
  Ns = cli.int_list(fl["scaling"], "scaling", minimum=1) if fl["scaling"] else None
  for name in ("max_len", "loop_lengths", "repeats"):
    if fl[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {fl[name]}")
  return Spec(pol, cli.decoder_config(fl, vocab_size=32), Ns, dict(fl))


def scaling(fl, Ns):
  print(f"scaling: dtype={fl['dtype']} L={fl['layers']} D={fl['d_model']} H={fl['heads'][0]} "
        f"budget {fl['memory_budget']} GiB, one fresh process per N, {fl['repeats']} "
        "alternating timings (medians)")
  print(f"{'N':>7s} {'chunk':>6s} {'est GiB':>8s} {'peak RSS GiB':>13s} {'sweep s':>8s} "
        f"{'(first)':>8s} {'forward s':>10s} {'(first)':>8s} {'sweep/fwd':>10s} (each pair)")
  for N in Ns:
    cmd = [sys.executable, "-m", "experiments.bench_sweep", f"--scaling_cell={N}",
           f"--dtype={fl['dtype']}", f"--heads={fl['heads'][0]}", f"--layers={fl['layers']}",
           f"--d_model={fl['d_model']}", f"--memory_budget={fl['memory_budget']}",
           f"--repeats={fl['repeats']}"]
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
    spec = parse(cli.app_flags(__file__))
  fl, cfg, pol = spec.flags, spec.cfg, spec.policy
  if fl["scaling_cell"]:
    print(json.dumps(bench.scaling_cell(cfg, pol, fl["scaling_cell"], repeats=fl["repeats"],
                                        memory_budget_gib=fl["memory_budget"])))
    return
  if spec.Ns:
    scaling(fl, spec.Ns)
    return
  N = fl["max_len"]
  t = bench.engine_timings(cfg, pol, N, repeats=fl["repeats"], loop_lengths=fl["loop_lengths"])
  loop_all = t["loop_each_s"] * N
  print(f"device={jax.devices()[0].device_kind} backend={jax.default_backend()} dtype={pol.name} "
        f"L={cfg.num_layers} D={cfg.d_model} H={cfg.num_heads} N={N}")
  print(f"  one forward at length N+1 (warm)           {t['forward_s']:9.4f} s")
  print(f"  sweep, causal engine, {N} lengths (warm)   {t['sweep_s']:9.4f} s   (first call incl. "
        f"compile {t['sweep_first_s']:.2f} s)")
  print(f"  sweep, backend dot order (accum_block=None) {t['unblocked_s']:8.4f} s")
  print(f"  sweep, masked reference engine (warm)      {t['masked_s']:9.4f} s")
  print(f"  per-length loop: {t['loop_each_s']:.3f} s/length over {t['loop_lengths']} lengths "
        f"(compile incl.) -> {loop_all:.1f} s extrapolated to {N}")
  print(f"RATIOS  sweep/forward = {t['sweep_s'] / t['forward_s']:.2f}   masked/sweep = "
        f"{t['masked_s'] / t['sweep_s']:.1f}   loop/sweep = {loop_all / t['sweep_s']:.0f}   "
        f"loop/(sweep incl. compile) = {loop_all / (t['sweep_s'] + t['sweep_first_s']):.1f}   "
        f"blocked/backend order = {t['sweep_s'] / t['unblocked_s']:.2f}")
  print(f"numerics: {xla_env.numerics_path()['name']}")


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
