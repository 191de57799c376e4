"""Figures of the precision sweep and its diagnostics: ``collapse_plot``
(experiments.precision_sweep), ``isa_heatmap`` (isa_probe), ``floor_figure`` (bf16_floor),
``synthetic_figure`` (synthetic_collapse)."""
from __future__ import annotations

import numpy as np
from matplotlib import lines

from collapse_jax.plotting import (DTYPE_COLORS, LEVEL_STYLE, REFERENCE_STYLE, dtype_style,
                                   equal_ticks, half_ulp, log_x, log_y, positive_for_log, save,
                                   subplots, suptitle)


TICK_ROW = 2.2  # collapse_plot: each dtype's equal-ticks one row (this factor) lower


def _seed_mean(rs, key):
  """(lengths [S], seed-mean of r[key] [S]) of records that share their lengths."""
  return np.asarray(rs[0]["lengths"]), np.mean([np.asarray(r[key], np.float64) for r in rs], 0)


def collapse_plot(records, path: str | None, title: str, key: str = "linf", reference=None):
  """Distance ``key`` vs n (log-log), one panel per head count, one style per dtype (seed
  mean; ``dtype_style``). Bitwise-equal pairs (distance exactly 0 in every seed) leave a gap in
  the curve and a tick on the floor line at the bottom; the first of them is a dot.
  With several dtypes, each one's ticks form their own row, the first on the floor line.
  Why a curve floors: each dtype's ulp(max|y_n|)/2 at the measured magnitude (records'
  'absmax' [S]) is a thin dotted line of its colour, where it falls inside the data's range;
  ``reference`` (float64 records of the same run: 'heads', 'seed', 'lengths', key) adds the
  seed-mean float64 distance per panel as a thick grey line."""
  groups: dict = {}
  for r in records:
    groups.setdefault((r["heads"], r["dtype"]), []).append(r)
  refs: dict = {}
  for r in reference or ():
    refs.setdefault(r["heads"], []).append(r)
  heads = sorted({h for h, _ in groups})
  vals = np.concatenate([np.asarray(r[key], np.float64) for r in [*records, *(reference or ())]])
  _, floor = positive_for_log(vals)
  top = float(np.nanmax(np.where(np.isfinite(vals), vals, np.nan), initial=floor))
  # one row of equal-ticks per dtype that has any, below the floor
  rows = max(1, len({d for (_, d), rs in groups.items()
                     if any(np.any(r["bitwise_equal"]) for r in rs)}))
  fig, axes = subplots(1, len(heads), figsize=(6.0 * len(heads), 4.8 + 0.13 * (rows + 2)),
                       sharey=True)
  for ax, h in zip(axes[0], heads):
    handles, row = [], 0
    if h in refs:
      n, y = _seed_mean(refs[h], key)
      handles += ax.plot(n, np.where(y > 0, y, np.nan), label="float64 reference",
                         **REFERENCE_STYLE)
    levels = False
    for (hh, dtype), rs in groups.items():
      if hh != h:
        continue
      style = dtype_style(dtype)
      n, y = _seed_mean(rs, key)
      equal = np.all([np.asarray(r["bitwise_equal"], bool) for r in rs], axis=0)
      onset = int(n[equal][0]) if equal.any() else -1  # the first n every seed is equal at
      label = dtype + (f" (equal at {equal.sum()} n, first n={onset})" if onset > 0
                       else " (never equal)")
      handles += ax.plot(n, np.where(y > 0, y, np.nan), alpha=0.9, label=label, **style)
      level = half_ulp(_seed_mean(rs, "absmax")[1], dtype) if "absmax" in rs[0] else None
      if level is not None and level.max() > floor:  # below the data: left out, not squashed
        ax.plot(n, level, color=style["color"], zorder=style["zorder"], **LEVEL_STYLE)
        top, levels = max(top, float(level.max())), True
      if equal.any():
        equal_ticks(ax, n, equal, floor / TICK_ROW ** row, style["color"], onset=onset)
        row += 1
    if levels:
      handles.append(lines.Line2D([], [], color="0.3", label="ulp(max|y|)/2 (dtype's colour)",
                                  **LEVEL_STYLE))
    ax.axhline(floor, color="0.6", lw=0.6, ls="--")
    ax.set_ylim(floor / TICK_ROW ** rows / 1.3, top * 1.6)
    log_x(ax)
    log_y(ax)
    ax.set_xlabel("sequence length n")
    ax.set_title(f"H={h}", fontsize=9)
    ax.legend(handles=handles, fontsize=6.5, ncol=2, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.grid(True, which="both", alpha=0.25)
  axes[0, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$  (ticks at bottom: bitwise equal)")
  suptitle(fig, title)
  return save(fig, path)


def isa_heatmap(fractions: dict, settings, path: str | None, title: str):
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


def floor_figure(stages: dict, records, path: str | None, title: str, octaves=None):
  """Left: coordinates of each stage whose stored bits differ between rows n-1 and n
  (``diagnosis.stage_differences`` per dtype: {dtype: result}), one line per (dtype, n).
  Middle: ||y_n - y*_{n+1}||_inf vs n for sweep ``records``, one colour per dtype, with
  bitwise-equal n on the floor line. Right (with ``octaves``, {dtype: diagnosis.octaves
  rows with measured/attention/output}): the fraction of n bitwise equal per octave,
  measured, between the two rounding models' predictions (a shaded band)."""
  fig, axes = subplots(1, 3 if octaves else 2, figsize=(18.0 if octaves else 12.0, 4.6))
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
    equal_ticks(ax, n, r["bitwise_equal"], floor, line.get_color())
  ax.axhline(floor, color="0.6", lw=0.6, ls="--")
  log_x(ax)
  log_y(ax)
  ax.set_xlabel("sequence length n")
  ax.set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$")
  ax.legend(fontsize=7)
  ax.grid(True, which="both", alpha=0.25)
  for dtype, rows in (octaves or {}).items():
    ax = axes[0, 2]
    mid = np.sqrt([r["lo"] * r["hi"] for r in rows])
    color = DTYPE_COLORS.get(dtype)
    ax.fill_between(mid, [r["attention"] for r in rows], [r["output"] for r in rows],
                    color=color, alpha=0.2, label=f"{dtype}: float64 rounding models")
    ax.plot(mid, [r["measured"] for r in rows], "o-", color=color, lw=1.2, ms=4,
            label=f"{dtype}: measured")
    log_x(ax)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sequence length n (octave midpoints)")
    ax.set_ylabel("fraction of n with y bitwise equal")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
  suptitle(fig, title)
  return save(fig, path)


def synthetic_figure(by_pe: dict, path: str | None, title: str):
  """Figures 8/10 (``sweep.synthetic_collapse_grid`` records per PE). Top: the last token's
  attention-output distance vs n per dtype (seed mean; equal n as ticks on the floor).
  Bottom: predicted vs measured onset per dtype (-1: never)."""
  pes = list(by_pe)
  fig, axes = subplots(2, len(pes), figsize=(4.6 * len(pes), 8.0))
  for j, pe in enumerate(pes):
    ax, axp, recs = axes[0, j], axes[1, j], by_pe[pe]
    floor = positive_for_log(np.concatenate([np.asarray(r["attn_linf"]) for r in recs]))[1]
    for dtype in dict.fromkeys(r["dtype"] for r in recs):
      rs = [r for r in recs if r["dtype"] == dtype]
      style = dtype_style(dtype)
      n, y = _seed_mean(rs, "attn_linf")
      ax.plot(n, np.where(y > 0, y, np.nan), label=dtype, **style)
      equal_ticks(ax, n, np.all([np.asarray(r["attn_equal"], bool) for r in rs], 0), floor,
                  style["color"])
      if dtype != "float64":
        axp.scatter([r["predicted_onset"] for r in rs], [r["attn_onset"] for r in rs],
                    color=style["color"], label=dtype, s=30)
    ax.set(xlabel="n", title=f"PE: {pe}")
    ax.axhline(floor, color="0.6", ls="--", lw=0.6)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    log_x(ax)
    log_y(ax)
    lim = max(2, int(max(max(r["lengths"]) for r in recs)))
    axp.plot([1, lim], [1, lim], color="0.5", ls=":", lw=0.8, label="measured = predicted")
    axp.set(xlabel="predicted onset n (-1: never)", ylabel="measured collapse onset n (-1: never)",
            xscale="symlog", yscale="symlog", title=f"{pe}: predicted vs measured")
    axp.legend(fontsize=7)
  axes[0, 0].set_ylabel(r"$\|\sum_j\alpha_{nj}v_j - \sum_j\alpha^*_{n+1,j}v_j\|_\infty$"
                        " (ticks: bitwise equal)")
  suptitle(fig, title)
  return save(fig, path)
