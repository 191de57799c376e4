r"""Why does bf16 stop at ~1 ulp instead of collapsing? (BUILD_NOTES, issue 3 results)

  python -m experiments.bf16_floor                        # default model, n = 1000, 4000
  python -m experiments.bf16_floor --at=500,2000,8000 --max_len=8192

Compares rows n-1 and n of ONE causal pass of the sweep's default model on the
prefix_repeat family, stage by stage (``collapse_jax.diagnosis``): float64 max |difference|
and how many stored coordinates differ, per precision; then the sweep's distance over
log:17:max_len:300 for the same precisions (the float64 distance keeps falling, bf16's
stops at 1-2 ulps). Writes results.json and bf16_floor.png.

(An earlier ablation, bf16 without the ``probs`` rounding point, was a no-op: the value
dot casts its operands to bf16, which rounds the probabilities anyway; it gave identical
bits at every n and is not run.)
"""
import jax
import numpy as np
from absl import app, flags

import collapse_jax as cj
from collapse_jax import cli, diagnosis, pairs, model, plotting, results, sweep, xla_env

F = flags.FLAGS
cli.define(dtype="float64,bfloat16", heads=["1"], d_model=64, max_len=8192, lengths=None,
           seeds=["0"], out=None)
flags.DEFINE_list("at", ["1000", "4000"], "n at which rows n-1 and n are compared stage by stage")


def main(argv):
  del argv
  with cli.usage_errors():
    pols = cli.policies(F.dtype)
    ns = cli.int_list(F.at, "at")
    heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
    seed = cli.one(cli.int_list(F.seeds, "seeds"), "seeds")
    cfg = cj.DecoderConfig(num_layers=2, d_model=F.d_model, num_heads=heads, vocab_size=32,
                           max_len=max(F.max_len, max(ns)) + 1)
    fam = pairs.make_family("prefix_repeat", max(ns) + 1, seed=seed, vocab_size=32)
    grid = cli.lengths(F.lengths or f"log:17:{F.max_len}:300", F.max_len)
  xla_env.enable_x64()
  out = cli.run_dir(F.out, "bf16_floor")
  print(f"numerics: {xla_env.numerics_path()['name']}")
  params = model.init_params(cfg, jax.random.key(seed))
  stages = {}
  for pol in pols:
    r = diagnosis.stage_differences(cfg, pol, pol.cast_params(params), fam.tokens, ns)
    stages[pol.name] = r
    for k, n in enumerate(ns):
      print(f"{pol.name:>9s} n={n}: " + "  ".join(
          f"{s}: {r['linf'][i, k]:.2g} ({r['coords_differ'][i, k]}/{r['coords'][i]})"
          for i, s in enumerate(r["stages"])))
  records = sweep.family_grid(cfg, pols, [heads], "prefix_repeat", grid, [seed],
                              log=lambda *a: None)
  for r in records:
    lin, n = np.asarray(r["linf"]), np.asarray(r["lengths"])
    print(f"{r['dtype']:>18s}: onset {r['collapse_onset']}, |dy| at n~1000 "
          f"{lin[np.argmin(abs(n - 1000))]:.3g}, at n={n[-1]} {lin[-1]:.3g}")
  results.write_json(f"{out}/results.json", {
      "experiment": "bf16_floor", "config": cfg.to_dict(), "flags": F.flag_values_dict(),
      "environment": results.environment(), "stages": stages, "sweep": records})
  plotting.floor_figure(stages, records, f"{out}/bf16_floor.png",
                        f"prefix_repeat, 2L d={F.d_model} H={heads}: where rows n-1 and n "
                        "still differ (left); the distance over n (right)")
  print(f"wrote {out}/results.json, bf16_floor.png")


if __name__ == "__main__":
  app.run(main)
