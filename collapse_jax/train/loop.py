"""The training loop, resumable mid-training from its snapshot (words: collapse_jax/train).

Signals are not handled here: an experiment runs each training as a ``collapse_jax.jobs``
cell, whose main thread takes SIGINT/SIGTERM and exits at once. What survives is the last
snapshot, written every ``eval_every`` steps; :func:`train` given the same ``snapshot_path``
continues from it with the same batches, so the result equals an uninterrupted run's.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from collapse_jax import jobs
from collapse_jax.config import DecoderConfig
from collapse_jax.train import data, snapshot
from collapse_jax.train import state as state_lib
from collapse_jax.train.state import Optimizer, TrainPrecision, TrainState

METRICS = ("loss", "accuracy", "grad_norm", "lr")


def train(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer, task: str, *, seed: int,
          batch_size: int, l_train: int, eval_every: int, eval_samples: int = 256,
          snapshot_path: str | None = None, log=jobs.say,
          should_stop: Callable[[], bool] = lambda: False) -> tuple[TrainState, dict]:
  """Train to ``opt.steps``: from the snapshot at ``snapshot_path`` when there is one (its
  run identity must be this run's), else from a fresh state. Every ``eval_every`` steps and
  at the end: in-distribution accuracy on ``eval_samples`` fresh sequences
  (``data.in_distribution_batch``), a snapshot (with ``snapshot_path``), then a progress
  line with the ETA. ``should_stop()`` is asked before every step (e.g. a time budget): when
  it says True the run stops there and, with ``snapshot_path``, saves the state it reached.

  Returns (state, history) with history {'steps', 'loss', 'accuracy', 'grad_norm', 'lr'}
  (every step), 'evals' [{step, accuracy, train_loss}] (periodic), 'train_s' (seconds of
  training over every call that built this history) and 'stopped_at' (the step a
  should_stop ended the run at, else None)."""
  run = snapshot.run_identity(cfg, tp, opt, task, seed, batch_size, l_train)
  state = state_lib.init_state(cfg, tp, opt, seed)
  history = {"steps": [], **{k: [] for k in METRICS}, "evals": [], "train_s": 0.0}
  found = snapshot.restore(snapshot_path, state, run) if snapshot_path else None
  if found:
    state, history = found[0], found[1]["history"]
    log(f"[{tp.name}] resuming at step {int(state.step)} from {snapshot_path}")
  before_s = history.get("train_s", 0.0)
  step = state_lib.step_fn(cfg, tp, opt)
  start = int(state.step)
  t0, done = time.perf_counter(), 0
  pending = []  # metrics still on device (fetched at eval time: no per-step sync)

  def flush():  # the pending steps' metrics into the history
    for s, m in pending:
      m = jax.device_get(m)
      history["steps"].append(s)
      for k in METRICS:
        history[k].append(float(m[k]))
    pending.clear()
    history["train_s"] = round(before_s + time.perf_counter() - t0, 2)

  def save():
    if snapshot_path:
      snapshot.save(snapshot_path, state, {"history": history, "run": run})

  history["stopped_at"] = None
  for s in range(start, opt.steps):
    if should_stop():
      flush()
      history["stopped_at"] = s
      save()
      log(f"[{tp.name}] stopped at step {s}"
          + (f"; snapshot {snapshot_path}" if snapshot_path else ""))
      return state, history
    state, m = step(state, data.train_batch(task, seed, s, batch_size, l_train))
    pending.append((s, m))
    done += 1
    if (s + 1) % eval_every == 0 or s + 1 == opt.steps:
      flush()
      ev = data.in_distribution_batch(task, seed, s, eval_samples, l_train)
      acc = float((state_lib.predict(cfg, tp, state.params, ev) == ev.answer).mean())
      since = history["evals"][-1]["step"] if history["evals"] else 0
      loss = float(np.mean(history["loss"][since:]))  # the steps since the last evaluation
      history["evals"].append({"step": s + 1, "accuracy": acc, "train_loss": loss})
      save()
      el = time.perf_counter() - t0
      log(f"[{tp.name}] step {s + 1}/{opt.steps}: loss {loss:.4f}, in-distribution accuracy "
          f"{acc:.3f}, grad norm {history['grad_norm'][-1]:.3g}; elapsed {jobs.clock(el)}, "
          f"ETA {jobs.clock(el / done * (opt.steps - s - 1))}")
  flush()
  return state, history


def train_and_measure(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer, ns,
                      onset_policies, *, task: str, seed: int, batch_size: int, l_train: int,
                      eval_every: int, eval_samples: int, grad_samples: int, max_count: int,
                      memory_budget_gib: float, snapshot_path: str | None = None,
                      log=jobs.say) -> dict:
  """One training precision's cell (experiments/train.py): :func:`train` on ``task`` (from
  the snapshot at ``snapshot_path`` when there is one), then ``measure.measure`` of the
  trained params at every n of ``ns`` (int array [len(ns)]) and on Cor. B.10's pairs (counts
  <= ``max_count``)
  under each of ``onset_policies``; ``log``: the progress lines and ``measure.summary``'s.
  Returns measure's record with 'train_s', 'history' (this training's, :func:`train`) and
  'seconds' (wall time of the whole cell) added."""
  from collapse_jax.train import measure
  t = time.perf_counter()
  state, history = train(cfg, tp, opt, task, seed=seed, batch_size=batch_size, l_train=l_train,
                         eval_every=eval_every, eval_samples=eval_samples,
                         snapshot_path=snapshot_path, log=log)
  rec = measure.measure(cfg, tp, state.params, task, ns, l_train=l_train, seed=seed,
                        eval_samples=eval_samples, grad_samples=grad_samples,
                        onset_policies=onset_policies, max_count=max_count,
                        memory_budget_gib=memory_budget_gib)
  rec = {**rec, "train_s": history["train_s"], "history": history,
         "seconds": round(time.perf_counter() - t, 1)}
  for line in measure.summary(tp.name, rec, l_train):
    log(line)
  return rec
