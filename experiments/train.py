r"""Train small decoders on counting and copying per precision; compare accuracy with collapse.

  python -m experiments.train --task=count_ones --dtype=bfloat16     # ~2 min on 2 CPU cores
  python -m experiments.train --dtype=float32,bfloat16,bfloat16_weights --l_train=32 --steps=4000
  python -m experiments.train --dtype=bfloat16 --out=runs/mine --resume  # same flags: finish a stopped run

For each training precision (--dtype: float32; bfloat16 = bf16 forward, f32 master weights
and Adam moments; bfloat16_weights = bf16 weights and moments; collapse_jax/train/ says
where every tensor lives and is rounded) a decoder is trained with AdamW (warmup + cosine,
clipping) on n in 1..--l_train digits, then:
  * accuracy at every n of --lengths (default 1..eval_factor * l_train);
  * the gradient norm of the loss at each of those n (what the optimizer is told there);
  * its own collapse on Cor. B.10's pairs ([BOS, 1^c] vs [BOS, 1^(c+1)], c <= --max_len),
    through the sweep engine, under each --onset_dtype, and its answers to those sequences;
    for count_ones, the corollary's consequence (measure.b10_consequence): of every run of
    counts whose representations are bitwise equal, at most one may be answered right, the
    answers asked as the accuracy asks them (each sequence alone, left-padded).
Snapshots (<out>/<dtype>/snapshot.npz) are written at every evaluation and on SIGINT /
SIGTERM (the run stops at the next step or phase; a second signal exits at once); the
command printed at the stop (the same flags, --out and --resume) continues with the same
batches, and a precision already finished (<out>/<dtype>/run.json) is kept. Writes results.json and
train.png (accuracy vs n with the training range and the collapse onsets; the B.10 distance;
the loss and gradient-norm curves).
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, config, jobs, plotting, results
from collapse_jax.train import data, loop, measure, snapshot
from collapse_jax.train import state as state_lib

F = flags.FLAGS
cli.define(seeds="0", layers=2, d_model=64, heads="4", pe="rope", norm="rmsnorm", mlp="gelu",
           max_len=2048, lengths=None, memory_budget=2.0, out=None, plot=True, resume=False)
flags.DEFINE_enum("task", "count_ones", data.TRAIN_TASKS, "the training task")
flags.DEFINE_list("dtype", ["float32", "bfloat16"], f"training precisions: {', '.join(state_lib.TRAIN_PRECISIONS)}")
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
  return seed, presets, onset, cfg, ns, opt


def main(argv):
  with cli.usage_errors():
    seed, presets, onset, cfg, ns, opt = _setup()
    spec = cli.job_spec()
    jobs.check_out(F.out, spec, F.resume, 1)
  out = jobs.open_out(F.out, "train", spec, [p.name for p in presets], "train")
  resume = jobs.resume_command(sys.argv, "experiments.train", out)
  stop = {"signal": None}

  def on_signal(num, _frame):  # the first: stop at the next step or phase; a second: now
    name = signal.Signals(num).name
    if stop["signal"] is not None:
      sys.stderr.write(f"{name} again: exiting now; resume with: {resume}\n")
      os._exit(128 + num)
    stop["signal"] = name

  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, on_signal)
  stopping = lambda: stop["signal"] is not None
  t0, runs = time.perf_counter(), {}
  for tp in presets:
    d = os.path.join(out, tp.name)
    snap, record = os.path.join(d, snapshot.FILE), os.path.join(d, "run.json")
    if os.path.exists(record):  # finished before --resume: kept, not recomputed
      with open(record) as f:
        runs[tp.name] = results.from_jsonable(json.load(f))
      print(f"[{tp.name}] finished before; kept {record}", flush=True)
      continue
    with cli.usage_errors():
      state, history = loop.train(cfg, tp, opt, F.task, seed=seed, batch_size=F.batch,
                                  l_train=F.l_train, eval_every=F.eval_every,
                                  eval_samples=F.eval_samples, snapshot_path=snap,
                                  should_stop=stopping)
    rec = None if stopping() else measure.measure(
        cfg, tp, state.params, F.task, ns, l_train=F.l_train, seed=seed,
        eval_samples=F.eval_samples, grad_samples=F.grad_samples, onset_policies=onset,
        max_count=F.max_len, memory_budget_gib=F.memory_budget)
    if rec is None:
      print(f"{stop['signal']}: stopped; resume with: {resume}", file=sys.stderr)
      sys.exit(130 if stop["signal"] == "SIGINT" else 143)
    runs[tp.name] = {**rec, "train_s": history["train_s"], "history": history}
    results.write_json(record, runs[tp.name], compact=True)
    inside = [r["accuracy"] for r in rec["accuracy"] if r["n"] <= F.l_train]
    print(f"[{tp.name}] trained in {history['train_s']:.0f}s; accuracy at n <= {F.l_train}: "
          + (f"{min(inside):.3f} (min)" if inside else "not evaluated")
          + f"; first n below 0.5: {rec['first_n_below_half']}; collapse onset (c vs c+1 "
          "bitwise equal): " + ", ".join(f"{k} {v['collapse_onset']}"
                                         for k, v in rec["collapse"].items()), flush=True)
    for k, v in rec["collapse"].items():
      c = v["corollary"]
      if c and c["equal_pairs"]:
        print(f"  Cor. B.10 under {k}: {'holds' if c['holds'] else 'VIOLATED'}: "
              f"{c['equal_pairs']} equal pairs in {len(c['classes'])} runs of counts, "
              f"{c['wrong']} wrong answers there (at least {c['forced_wrong']} forced); "
              f"{c['classes_that_could_fail']} runs with two answerable counts; answers "
              f"differ at {c['answer_differs_at_equal']} equal pairs (premise "
              f"{'holds' if c['premise_holds'] else 'BROKEN'})"
              + (f"; violations {c['violations']}" if c["violations"] else ""), flush=True)
  caption = (f"{F.task}, trained on n <= {F.l_train}; {cfg.num_layers} layers, d={cfg.d_model}, "
             f"{cfg.num_heads} heads, {cfg.pe}; {F.steps} steps x {F.batch}; seed {seed}; onsets "
             f"on Cor. B.10's pairs, counts <= {F.max_len}")
  results.write_json(os.path.join(out, "results.json"), {
      "experiment": "train", "task": F.task, "l_train": F.l_train, "lengths": ns,
      "config": cfg.to_dict(), "optimizer": dataclasses.asdict(opt),
      "flags": spec, "runs": runs, "caption": caption, "total_s": round(time.perf_counter() - t0, 1),
      "environment": results.environment()}, compact=True)
  if F.plot:
    plotting.train_figure(runs, F.l_train, os.path.join(out, "train.png"), caption)
  print(f"total {time.perf_counter() - t0:.1f}s; wrote {out}/results.json"
        + (", train.png" if F.plot else ""))


if __name__ == "__main__":
  app.run(main)
