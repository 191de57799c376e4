r"""Precision sweep: when do the last-token representations of A_n and B_n (n vs n+1
tokens, differing only by a repeated final token) become bitwise equal?

  python -m experiments.precision_sweep --dtype=bfloat16
  python -m experiments.precision_sweep --dtype=all --heads=1,4,16 --max_len=4096 \
      --lengths=log:1:4096:200 --family=stream_repeat_last --seeds=0,1,2

Writes results.json, results.csv and collapse.png to --out (default runs/sweep-<time>).
With --reference (default) a float64 run of the same grid is recorded under "reference" in
results.json and drawn in collapse.png (not in results.csv).

A job of cells (dtype x heads x seed; collapse_jax/jobs.py): each finished cell is saved at
once under --out/cells/, --resume finishes an interrupted run, and --coordinator/
--num_processes/--process_id (or --distributed) spread the cells over processes.
"""

import functools
import sys

from absl import app, flags, logging

import collapse_jax as cj
from collapse_jax import (cli, engines, figures, jobs, memory, pairs, precision, records,
                          results, sweep, xla_env)

F = flags.FLAGS
cli.define(dtype="bfloat16", heads=["1", "4", "16"], layers=2, d_model=64, pe="rope",
           norm="layernorm", mlp="gelu", vocab=32, max_len=2048, lengths=None, seeds=["0"],
           engine=None, fp8_scaling=False, chunk=32, memory_budget=2.0, out=None, plot=True,
           **cli.JOB)
flags.DEFINE_enum("family", "prefix_repeat", pairs.FAMILIES, "pair set (collapse_jax/pairs.py)")
flags.DEFINE_integer("prefix_len", 16, "random prefix length (prefix_repeat)")
flags.DEFINE_list("prefix_ids", None, "explicit prefix token ids (prefix_repeat)")
flags.DEFINE_integer("token", 1, "the repeated token a")
flags.DEFINE_bool("reference", True, "also run float64 on the same grid (results.json "
                  "'reference' and the figure; skipped when --dtype includes float64)")


def _setup():
  """Flags -> (policies, heads, seeds, config, length grid); ValueError on bad flags."""
  policies = cli.policies(F.dtype, fp8_scaling=F.fp8_scaling)
  heads, seeds = cli.int_list(F.heads, "heads"), cli.int_list(F.seeds, "seeds")
  cfg = cj.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads[0], pe=F.pe,
                         norm=F.norm, mlp=F.mlp, vocab_size=F.vocab, max_len=F.max_len + 1)
  for h in heads:
    cfg.replace(num_heads=h)  # validates: heads must divide d_model
  grid = cli.lengths(F.lengths, F.max_len, hint=" (it exceeds the learned PE table, which "
                     "holds max_len+1 positions)" if F.pe == "learned" else "")
  if F.family == "prefix_repeat":
    start = (len(F.prefix_ids) if F.prefix_ids else F.prefix_len) + 1
    dropped, grid = grid[grid < start], grid[grid >= start]
    if grid.size == 0:
      raise ValueError(f"no swept n >= {start} (prefix_repeat needs n > prefix length)")
    if dropped.size:
      logging.warning("prefix_repeat: dropped n < %d from the grid (n must exceed the prefix)", start)
  if F.chunk < 1:
    raise ValueError(f"--chunk must be >= 1, got {F.chunk}")
  cfg.check_token_ids([F.token], "--token")
  cfg.check_token_ids(_prefix_ids() or [], "--prefix_ids")
  first = pairs.make_family(F.family, int(grid[-1]), seed=seeds[0], vocab_size=F.vocab,
                            token=F.token, prefix_len=F.prefix_len, prefix_ids=_prefix_ids())
  first.check(grid)
  ref = [precision.get_policy("float64")] * (F.reference and
                                            not any(p.name == "float64" for p in policies))
  for h in heads:  # refuse what cannot fit, before anything starts (one seed per cell)
    for p in policies + ref:
      try:
        engines.plan(cfg.replace(num_heads=h), p, first, grid, F.engine, chunk=F.chunk,
                     memory_budget=F.memory_budget * memory.GiB)
      except ValueError as e:
        note = "; --reference=false drops this float64 cell" if p in ref else ""
        raise ValueError(f"cell {p.name}, heads={h}: {e}{note}") from None
  if F.heartbeat < 0:
    raise ValueError(f"--heartbeat must be >= 0 seconds (0: none), got {F.heartbeat}")
  jobs.check_distributed(F.coordinator, F.num_processes, F.process_id, F.distributed)
  jobs.check_out(F.out, cli.job_spec(), F.resume,
                 F.num_processes or (2 if F.distributed else 1))
  return policies, heads, seeds, cfg, grid


def _prefix_ids():
  return [int(i) for i in F.prefix_ids] if F.prefix_ids else None


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    policies, heads, seeds, cfg, grid = _setup()
  reference = F.reference and not any(p.name == "float64" for p in policies)
  if reference or any(p.needs_x64 for p in policies):
    xla_env.enable_x64()
  with cli.usage_errors():
    procs = jobs.start_processes(F.coordinator, F.num_processes, F.process_id, F.distributed)
  print(f"numerics: {xla_env.numerics_path()['name']}")
  models, sets = sweep.family_setup(cfg, heads, F.family, grid, seeds, token=F.token,
                                    prefix_len=F.prefix_len, prefix_ids=_prefix_ids())
  pols = policies + [precision.get_policy("float64")] * reference
  cells = {c.id: c for c in sweep.grid_cells(models, pols, sets, seeds)}
  run_cells = lambda ids, save: sweep.run_grid(
      models, pols, sets, grid, seeds, engine=F.engine, chunk=F.chunk,
      memory_budget=F.memory_budget * memory.GiB, log=logging.info,
      cells=[cells[i] for i in ids], on_cell=lambda c, rec: save(c.id, rec))
  with jobs.exit_on_failure():
    out = jobs.run(run_cells, functools.partial(_assemble, cfg, policies, reference, cells,
                                                procs),
                   out=F.out, prefix="sweep", experiment="precision_sweep",
                   spec=cli.job_spec(), cell_ids=list(cells), procs=procs,
                   heartbeat_s=F.heartbeat, argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(cfg, policies, reference, cells, procs, out, shards):
  """Process 0: results.json, results.csv and collapse.png from every cell's shard."""
  recs = [shards[i]["record"] for i in cells]
  runs = [r for r in recs if not (reference and r["dtype"] == "float64")]
  ref = [r for r in recs if reference and r["dtype"] == "float64"]
  results.write_json(f"{out}/results.json", {
      "experiment": "precision_sweep", "config": cfg.to_dict(), "family": F.family,
      "flags": F.flag_values_dict(), "policies": {p.name: p.describe() for p in policies},
      "environment": results.environment(), "layout": jobs.layout(procs), "runs": runs,
      "reference": ref})
  results.write_csv(f"{out}/results.csv", [row for r in runs for row in records.csv_rows(r)],
                    records.csv_columns(F.layers))
  if F.plot:
    figures.sweep.collapse_plot(runs, f"{out}/collapse.png",
                                f"{F.family}, {F.layers}L d={F.d_model} {F.pe}, engine "
                                f"{runs[0]['engine']}: final output y, seed mean",
                                reference=ref or None)
  for r in runs:
    print(f"{r['dtype']:>16s} H={r['heads']:<3d} seed={r['seed']}: collapse onset n="
          f"{r['collapse_onset']}, sustained from n={r['sustained_onset']}, "
          f"min linf={min(r['linf']):.3g}, nonfinite={r['nonfinite_total']}")
  print(f"wrote {out}/results.json, results.csv" + (", collapse.png" if F.plot else ""))


if __name__ == "__main__":
  app.run(main)
