r"""Attribution: which rounding point makes n and n+1 indistinguishable (issue 26).

  python -m experiments.attribution                   # bf16, synthetic model, every n <= 16384
  python -m experiments.attribution --max_len=2048 --kinds=drop --dtype=float16

For one precision (--dtype, one preset) the precision sweep's grid (its flags, one head
count) runs once per variant of the policy (collapse_jax/attribution.py): every point
rounded ('all'), none, every point but p ('drop:p'), p alone ('only:p') and the same for
groups of points, and RoPE's angles in float64. Prints and writes per variant: the first equal n, the equal count and
fraction per octave, the floor distance in ulps of |y| and the first layer whose residual
differs there. Writes results.json (the rows and every variant's run record) and
attribution.png (onset per variant, drop and only side by side) to --out. A job of cells
(one per variant; collapse_jax/jobs.py): --resume finishes a run.
"""

import functools
import sys

from absl import app, flags, logging

from collapse_jax import attribution, cli, hosts, jobs, memory, results, sweep, xla_env
from experiments import precision_sweep

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  precision_sweep.define_flags(fv)
  for name, value in (("heads", ["1"]), ("reference", False), ("max_len", 16384)):
    fv.set_default(name, value)
  flags.DEFINE_list("kinds", list(attribution.KINDS), "variant kinds: drop (every point but "
                    "one), only (one point alone), groups (both, per group of points)",
                    flag_values=fv)


def parse(fl: dict) -> precision_sweep.Spec:
  """Flags -> the sweep's Spec with ``policies`` the variants; ValueError (one line) on a
  bad value."""
  spec = precision_sweep.parse(fl)
  base = cli.one(spec.policies, "dtype")
  cli.one(spec.heads, "heads")
  if spec.reference:
    raise ValueError("--reference adds nothing here: the 'none' variant is the "
                     "unrounded run; pass --noreference")
  if base.needs_x64:
    raise ValueError("--dtype=float64 rounds nothing: attribute a narrower preset")
  points = attribution.model_points(spec.cfg)
  pols = attribution.variants(base, list(fl["kinds"]), points)
  return precision_sweep.Spec(pols, False, spec.heads, spec.seeds, spec.cfg, spec.grid,
                              spec.family, spec.flags)


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__, also=(precision_sweep.__name__,)))
  fl = spec.flags
  if any(p.needs_x64 for p in spec.policies):
    xla_env.enable_x64()
  with cli.usage_errors():
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  models, sets = sweep.family_setup(spec.cfg, spec.heads, fl["family"], spec.grid, spec.seeds,
                                    **spec.family)
  cells = {c.id: c for c in sweep.grid_cells(models, spec.policies, sets, spec.seeds)}
  print(f"{len(spec.policies)} variants of {spec.policies[0].name.split(':')[0]}, "
        f"{len(spec.grid)} n up to {int(spec.grid[-1])}, {len(cells)} cells", flush=True)
  run_cells = lambda ids, save: sweep.run_grid(
      models, spec.policies, sets, spec.grid, spec.seeds, engine=fl["engine"],
      chunk=fl["chunk"], memory_budget=fl["memory_budget"] * memory.GiB, log=logging.info,
      cells=[cells[i] for i in ids], on_cell=lambda c, rec: save(c.id, rec))
  with jobs.exit_on_failure():
    jobs.run_job(run_cells, functools.partial(_assemble, spec, cells, procs), out=fl["out"],
                 prefix="attribution", experiment="attribution", spec=cli.job_spec(fl),
                 cell_ids=list(cells), procs=procs, heartbeat_s=fl["heartbeat"], argv=sys.argv,
                 module=__spec__.name)


def _assemble(spec, cells, procs, out, shards):
  """Process 0: results.json, the table and attribution.png from every variant's shard."""
  fl = spec.flags
  runs = [shards[i]["record"] for i in cells]
  storage = spec.policies[0].storage_dtype
  rows = [attribution.summarize(r, storage) for r in runs]
  results.write_json(f"{out}/results.json", results.header(
      "attribution", fl, config=spec.cfg, policies=spec.policies, family=fl["family"],
      layout=hosts.layout(procs), rows=rows, runs=runs))
  files = attribution.write_groups(
      {"": rows}, out, int(spec.grid[-1]), f"{spec.policies[0].name.split(':')[0]}: "
      f"{fl['family']}, {fl['layers']}L d={fl['d_model']} H={spec.heads[0]} {fl['pe']}",
      fl["plot"])
  print(f"wrote {out}/" + ", ".join(["results.json"] + files))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
