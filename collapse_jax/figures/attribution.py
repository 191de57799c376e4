"""The attribution figures (issue 26): ``onsets_figure`` (experiments.attribution) and
``rope_shift_figure`` (experiments.rope_shift)."""
from __future__ import annotations

import numpy as np

from collapse_jax.plotting import dtype_style, log_x, log_y, save, subplots, suptitle

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


def rope_shift_figure(cells, path: str | None, title: str):
  """Two panels over the cells of experiments.rope_shift (one per policy and N: 'policy', 'N',
  'rows' [{'shift', 'D' [samples], 'first_share' [samples]}]): (a) D(X, 0, Δ) against N for
  the largest shift, one line per policy (its preset's colour; float64 angles dashed), the
  samples' range shaded; (b) the first token's share of |Δ logits| against N, same lines,
  with 1/N's share of the pairs as a grey reference (a column with no special weight)."""
  fig, axes = subplots(1, 2, figsize=(12.5, 4.6))
  ax, bx = axes[0]
  by: dict = {}
  for c in cells:
    by.setdefault(c["policy"], []).append(c)
  shift = max(r["shift"] for c in cells for r in c["rows"])
  Ns = sorted({c["N"] for c in cells})
  for name, cs in by.items():
    cs = sorted(cs, key=lambda c: c["N"])
    base = name.removesuffix("+f64_angles")
    st = {**dtype_style(base), "ls": "--" if name != base else "-", "lw": 1.4}
    rows = [next(r for r in c["rows"] if r["shift"] == shift) for c in cs]
    n = [c["N"] for c in cs]
    D = np.asarray([r["D"] for r in rows], np.float64)
    ax.plot(n, D.mean(1), marker="o", ms=4, label=name, **st)
    ax.fill_between(n, D.min(1), D.max(1), color=st["color"], alpha=0.15, lw=0)
    bx.plot(n, [np.mean(r["first_share"]) for r in rows], marker="o", ms=4, label=name, **st)
  bx.plot(Ns, [2.0 / (N + 1) for N in Ns], color="0.5", lw=1.0, ls=":",
          label="column 0's share of the pairs, 2/(N+1)")
  ax.set(xlabel="N (tokens)", ylabel=f"D(X, 0, {shift}): sum over layers, heads of mean |Δs|",
         title=f"(a) logit change under a shift of {shift}")
  log_x(ax)
  log_y(ax)
  ax.legend(fontsize=7)
  bx.set(xlabel="N (tokens)", ylabel="first token's share of sum |Δs|",
         title="(b) how much of it is the first token's")
  log_x(bx)
  bx.legend(fontsize=7)
  suptitle(fig, title)
  return save(fig, path)
