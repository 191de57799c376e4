"""matplotlib figures shared by the experiments.

The backend is left to matplotlib (it falls back to a headless one when there is no
display), so importing this module inside a notebook does not switch the user's backend.
Figures are closed after saving."""
from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np


def subplots(nrows=1, ncols=1, **kw):
  kw.setdefault("figsize", (6.4 * ncols, 4.4 * nrows))
  kw.setdefault("squeeze", False)
  return plt.subplots(nrows, ncols, **kw)


def save(fig, path: str) -> str:
  """Tight layout, write atomically (temp + rename), close. Returns path."""
  fig.tight_layout()
  tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp.png")
  fig.savefig(tmp, dpi=130)
  os.replace(tmp, path)
  plt.close(fig)
  return path


def positive_for_log(y, floor=None):
  """Values for a log axis: zeros (bitwise-equal pairs) are drawn at ``floor`` (default:
  half the smallest positive value) so that collapse shows as a drop to the floor."""
  y = np.asarray(y, np.float64)
  pos = y[np.isfinite(y) & (y > 0)]
  if floor is None:
    floor = pos.min() / 2 if pos.size else 1e-30
  return np.where(y > 0, y, floor), floor


DTYPE_COLORS = {"float64": "black", "float32": "tab:blue", "float16": "tab:green",
                "bfloat16": "tab:orange", "bfloat16_pure": "tab:red",
                "float8_e4m3fn": "tab:purple", "float8_e5m2": "tab:brown"}


def collapse_plot(records, path: str, title: str, key: str = "linf") -> str:
  """Distance vs n (log-log), one panel per head count, one colour per dtype (seed mean).
  Bitwise-equal pairs (distance exactly 0) leave a gap in the curve and a tick on the
  floor line at the bottom; the first equal n (collapse onset) is a large dot."""
  groups: dict = {}
  for r in records:
    groups.setdefault((r["heads"], r["dtype"]), []).append(r)
  heads = sorted({h for h, _ in groups})
  all_vals = np.concatenate([np.asarray(r[key], np.float64) for r in records])
  _, floor = positive_for_log(all_vals)
  fig, axes = subplots(1, len(heads), figsize=(6.0 * len(heads), 4.8), sharey=True)
  for ax, h in zip(axes[0], heads):
    for (hh, dtype), rs in groups.items():
      if hh != h:
        continue
      color = DTYPE_COLORS.get(dtype.replace("_scaled", ""), None)
      n = np.asarray(rs[0]["lengths"])
      y = np.mean([np.asarray(r[key], np.float64) for r in rs], axis=0)
      equal = np.all([np.asarray(r["bitwise_equal"], bool) for r in rs], axis=0)
      onset = min((r["collapse_onset"] for r in rs if r["collapse_onset"] > 0), default=-1)
      label = dtype + (f" (equal at {equal.sum()} n, first n={onset})" if onset > 0 else " (never equal)")
      ax.plot(n, np.where(y > 0, y, np.nan), lw=0.8, alpha=0.85, color=color, label=label)
      if equal.any():
        ax.plot(n[equal], np.full(equal.sum(), floor), "|", color=color, ms=8)
        ax.plot([onset], [floor], "o", color=color, ms=6)
    ax.axhline(floor, color="0.6", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_title(f"H={h}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
  axes[0, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$  (ticks at bottom: bitwise equal)")
  fig.suptitle(title, fontsize=10)
  return save(fig, path)


def isa_heatmap(fractions: dict, settings, path: str, title: str) -> str:
  """Probe x numerics-path heat map of the fraction of output elements whose bits differ
  from the reference path (``isa.differing_fraction``), each cell labelled."""
  probes = list(fractions)
  grid = np.asarray([[fractions[p][s] for s in settings] for p in probes])
  fig, axes = subplots(figsize=(2.6 + 1.3 * len(settings), 0.8 + 0.28 * len(probes)))
  ax = axes[0, 0]
  im = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=max(grid.max(), 1e-9))
  ax.set_xticks(range(len(settings)), settings)
  ax.set_yticks(range(len(probes)), probes, fontsize=8)
  for i in range(len(probes)):
    for j in range(len(settings)):
      ax.text(j, i, "=" if grid[i, j] == 0 else f"{grid[i, j]:.1%}", ha="center",
              va="center", fontsize=7)
  fig.colorbar(im, ax=ax, label="fraction of elements with other bits")
  ax.set_title(title, fontsize=9)
  return save(fig, path)


def floor_figure(stages: dict, records, path: str, title: str) -> str:
  """Left: coordinates of each stage whose stored bits differ between rows n-1 and n
  (``diagnosis.stage_differences`` per dtype: {dtype: result}), one line per (dtype, n).
  Right: ||y_n - y*_{n+1}||_inf vs n for sweep ``records``, one colour per dtype, with
  bitwise-equal n on the floor line."""
  fig, axes = subplots(1, 2, figsize=(12.0, 4.6))
  ax = axes[0, 0]
  for dtype, r in stages.items():
    x = np.arange(len(r["stages"]))
    for k, n in enumerate(r["n"]):
      ax.plot(x, np.asarray(r["coords_differ"])[:, k], "o-", ms=4, lw=1,
              color=DTYPE_COLORS.get(dtype, None), alpha=0.4 + 0.6 * k / max(len(r["n"]) - 1, 1),
              label=f"{dtype}, n={n}")
    ax.set_xticks(x, r["stages"], rotation=30, fontsize=8)
  ax.set_ylabel("coordinates whose bits differ (row n-1 vs n)")
  ax.legend(fontsize=7)
  ax.grid(True, alpha=0.3)
  ax = axes[0, 1]
  vals = np.concatenate([np.asarray(r["linf"], np.float64) for r in records])
  _, floor = positive_for_log(vals)
  for r in records:
    n, y = np.asarray(r["lengths"]), np.asarray(r["linf"], np.float64)
    line, = ax.plot(n, np.where(y > 0, y, np.nan), lw=0.9, color=DTYPE_COLORS.get(r["dtype"]),
                    label=f"{r['dtype']} (equal at {int(np.sum(r['bitwise_equal']))} n)")
    eq = np.asarray(r["bitwise_equal"], bool)
    if eq.any():
      ax.plot(n[eq], np.full(eq.sum(), floor), "|", color=line.get_color(), ms=8)
  ax.axhline(floor, color="0.6", lw=0.6, ls="--")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("sequence length n")
  ax.set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$")
  ax.legend(fontsize=7)
  ax.grid(True, which="both", alpha=0.25)
  fig.suptitle(title, fontsize=10)
  return save(fig, path)
