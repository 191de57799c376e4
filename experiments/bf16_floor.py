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
import json
import os

import jax
import numpy as np
from absl import app, flags

import collapse_jax as cj
from collapse_jax import (cli, diagnosis, figures, memory, pairs, model, results, sweep,
                          xla_env)

F = flags.FLAGS
cli.define(dtype="float64,bfloat16", heads=["1"], d_model=64, max_len=8192, lengths=None,
           seeds=["0"], memory_budget=2.0, out=None)
MIN_OCTAVE = 8  # octaves with fewer swept n (the grid's ends) are not reported
flags.DEFINE_list("at", ["1000", "4000"], "n at which rows n-1 and n are compared stage by stage")
flags.DEFINE_string("sweep_dir", None, "a finished precision_sweep run (prefix_repeat) to explain: "
                    "its model, grid and records replace this experiment's own sweep")


def _from_sweep(path, heads, seed, dtypes):
  """(config, family kwargs, grid, records) of a finished precision_sweep run."""
  try:
    with open(os.path.join(path, "results.json")) as f:
      run = results.from_jsonable(json.load(f))
  except OSError as e:
    raise ValueError(f"--sweep_dir {path!r}: no results.json ({e.strerror})") from None
  fl = run["flags"]
  if run.get("experiment") != "precision_sweep" or run.get("family") != "prefix_repeat":
    raise ValueError(f"--sweep_dir {path!r} is not a prefix_repeat precision_sweep run")
  recs = [r for r in run["runs"] + run.get("reference", [])
          if r["heads"] == heads and r["seed"] == seed and r["dtype"] in dtypes]
  if {r["dtype"] for r in recs} != set(dtypes):
    raise ValueError(f"--sweep_dir {path!r} holds no record for heads={heads} seed={seed} of "
                     f"every --dtype {sorted(dtypes)}")
  cfg = cj.DecoderConfig(**run["config"]).replace(num_heads=heads, num_kv_heads=None)
  fam = dict(token=fl["token"], prefix_len=fl["prefix_len"],
             prefix_ids=[int(i) for i in fl["prefix_ids"]] if fl["prefix_ids"] else None)
  return cfg, fam, np.asarray(recs[0]["lengths"]), recs


def main(argv):
  del argv
  with cli.usage_errors():
    pols = cli.policies(F.dtype)
    ns = cli.int_list(F.at, "at")
    heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
    seed = cli.one(cli.int_list(F.seeds, "seeds"), "seeds")
    if F.sweep_dir:
      cfg, fam_kw, grid, records = _from_sweep(F.sweep_dir, heads, seed, [p.name for p in pols])
    else:
      cfg = cj.DecoderConfig(num_layers=2, d_model=F.d_model, num_heads=heads, vocab_size=32,
                             max_len=max(F.max_len, max(ns)) + 1)
      fam_kw, grid, records = {}, cli.lengths(F.lengths or f"log:17:{F.max_len}:300", F.max_len), None
    top = int(max(grid[-1], max(ns)))
    fam = pairs.make_family("prefix_repeat", top + 1, seed=seed, vocab_size=cfg.vocab_size, **fam_kw)
    budget = F.memory_budget * memory.GiB
    qc = memory.plan_query_chunk(cfg, cj.get_policy("float64"), 1, top + 1, budget)
  xla_env.enable_x64()
  out = cli.run_dir(F.out, "bf16_floor")
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
                                memory_budget=budget, log=lambda *a: None)
  narrow = [p for p in pols if p.name not in ("float64", "float32")]
  models = {p.name: diagnosis.equal_probability(cfg, params, fam.stream(top), grid,
                                                p.storage_dtype, query_chunk=qc)
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
      "bf16_floor", cli.app_flags(), config=cfg, stages=stages, sweep=records,
      rounding_models=models, octaves=octaves))
  figures.sweep.floor_figure(stages, records, f"{out}/bf16_floor.png",
                             f"prefix_repeat, {cfg.num_layers}L d={cfg.d_model} H={heads}: where "
                             "rows n-1 and n still differ; the distance over n; how often they are "
                             "equal", octaves=octaves)
  print(f"wrote {out}/results.json, bf16_floor.png")


if __name__ == "__main__":
  app.run(main)
