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

Run shape: a job of cells (collapse_jax/jobs.py), one cell per training precision, as in
precision_sweep. A finished precision is saved at once as --out/cells/<dtype>.json; --resume
(the same flags) keeps the saved cells and runs the rest; SIGINT/SIGTERM stop with one line
and the resume command; progress lines carry an ETA; --coordinator/--num_processes/
--process_id spread the precisions over processes. A cell is a whole training, minutes long,
and jobs exits at once on a signal (a compiled call cannot be interrupted), so the resume
INSIDE a cell stays in the library loop: train.loop writes --out/<dtype>/snapshot.npz every
--eval_every steps and continues from it when the cell runs again, with the same batches, so
the result equals an uninterrupted run's (at most --eval_every steps are trained again).
"""
import dataclasses
import functools
import os
import sys
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, config, figures, hosts, jobs, results
from collapse_jax.train import data, loop, measure, snapshot
from collapse_jax.train import state as state_lib

F = flags.FLAGS
cli.define(seeds="0", layers=2, d_model=64, heads="4", pe="rope", norm="rmsnorm", mlp="gelu",
           max_len=2048, lengths=None, memory_budget=2.0, out=None, plot=True, **cli.JOB)
flags.DEFINE_enum("task", "count_ones", data.TRAIN_TASKS, "the training task")
flags.DEFINE_list("dtype", ["float32", "bfloat16"],
                  f"training precisions: {', '.join(state_lib.TRAIN_PRECISIONS)}")
flags.DEFINE_list("onset_dtype", ["float32", "bfloat16"], "precision presets the trained "
                  "model's collapse is measured under")
flags.DEFINE_integer("l_train", 16, "training lengths n in 1..l_train")
flags.DEFINE_integer("eval_factor", 4, "evaluation out to eval_factor * l_train (and count "
                     "tokens up to it)")
flags.DEFINE_integer("steps", 2000, "optimizer steps")
flags.DEFINE_integer("batch", 64, "sequences per step")
flags.DEFINE_float("lr", 3e-3, "peak learning rate")
flags.DEFINE_integer("warmup", 100, "linear warmup steps")
flags.DEFINE_integer("eval_every", 250, "steps between evaluations, progress lines and snapshots")
flags.DEFINE_integer("eval_samples", 256, "sequences per evaluated length")
flags.DEFINE_integer("grad_samples", 64, "sequences per length for the gradient-norm probe")


def _setup():
  seed = cli.one(cli.int_list(F.seeds, "seeds"), "seeds")
  heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
  names = [d.strip() for d in F.dtype if d.strip()]
  if not names or len(set(names)) != len(names):
    raise ValueError(f"--dtype must name distinct training precisions, got {F.dtype}")
  presets = [state_lib.train_precision(d) for d in names]
  onset = cli.policies(",".join(F.onset_dtype), what="onset_dtype")
  for name in ("l_train", "eval_factor", "batch", "eval_every", "eval_samples", "grad_samples",
               "max_len"):
    if getattr(F, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(F, name)}")
  top = F.l_train * F.eval_factor
  cfg = config.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads,
                             pe=F.pe, norm=F.norm, mlp=F.mlp, max_len=max(F.max_len, top) + 2,
                             vocab_size=data.vocab_size(top))
  ns = cli.lengths(F.lengths or f"1:{top}", top, " (--eval_factor * --l_train)")
  opt = state_lib.Optimizer(lr=F.lr, warmup=F.warmup, steps=F.steps)
  if F.heartbeat < 0:
    raise ValueError(f"--heartbeat must be >= 0 seconds (0: none), got {F.heartbeat}")
  hosts.check_distributed(F.coordinator, F.num_processes, F.process_id, F.distributed)
  jobs.check_out(F.out, cli.job_spec(), F.resume, F.num_processes or (2 if F.distributed else 1))
  return seed, presets, onset, cfg, ns, opt


def main(argv):
  del argv  # the command line is sys.argv (for the resume line)
  with cli.usage_errors():
    seed, presets, onset, cfg, ns, opt = _setup()
    procs = hosts.start_processes(F.coordinator, F.num_processes, F.process_id, F.distributed)
  out = F.out or results.make_run_dir(None, "train")  # the snapshots' home: known to the cells
  t0, names = time.perf_counter(), [tp.name for tp in presets]

  def run_cells(todo, save):
    for name in todo:
      tp, t = state_lib.train_precision(name), time.perf_counter()
      state, history = loop.train(cfg, tp, opt, F.task, seed=seed, batch_size=F.batch,
                                  l_train=F.l_train, eval_every=F.eval_every,
                                  eval_samples=F.eval_samples,
                                  snapshot_path=os.path.join(out, name, snapshot.FILE))
      rec = measure.measure(cfg, tp, state.params, F.task, ns, l_train=F.l_train, seed=seed,
                            eval_samples=F.eval_samples, grad_samples=F.grad_samples,
                            onset_policies=onset, max_count=F.max_len,
                            memory_budget_gib=F.memory_budget)
      rec = {**rec, "train_s": history["train_s"], "history": history,
             "seconds": round(time.perf_counter() - t, 1)}
      for line in measure.summary(name, rec, F.l_train):
        jobs.say(line)
      save(name, rec)

  with jobs.exit_on_failure():
    jobs.run(run_cells, functools.partial(_assemble, cfg, opt, seed, ns, names, procs, t0),
             out=out, prefix="train", experiment="train", spec=cli.job_spec(), cell_ids=names,
             procs=procs, heartbeat_s=F.heartbeat, argv=sys.argv, module=__spec__.name)
  if procs.index != 0:
    print(f"process {procs.index}: cells saved; process 0 wrote the results in {out}")


def _assemble(cfg, opt, seed, ns, names, procs, t0, out, shards):
  """Process 0: results.json and train.png from every training precision's shard."""
  runs = {name: shards[name]["record"] for name in names}
  caption = (f"{F.task}, trained on n <= {F.l_train}; {cfg.num_layers} layers, d={cfg.d_model}, "
             f"{cfg.num_heads} heads, {cfg.pe}; {F.steps} steps x {F.batch}; seed {seed}; onsets "
             f"on Cor. B.10's pairs, counts <= {F.max_len}")
  results.write_json(os.path.join(out, "results.json"), results.header(
      "train", cli.app_flags(), config=cfg, task=F.task, l_train=F.l_train, lengths=ns,
      optimizer=dataclasses.asdict(opt), runs=runs, caption=caption,
      total_s=round(time.perf_counter() - t0, 1), layout=hosts.layout(procs)), compact=True)
  if F.plot:
    figures.train.train_figure(runs, F.l_train, os.path.join(out, "train.png"), caption)
  print(f"total {time.perf_counter() - t0:.1f}s; wrote {out}/results.json"
        + (", train.png" if F.plot else ""))


if __name__ == "__main__":
  app.run(main)
