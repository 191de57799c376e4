"""Figures of the task harness (collapse_jax/harness.py, experiments.tasks): ``tasks_figure``,
``octaves_figure``, ``counts_figure``, ``bridge_figure``, ``models_figure`` (runs of several
models side by side); ``write_all`` writes the ones a run draws."""
from __future__ import annotations

import os

import numpy as np
from matplotlib import lines

from collapse_jax.plotting import (dtype_style, equal_ticks, footer, log_x, log_y,
                                   positive_for_log, save, subplots)


MODE_MARKERS = {"direct": "o", "cot_no_shot": "s", "cot_few_shot": "^"}
DODGE = 1.04  # tasks_figure: the curves of a panel sit this factor apart in n, so bars stay apart


def _curves(rows, task: str, order: str):
  """One task's curves: (dodge factor, dtype, mode, its rows sorted by ``order``) for each
  (dtype, mode) in ``rows``; the dodge factors (DODGE to a power) keep the curves' bars apart."""
  curves = list(dict.fromkeys((r["dtype"], r["mode"]) for r in rows if r["task"] == task))
  for k, (dtype, mode) in enumerate(curves):
    rs = sorted((r for r in rows if (r["task"], r["dtype"], r["mode"]) == (task, dtype, mode)),
                key=lambda r: r[order])
    yield DODGE ** (k - (len(curves) - 1) / 2), dtype, mode, rs


def _interval_bars(axes, x, rs, dtype: str, mode: str, label: str, color=None) -> None:
  """Flexible accuracy on ``axes[0]`` and preferred on ``axes[1]``, each with its Wilson
  interval as error bars, at ``x``; in the dtype's colour unless ``color`` is given."""
  st = dtype_style(dtype)
  for ax, key in zip(axes, ("flexible", "preferred")):
    acc = np.asarray([r[key]["accuracy"] for r in rs])
    bars = [acc - [r[key]["lo"] for r in rs], [r[key]["hi"] for r in rs] - acc]
    ax.errorbar(x, acc, yerr=bars, ls=st["ls"], lw=st["lw"], capsize=2.5, elinewidth=0.8,
                color=color or st["color"], marker=MODE_MARKERS.get(mode, "o"), ms=4,
                label=label)


def _at(rs) -> np.ndarray:
  """Where summary rows sit on the n axis: their n, or an octave row's geometric middle."""
  if "n_lo" in rs[0]:
    lo, hi = (np.asarray([r[key] for r in rs], np.float64) for key in ("n_lo", "n_hi"))
    return np.sqrt(lo * (hi - 1))
  return np.asarray([r["n"] for r in rs], np.float64)


def _task_axes(col, task: str, title: str, xlabel: str = "n") -> None:
  """The labels of a task's column of three panels (accuracy, preferred, margin), log n."""
  col[0].set(title=title, ylim=(-0.05, 1.05), ylabel="accuracy (flexible; dotted: strict)")
  col[1].set(ylim=(-0.05, 1.05), ylabel="preferred: margin > 0 at the answer slot")
  col[2].axhline(0, color="0.5", lw=0.8)
  col[2].set(xlabel=xlabel, ylabel="margin: log p(correct) - log p(best wrong)")
  for ax in col:
    log_x(ax)


def tasks_figure(summary, path: str | None, caption: str):
  """Figures 2/3 style, one column per task (``harness.summarize`` rows): flexible accuracy
  with its Wilson 95% interval as error bars (strict accuracy dotted), the fraction of
  samples whose answer slot prefers the right number (Wilson 95%), and the mean answer
  margin, against n; one line per dtype and mode, each nudged by a factor DODGE in n so that
  the bars of one n stay apart."""
  names = list(dict.fromkeys(r["task"] for r in summary))
  fig, axes = subplots(3, len(names), figsize=(4.2 * len(names), 10.0))
  for j, task in enumerate(names):
    for dodge, dtype, mode, rs in _curves(summary, task, "n"):
      n = np.asarray([r["n"] for r in rs], np.float64) * dodge
      st = dtype_style(dtype)
      kw = dict(color=st["color"], marker=MODE_MARKERS.get(mode, "o"), ms=4)
      _interval_bars(axes[:2, j], n, rs, dtype, mode, f"{dtype} {mode}")
      axes[0, j].plot(n, [r["strict"]["accuracy"] for r in rs], ls=":", lw=0.9,
                      color=st["color"])
      axes[2, j].plot(n, [r["margin"]["mean"] for r in rs], ls=st["ls"], lw=st["lw"], **kw)
    _task_axes(axes[:, j], task, task)
  axes[0, 0].legend(fontsize=7, title="bars: Wilson 95% interval", title_fontsize=7)
  footer(fig, caption)
  return save(fig, path)


MODEL_COLORS = ("C0", "C3", "C2", "C4", "C1", "C5")  # models_figure: one per model


def models_figure(runs, path: str | None, caption: str):
  """Models side by side (issue 29): ``runs`` is a list of (label, rows) pairs, the label
  naming a model and its prompt format, the rows its run's ``harness.summarize`` rows (per
  n) or ``harness.summarize_octaves`` rows (pooled per octave, at the octave's geometric
  middle). One column per task any run has, the panels of :func:`tasks_figure` (flexible
  accuracy with strict dotted, 'preferred', mean margin; Wilson 95% bars); a colour per
  model, the dtype's line style and the mode's marker, every curve nudged by DODGE in n."""
  names = list(dict.fromkeys(r["task"] for _, rows in runs for r in rows))
  pooled = "n_lo" in runs[0][1][0]
  entries = sum(len({(r["dtype"], r["mode"]) for r in rows}) for _, rows in runs)
  fig, axes = subplots(3, len(names), figsize=(4.6 * len(names), 10.6 + 0.35 * entries))
  for j, task in enumerate(names):
    curves = [(m, label, c) for m, (label, rows) in enumerate(runs)
              for c in _curves(rows, task, "n_lo" if pooled else "n")]
    for k, (m, label, (_, dtype, mode, rs)) in enumerate(curves):
      n = _at(rs) * DODGE ** (k - (len(curves) - 1) / 2)
      color, st = MODEL_COLORS[m % len(MODEL_COLORS)], dtype_style(dtype)
      # two lines per entry: a real model's label is as wide as a column
      _interval_bars(axes[:2, j], n, rs, dtype, mode, f"{label}:\n{dtype} {mode}", color)
      axes[0, j].plot(n, [r["strict"]["accuracy"] for r in rs], ls=":", lw=0.9, color=color)
      axes[2, j].plot(n, [r["margin"]["mean"] for r in rs], ls=st["ls"], lw=st["lw"],
                      color=color, marker=MODE_MARKERS.get(mode, "o"), ms=4)
    _task_axes(axes[:, j], task, f"{task}: {len(runs)} models"
               + (", pooled per octave" if pooled else ""),
               "n (octave [2^k, 2^(k+1)))" if pooled else "n")
  # under the first column, where long model labels cover no curve
  axes[2, 0].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=6.5, loc="upper left",
                    bbox_to_anchor=(0, -0.14), frameon=False,
                    title="colour: model; bars: Wilson 95%", title_fontsize=6.5)
  footer(fig, caption)
  return save(fig, path)


def octaves_figure(octaves, path: str | None, caption: str):
  """The tasks pooled per octave of n (``harness.summarize_octaves`` rows), one column per
  task: flexible accuracy and 'preferred' (margin > 0 at the answer slot), each with its
  Wilson 95% interval, at the octave's geometric middle; a line per dtype and mode, nudged
  by DODGE; the octave's span [n_lo, n_hi) drawn as a thin horizontal bar under each point.
  The copy tasks and count_ones have one sequence per n: this is where their intervals are."""
  names = list(dict.fromkeys(r["task"] for r in octaves))
  fig, axes = subplots(2, len(names), figsize=(4.2 * len(names), 7.0))
  for j, task in enumerate(names):
    for dodge, dtype, mode, rs in _curves(octaves, task, "n_lo"):
      lo, hi = (np.asarray([r[key] for r in rs], np.float64) for key in ("n_lo", "n_hi"))
      counts = ", ".join(str(r["lengths"]) for r in rs)
      _interval_bars(axes[:, j], _at(rs) * dodge, rs, dtype, mode,
                     f"{dtype} {mode} ({counts} n)")
      for row, key in ((0, "flexible"), (1, "preferred")):
        axes[row, j].hlines([r[key]["accuracy"] for r in rs], lo, hi - 1,
                            color=dtype_style(dtype)["color"], lw=0.6, alpha=0.5)
    axes[0, j].set(title=f"{task}, pooled per octave of n", ylim=(-0.05, 1.05),
                   ylabel="accuracy (flexible)")
    axes[1, j].set(ylim=(-0.05, 1.05), xlabel="n (octave [2^k, 2^(k+1)))",
                   ylabel="preferred: margin > 0 at the answer slot")
    for ax in axes[:, j]:
      log_x(ax)
    axes[0, j].legend(fontsize=6, title="bars: Wilson 95%; (n per octave)", title_fontsize=6)
  footer(fig, caption)
  return save(fig, path)


def counts_figure(samples, path: str | None, caption: str):
  """Figures 4/7 style: the predicted count (flexible answer) against the true count for each
  count task and dtype; marker area = how many samples gave that answer."""
  names = list(dict.fromkeys(s["task"] for s in samples))
  fig, axes = subplots(1, len(names), figsize=(4.2 * len(names), 4.2))
  for j, task in enumerate(names):
    ax = axes[0, j]
    ss = [s for s in samples if s["task"] == task and s["flexible"] is not None]
    top = max([s["answer"] for s in ss] + [1])
    for dtype in dict.fromkeys(s["dtype"] for s in ss):
      pts: dict = {}
      for s in ss:
        if s["dtype"] == dtype:
          key = (s["answer"], min(s["flexible"], 10 * top))  # far-off answers at the edge
          pts[key] = pts.get(key, 0) + 1
      xy = np.asarray(list(pts), np.float64)
      ax.scatter(xy[:, 0], xy[:, 1], s=18 * np.asarray(list(pts.values())), alpha=0.6,
                 color=dtype_style(dtype)["color"], label=dtype)
    ax.plot([0, top], [0, top], color="0.5", lw=0.8)
    ax.set(title=task, xlabel="true count", ylabel="predicted count (last number;\ncapped "
           "at 10x the largest true count)")
    ax.legend(fontsize=7)
  footer(fig, caption)
  return save(fig, path)


def bridge_figure(bridge, path: str | None, caption: str):
  """The bridge per task: the last-token distance ||y_a - y_b||_inf between its pair's two
  prompts (``tasks.bridge_sequences``; the sweep engine) against n per dtype (a
  bitwise-equal pair at the floor, '|'), with a circle ('o') on the points where the two
  prompts' greedy outputs are identical and a cross ('x') where their margins are."""
  names = list(dict.fromkeys(b["task"] for b in bridge))
  fig, axes = subplots(1, len(names), figsize=(5.2 * len(names), 4.4))
  for j, task in enumerate(names):
    ax = axes[0, j]
    rows = [b for b in bridge if b["task"] == task]
    dist, floor = positive_for_log([b["y_linf"] for b in rows])
    for dtype in dict.fromkeys(b["dtype"] for b in rows):
      idx = [i for i, b in enumerate(rows) if b["dtype"] == dtype]
      n, d = np.asarray([rows[i]["n"] for i in idx]), dist[idx]
      st = dtype_style(dtype)
      ax.plot(n, d, color=st["color"], ls=st["ls"], lw=st["lw"], marker=".", label=dtype,
              gid=f"series:{dtype}")
      equal_ticks(ax, n, [rows[i]["y_equal"] for i in idx], floor, st["color"])
      same_out = np.asarray([rows[i]["output_equal"] for i in idx], bool)
      same_m = np.asarray([rows[i]["margin_equal"] for i in idx], bool)
      ax.plot(n[same_out], d[same_out], "o", mfc="none", mew=1.2, color=st["color"], ms=9,
              gid=f"marks:{dtype}")
      ax.plot(n[same_m], d[same_m], "x", color=st["color"], ms=6, gid=f"marks:{dtype}")
    (sa, _), (sb, _) = rows[0]["pair"]
    ax.set(title=f"{task}: pairs like {sa} vs {sb} (answers differ)", xlabel="n",
           ylabel=r"$\|y_a - y_b\|_\infty$ at the answer slot")
    log_x(ax)
    log_y(ax)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + [
        lines.Line2D([], [], ls="", marker="o", mfc="none", color="0.3",
                     label="same greedy output"),
        lines.Line2D([], [], ls="", marker="x", color="0.3", label="same margin (bitwise)")],
        fontsize=7)
  footer(fig, caption)
  return save(fig, path)


def write_all(res: dict, out: str, caption: str, count_tasks, runs=(),
              runs_caption: str | None = None) -> list[str]:
  """experiments.tasks' figures in ``out`` from ``harness.assemble_tasks``' ``res``:
  :func:`tasks_figure`, :func:`octaves_figure` when an octave of n holds several n,
  :func:`counts_figure` when samples of ``count_tasks`` exist,
  :func:`bridge_figure` when the run has a bridge, and where ``runs`` ((label, results)
  pairs, this run's first; results with 'summary' and 'octaves') holds several,
  :func:`models_figure` per n and, when every run has an octave with several n, pooled per
  octave, captioned ``runs_caption`` (default ``caption``; the legend names each run's
  model and format).
  Returns the file names written."""
  files = ["tasks_accuracy.png"]
  tasks_figure(res["summary"], os.path.join(out, files[-1]), caption)
  dense = lambda r: any(o["lengths"] > 1 for o in r.get("octaves", []))
  for name, key, draw in (("tasks_models.png", "summary", len(runs) > 1),
                          ("tasks_models_octaves.png", "octaves",
                           len(runs) > 1 and all(dense(r) for _, r in runs))):
    if draw:
      files.append(name)
      models_figure([(label, r[key]) for label, r in runs], os.path.join(out, name),
                    runs_caption or caption)
  if any(r["lengths"] > 1 for r in res.get("octaves", [])):
    files.append("tasks_octaves.png")
    octaves_figure(res["octaves"], os.path.join(out, files[-1]), caption)
  counts = [s for s in res["samples"] if s["task"] in count_tasks]
  if counts:
    files.append("tasks_counts.png")
    counts_figure(counts, os.path.join(out, files[-1]), caption)
  if res["bridge"]:
    files.append("tasks_bridge.png")
    bridge_figure(res["bridge"], os.path.join(out, files[-1]), caption)
  return files
