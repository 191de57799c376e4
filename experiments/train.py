r"""Train small decoders on counting and copying per precision; compare accuracy with collapse.

  python -m experiments.train --task=count_ones --dtype=bfloat16     # ~2 min on 2 CPU cores
  python -m experiments.train --dtype=float32,bfloat16,bfloat16_weights --l_train=32 --steps=4000
  python -m experiments.train --dtype=bfloat16 --out=runs/mine --resume  # same flags: finish a stopped run

For each training precision (--dtype; collapse_jax/train/ says where every tensor lives and
is rounded) a decoder is trained with AdamW (warmup + cosine, clipping) on n in 1..--l_train
digits (train.loop), then measured (train.measure): accuracy and the gradient norm at every n
of --lengths (default 1..eval_factor * l_train); its own collapse on Cor. B.10's pairs
([BOS, 1^c] vs [BOS, 1^(c+1)], c <= --max_len) through the sweep engine under each
--onset_dtype, its answers to those sequences and, for count_ones, the corollary's
consequence (measure.b10_consequence). Writes results.json and train.png (accuracy vs n with
the training range and the onsets; the B.10 distance; the loss and gradient-norm curves).

Run shape: a job of cells (collapse_jax/jobs.py), one per training precision, saved at once
as --out/cells/<dtype>.json; --resume (same flags) runs the rest; SIGINT/SIGTERM stop with the
resume command; --coordinator/--num_processes/--process_id spread the precisions. A cell is a
whole training, minutes long, and a compiled call cannot be interrupted, so the resume INSIDE
a cell stays in the library loop: train.loop writes --out/<dtype>/snapshot.npz every
--eval_every steps and continues from it, with the same batches, so the result equals an
uninterrupted run's (at most --eval_every steps are trained again).
"""
import dataclasses
import functools
import os
import sys
import time

import numpy as np
from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, config, figures, hosts, jobs, results
from collapse_jax.train import data, loop, snapshot
from collapse_jax.train import state as state_lib

F = flags.FLAGS


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, seeds="0", layers=2, d_model=64, heads="4", pe="rope", norm="rmsnorm",
             mlp="gelu", max_len=2048, lengths=None, memory_budget=2.0, out=None, plot=True,
             **cli.JOB)
  flags.DEFINE_enum("task", "count_ones", data.TRAIN_TASKS, "the training task", flag_values=fv)
  flags.DEFINE_list("dtype", ["float32", "bfloat16"],
                    f"training precisions: {', '.join(state_lib.TRAIN_PRECISIONS)}",
                    flag_values=fv)
  flags.DEFINE_list("onset_dtype", ["float32", "bfloat16"], "precision presets the trained "
                    "model's collapse is measured under", flag_values=fv)
  for name, default, help_ in [
      ("l_train", 16, "training lengths n in 1..l_train"),
      ("eval_factor", 4, "evaluation out to eval_factor * l_train (and count tokens up to it)"),
      ("steps", 2000, "optimizer steps"), ("batch", 64, "sequences per step"),
      ("lr", 3e-3, "peak learning rate"), ("warmup", 100, "linear warmup steps"),
      ("eval_every", 250, "steps between evaluations, progress lines and snapshots"),
      ("eval_samples", 256, "sequences per evaluated length"),
      ("grad_samples", 64, "sequences per length for the gradient-norm probe")]:
    define = flags.DEFINE_float if isinstance(default, float) else flags.DEFINE_integer
    define(name, default, help_, flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A training run, parsed: ``precisions`` name -> TrainPrecision (a cell each); ``onset``
  the collapse's presets; ``ns`` the evaluated n (default 1..eval_factor * l_train), ``cfg``
  sized for counts up to its top; ``cell`` the rest of ``loop.train_and_measure``'s kwargs."""
  precisions: dict
  onset: list
  cfg: config.DecoderConfig
  ns: np.ndarray
  opt: state_lib.Optimizer
  cell: dict
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on a bad value or an --out that cannot take the run. Reads no absl global."""
  seed = cli.one(cli.int_list(fl["seeds"], "seeds"), "seeds")
  cli.one(cli.int_list(fl["heads"], "heads"), "heads")
  precisions = state_lib.train_precisions(fl["dtype"])
  onset = cli.policies(",".join(fl["onset_dtype"]), what="onset_dtype")
  for name in ("l_train", "eval_factor", "batch", "eval_every", "eval_samples", "grad_samples",
               "max_len"):
    if fl[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {fl[name]}")
  top = fl["l_train"] * fl["eval_factor"]
  cfg = cli.decoder_config(fl, max_len=max(fl["max_len"], top) + 2,
                           vocab_size=data.vocab_size(top))
  ns = cli.lengths(fl["lengths"] or f"1:{top}", top, " (--eval_factor * --l_train)")
  opt = state_lib.Optimizer(lr=fl["lr"], warmup=fl["warmup"], steps=fl["steps"])
  jobs.check_job_flags(fl, cli.job_spec(fl))
  cell = dict(task=fl["task"], seed=seed, batch_size=fl["batch"], l_train=fl["l_train"],
              eval_every=fl["eval_every"], eval_samples=fl["eval_samples"],
              grad_samples=fl["grad_samples"], max_count=fl["max_len"],
              memory_budget_gib=fl["memory_budget"])
  return Spec(precisions, onset, cfg, ns, opt, cell, dict(fl))


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
    fl = spec.flags
    procs = hosts.start_processes(fl["coordinator"], fl["num_processes"], fl["process_id"],
                                  fl["distributed"])
  out = fl["out"] or results.make_run_dir(None, "train")  # the snapshots' home: known to the cells
  t0 = time.perf_counter()

  def run_cells(todo, save):
    for name in todo:
      snap = os.path.join(out, name, snapshot.FILE)
      save(name, loop.train_and_measure(spec.cfg, spec.precisions[name], spec.opt, spec.ns,
                                        spec.onset, snapshot_path=snap, **spec.cell))

  with jobs.exit_on_failure():
    jobs.run_job(run_cells, functools.partial(_assemble, spec, procs, t0), out=out, prefix="train",
             experiment="train", spec=cli.job_spec(fl), cell_ids=list(spec.precisions), procs=procs,
             heartbeat_s=fl["heartbeat"], argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(spec: Spec, procs, t0, out, shards):
  """Process 0: results.json and train.png from every training precision's shard."""
  fl, cfg = spec.flags, spec.cfg
  runs = {name: shards[name]["record"] for name in spec.precisions}
  caption = ("{task}, trained on n <= {l_train}; {c.num_layers} layers, d={c.d_model}, "
             "{c.num_heads} heads, {c.pe}; {steps} steps x {batch}; seed {seed}; onsets on "
             "Cor. B.10's pairs, counts <= {max_len}").format(**fl, c=cfg, seed=spec.cell["seed"])
  results.write_json(os.path.join(out, "results.json"), results.header(
      "train", fl, config=cfg, task=fl["task"], l_train=fl["l_train"], lengths=spec.ns,
      optimizer=dataclasses.asdict(spec.opt), runs=runs, caption=caption,
      total_s=round(time.perf_counter() - t0, 1), layout=hosts.layout(procs)), compact=True)
  if fl["plot"]:
    figures.train.train_figure(runs, fl["l_train"], os.path.join(out, "train.png"), caption)
  print(f"total {time.perf_counter() - t0:.1f}s; wrote {out}/results.json"
        + (", train.png" if fl["plot"] else ""))


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
