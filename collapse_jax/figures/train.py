"""The training figure (experiments.train): ``train_figure``."""
from __future__ import annotations

import numpy as np

from collapse_jax.plotting import (dtype_style, equal_ticks, footer, log_x, log_y,
                                   positive_for_log, save, subplots)


TRAIN_COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange", "bfloat16_weights": "tab:red"}
ONSET_MARKERS = ("v", "^", "s", "D", "P", "X", "*")


def train_figure(runs: dict, l_train: int, path: str | None, caption: str):
  """Three panels, one colour per training precision (``runs``: name -> the experiment's run
  record): (a) accuracy against n (count_ones: dotted, on the answerable rows), the training
  range shaded, each collapse onset (one marker per onset precision) as a dashed vertical
  line; (b) Cor. B.10's ||y_c - y_(c+1)||_inf against c per training and onset precision
  (bitwise-equal c at the floor, '|'; first one a dot); (c) the training loss (solid) and the
  gradient norm before clipping (thin, right axis) against step."""
  fig, axes = subplots(1, 3, figsize=(17.5, 4.8))
  ax, bx, cx = axes[0]
  onset_names = list(dict.fromkeys(k for r in runs.values() for k in r["collapse"]))
  ax.axvspan(1, l_train, color="0.9", zorder=0, label=f"trained: n <= {l_train}")
  top = max(r["n"] for run in runs.values() for r in run["accuracy"])
  for name, run in runs.items():
    c = TRAIN_COLORS.get(name)
    n = [r["n"] for r in run["accuracy"]]
    ax.plot(n, [r["accuracy"] for r in run["accuracy"]], color=c, lw=1.4, label=name)
    if "accuracy_answerable" in run["accuracy"][0]:
      ax.plot(n, [np.nan if r["accuracy_answerable"] is None else r["accuracy_answerable"]
                  for r in run["accuracy"]], color=c, ls=":", lw=1.0)
    for j, (pol, col) in enumerate(run["collapse"].items()):
      m = ONSET_MARKERS[onset_names.index(pol) % len(ONSET_MARKERS)]
      if col["collapse_onset"] > 0:
        top = max(top, col["collapse_onset"])
        ax.axvline(col["collapse_onset"], color=c, ls="--", lw=0.9)
        ax.plot([col["collapse_onset"]], [1.02], m, color=c, ms=7, clip_on=False,
                label=f"{name}: onset under {pol} (c={col['collapse_onset']})")

      counts, floor_src = np.asarray(col["counts"]), col["linf"]
      d, floor = positive_for_log(floor_src)
      bx.plot(counts, d, color=c, ls=dtype_style(pol)["ls"], lw=0.7, label=f"{name} / {pol}")
      equal_ticks(bx, counts, col["equal"], floor, c, onset=col["collapse_onset"],
                  key=f"{name}/{pol}")
    never = [pol for pol, col in run["collapse"].items() if col["collapse_onset"] <= 0]
    if never:
      top_c = max(int(np.max(col["counts"])) for col in run["collapse"].values())
      ax.plot([], [], ls="", label=f"{name}: no collapse for c <= {top_c} under "
              + ", ".join(never))
  ax.set(xlim=(0.8, top * 1.3), ylim=(-0.03, 1.08), xlabel="n (digits)",
         ylabel="accuracy (dotted: rows with count <= l_train)", title="(a) accuracy vs length")
  log_x(ax)
  ax.legend(fontsize=6.5, loc="center left")
  bx.set(xlabel="c (ones)", ylabel=r"$\|y_c - y_{c+1}\|_\infty$", title="(b) Cor. B.10 pairs "
         "[BOS, 1^c] vs [BOS, 1^(c+1)]")
  log_x(bx)
  log_y(bx)
  bx.legend(fontsize=6.5, title="trained / measured in", title_fontsize=6.5)
  gx = cx.twinx()
  for name, run in runs.items():
    h, c = run["history"], TRAIN_COLORS.get(name)
    cx.plot(h["steps"], positive_for_log(h["loss"])[0], color=c, lw=1.2, label=f"{name} loss")
    gx.plot(h["steps"], h["grad_norm"], color=c, lw=0.5, alpha=0.6)
  log_y(cx)
  log_y(gx)
  cx.set(xlabel="step", ylabel="training loss (solid)", title="(c) loss and gradient norm")
  gx.set_ylabel("global gradient norm before clipping (thin)")
  cx.legend(fontsize=6.5)
  footer(fig, caption)
  return save(fig, path)
