"""The attribution figure (experiments.attribution): ``onsets_figure``."""
from __future__ import annotations

import numpy as np

from collapse_jax.plotting import log_x, save, subplots, suptitle

DROP, ONLY = "tab:red", "tab:blue"


def onsets_figure(rows, path: str | None, max_n: int, title: str):
  """Two panels over the variants' rows (``attribution.summarize``), one line per point or
  group (groups '@g' last): (a) the collapse onset of 'drop:p' (every point but p; red
  circle) and 'only:p' (p alone; blue square) on a log n axis, with the 'all' (base) and
  'none' onsets as vertical lines; a variant with no equal n up to ``max_n`` is a hollow
  marker at the right edge. (b) how many swept n are bitwise equal, the same markers, with
  'all' as a vertical line (an onset alone can be one isolated n). Where the red circle sits
  right of 'all' in (a) or left of it in (b), rounding at p is needed for the base's
  collapse; where the blue square sits near 'all', p alone makes it."""
  by = {r["variant"]: r for r in rows}
  names = list(dict.fromkeys(v.split(":", 1)[1] for v in by if ":" in v))
  names = [n for n in names if not n.startswith("@")] + [n for n in names if n.startswith("@")]
  fig, axes = subplots(1, 2, figsize=(12.5, 0.9 + 0.32 * max(len(names), 4)))
  ax, bx = axes[0]
  edge = max_n * 1.6
  y = np.arange(len(names))[::-1]
  for kind, color, marker, dy in (("drop", DROP, "o", 0.13), ("only", ONLY, "s", -0.13)):
    for yi, name in zip(y, names):
      r = by.get(f"{kind}:{name}")
      if r is None:
        continue
      never = r["onset"] <= 0
      ax.plot([edge if never else r["onset"]], [yi + dy], marker, color=color, ms=6,
              mfc="none" if never else color, clip_on=False)
      bx.plot([r["equal"]], [yi + dy], marker, color=color, ms=6)
    ax.plot([], [], marker, color=color, label=f"{kind}:p" + (" (every point but p)"
                                                              if kind == "drop" else " (p alone)"))
  ax.plot([], [], "o", mfc="none", color="0.3", label=f"no equal n <= {max_n}")
  for key, ls in (("all", "-"), ("none", ":")):
    r = by.get(key)
    if r is not None and r["onset"] > 0:
      for a in (ax,):
        a.axvline(r["onset"], color="0.3", ls=ls, lw=1.0, label=f"{key}: onset {r['onset']}")
    elif r is not None:
      ax.plot([], [], ls=ls, color="0.3", label=f"{key}: no equal n")
  ax.set(yticks=y, yticklabels=names, xlim=(1, edge * 1.15), ylim=(-0.7, len(names) - 0.3),
         xlabel="first n with y_n == y*_(n+1) bitwise", title="(a) collapse onset")
  log_x(ax)
  ax.legend(fontsize=7, loc="lower left")
  if "all" in by:
    bx.axvline(by["all"]["equal"], color="0.3", lw=1.0, label=f"all: {by['all']['equal']}")
  total = max(r["n"] for r in rows)
  bx.set(yticks=y, yticklabels=names, ylim=(-0.7, len(names) - 0.3),
         xlim=(-0.02 * max(r["equal"] for r in rows) - 1, None),
         xlabel=f"bitwise-equal n (of {total} swept)", title="(b) how many n are equal")
  bx.legend(fontsize=7)
  suptitle(fig, title)
  return save(fig, path)
