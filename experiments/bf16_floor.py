r"""Why does bf16 stop at ~1 ulp instead of collapsing, and how often does it collapse?

  python -m experiments.bf16_floor                        # default model, n = 1000, 4000
  python -m experiments.bf16_floor --at=500,2000,8000 --max_len=8192
  python -m experiments.bf16_floor --sweep_dir=runs/long --memory_budget=6   # explain a sweep

Compares rows n-1 and n of ONE causal pass of the sweep's default model on the
prefix_repeat family, stage by stage (``collapse_jax.diagnosis``): float64 max |difference|
and how many stored coordinates differ, per precision. Then the sweep's distance over
log:17:max_len:300 for the same precisions (the float64 distance keeps falling, bf16's
stops at 1-2 ulps), and, per octave of n, the measured fraction of bitwise-equal n next to
the two float64 rounding models of ``diagnosis.equal_probability`` (every attention output
rounds alike: too strict; y alone rounds alike: too loose), for octaves holding at least
MIN_OCTAVE swept n. ``--sweep_dir`` takes the sweep
(model, family, grid and records) from a finished ``precision_sweep`` run instead of running
one. Writes results.json and bf16_floor.png.

(An earlier ablation, bf16 without the ``probs`` rounding point, was a no-op: the value
dot casts its operands to bf16, which rounds the probabilities anyway; it gave identical
bits at every n and is not run.)
"""
import dataclasses

import jax
import numpy as np
from absl import app, flags

import collapse_jax as cj
from collapse_jax import (cli, diagnosis, figures, memory, pairs, model, results, sweep,
                          xla_env)

F = flags.FLAGS
MIN_OCTAVE = 8  # octaves with fewer swept n (the grid's ends) are not reported


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float64,bfloat16", heads=["1"], d_model=64, max_len=8192, lengths=None,
             seeds=["0"], memory_budget=2.0, out=None)
  flags.DEFINE_list("at", ["1000", "4000"], "n at which rows n-1 and n are compared stage by "
                    "stage", flag_values=fv)
  flags.DEFINE_string("sweep_dir", None, "a finished precision_sweep run (prefix_repeat) to "
                      "explain: its model, grid and records replace this experiment's own sweep",
                      flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A diagnosis, parsed: ``ns`` (--at), the prefix_repeat family ``fam`` long enough for
  the grid and every n (``top``: the largest of both); ``records``: --sweep_dir's (None:
  run the sweep); ``query_chunk`` of the float64 rounding models under --memory_budget."""
  policies: list
  ns: list
  heads: int
  seed: int
  cfg: cj.DecoderConfig
  fam: pairs.Family
  grid: np.ndarray
  records: list | None
  query_chunk: int | None
  top: int
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on a bad value, an unusable --sweep_dir or a pass that cannot fit --memory_budget.
  Reads no absl global (a --sweep_dir's results.json only)."""
  pols = cli.policies(fl["dtype"])
  ns = cli.int_list(fl["at"], "at", minimum=1)
  heads = cli.one(cli.int_list(fl["heads"], "heads"), "heads")
  seed = cli.one(cli.int_list(fl["seeds"], "seeds"), "seeds")
  if fl["sweep_dir"]:
    cfg, fam_kw, grid, records = diagnosis.from_sweep_run(fl["sweep_dir"], heads, seed,
                                                          [p.name for p in pols])
  else:
    cfg = cli.decoder_config(fl, num_layers=2, vocab_size=32,
                             max_len=max(fl["max_len"], max(ns)) + 1)
    fam_kw, records = {}, None
    grid = cli.lengths(fl["lengths"] or f"log:17:{fl['max_len']}:300", fl["max_len"])
  top = int(max(grid[-1], max(ns)))
  fam = pairs.make_family("prefix_repeat", top + 1, seed=seed, vocab_size=cfg.vocab_size, **fam_kw)
  qc = memory.plan_query_chunk(cfg, cj.get_policy("float64"), 1, top + 1,
                               fl["memory_budget"] * memory.GiB)
  return Spec(pols, ns, heads, seed, cfg, fam, grid, records, qc, top, dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl, cfg, pols, ns, fam, grid = spec.flags, spec.cfg, spec.policies, spec.ns, spec.fam, spec.grid
  seed, heads, records = spec.seed, spec.heads, spec.records
  xla_env.enable_x64()
  out = cli.run_dir(fl["out"], "bf16_floor")
  print(f"numerics: {xla_env.numerics_path()['name']}")
  params = model.init_params(cfg, jax.random.key(seed))
  stages = {}
  for pol in pols:
    r = diagnosis.stage_differences(cfg, pol, pol.cast_params(params), fam.tokens[:max(ns) + 2],
                                    ns)
    stages[pol.name] = r
    for k, n in enumerate(ns):
      print(f"{pol.name:>9s} n={n}: " + "  ".join(
          f"{s}: {r['linf'][i, k]:.2g} ({r['coords_differ'][i, k]}/{r['coords'][i]})"
          for i, s in enumerate(r["stages"])))
  if records is None:
    records = sweep.family_grid(cfg, pols, [heads], "prefix_repeat", grid, [seed],
                                memory_budget=fl["memory_budget"] * memory.GiB,
                                log=lambda *a: None)
  narrow = [p for p in pols if p.name not in ("float64", "float32")]
  models = {p.name: diagnosis.equal_probability(cfg, params, fam.stream(spec.top), grid,
                                                p.storage_dtype, query_chunk=spec.query_chunk)
            for p in narrow}
  for r in records:
    lin, n = np.asarray(r["linf"]), np.asarray(r["lengths"])
    print(f"{r['dtype']:>18s}: onset {r['collapse_onset']}, sustained {r['sustained_onset']}, "
          f"|dy| at n~1000 {lin[np.argmin(abs(n - 1000))]:.3g}, at n={n[-1]} {lin[-1]:.3g}")
  octaves = {}
  for r in records:
    if r["dtype"] in models:
      m = models[r["dtype"]]
      octaves[r["dtype"]] = [o for o in diagnosis.octaves(
          grid, measured=r["bitwise_equal"], attention=m["p_attention"], output=m["p_output"])
          if o["count"] >= MIN_OCTAVE]
      print(f"{r['dtype']}: fraction of n bitwise equal per octave, measured [rounding models: "
            "every attention output alike .. y alone alike]")
      for o in octaves[r["dtype"]]:
        print(f"  [{o['lo']:>6d}, {o['hi']:>6d}) {o['count']:>6d} n: measured {o['measured']:.3f}"
              f"  [{o['attention']:.3g} .. {o['output']:.3g}]")
  results.write_json(f"{out}/results.json", results.header(
      "bf16_floor", fl, config=cfg, stages=stages, sweep=records,
      rounding_models=models, octaves=octaves))
  figures.sweep.floor_figure(stages, records, f"{out}/bf16_floor.png",
                             f"prefix_repeat, {cfg.num_layers}L d={cfg.d_model} H={heads}: where "
                             "rows n-1 and n still differ; the distance over n; how often they are "
                             "equal", octaves=octaves)
  print(f"wrote {out}/results.json, bf16_floor.png")


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
