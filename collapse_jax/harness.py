"""The task harness: ask a real model the paper's copy and count tasks (collapse_jax/tasks.py
holds the words), under each precision policy, and tie its answers to the measured collapse.

  evaluate(ckpt, policies, tasks, modes, ns, ...) -> {'samples', 'summary', 'bridge'}

* samples  one record per (task, mode, dtype, n, sample): the prompt's size, the greedy
           output (collapse_jax.generate), the strict and flexible answers, and the answer
           preference at the slot (tasks.preference: log p of the correct and best wrong
           numbers, margin).
* summary  one row per (task, mode, dtype, n): strict and flexible accuracy with 95% Wilson
           intervals, the mean / min / max margin.
* bridge   for the tasks of tasks.BRIDGE_TASKS in the run (direct mode): per (task, dtype, n)
           a pair of prompts whose correct answers differ (tasks.bridge_sequences: count_ones
           n vs n + 1 ones; copy_last 1^(n-1)0 vs 1^n, the asked digit flipped), the
           last-token distance between their slot contexts from the sweep engines
           (``engines.run``, exact engine: the compared token is the slot's last token, so no
           one-pass form holds), both greedy answers and whether each is right, and what a
           bitwise-equal pair forces (:func:`bridge_consequence`).

Prompts of one (dtype, task, mode) are decoded together in batches of ``batch``, sorted by
length, with the bridge's prompts of that task. A prompt asked twice (count_ones' bridge
prompt n + 1 is often a grid n) is run once.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np

from collapse_jax import engines, generate, jobs, records, sweep, tasks

DIRECT_TOKENS, COT_TOKENS = 24, 192  # default max_new_tokens per mode


def stop_ids(ckpt) -> list[int]:
  """The model's EOS and end-of-turn ids (those its vocabulary has)."""
  tok = ckpt.tokenizer
  ids = {int(ckpt.metadata["tokenizer.ggml.eos_token_id"])}
  for name in ("<|im_end|>", "<end_of_turn>", "<eos>", "<|endoftext|>"):
    i = tok.token_to_id(name)
    if i is not None:
      ids.add(int(i))
  return sorted(ids)


def _max_new(mode: str, max_new_tokens: int | None) -> int:
  return max_new_tokens or (DIRECT_TOKENS if mode == "direct" else COT_TOKENS)


class _Runner:
  """Greedy outputs and preferences of items under one policy, memoized by prompt."""

  def __init__(self, ckpt, policy, max_new_tokens, batch):
    self.ckpt, self.policy, self.batch = ckpt, policy, batch
    self.params = policy.cast_params(ckpt.params)
    self.max_new, self.done = max_new_tokens, {}
    self.digits = tasks.digit_ids(ckpt.tokenizer)
    self.stops = stop_ids(ckpt)
    self.stop_strings = ("\n\n",) if ckpt.prompt_format == "plain" else ()

  def record(self, item: tasks.Item) -> dict:
    return self.done[(item.mode, item.ids)]

  def run(self, items: Sequence[tasks.Item]) -> list[dict]:
    todo = sorted({(it.mode, it.ids): it for it in items
                   if (it.mode, it.ids) not in self.done}.values(), key=lambda it: len(it.ids))
    cfg, tok = self.ckpt.config, self.ckpt.tokenizer
    B = self.batch  # one batch size for every call (a short chunk is padded): one compile
    for a in range(0, len(todo), B):
      chunk = todo[a:a + B]
      rows = [list(it.ids) for it in chunk] + [list(chunk[-1].ids)] * (B - len(chunk))
      g = generate.greedy_decode(cfg, self.policy, self.params, rows,
                       _max_new(chunk[0].mode, self.max_new), stop_ids=self.stops,
                       stop_strings=self.stop_strings, decode=tok.decode)
      for it, ids, why in zip(chunk, g.ids, g.stop):
        text = tok.decode(ids)
        got = tasks.extract(it.task, text)
        ctx = tasks.slot_context(tok, it, text)
        pref = tasks.preference(cfg, self.policy, self.params, ctx, it.answer, self.digits)
        self.done[(it.mode, it.ids)] = {
            "output": text, "new_tokens": len(ids), "stop": why, "output_ids": ids,
            **got, "slot_tokens": len(ctx), "slot_ids": ctx, **pref}
    return [self.record(it) for it in items]


def _sample_row(it: tasks.Item, dtype: str, rec: dict) -> dict:
  return {"task": it.task, "mode": it.mode, "n": it.n, "dtype": dtype, "sample": it.sample,
          "prompt_id": f"{it.task}/{it.mode}/n{it.n}/s{it.sample}", "answer": it.answer,
          "prompt_tokens": len(it.ids),
          **{k: rec[k] for k in ("output", "new_tokens", "stop", "strict", "flexible",
                                 "margin", "logp_correct", "best_wrong", "logp_best_wrong",
                                 "top", "slot_tokens", "passes")},
          "correct_strict": rec["strict"] == it.answer,
          "correct_flexible": rec["flexible"] == it.answer}


def summarize(samples: Sequence[dict]) -> list[dict]:
  """Accuracy (strict, flexible; Wilson 95%) and margins per (task, mode, dtype, n)."""
  groups: dict = {}
  for s in samples:
    groups.setdefault((s["task"], s["mode"], s["dtype"], s["n"]), []).append(s)
  rows = []
  for (task, mode, dtype, n), ss in groups.items():
    row = {"task": task, "mode": mode, "dtype": dtype, "n": n, "samples": len(ss)}
    for kind in ("strict", "flexible"):
      k = sum(s[f"correct_{kind}"] for s in ss)
      lo, hi = tasks.wilson(k, len(ss))
      row[kind] = {"accuracy": k / len(ss), "lo": lo, "hi": hi}
    m = np.asarray([s["margin"] for s in ss])
    row["margin"] = {"mean": float(m.mean()), "min": float(m.min()), "max": float(m.max())}
    rows.append(row)
  return rows


def bridge_consequence(y_equal: bool, answer_a: int, answer_b: int, slot_digit_a: int,
                       slot_digit_b: int) -> dict:
  """What a bitwise-equal pair forces, checked. The slot's next-token distribution is a
  function of y at the slot alone, so where the two slot contexts' y are bitwise equal the
  slot chooses one first digit for both prompts; where the correct answers' first digits
  differ (copy_last's 0 vs 1 always; count_ones' n vs n + 1 when n + 1 starts another digit,
  e.g. 5 vs 6, not 10 vs 11), at most one of the two can be right. ``slot_digit_*``: the
  argmax digit at the slot as ``tasks.preference`` reads it, from generate's prefill, not from
  the engine that measured y; so the check fails when those two routes disagree in the bits
  that matter, or when given answers a collapsed pair cannot give.

  Returns {'first_digits_differ', 'forced' (y equal and first digits differ), 'slot_right_a',
  'slot_right_b', 'violated' (forced and both slot digits right)}."""
  fa, fb = int(str(int(answer_a))[0]), int(str(int(answer_b))[0])
  ra, rb = int(slot_digit_a) == fa, int(slot_digit_b) == fb
  forced = bool(y_equal) and fa != fb
  return {"first_digits_differ": fa != fb, "forced": forced, "slot_right_a": ra,
          "slot_right_b": rb, "violated": forced and ra and rb}


def bridge(ckpt, runner: _Runner, task: str, ns, prompt_format: str) -> list[dict]:
  """Per n: the bridge's pair (tasks.bridge_items: correct answers differ), the distance
  between their slot contexts' last-token outputs (exact engine), both greedy answers and
  whether each is right, whether the outputs and margins are identical, and
  :func:`bridge_consequence` (at a bitwise-equal pair, not both slot digits right)."""
  tok = ckpt.tokenizer
  its = {int(n): tasks.bridge_items(tok, task, int(n), prompt_format) for n in ns}
  runner.run([it for ab in its.values() for it in ab])
  ctx = tuple((n, tuple(runner.record(a)["slot_ids"]), tuple(runner.record(b)["slot_ids"]))
              for n, (a, b) in its.items())
  ps = tasks.TaskPairs(name=task, token=int(ctx[-1][1][-1]), contexts=ctx)
  params_B = jax.tree_util.tree_map(lambda x: x[None], runner.params)
  m = engines.run(ckpt.config, runner.policy, params_B, [ps], np.asarray(ns), engine="exact")
  rows = []
  for j, n in enumerate(ns):
    ia, ib = its[int(n)]
    a, b = runner.record(ia), runner.record(ib)
    y_equal = bool(m["y_bitwise_equal"][0, j])
    rows.append({"task": task, "dtype": runner.policy.name, "n": int(n),
                 "pair": tasks.bridge_sequences(task, int(n)),
                 "correct_a": ia.answer, "correct_b": ib.answer,
                 "y_linf": float(m["y_linf"][0, j]), "y_equal": y_equal,
                 "y_max_ulp": float(m["y_max_ulp"][0, j]),
                 "answer_a": a["flexible"], "answer_b": b["flexible"],
                 "right_a": a["flexible"] == ia.answer, "right_b": b["flexible"] == ib.answer,
                 "answers_identical": a["flexible"] == b["flexible"],
                 "output_equal": a["output"] == b["output"],
                 "margin_equal": a["margin"] == b["margin"],
                 "top_equal": a["top"] == b["top"],
                 "margin_a": a["margin"], "margin_b": b["margin"],
                 "slot_digit_a": a["slot_digit"], "slot_digit_b": b["slot_digit"],
                 **bridge_consequence(y_equal, ia.answer, ib.answer, a["slot_digit"],
                                      b["slot_digit"])})
  return rows


def evaluate(ckpt, policies, task_names: Sequence[str], modes: Sequence[str], ns, *,
             samples: int = 1, max_new_tokens: int | None = None, batch: int = 8,
             log: Callable[[str], None] = print, on_cell: Callable | None = None) -> dict:
  """Run the grid (module docstring). ``on_cell(name, seconds)`` after each (dtype, task,
  mode) and each bridge cell (for progress lines)."""
  fmt = ckpt.prompt_format
  cells = _cells(task_names, modes)
  skipped = [(t, m) for t in task_names for m in modes if (t, m) not in cells]
  if skipped:
    log(f"skipping {', '.join(f'{t}/{m}' for t, m in skipped)}: CoT modes are for the count "
        "tasks")
  samples_out, bridge_out, timings = [], [], {}
  for pol in policies:
    runner = _Runner(ckpt, pol, max_new_tokens, batch)
    for task, mode in cells:
      t0 = time.perf_counter()
      its = tasks.items(ckpt.tokenizer, task, mode, ns, samples, fmt)
      extra = []
      if task in tasks.BRIDGE_TASKS and mode == "direct":  # the bridge's prompts, batched too
        extra = [it for n in ns for it in tasks.bridge_items(ckpt.tokenizer, task, int(n), fmt)]
      for it, rec in zip(its, runner.run(its + extra)):
        samples_out.append(_sample_row(it, pol.name, rec))
      name = f"{pol.name}/{task}/{mode}"
      timings[name] = time.perf_counter() - t0
      if on_cell:
        on_cell(name, timings[name])
    for task in [t for t in tasks.BRIDGE_TASKS if t in task_names]:
      t0 = time.perf_counter()
      bridge_out += bridge(ckpt, runner, task, ns, fmt)
      name = f"{pol.name}/bridge/{task}"
      timings[name] = time.perf_counter() - t0
      if on_cell:
        on_cell(name, timings[name])
  return {"samples": samples_out, "summary": summarize(samples_out), "bridge": bridge_out,
          "cells": [f"{p.name}/{t}/{m}" for p in policies for t, m in cells]
          + [f"{p.name}/bridge/{t}" for p in policies for t in tasks.BRIDGE_TASKS
             if t in task_names],
          "timings_s": timings}


def _cells(task_names, modes) -> list:
  """The (task, mode) cells that apply (CoT modes: count tasks only)."""
  return [(t, m) for t in task_names for m in modes if m == "direct" or t in tasks.COUNT_TASKS]


def cell_count(policies, task_names, modes) -> int:
  """How many cells :func:`evaluate` runs (for a progress line before it starts)."""
  return len(policies) * (len(_cells(task_names, modes))
                          + sum(t in task_names for t in tasks.BRIDGE_TASKS))


def figure5_runs(params, groups, cfgs, policies, grid, *, position: str = "digit",
                 engine: str | None = None, chunk: int = 32, memory_budget: float | None = None,
                 cross_check: bool = False, log: Callable[[str], None] = print
                 ) -> tuple[list[dict], list[dict]]:
  """Figure 5 on one set of weights (experiments/real_model_collapse.py): every group of
  pair sets (``sweep.setting_groups``: ({setting: [PairSet per seed]}, seeds)) under each
  window config of ``cfgs`` (mode -> DecoderConfig; several modes add a 'window' label) and
  each policy, on the n of ``grid`` (shape [N]), with a progress line per cell. Returns
  (runs, checks): ``runs`` one ``records.compact`` record per cell of each group,
  labelled with its window mode ('window') and ``position``; with ``cross_check`` the default engine also runs
  each group, and ``checks`` holds one ``records.cross_check`` row per run."""
  windows = list(cfgs)
  grids = [([sweep.Model(cfg, [params] * len(seeds), {} if windows == ["native"] else
                         {"window": w}) for w, cfg in cfgs.items()], sets, seeds)
           for sets, seeds in groups]
  progress = jobs.Progress(sum(len(sweep.grid_cells(m, policies, sets, s))
                               for m, sets, s in grids))
  runs, checks = [], []
  for models, sets, seeds in grids:
    recs = sweep.run_grid(models, policies, sets, grid, seeds, engine=engine, chunk=chunk,
                          memory_budget=memory_budget, log=log,
                          on_cell=lambda cell, rec: progress.end(cell.id, rec["seconds"]))
    runs += [records.compact({"window": windows[0], **r, "position": position}) for r in recs]
    if cross_check:
      one = [records.compact({"window": windows[0], **r}) for r in sweep.run_grid(
          models, policies, sets, grid, seeds, chunk=chunk, memory_budget=memory_budget, log=log)]
      for e, o in zip(runs[-len(one):], one):
        checks.append({"pairs": e["pairs"], "dtype": e["dtype"], "seed": e["seed"],
                       "window": e["window"], **records.cross_check(e, o)})
  return runs, checks


def figure5_extras(ckpt, cfgs, settings, grid, runs, caption: str) -> dict:
  """The keys of real_model_collapse's results.json after the header's, up to the total
  time, in order: the model (label, name, prompt format), each window mode's windows
  (``cfgs``: mode -> DecoderConfig), the caption, the n (``grid``, shape [N]), each
  setting's description and token counts (``settings``: key -> PairSet), the engine per
  setting and the seconds per run (``runs``: :func:`figure5_runs`' records)."""
  return dict(
      model=ckpt.label, model_name=ckpt.name, prompt_format=ckpt.prompt_format,
      window_configs={w: {"layer_windows": c.layer_windows, "sliding_window": c.sliding_window}
                      for w, c in cfgs.items()},
      caption=caption, lengths=grid, settings={k: s.describe() for k, s in settings.items()},
      token_counts={k: s.token_counts(grid) for k, s in settings.items()},
      engines={r["pairs"]: r["engine"] for r in runs},
      timings_s={f"{r['window']}/{r['pairs']}/{r['dtype']}/{r['seed']}": r["seconds"]
                 for r in runs})
