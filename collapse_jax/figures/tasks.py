"""Figures of the task harness (collapse_jax/harness.py, experiments.tasks): ``tasks_figure``,
``counts_figure``, ``bridge_figure``."""
from __future__ import annotations

import numpy as np
from matplotlib import lines

from collapse_jax.plotting import (dtype_style, equal_ticks, footer, log_x, positive_for_log,
                                   save, subplots)


MODE_MARKERS = {"direct": "o", "cot_no_shot": "s", "cot_few_shot": "^"}



def tasks_figure(summary, path: str, caption: str) -> str:
  """Figures 2/3 style, one column per task: flexible accuracy (filled band: Wilson 95%;
  strict accuracy dashed) and the mean answer margin against n, one line per dtype and mode."""
  names = list(dict.fromkeys(r["task"] for r in summary))
  fig, axes = subplots(2, len(names), figsize=(4.2 * len(names), 7.0))
  for j, task in enumerate(names):
    for (dtype, mode) in dict.fromkeys((r["dtype"], r["mode"]) for r in summary
                                       if r["task"] == task):
      rs = sorted((r for r in summary if (r["task"], r["dtype"], r["mode"]) ==
                   (task, dtype, mode)), key=lambda r: r["n"])
      n = [r["n"] for r in rs]
      st = dtype_style(dtype)
      kw = dict(color=st["color"], marker=MODE_MARKERS.get(mode, "o"), ms=4)
      acc = [r["flexible"]["accuracy"] for r in rs]
      axes[0, j].plot(n, acc, ls=st["ls"], lw=st["lw"], label=f"{dtype} {mode}", **kw)
      axes[0, j].fill_between(n, [r["flexible"]["lo"] for r in rs],
                              [r["flexible"]["hi"] for r in rs], color=st["color"], alpha=0.12)
      axes[0, j].plot(n, [r["strict"]["accuracy"] for r in rs], ls=":", lw=0.9,
                      color=st["color"])
      axes[1, j].plot(n, [r["margin"]["mean"] for r in rs], ls=st["ls"], lw=st["lw"], **kw)
    axes[0, j].set(title=task, ylim=(-0.05, 1.05), ylabel="accuracy (flexible; dotted: strict)")
    axes[1, j].axhline(0, color="0.5", lw=0.8)
    axes[1, j].set(xlabel="n", ylabel="margin: log p(correct) - log p(best wrong)")
    for ax in axes[:, j]:
      log_x(ax)
  axes[0, 0].legend(fontsize=7)
  footer(fig, caption)
  fig.subplots_adjust(bottom=0.12)
  return save(fig, path)


def counts_figure(samples, path: str, caption: str) -> str:
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
    ax.set(title=task, xlabel="true count", ylabel="predicted count (last number; capped "
           "at 10x the largest true count)")
    ax.legend(fontsize=7)
  footer(fig, caption)
  fig.subplots_adjust(bottom=0.16)
  return save(fig, path)


def bridge_figure(bridge, path: str, caption: str) -> str:
  """The bridge per task: the last-token distance ||y_a - y_b||_inf between its pair's two
  prompts (``tasks.bridge_sequences``; the sweep engine) against n per dtype (a
  bitwise-equal pair at the floor, '|'), with markers above where the two prompts' greedy
  outputs ('o') and margins ('x') are identical."""
  names = list(dict.fromkeys(b["task"] for b in bridge))
  fig, axes = subplots(1, len(names), figsize=(5.2 * len(names), 4.4))
  for j, task in enumerate(names):
    ax = axes[0, j]
    rows = [b for b in bridge if b["task"] == task]
    dist, floor = positive_for_log([b["y_linf"] for b in rows])
    for dtype in dict.fromkeys(b["dtype"] for b in rows):
      idx = [i for i, b in enumerate(rows) if b["dtype"] == dtype]
      n = np.asarray([rows[i]["n"] for i in idx])
      st = dtype_style(dtype)
      ax.plot(n, dist[idx], color=st["color"], ls=st["ls"], lw=st["lw"], marker=".",
              label=dtype)
      equal_ticks(ax, n, [rows[i]["y_equal"] for i in idx], floor, st["color"])
      same_out = np.asarray([rows[i]["output_equal"] for i in idx], bool)
      same_m = np.asarray([rows[i]["margin_equal"] for i in idx], bool)
      ax.plot(n[same_out], dist[idx][same_out] * 2.5, "o", mfc="none", color=st["color"], ms=7)
      ax.plot(n[same_m], dist[idx][same_m] * 5, "x", color=st["color"], ms=7)
    ax.set_yscale("log")
    (sa, _), (sb, _) = rows[0]["pair"]
    ax.set(title=f"{task}: pairs like {sa} vs {sb} (answers differ)", xlabel="n",
           ylabel="||y_a - y_b||_inf at the answer slot")
    log_x(ax)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + [
        lines.Line2D([], [], ls="", marker="o", mfc="none", color="0.3",
                     label="same greedy output"),
        lines.Line2D([], [], ls="", marker="x", color="0.3", label="same margin (bitwise)")],
        fontsize=7)
  footer(fig, caption)
  fig.subplots_adjust(bottom=0.16)
  return save(fig, path)
