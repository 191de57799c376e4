r"""Train small decoders on counting and copying per precision; compare accuracy with collapse.

  python -m experiments.train --task=count_ones --dtype=bfloat16     # ~2 min on 2 CPU cores
  python -m experiments.train --dtype=float32,bfloat16,bfloat16_weights --l_train=32 --steps=4000
  python -m experiments.train --out=runs/mine --resume                # finish an interrupted run

For each training precision (--dtype: float32; bfloat16 = bf16 forward, f32 master weights
and Adam moments; bfloat16_weights = bf16 weights and moments; collapse_jax/train.py says
where every tensor lives and is rounded) a decoder is trained with AdamW (warmup + cosine,
clipping) on n in 1..--l_train digits, then:
  * accuracy at every n of --lengths (default 1..eval_factor * l_train);
  * the gradient norm of the loss at each of those n (what the optimizer is told there);
  * its own collapse on Cor. B.10's pairs ([BOS, 1^c] vs [BOS, 1^(c+1)], c <= --max_len),
    through the sweep engine, under each --onset_dtype, and its answers to those sequences.
Checkpoints (<out>/<dtype>/checkpoint.npz) are written at every evaluation and on SIGINT /
SIGTERM; --resume continues from them with the same batches. Writes results.json and
train.png (accuracy vs n with the training range and the collapse onsets; the B.10 distance;
the loss and gradient-norm curves).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (applies the XLA guards before jax starts)
from collapse_jax import cli, config, jobs, plotting, results, train

F = flags.FLAGS
cli.define(seeds="0", layers=2, d_model=64, heads="4", pe="rope", norm="rmsnorm", mlp="gelu",
           max_len=2048, lengths=None, memory_budget=2.0, out=None, plot=True, resume=False)
flags.DEFINE_enum("task", "count_ones", train.TASKS, "the task trained")
flags.DEFINE_list("dtype", ["float32", "bfloat16"], f"training precisions: {', '.join(train.PRESETS)}")
flags.DEFINE_list("onset_dtype", ["float32", "bfloat16"], "precision presets the trained "
                  "model's collapse is measured under")
flags.DEFINE_integer("l_train", 16, "training lengths n in 1..l_train")
flags.DEFINE_integer("eval_factor", 4, "evaluation out to eval_factor * l_train (and count "
                     "tokens up to it)")
flags.DEFINE_integer("steps", 2000, "optimizer steps")
flags.DEFINE_integer("batch", 64, "sequences per step")
flags.DEFINE_float("lr", 3e-3, "peak learning rate")
flags.DEFINE_integer("warmup", 100, "linear warmup steps")
flags.DEFINE_integer("eval_every", 250, "steps between evaluations, progress lines and checkpoints")
flags.DEFINE_integer("eval_samples", 256, "sequences per evaluated length")
flags.DEFINE_integer("grad_samples", 64, "sequences per length for the gradient-norm probe")


def _setup():
  seed = cli.one(cli.int_list(F.seeds, "seeds"), "seeds")
  heads = cli.one(cli.int_list(F.heads, "heads"), "heads")
  presets = [train.get_preset(d.strip()) for d in F.dtype]
  onset = cli.policies(",".join(F.onset_dtype))
  for name in ("l_train", "eval_factor", "steps", "batch", "eval_every", "eval_samples",
               "grad_samples"):
    if getattr(F, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(F, name)}")
  top = F.l_train * F.eval_factor
  cfg = config.DecoderConfig(num_layers=F.layers, d_model=F.d_model, num_heads=heads,
                             pe=F.pe, norm=F.norm, mlp=F.mlp, max_len=F.max_len + 2,
                             vocab_size=train.vocab_size(max(top, F.l_train)))
  ns = cli.lengths(F.lengths or f"1:{top}", top, " (--eval_factor * --l_train)")
  opt = train.Optimizer(lr=F.lr, warmup=F.warmup, steps=F.steps)
  return seed, presets, onset, cfg, ns, opt


def main(argv):
  with cli.usage_errors():
    seed, presets, onset, cfg, ns, opt = _setup()
    spec = cli.job_spec()
    jobs.check_out(F.out, spec, F.resume, 1)
  out = jobs.open_out(F.out, "train", spec, [p.name for p in presets], "train")
  stop = {"signal": None}
  for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda num, _: stop.update(signal=signal.Signals(num).name))
  t0, runs = time.perf_counter(), {}
  for tp in presets:
    ckpt = os.path.join(out, tp.name, train.CHECKPOINT)
    state = history = None
    if os.path.exists(ckpt):
      with cli.usage_errors():
        state, meta = train.load_checkpoint(ckpt, train.init_state(cfg, tp, opt, seed))
      history = meta["history"]
      print(f"[{tp.name}] resuming at step {int(state.step)} from {ckpt}", flush=True)
    t1 = time.perf_counter()
    state, history = train.train(cfg, tp, opt, F.task, seed=seed, batch_size=F.batch,
                                 l_train=F.l_train, eval_every=F.eval_every,
                                 eval_samples=F.eval_samples, state=state, history=history,
                                 checkpoint=ckpt, should_stop=lambda: stop["signal"] is not None)
    if history["stopped_at"] is not None:
      print(f"{stop['signal']}: stopped; resume with: "
            f"{jobs.resume_command(sys.argv, 'experiments.train', out)}", file=sys.stderr)
      sys.exit(130 if stop["signal"] == "SIGINT" else 143)
    train_s = time.perf_counter() - t1
    acc = train.evaluate(cfg, tp, state.params, F.task, ns, samples=F.eval_samples, seed=seed,
                         l_train=F.l_train)
    grads = train.grad_norm_by_length(cfg, tp, state.params, F.task, ns, samples=F.grad_samples,
                                      seed=seed)
    col = train.collapse(cfg, state.params, onset, F.max_len,
                         memory_budget_gib=F.memory_budget, log=lambda *_: None)
    runs[tp.name] = {"precision": tp.describe(), "train_s": round(train_s, 1),
                     "history": history, "accuracy": acc, "grad_norm_by_length": grads,
                     "collapse": col, "first_n_below_half": train.first_below(acc, "accuracy", .5)}
    print(f"[{tp.name}] trained in {train_s:.0f}s; accuracy at n=1..{F.l_train}: "
          f"{min(r['accuracy'] for r in acc if r['n'] <= F.l_train):.3f} (min); first n below "
          f"0.5: {runs[tp.name]['first_n_below_half']}; collapse onset (c vs c+1 bitwise "
          "equal): " + ", ".join(f"{k} {v['collapse_onset']}" for k, v in col.items()), flush=True)
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
