"""The task harness: ask a real model the paper's copy and count tasks (collapse_jax/tasks.py
holds the words), under each precision policy, and tie its answers to the measured collapse.

  evaluate(ckpt, policies, tasks, modes, ns, ...) -> {'samples', 'summary', 'octaves', 'bridge'}

* samples  one record per (task, mode, dtype, n, sample): the prompt's size, the greedy
           output (collapse_jax.generate), the strict and flexible answers, and the answer
           preference at the slot (tasks.preference: log p of the correct and best wrong
           numbers, margin).
* summary  one row per (task, mode, dtype, n): strict and flexible accuracy with 95% Wilson
           intervals, the mean / min / max margin.
* octaves  the same pooled per octave of n (:func:`summarize_octaves`): the intervals of the
           tasks with one sequence per n.
* bridge   for the tasks of tasks.BRIDGE_TASKS in the run (direct mode): per (task, dtype, n)
           a pair of prompts whose correct answers differ (tasks.bridge_sequences: count_ones
           n vs n + 1 ones; copy_last 1^(n-1)0 vs 1^n, the asked digit flipped), the
           last-token distance between their slot contexts from the sweep engines
           (``engines.run``, exact engine: the compared token is the slot's last token, so no
           one-pass form holds), both greedy answers and whether each is right, and what a
           bitwise-equal pair forces (:func:`bridge_consequence`).

The grid is a job of cells (collapse_jax/jobs.py; :func:`task_cells`, :func:`run_task_cells`,
:func:`assemble_tasks`): one cell per (dtype, task, mode) and one bridge cell per (dtype,
bridge task). A cell decodes its prompts together in batches of ``batch``, sorted by length,
and runs a prompt it asks twice once; it shares nothing with other cells, so a resumed job
assembles what an uninterrupted one does.

Figure 5 on real weights (experiments/real_model_collapse.py) is a job too: :func:`figure5_job`
lists its cells, :func:`figure5_run_cells` runs them through ``sweep.run_grid``,
:func:`figure5_assemble` collects the runs and cross-checks.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import numpy as np

from collapse_jax import engines, generate, memory, metrics, records, sweep, tasks

DIRECT_TOKENS, COT_TOKENS = 24, 192  # default max_new_tokens per mode


def stop_ids(ckpt) -> list[int]:
  """The model's EOS and end-of-turn ids (those its vocabulary has)."""
  tok = ckpt.tokenizer
  ids = {int(i) for i in ckpt.eos_token_ids}
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


def _scores(ss: Sequence[dict]) -> dict:
  """strict, flexible and preferred (margin > 0: the answer slot ranks the right number
  first, whatever the model's own text) as {'accuracy', 'lo', 'hi'} (Wilson 95%), and the
  margin's mean / min / max, over the samples ``ss``."""
  m = np.asarray([s["margin"] for s in ss])
  hits = {kind: sum(s[f"correct_{kind}"] for s in ss) for kind in ("strict", "flexible")}
  hits["preferred"] = int((m > 0).sum())
  row = {}
  for kind, k in hits.items():
    lo, hi = tasks.wilson(k, len(ss))
    row[kind] = {"accuracy": k / len(ss), "lo": lo, "hi": hi}
  row["margin"] = {"mean": float(m.mean()), "min": float(m.min()), "max": float(m.max())}
  return row


def summarize(samples: Sequence[dict]) -> list[dict]:
  """Accuracy (strict, flexible; Wilson 95%), margins and 'preferred' (:func:`_scores`) per
  (task, mode, dtype, n)."""
  groups: dict = {}
  for s in samples:
    groups.setdefault((s["task"], s["mode"], s["dtype"], s["n"]), []).append(s)
  return [{"task": task, "mode": mode, "dtype": dtype, "n": n, "samples": len(ss),
           **_scores(ss)} for (task, mode, dtype, n), ss in groups.items()]


def summarize_octaves(samples: Sequence[dict]) -> list[dict]:
  """:func:`summarize` pooled per octave of n, [n_lo, n_hi) = [2^k, 2^(k+1)): every sample
  of every n in the octave counts once. This is what gives the tasks with one fixed sequence
  per n (the copy tasks, count_ones, sum) an interval: on a dense grid an octave holds many
  n. The interval is for the accuracy averaged over the octave's n (the n differ, so the
  samples are not one Bernoulli draw repeated). Rows add 'n_lo', 'n_hi' and 'lengths' (the
  number of distinct n), sorted by task, mode, dtype and octave."""
  groups: dict = {}
  for s in samples:
    groups.setdefault((s["task"], s["mode"], s["dtype"], metrics.octave_lo(s["n"])), []).append(s)
  return [{"task": task, "mode": mode, "dtype": dtype, "n_lo": lo, "n_hi": 2 * lo,
           "lengths": len({s["n"] for s in ss}), "samples": len(ss), **_scores(ss)}
          for (task, mode, dtype, lo), ss in sorted(groups.items())]


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


BRIDGE = "bridge"  # the mode word of a bridge cell: id '<dtype>/bridge/<task>'


def task_cells(policies, task_names: Sequence[str], modes: Sequence[str],
               bridge: bool = True) -> dict[str, tuple]:
  """The cells of the task grid, in the results' order: id -> (policy, task, mode). Per
  policy, '<dtype>/<task>/<mode>' for each (task, mode) that applies (CoT modes: count tasks
  only), then, with ``bridge``, '<dtype>/bridge/<task>' (mode :data:`BRIDGE`) for each of
  ``tasks.BRIDGE_TASKS`` in ``task_names``."""
  pairs = [(t, m) for t in task_names for m in modes if m == "direct" or t in tasks.COUNT_TASKS]
  pairs += [(t, BRIDGE) for t in tasks.BRIDGE_TASKS if bridge and t in task_names]
  return {(f"{p.name}/{BRIDGE}/{t}" if m == BRIDGE else f"{p.name}/{t}/{m}"): (p, t, m)
          for p in policies for t, m in pairs}


def skipped_cells(task_names: Sequence[str], modes: Sequence[str]) -> list[str]:
  """The 'task/mode' asked for that :func:`task_cells` leaves out (CoT modes of a task that
  does not count)."""
  return [f"{t}/{m}" for t in task_names for m in modes
          if m != "direct" and t not in tasks.COUNT_TASKS]


def run_task_cell(ckpt, policy, task: str, mode: str, ns, *, samples: int = 1,
                  max_new_tokens: int | None = None, batch: int = 8) -> dict:
  """One cell of the task grid, on its own (a fresh memo, its own batches: its record
  depends on the cell alone, so a resumed job assembles the same results): {'samples': one
  row per prompt} for a (task, mode), {'bridge': one row per n} for a bridge cell."""
  runner = _Runner(ckpt, policy, max_new_tokens, batch)
  if mode == BRIDGE:
    return {"bridge": bridge(ckpt, runner, task, ns, ckpt.prompt_format)}
  its = tasks.items(ckpt.tokenizer, task, mode, ns, samples, ckpt.prompt_format)
  return {"samples": [_sample_row(it, policy.name, rec) for it, rec in zip(its, runner.run(its))]}


def run_task_cells(ckpt, cells: dict, ids: Sequence[str], save: Callable[[str, dict], None],
                   ns, drop_compiled: bool = False, **kw) -> None:
  """Run the cells ``ids`` of ``cells`` (:func:`task_cells`) with ``kw`` for
  :func:`run_task_cell` and call ``save(id, record)`` as each ends (``jobs.run_job``'s
  ``run_cells``); each record carries its 'seconds' and the process's RSS after
  ``memory.end_cell(drop_compiled)`` (the apps drop each cell's programs: a real model's
  cell is long, and held programs built up)."""
  for i in ids:
    t0 = time.perf_counter()
    rec = run_task_cell(ckpt, *cells[i], ns, **kw)
    seconds = round(time.perf_counter() - t0, 2)
    save(i, {**rec, "seconds": seconds, **memory.end_cell(drop_compiled)})


def assemble_tasks(cells: dict, recs: dict[str, dict]) -> dict:
  """The task grid's results from every cell's record (``recs``: id -> record):
  {'samples', 'summary', 'octaves', 'bridge', 'cells', 'timings_s'}, in the cells' order."""
  samples = [row for i in cells for row in recs[i].get("samples", [])]
  return {"samples": samples, "summary": summarize(samples),
          "octaves": summarize_octaves(samples),
          "bridge": [row for i in cells for row in recs[i].get("bridge", [])],
          "cells": list(cells), "timings_s": {i: recs[i]["seconds"] for i in cells}}


def evaluate(ckpt, policies, task_names: Sequence[str], modes: Sequence[str], ns, *,
             samples: int = 1, max_new_tokens: int | None = None, batch: int = 8,
             log: Callable[[str], None] = print) -> dict:
  """The whole task grid in this process (module docstring): every cell of
  :func:`task_cells` in turn, assembled by :func:`assemble_tasks`."""
  cells = task_cells(policies, task_names, modes)
  if skipped := skipped_cells(task_names, modes):
    log(f"skipping {', '.join(skipped)}: CoT modes are for the count tasks")
  recs: dict[str, dict] = {}
  run_task_cells(ckpt, cells, list(cells), recs.__setitem__, ns, samples=samples,
                 max_new_tokens=max_new_tokens, batch=batch)
  return assemble_tasks(cells, recs)


def summary_line(r: dict) -> str:
  """One console line for a summary row (:func:`summarize`)."""
  return (f"{r['task']:>22s} {r['mode']:>12s} {r['dtype']:>9s} n={r['n']:<5d} acc strict "
          f"{r['strict']['accuracy']:.2f} flexible {r['flexible']['accuracy']:.2f} "
          f"[{r['flexible']['lo']:.2f}, {r['flexible']['hi']:.2f}] margin "
          f"{r['margin']['mean']:+.3f} preferred {r['preferred']['accuracy']:.2f} "
          f"[{r['preferred']['lo']:.2f}, {r['preferred']['hi']:.2f}]")


def octave_line(r: dict) -> str:
  """One console line for a pooled row (:func:`summarize_octaves`)."""
  n = f"n in [{r['n_lo']}, {r['n_hi']})"
  return (f"{r['task']:>22s} {r['mode']:>12s} {r['dtype']:>9s} {n:<18s} {r['lengths']:>4d} n, "
          f"{r['samples']:>4d} samples: flexible {r['flexible']['accuracy']:.2f} "
          f"[{r['flexible']['lo']:.2f}, {r['flexible']['hi']:.2f}] preferred "
          f"{r['preferred']['accuracy']:.2f} [{r['preferred']['lo']:.2f}, "
          f"{r['preferred']['hi']:.2f}] margin {r['margin']['mean']:+.3f}")


def bridge_line(b: dict) -> str:
  """One console line for a bridge row (:func:`bridge`)."""
  (sa, _), (sb, _) = b["pair"]
  return (f"bridge {b['task']:>10s} {b['dtype']:>9s} n={b['n']:<5d} {sa} vs {sb}: |y_a - y_b| "
          f"{b['y_linf']:.3g}{' (bitwise equal)' if b['y_equal'] else ''}; answers "
          f"{b['answer_a']} / {b['answer_b']} (correct {b['correct_a']} / {b['correct_b']}); "
          f"same output {b['output_equal']}, same margin {b['margin_equal']}"
          + ("; VIOLATED: equal y, both slot digits right" if b["violated"] else ""))


CHECK = "cross_check/"  # a cross-check cell's id: CHECK + the id of the run it checks


@dataclasses.dataclass(frozen=True)
class Figure5Job:
  """Figure 5 on one set of weights as a job of cells (collapse_jax/jobs.py; made by
  :func:`figure5_job`). ``grids``: per group of pair sets, (models, pair sets by setting,
  seeds) for ``sweep.run_grid``, one model per window mode; ``cells``: cell id -> (group
  index, ``sweep.Cell``), in the results' order, the cross-check cells (id ``CHECK + id``,
  the default engine on the same n) after their group's runs; ``windows``: the window modes."""
  grids: list
  policies: list
  cells: dict
  windows: list

  @property
  def ids(self) -> list[str]:
    return list(self.cells)


def figure5_job(params, groups, cfgs, policies, cross_check: bool = False) -> Figure5Job:
  """The cells of Figure 5: every group of pair sets (``sweep.setting_groups``: ({setting:
  [PairSet per seed]}, seeds)) under each window config of ``cfgs`` (mode -> DecoderConfig;
  several modes add a 'window' label to the cell ids and records) and each policy; with
  ``cross_check`` each run's cell again under the default engine."""
  windows = list(cfgs)
  grids = [([sweep.Model(cfg, [params] * len(seeds), {} if windows == ["native"] else
                         {"window": w}) for w, cfg in cfgs.items()], sets, seeds)
           for sets, seeds in groups]
  cells = {}
  for g, (models, sets, seeds) in enumerate(grids):
    group = sweep.grid_cells(models, policies, sets, seeds)
    cells.update({c.id: (g, c) for c in group})
    cells.update({CHECK + c.id: (g, c) for c in group if cross_check})
  return Figure5Job(grids, list(policies), cells, windows)


def figure5_run_cells(job: Figure5Job, ids: Sequence[str], save: Callable[[str, dict], None],
                      grid, *, position: str = "digit", engine: str | None = None,
                      chunk: int = 32, memory_budget: float | None = None, thin: bool = False,
                      drop_compiled: bool = False, log: Callable[[str], None] = print) -> None:
  """Run the cells ``ids`` of ``job`` on the n of ``grid`` (shape [N]) and call
  ``save(id, record)`` as each finishes (``jobs.run_job``'s ``run_cells``). Records are
  ``records.compact``, labelled with the window mode ('window'); a run's with ``position``
  and ``engine`` (default: each setting's), a cross-check's with the default engine.
  ``thin``: a cell whose engine pays per n (``sweep.PER_N_ENGINES``) runs on
  ``sweep.thinned(grid)`` and, where y is bitwise equal there, again with every n of the
  first equal n's octave (``sweep.first_equal_octave``); its record says so ('grid':
  'thinned', 'refined': 'lo:hi' or ''). ``drop_compiled``: ``sweep.run_grid``'s (the app
  sets it: each real-model cell compiles its own programs, and held ones built up)."""
  for g, (models, sets, seeds) in enumerate(job.grids):
    mine = [i for i in ids if job.cells[i][0] == g]
    for prefix in ("", CHECK):
      todo = [job.cells[i][1] for i in mine if i.startswith(CHECK) == bool(prefix)]
      if not todo:
        continue
      extra = {} if prefix else {"position": position}
      label = lambda rec, **more: records.compact({"window": job.windows[0], **rec, **extra,
                                                   **more})
      eng = None if prefix else engine
      run = functools.partial(sweep.run_grid, models, job.policies, sets, seeds=seeds,
                              engine=eng, chunk=chunk, memory_budget=memory_budget, log=log,
                              drop_compiled=drop_compiled)
      few = sweep.thinned(grid) if thin else grid
      per_n = [c for c in todo if len(few) < len(grid) and engines.resolve(
          eng, sets[c.pairs][0]) in sweep.PER_N_ENGINES]
      if dense := [c for c in todo if c not in per_n]:
        run(lengths=grid, cells=dense, on_cell=lambda cell, rec: save(prefix + cell.id,
                                                                        label(rec)))
      for cell in per_n:  # one at a time: each may run again on its refined grid
        ran = few
        rec = run(lengths=ran, cells=[cell])[0]
        if refine := sweep.first_equal_octave(grid, ran, rec["collapse_onset"]):
          lo, hi, ran = refine
          log(f"{cell.id}: y equal first at n={rec['collapse_onset']} on the thinned grid; "
              f"again with every n in [{lo}, {hi})")
          rec = run(lengths=ran, cells=[cell])[0]
        save(prefix + cell.id, label(rec, grid="thinned",
                                     refined=f"{lo}:{hi}" if refine else ""))


def figure5_assemble(job: Figure5Job, recs: dict[str, dict]) -> tuple[list[dict], list[dict]]:
  """(runs, checks) from every cell's record (``recs``: id -> record): ``runs`` in the cells'
  order; ``checks`` one ``records.cross_check`` row per cross-checked run."""
  runs = [recs[i] for i in job.ids if not i.startswith(CHECK)]
  checks = [{"pairs": recs[i]["pairs"], "dtype": recs[i]["dtype"], "seed": recs[i]["seed"],
             "window": recs[i]["window"], **records.cross_check(recs[i], recs[CHECK + i])}
            for i in job.ids if CHECK + i in recs]
  return runs, checks


def figure5_runs(params, groups, cfgs, policies, grid, *, cross_check: bool = False,
                 **kw) -> tuple[list[dict], list[dict]]:
  """Figure 5 in this process, every cell in turn (:func:`figure5_job`,
  :func:`figure5_run_cells` with ``kw``, :func:`figure5_assemble`): (runs, checks)."""
  job = figure5_job(params, groups, cfgs, policies, cross_check)
  recs: dict[str, dict] = {}
  figure5_run_cells(job, job.ids, recs.__setitem__, grid, **kw)
  return figure5_assemble(job, recs)


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
