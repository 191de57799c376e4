"""Figures of real-model collapse (experiments.real_model_collapse, compact records):
``figure5`` (the paper's Figure 5), ``layers_figure``, ``windows_figure``; ``write_all``
writes the ones a run draws."""
from __future__ import annotations

import os

import numpy as np
from matplotlib import ticker

from collapse_jax.plotting import (dtype_style, equal_ticks, log_y, positive_for_log, save,
                                   subplots, suptitle, wrap)


def figure5(runs, settings: dict, path: str | None, caption: str):
  """The paper's Figure 5 from compact real-model records (``records.compact``; 'pairs' names
  the setting in ``settings``): top, the last layer's per-head distance (mean over heads,
  min/max band); bottom, the final normalised output y; one style per dtype, equal n as
  ticks on the floor line."""
  keys = [k for k in settings if any(r["pairs"] == k for r in runs)]
  fig, axes = subplots(2, len(keys), figsize=(5.2 * len(keys), 8.6))
  vals = np.concatenate([np.asarray(r["last_layer_heads"]["linf_min"], np.float64) for r in runs]
                        + [np.asarray(r["y"]["linf"], np.float64) for r in runs])
  _, floor = positive_for_log(vals)
  for col, k in enumerate(keys):
    s = settings[k]
    for row, what in enumerate(("heads", "y")):
      ax = axes[row, col]
      for r in (r for r in runs if r["pairs"] == k):
        style = dtype_style(r["dtype"])
        n = np.asarray(r["lengths"])
        part = r["last_layer_heads"] if what == "heads" else r["y"]
        mean = np.asarray(part["linf_mean" if what == "heads" else "linf"], np.float64)
        equal = np.isin(n, part["all_heads_equal_n" if what == "heads" else "equal_n"])
        if what == "heads":
          lo, hi = (np.asarray(part[q], np.float64) for q in ("linf_min", "linf_max"))
          ax.fill_between(n, np.where(lo > 0, lo, floor), np.where(hi > 0, hi, floor),
                          color=style["color"], alpha=0.15, lw=0)
        onset = int(n[equal][0]) if equal.any() else -1
        label = (f"{r['dtype']} seed {r['seed']}" if r["pairs"] == "b" else r["dtype"]) + (
            f": equal at {equal.sum()} n, first n={onset}" if onset > 0 else ": never bitwise equal")
        if part["nonfinite_n"]:
          label += f"; NaN/inf at {part['nonfinite_n']} n"
        ax.plot(n, np.where(mean > 0, mean, np.nan), label=label, **style)
        equal_ticks(ax, n, equal, floor, style["color"], ms=9)
      ax.axhline(floor, color="0.6", lw=0.6, ls="--")
      log_y(ax)
      ax.set_xlabel("n (digit tokens in A_n)")
      ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
      ax.grid(True, which="both", alpha=0.25)
      ax.legend(fontsize=6.5, loc="best")
      ax.set_title(wrap(fig, f"{s.title}\n{s.pair}", fontsize=8, width=0.9 / len(keys))
                   if row == 0 else f"{s.title}: final normalised output y", fontsize=8)
  axes[0, 0].set_ylabel(r"$\|v^{(L)}_n - v^{*(L)}_{n+1}\|_\infty$ last-layer heads" "\n"
                        "(mean over heads, band min/max; ticks: all heads bitwise equal)")
  axes[1, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (ticks: bitwise equal)")
  suptitle(fig, caption, fontsize=8.5)
  return save(fig, path)


def layers_figure(runs, settings: dict, path: str | None, caption: str):
  """Every residual layer of compact real-model records: log10 ||v_n^(l) - v*_{n+1}^(l)||_inf
  as a heat map over (n, layer), one panel per (dtype, setting); red cells are bitwise equal
  or non-finite (results.json tells which)."""
  keys = [k for k in settings if any(r["pairs"] == k for r in runs)]
  rows = list(dict.fromkeys((r["dtype"], r["seed"]) for r in runs))
  fig, axes = subplots(len(rows), len(keys), figsize=(4.6 * len(keys), 2.6 * len(rows)))
  for i, (dt, seed) in enumerate(rows):
    for j, k in enumerate(keys):
      ax = axes[i, j]
      r = next((r for r in runs if r["pairs"] == k and r["dtype"] == dt and r["seed"] == seed),
               None)
      if r is None:
        ax.axis("off")
        continue
      grid = np.stack([np.asarray(l["linf"], np.float64) for l in r["layers"]])
      with np.errstate(divide="ignore", invalid="ignore"):
        img = np.log10(grid)  # -inf: bitwise equal, nan: non-finite
      n = np.asarray(r["lengths"])
      im = ax.imshow(np.where(np.isfinite(img), img, np.nan), aspect="auto", origin="lower",
                     cmap="viridis", extent=(n[0] - 0.5, n[-1] + 0.5, -0.5, len(r["layers"]) - 0.5))
      ax.set_facecolor("red")  # non-finite and equal cells are blank: red = NaN/inf or equal
      fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
      ax.set_title(f"{settings[k].title} | {dt}" + (f" seed {seed}" if k == "b" else ""),
                   fontsize=7.5)
      ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
      ax.set_xlabel("n", fontsize=7)
      ax.set_ylabel("layer l (0 = embedding)", fontsize=7)
  suptitle(fig, caption + "\ncolour: log10 ||v_n^(l) - v*_{n+1}^(l)||_inf of the residual stream; "
           "red = bitwise equal or non-finite (see results.json)", fontsize=8)
  return save(fig, path)


def windows_figure(runs, settings: dict, windows, window_sizes, path: str | None, caption: str):
  """The sliding-window mitigation: for each (dtype, setting) panel, the distance of the
  final normalised output y (solid) and of the last layer's heads (mean over heads, dotted)
  against n, one colour per window mode (``windows``: 'native', 'global', a size), with its
  bitwise-equal n as ticks on the floor line; a dash-dot vertical line where A_n becomes longer
  than a window of ``window_sizes``."""
  keys = [k for k in settings if any(r["pairs"] == k for r in runs)]
  dts = list(dict.fromkeys(r["dtype"] for r in runs))
  fig, axes = subplots(len(dts), len(keys), figsize=(5.0 * len(keys), 3.6 * len(dts)))
  vals = np.concatenate([np.asarray(r["y"]["linf"], np.float64) for r in runs]
                        + [np.asarray(r["last_layer_heads"]["linf_mean"], np.float64) for r in runs])
  _, floor = positive_for_log(vals)
  colors = {w: f"C{i}" for i, w in enumerate(windows)}
  for i, dt in enumerate(dts):
    for j, k in enumerate(keys):
      ax = axes[i, j]
      for w in windows:
        for r in (r for r in runs if r["pairs"] == k and r["dtype"] == dt and r["window"] == w
                  and r["seed"] == runs[0]["seed"]):  # (b): the first digit seed
          n = np.asarray(r["lengths"])
          y = np.asarray(r["y"]["linf"], np.float64)
          heads = np.asarray(r["last_layer_heads"]["linf_mean"], np.float64)
          equal = np.isin(n, r["y"]["equal_n"])
          label = f"{w}: y " + (f"equal at {equal.sum()} n, first n={int(n[equal][0])}"
                                if equal.any() else "never bitwise equal")
          if r["y"]["nonfinite_n"]:
            label += f"; NaN/inf at {r['y']['nonfinite_n']} n"
          ax.plot(n, np.where(y > 0, y, np.nan), color=colors[w], lw=1.1, label=label)
          ax.plot(n, np.where(heads > 0, heads, np.nan), color=colors[w], lw=0.8, ls=":")
          equal_ticks(ax, n, equal, floor, colors[w], ms=7)
      shown = [r for r in runs if r["pairs"] == k and r["dtype"] == dt]
      if shown and all(r["y"]["nonfinite_n"] == len(r["lengths"]) for r in shown):
        first = min(r["nonfinite"]["first_layer_with_nonfinite"] for r in shown)
        ax.text(0.5, 0.5, f"y non-finite at every n in every mode\n(overflow: first non-finite "
                f"residual at layer {first}; never counted as equal)", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="C3")
        ax.set_xlim(shown[0]["lengths"][0], shown[0]["lengths"][-1])
      ns = np.asarray((shown or runs)[0]["lengths"])  # this setting's n (a thinned grid: fewer)
      a_len = settings[k].lengths_ab(ns)[0]
      for size in window_sizes:
        past = np.nonzero(a_len > size)[0]
        if past.size:
          ax.axvline(ns[past[0]], color="0.4", lw=0.7, ls="-.")
      ax.axhline(floor, color="0.6", lw=0.6, ls="--")
      log_y(ax)
      ax.grid(True, which="both", alpha=0.25)
      ax.legend(fontsize=6.5, loc="best")
      ax.set_title(f"{settings[k].title} | {dt}", fontsize=8)
      ax.set_xlabel("n (digit tokens in A_n); dash-dot line: A_n longer than the window",
                    fontsize=7)
  axes[0, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (solid), last-layer heads (dotted)")
  suptitle(fig, caption + "\nwindows: native = the model's local/global layers, global = no "
           "window, a size = every layer that window", fontsize=8)
  return save(fig, path)


def write_all(runs, settings: dict, windows, window_sizes, out: str, caption: str) -> list[str]:
  """real_model_collapse's figures in ``out``: :func:`figure5` and :func:`layers_figure` of
  the first window mode's runs, and with several modes :func:`windows_figure`. Returns the
  file names written."""
  first = [r for r in runs if r["window"] == windows[0]]
  files = ["real_model_collapse.png", "real_model_collapse_layers.png"]
  figure5(first, settings, os.path.join(out, files[0]), caption)
  layers_figure(first, settings, os.path.join(out, files[1]), caption)
  if len(windows) > 1:
    files.append("real_model_collapse_windows.png")
    windows_figure(runs, settings, windows, window_sizes, os.path.join(out, files[2]), caption)
  return files
