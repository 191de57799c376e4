r"""Precision sweep: when do the last-token representations of A_n and B_n (n vs n+1
tokens, differing only by a repeated final token) become bitwise equal?

  python -m experiments.precision_sweep --dtype=bfloat16
  python -m experiments.precision_sweep --dtype=all --heads=1,4,16 --max_len=4096 \
      --lengths=log:1:4096:200 --family=stream_repeat_last --seeds=0,1,2

Writes results.json, results.csv and collapse.png to --out (default runs/sweep-<time>);
--reference (default) adds a float64 run of the same grid (results.json and the figure). A job
of cells (dtype x heads x seed; collapse_jax/jobs.py): each finished cell is saved at once,
--resume finishes a run, --coordinator/--num_processes/--process_id spread the cells.
"""

import dataclasses
import functools
import sys

import numpy as np
from absl import app, flags, logging

import collapse_jax as cj
from collapse_jax import (cli, figures, hosts, jobs, memory, pairs, precision, records,
                          results, sweep, xla_env)
from collapse_jax.checkpoints import gguf

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="bfloat16", heads=["1", "4", "16"], layers=2, d_model=64, pe="rope",
             norm="layernorm", mlp="gelu", vocab=32, attn_softcap=None, max_len=2048, lengths=None, seeds=["0"],
             engine=None, fp8_scaling=False, chunk=32, memory_budget=2.0, out=None, plot=True,
             **cli.JOB)
  flags.DEFINE_enum("family", "prefix_repeat", pairs.FAMILIES, "pair set (collapse_jax/pairs.py)",
                    flag_values=fv)
  flags.DEFINE_integer("prefix_len", 16, "random prefix length (prefix_repeat)", flag_values=fv)
  flags.DEFINE_list("prefix_ids", None, "explicit prefix token ids (prefix_repeat)",
                    flag_values=fv)
  flags.DEFINE_integer("token", 1, "the repeated token a", flag_values=fv)
  flags.DEFINE_enum("weight_quant", None, list(gguf.ROUND_TRIP_TYPES), "round the weight "
                    "matrices through this GGUF quantization (as SmolLM2's Q4_1 file holds "
                    "them; needs the gguf package): what 4-bit weights change",
                    flag_values=fv)
  flags.DEFINE_bool("reference", True, "also run float64 on the same grid (results.json "
                    "'reference' and the figure; skipped when --dtype includes float64)",
                    flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A sweep, parsed: ``reference``: a float64 run of the same grid is added; ``cfg`` has
  num_heads = heads[0]; ``family``: the pair family's keyword arguments."""
  policies: list
  reference: bool
  heads: list
  seeds: list
  cfg: cj.DecoderConfig
  grid: np.ndarray
  family: dict
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (a dict of values: ``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`;
  ValueError (one line) on a bad value, a cell that cannot fit --memory_budget or an --out
  that cannot take the run. Reads no absl global."""
  policies = cli.policies(fl["dtype"], fp8_scaling=fl["fp8_scaling"])
  heads, seeds = cli.int_list(fl["heads"], "heads"), cli.int_list(fl["seeds"], "seeds")
  cfg = cli.decoder_config(fl, max_len=fl["max_len"] + 1)
  for h in heads:
    cfg.replace(num_heads=h)  # validates: heads must divide d_model
  grid = cli.lengths(fl["lengths"], fl["max_len"], hint=" (it exceeds the learned PE table, "
                     "which holds max_len+1 positions)" if fl["pe"] == "learned" else "")
  prefix_ids = [int(i) for i in fl["prefix_ids"]] if fl["prefix_ids"] else None
  family = dict(token=fl["token"], prefix_len=fl["prefix_len"], prefix_ids=prefix_ids)
  grid = pairs.family_lengths(fl["family"], grid, prefix_len=fl["prefix_len"],
                              prefix_ids=prefix_ids, log=logging.warning)
  if fl["chunk"] < 1:
    raise ValueError(f"--chunk must be >= 1, got {fl['chunk']}")
  if fl["weight_quant"] and fl["d_model"] % 32:
    raise ValueError(f"--weight_quant quantizes blocks of 32 along d_model: --d_model must be "
                     f"a multiple of 32, got {fl['d_model']}")
  cfg.check_token_ids([fl["token"]], "--token")
  cfg.check_token_ids(prefix_ids or [], "--prefix_ids")
  first = pairs.make_family(fl["family"], int(grid[-1]), seed=seeds[0], vocab_size=fl["vocab"],
                            **family)
  first.check(grid)
  reference = fl["reference"] and not any(p.name == "float64" for p in policies)
  sweep.check_cells_fit(cfg, policies + [precision.get_policy("float64")] * reference, heads,
                        first, grid, fl["engine"], chunk=fl["chunk"],
                        memory_budget=fl["memory_budget"] * memory.GiB,
                        notes={"float64": "--reference=false drops this float64 cell"}
                        if reference else {})
  jobs.check_job_flags(fl, cli.job_spec(fl))
  return Spec(policies, reference, heads, seeds, cfg, grid, family, dict(fl))


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  if spec.reference or any(p.needs_x64 for p in spec.policies):
    xla_env.enable_x64()
  with cli.usage_errors():
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  print(f"numerics: {xla_env.numerics_path()['name']}")
  models, sets = sweep.family_setup(spec.cfg, spec.heads, fl["family"], spec.grid, spec.seeds,
                                    weight_quant=fl["weight_quant"], **spec.family)
  pols = spec.policies + [precision.get_policy("float64")] * spec.reference
  cells = {c.id: c for c in sweep.grid_cells(models, pols, sets, spec.seeds)}
  run_cells = lambda ids, save: sweep.run_grid(
      models, pols, sets, spec.grid, spec.seeds, engine=fl["engine"], chunk=fl["chunk"],
      memory_budget=fl["memory_budget"] * memory.GiB, log=logging.info,
      cells=[cells[i] for i in ids], on_cell=lambda c, rec: save(c.id, rec))
  with jobs.exit_on_failure():
    out = jobs.run_job(run_cells, functools.partial(_assemble, spec, cells, procs),
                   out=fl["out"], prefix="sweep", experiment="precision_sweep",
                   spec=cli.job_spec(fl), cell_ids=list(cells), procs=procs,
                   heartbeat_s=fl["heartbeat"], argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(spec: Spec, cells, procs, out, shards):
  """Process 0: results.json, results.csv and collapse.png from every cell's shard."""
  fl = spec.flags
  recs = [shards[i]["record"] for i in cells]
  runs = [r for r in recs if not (spec.reference and r["dtype"] == "float64")]
  ref = [r for r in recs if spec.reference and r["dtype"] == "float64"]
  results.write_json(f"{out}/results.json", results.header(
      "precision_sweep", fl, config=spec.cfg, policies=spec.policies, family=fl["family"],
      layout=hosts.layout(procs), runs=runs, reference=ref))
  results.write_csv(f"{out}/results.csv", [row for r in runs for row in records.csv_rows(r)],
                    records.csv_columns(fl["layers"]))
  if fl["plot"]:
    figures.sweep.collapse_plot(runs, f"{out}/collapse.png",
                                f"{fl['family']}, {fl['layers']}L d={fl['d_model']} {fl['pe']}, "
                                f"engine {runs[0]['engine']}: final output y, seed mean",
                                reference=ref or None)
  for r in runs:
    print(f"{r['dtype']:>16s} H={r['heads']:<3d} seed={r['seed']}: collapse onset n="
          f"{r['collapse_onset']}, sustained from n={r['sustained_onset']}, "
          f"min linf={min(r['linf']):.3g}, nonfinite={r['nonfinite_total']}")
  print(f"wrote {out}/results.json, results.csv" + (", collapse.png" if fl["plot"] else ""))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
