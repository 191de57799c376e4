"""matplotlib figures shared by the experiments (headless Agg backend)."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def collapse_plot(records, path: str, title: str, key: str = "linf") -> str:
  """Distance vs n (log y), one curve per (dtype, heads) averaged over seeds; the
  collapse onset (first bitwise-equal n) is marked with a dot on the floor line and a
  dotted vertical line. Bitwise-equal pairs (distance 0) are drawn at the floor."""
  groups: dict = {}
  for r in records:
    groups.setdefault((r["dtype"], r["heads"]), []).append(r)
  all_vals = np.concatenate([np.asarray(r[key], np.float64) for r in records])
  _, floor = positive_for_log(all_vals)
  fig, axes = subplots(figsize=(8.5, 5.2))
  ax = axes[0, 0]
  cmap = plt.get_cmap("tab10")
  for i, ((dtype, heads), rs) in enumerate(sorted(groups.items())):
    n = np.asarray(rs[0]["lengths"])
    y = np.mean([np.asarray(r[key], np.float64) for r in rs], axis=0)
    yplot, _ = positive_for_log(y, floor)
    onset = min((r["collapse_onset"] for r in rs if r["collapse_onset"] > 0), default=-1)
    label = f"{dtype}, H={heads}" + (f" (equal from n={onset})" if onset > 0 else " (never equal)")
    ax.plot(n, yplot, lw=1.0, color=cmap(i % 10), label=label)
    if onset > 0:
      ax.axvline(onset, color=cmap(i % 10), ls=":", lw=0.8)
      ax.plot([onset], [floor], "o", color=cmap(i % 10), ms=5)
  ax.axhline(floor, color="0.6", lw=0.6, ls="--")
  ax.text(ax.get_xlim()[0], floor, " bitwise equal", va="bottom", fontsize=7, color="0.4")
  ax.set_yscale("log")
  ax.set_xscale("log")
  ax.set_xlabel("sequence length n")
  ax.set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (last token)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(True, which="both", alpha=0.25)
  return save(fig, path)
