"""matplotlib figures shared by the experiments: every figure an experiment writes is a
named function here, drawn from the experiment's results.

Conventions shared by all figures:
  * each precision has one colour and one line style (``dtype_style``): float64 thick and
    solid underneath, the others thinner and broken on top, so curves that coincide stay
    visible;
  * a distance that is exactly 0 (a bitwise-equal pair) cannot sit on a log axis: it is
    drawn at a floor line at the bottom, with a '|' tick per equal n and a dot at the first
    one (``equal_ticks``);
  * log x axes label whole decades only (``log_x``), so tick labels never overlap.

The backend is left to matplotlib (it falls back to a headless one when there is no
display), so importing this module inside a notebook does not switch the user's backend.
Figures are closed after saving."""
from __future__ import annotations

import os
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import lines, ticker

from collapse_jax import metrics, precision


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
# Width, dash and z-order per dtype: float64/float32/float16 often coincide, so float64 is a
# thick solid line underneath, float32 dashed and float16 dotted on top of it.
DTYPE_STYLES = {"float64": {"ls": "-", "lw": 3.0, "zorder": 2},
                "float32": {"ls": "--", "lw": 1.8, "zorder": 3},
                "float16": {"ls": ":", "lw": 2.0, "zorder": 4},
                "bfloat16": {"ls": "-", "lw": 1.1, "zorder": 5},
                "bfloat16_pure": {"ls": "-.", "lw": 1.1, "zorder": 5},
                "float8_e4m3fn": {"ls": "-", "lw": 0.8, "zorder": 6},
                "float8_e5m2": {"ls": (0, (4, 1, 1, 1)), "lw": 0.8, "zorder": 6}}
REFERENCE_STYLE = {"color": "0.6", "ls": "-", "lw": 5.0, "alpha": 0.55, "zorder": 1}
LEVEL_STYLE = {"ls": (0, (1, 2)), "lw": 0.9}  # half-ulp levels, in the dtype's colour
TICK_ROW = 2.2  # collapse_plot: each dtype's equal-ticks one row (this factor) lower


def dtype_style(name: str) -> dict:
  """plot() keywords (color, ls, lw, zorder) of a precision preset; '_scaled' fp8 variants
  share their preset's style, unknown names get a thin solid line in the next colour."""
  base = name.removesuffix("_scaled")
  return {"color": DTYPE_COLORS.get(base), **DTYPE_STYLES.get(base, {"ls": "-", "lw": 1.0,
                                                                    "zorder": 5})}


def half_ulp(absmax, name: str) -> np.ndarray | None:
  """ulp(|y|)/2 in the storage dtype of preset ``name`` at magnitudes ``absmax`` [...]: two
  values closer than this round to the same stored number. None for an unknown preset."""
  base = name.removesuffix("_scaled")
  if base not in precision.PRESETS:
    return None
  return np.asarray(metrics.half_ulp(np.asarray(absmax, np.float64),
                                     precision.get_policy(base).storage_dtype), np.float64)


def log_x(ax) -> None:
  """Log x axis with few labels that never overlap; call it after plotting. A range of 30x
  or more is labelled at whole decades only (10^k); a shorter one, which may hold no decade
  at all, at 1-2-5 (or every integer multiple below 3x) in plain numbers. No minor labels."""
  ax.set_xscale("log")
  lo, hi = ax.get_xlim()
  if hi / lo >= 30:
    major = ticker.LogLocator(base=10, numticks=8)
    ax.xaxis.set_major_formatter(ticker.LogFormatterSciNotation(base=10))
  else:
    major = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo >= 3 else np.arange(1, 10))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_major_locator(major)
  ax.xaxis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def equal_ticks(ax, n, equal, floor: float, color, *, ms: float = 8, onset=None) -> None:
  """Bitwise-equal n (``equal`` bool [S] over ``n`` [S]) as '|' ticks on the floor line
  at y = ``floor``, and the first one (``onset`` > 0, e.g. the collapse onset) as a dot."""
  n, equal = np.asarray(n), np.asarray(equal, bool)
  if equal.any():
    ax.plot(n[equal], np.full(equal.sum(), floor), "|", color=color, ms=ms, zorder=7)
  if onset is not None and onset > 0:
    ax.plot([onset], [floor], "o", color=color, ms=6, zorder=7)


def _seed_mean(rs, key):
  """(lengths [S], seed-mean of r[key] [S]) of records that share their lengths."""
  return np.asarray(rs[0]["lengths"]), np.mean([np.asarray(r[key], np.float64) for r in rs], 0)


def collapse_plot(records, path: str, title: str, key: str = "linf", reference=None) -> str:
  """Distance ``key`` vs n (log-log), one panel per head count, one style per dtype (seed
  mean; ``dtype_style``). Bitwise-equal pairs (distance exactly 0) leave a gap in the curve
  and a tick on the floor line at the bottom; the first equal n (collapse onset) is a dot.
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
      onset = min((r["collapse_onset"] for r in rs if r["collapse_onset"] > 0), default=-1)
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
    log_x(ax)
    ax.set_yscale("log")
    ax.set_ylim(floor / TICK_ROW ** rows / 1.3, top * 1.6)
    ax.set_xlabel("sequence length n")
    ax.set_title(f"H={h}", fontsize=9)
    ax.legend(handles=handles, fontsize=6.5, ncol=2, loc="upper center",
              bbox_to_anchor=(0.5, -0.14), frameon=False)
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


def floor_figure(stages: dict, records, path: str, title: str, octaves=None) -> str:
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
  ax.set_yscale("log")
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
  fig.suptitle(title, fontsize=10)
  return save(fig, path)


def softmax_lemmas_figure(b1: dict, b2: dict, b4: dict, path: str) -> str:
  """experiments.softmax_lemmas (``theory.softmax`` sweeps). (a) Figure 9 / Lemma B.2:
  float64 mean with the min/max band over seeds, the mean-field estimate, and each
  precision's seed mean (exact zeros on the floor line); (b) Lemma B.4's constant distance
  next to B.2's decay; (c) Lemma B.1's gap vs its closed form (x: a negative gap)."""
  precs = list(b1["gap_by_precision"])
  ns = np.asarray(b2["n"])
  mean64 = b2["tv_float64"].mean(1)
  floor = 1e-7 if ns.max() <= 1e5 else None
  fig, axes = subplots(1, 3)
  ax = axes[0, 0]
  ax.fill_between(ns, b2["tv_float64"].min(1), b2["tv_float64"].max(1), color="C0", alpha=0.25,
                  label="float64 min/max over seeds")
  ax.plot(ns, mean64, "o-", color="C0", ms=3, label="float64 mean (numpy)")
  ax.plot(ns, b2["mean_field"], "k--", lw=1, label="mean-field estimate")
  for p in precs:
    tv = b2["tv_by_precision"][p]
    y, floor = positive_for_log(tv.mean(1), floor)
    ax.plot(ns, y, marker=".", alpha=0.9, label=p, **dtype_style(p))
    equal_ticks(ax, ns, np.all(tv == 0, axis=1), floor, dtype_style(p)["color"],
                onset=b2["first_zero_by_precision"][p])
  ax.axhline(floor, color="gray", lw=0.5, ls=":")
  ax.set(yscale="log", xlabel="sequence length n",
         ylabel=r"$\delta(\mathrm{softmax}(x), \mathrm{softmax}(x^*))$ (L1)",
         title=f"Fig. 9 / Lemma B.2 (k={b2['k']}; |: all seeds exactly 0, at {floor:g})")
  ax = axes[0, 1]
  ax.plot(b4["n"], b4["tv_float64"], "o-", color="C0", ms=3, label="B.4 alternating, float64")
  for p in precs:
    y, _ = positive_for_log(b4["tv_by_precision"][p], floor)
    ax.plot(b4["n"], y, marker=".", alpha=0.9, label=f"B.4 {p}", **dtype_style(p))
  ax.axhline(b4["limit"], color="k", ls="--", lw=1, label="2(e-1)/(e+1) = 0.9242")
  ax.plot(ns, mean64, "s-", color="C7", ms=3, label="B.2 decay, float64 mean")
  ax.set(yscale="log", xlabel="sequence length n (even)", ylabel="L1 distance",
         title="Lemma B.4 (no decay) vs Lemma B.2 (decay)")
  ax = axes[0, 2]
  ax.plot(b1["n"], b1["gap"], "o-", color="C0", ms=3, label="float64 (numpy)")
  ax.plot(b1["n"], b1["gap_closed_form"], "k--", lw=1, label=r"$e^{b+c}/(S(S+e^b))$")
  for p in precs:
    g = b1["gap_by_precision"][p]
    y, _ = positive_for_log(np.abs(g), 1e-12)
    ax.plot(b1["n"], y, marker=".", alpha=0.9, label=p, **dtype_style(p))
    ax.plot(b1["n"][g < 0], y[g < 0], "x", color=dtype_style(p)["color"], ms=8)
  ax.set(yscale="log", xlabel="n (length of x; x* has n+1)",
         ylabel=r"softmax$(x)_n$ - softmax$(x^*)_{n+1}$",
         title=f"Lemma B.1 (b={b1['b']}, c={b1['c']}; zeros at 1e-12, x: gap < 0)")
  for ax in axes[0]:
    log_x(ax)
    ax.legend(fontsize=7)
  return save(fig, path)


def oversquashing_figure(sens: dict, spectral: dict, depths: dict, path: str, *,
                         title: str, tol: float) -> str:
  """experiments.oversquashing. (a) ||d y_n / d v_i^(0)|| per position (full and
  attention-frozen; ``theory.sensitivity.sensitivity_vs_bound``) under Theorem 5.1's bound
  and its per-position variant; (b) Prop. B.8: the last row's distance from its limit vs L
  per matrix (``spectral.convergence_curves``), dotted lambda_2^L; (c) layers needed to reach
  ``tol`` vs n (``spectral.convergence_depths``)."""
  fig, axes = subplots(1, 3)
  ax = axes[0, 0]
  b = sens["bound"]
  pos = np.arange(1, len(b["bound"]) + 1)
  ax.plot(pos, b["bound"], color="k", lw=1.2, label="Thm 5.1 bound (paper constants)")
  ax.plot(pos, b["bound_tight"], color="gray", lw=1, ls="--", label="bound, per-position factors")
  ax.plot(pos, sens["frozen"]["spectral"], color="C1", lw=0.8,
          label="sensitivity, attention frozen")
  ax.plot(pos, sens["full"]["spectral"], color="C0", lw=0.8, alpha=0.8,
          label="sensitivity, full gradient")
  ax.set(yscale="log", xlabel="input position i",
         ylabel=r"$\|\partial y_n / \partial v_i^{(0)}\|_2$", title=title)
  ax.legend(fontsize=7)
  ax = axes[0, 1]
  for i, (key, r) in enumerate(spectral.items()):
    y, _ = positive_for_log(r["err_last_row"], 1e-17)
    ax.plot(r["L"], y, color=f"C{i}", lw=1, label=f"{key} ($\\lambda_2$={r['lambda2']:.3f}, "
                                                   f"rate={r['rate']:.3f})")
    ax.plot(r["L"], r["lambda2"] ** np.asarray(r["L"], float), color=f"C{i}", lw=0.6, ls=":")
  ax.set(yscale="log", ylim=(1e-17, 2), xlabel="layers L",
         ylabel=r"$\max_i |((\Lambda+I)/2)^L_{n,i} - [i=1]|$",
         title=r"Prop. B.8: convergence to first column (dotted: $\lambda_2^L$)")
  ax.legend(fontsize=6)
  ax = axes[0, 2]
  ax.plot(depths["n"], depths["uniform"], "o-", label="uniform causal")
  ax.plot(depths["n"], depths["random"], "s-", label="random causal (N(0,1) scores)")
  log_x(ax)
  ax.set(xlabel="n", ylabel=f"layers L to reach error < {tol:g}",
         title="Convergence depth vs sequence length")
  ax.legend(fontsize=7)
  return save(fig, path)


def counting_figure(b9: dict, b10: dict, path: str, *, base: str) -> str:
  """experiments.counting. (a) Prop. B.9: max |rep(expanded) - rep(base)| / max |rep(base)|
  per depth for every ``theory.counting.b9_sweep`` key (solid: blocks, dashed: tiled; the
  first multiplier opaque; 0 = bitwise equal drawn at 1e-9); (b) Cor. B.10: the last-token
  distance of counts n-1 and n per precision (``counting_collapse``), the float64 reference,
  bitwise-equal n as ticks at 1e-6 and the first confirmed wrong count as a dotted line."""
  fig, axes = subplots(1, 2)
  ax = axes[0, 0]
  floor = 1e-9
  first_rows = next(iter(b9.values()))
  mults = sorted({r["multiplier"] for r in first_rows})
  for i, (k, rows) in enumerate(b9.items()):
    for r in rows:
      y, _ = positive_for_log(r["max_rel_diff"][1:], floor)
      x = np.arange(1, len(y) + 1) + 0.03 * i
      lab = f"{k} m={r['multiplier']}" if r["arrangement"] == "blocks" else None
      ax.plot(x, y, "-" if r["arrangement"] == "blocks" else "--", marker="o", ms=3, lw=0.8,
              color=f"C{i}", alpha=0.4 + 0.6 * (r["multiplier"] == mults[0]), label=lab)
  depth_names = first_rows[0]["depth"][1:]
  ax.set_xticks(np.arange(1, len(depth_names) + 1), depth_names)
  ax.axhline(floor, color="gray", lw=0.5, ls=":")
  ax.set(yscale="log", xlabel="depth (residual stream v^(l), final output y)",
         ylabel="max |rep(expanded) - rep(base)| / max |rep(base)|",
         title=f"Prop. B.9: '{base}' vs x{mults} (— blocks, -- tiled; {floor:g} = bitwise equal)")
  ax.legend(fontsize=6, ncol=2)
  ax = axes[0, 1]
  first = next(iter(b10.values()))
  if first.get("reference"):
    ax.plot(first["lengths"], first["reference_linf"], label=first["reference"],
            **dtype_style(first["reference"]))
  for i, (p, r) in enumerate(b10.items()):
    y, _ = positive_for_log(r["linf"], 1e-6)
    ax.plot(r["lengths"], y, alpha=0.9, label=p, **dtype_style(p))
    equal_ticks(ax, r["lengths"], r["equal"], 1e-6, dtype_style(p)["color"], ms=10 + 4 * i)
    if r["wrong_count"]:
      ax.axvline(r["wrong_count"]["n"], color=dtype_style(p)["color"], ls=":", lw=1)
  log_x(ax)
  ax.set(yscale="log", xlabel="n (sequence [BOS, a x (n-1)])",
         ylabel=r"$\|y_n - y_{n+1}\|_\infty$ (last token)",
         title="Cor. B.10: counts n-1 vs n (| at 1e-6: bitwise equal; : first confirmed)")
  ax.legend(fontsize=7)
  return save(fig, path)


def synthetic_figure(by_pe: dict, path: str, title: str) -> str:
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
    log_x(ax)
    ax.set(yscale="log", xlabel="n", title=f"PE: {pe}")
    ax.axhline(floor, color="0.6", ls="--", lw=0.6)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    lim = max(2, int(max(max(r["lengths"]) for r in recs)))
    axp.plot([1, lim], [1, lim], color="0.5", ls=":", lw=0.8, label="measured = predicted")
    axp.set(xlabel="predicted onset n (-1: never)", ylabel="measured collapse onset n (-1: never)",
            xscale="symlog", yscale="symlog", title=f"{pe}: predicted vs measured")
    axp.legend(fontsize=7)
  axes[0, 0].set_ylabel(r"$\|\sum_j\alpha_{nj}v_j - \sum_j\alpha^*_{n+1,j}v_j\|_\infty$"
                        " (ticks: bitwise equal)")
  fig.suptitle(title, fontsize=10)
  return save(fig, path)


def figure5(runs, settings: dict, path: str, caption: str) -> str:
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
      ax.set_yscale("log")
      ax.set_xlabel("n (digit tokens in A_n)")
      ax.xaxis.set_major_locator(ticker.MaxNLocator(6, integer=True))
      ax.grid(True, which="both", alpha=0.25)
      ax.legend(fontsize=6.5, loc="best")
      ax.set_title(f"{s.title}\n{s.pair}" if row == 0 else
                   f"{s.title}: final normalised output y", fontsize=8)
  axes[0, 0].set_ylabel(r"$\|v^{(L)}_n - v^{*(L)}_{n+1}\|_\infty$ last-layer heads" "\n"
                        "(mean over heads, band min/max; ticks: all heads bitwise equal)")
  axes[1, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (ticks: bitwise equal)")
  fig.suptitle(caption, fontsize=8.5)
  return save(fig, path)


def layers_figure(runs, settings: dict, path: str, caption: str) -> str:
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
  fig.suptitle(caption + "\ncolour: log10 ||v_n^(l) - v*_{n+1}^(l)||_inf of the residual stream; "
               "red = bitwise equal or non-finite (see results.json)", fontsize=8)
  return save(fig, path)


def windows_figure(runs, settings: dict, windows, window_sizes, path: str, caption: str) -> str:
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
        ax.set_xlim(runs[0]["lengths"][0], runs[0]["lengths"][-1])
      a_len = settings[k].lengths_ab(np.asarray(runs[0]["lengths"]))[0]
      for size in window_sizes:
        past = np.nonzero(a_len > size)[0]
        if past.size:
          ax.axvline(runs[0]["lengths"][past[0]], color="0.4", lw=0.7, ls="-.")
      ax.axhline(floor, color="0.6", lw=0.6, ls="--")
      ax.set_yscale("log")
      ax.grid(True, which="both", alpha=0.25)
      ax.legend(fontsize=6.5, loc="best")
      ax.set_title(f"{settings[k].title} | {dt}", fontsize=8)
      ax.set_xlabel("n (digit tokens in A_n); dash-dot line: A_n longer than the window",
                    fontsize=7)
  axes[0, 0].set_ylabel(r"$\|y_n - y^*_{n+1}\|_\infty$ (solid), last-layer heads (dotted)")
  fig.suptitle(textwrap.fill(caption, 60 * len(keys) + 20) + "\nwindows: native = the model's "
               "local/global layers, global = no window, a size = every layer that window",
               fontsize=8)
  return save(fig, path)


# -- the task harness (collapse_jax/harness.py) ----------------------------------------------

MODE_MARKERS = {"direct": "o", "cot_no_shot": "s", "cot_few_shot": "^"}


def _caption(fig, caption: str) -> None:
  fig.text(0.01, 0.005, "\n".join(textwrap.wrap(caption, 170)), fontsize=7, va="bottom")


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
  _caption(fig, caption)
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
  _caption(fig, caption)
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
  _caption(fig, caption)
  fig.subplots_adjust(bottom=0.16)
  return save(fig, path)


# -- training (collapse_jax/train.py) --------------------------------------------------------

TRAIN_COLORS = {"float32": "tab:blue", "bfloat16": "tab:orange", "bfloat16_weights": "tab:red"}
ONSET_MARKERS = ("v", "^", "s", "D", "P", "X", "*")


def train_figure(runs: dict, l_train: int, path: str, caption: str) -> str:
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
      equal_ticks(bx, counts, col["equal"], floor, c, onset=col["collapse_onset"])
    never = [pol for pol, col in run["collapse"].items() if col["collapse_onset"] <= 0]
    if never:
      top_c = max(int(np.max(col["counts"])) for col in run["collapse"].values())
      ax.plot([], [], ls="", label=f"{name}: no collapse for c <= {top_c} under "
              + ", ".join(never))
  ax.set(xlim=(0.8, top * 1.3), ylim=(-0.03, 1.08), xlabel="n (digits)",
         ylabel="accuracy (dotted: rows with count <= l_train)", title="(a) accuracy vs length")
  log_x(ax)
  ax.legend(fontsize=6.5, loc="center left")
  bx.set_yscale("log")
  bx.set(xlabel="c (ones)", ylabel="||y_c - y_(c+1)||_inf", title="(b) Cor. B.10 pairs "
         "[BOS, 1^c] vs [BOS, 1^(c+1)]")
  log_x(bx)
  bx.legend(fontsize=6.5, title="trained / measured in", title_fontsize=6.5)
  gx = cx.twinx()
  for name, run in runs.items():
    h, c = run["history"], TRAIN_COLORS.get(name)
    cx.plot(h["steps"], positive_for_log(h["loss"])[0], color=c, lw=1.2, label=f"{name} loss")
    gx.plot(h["steps"], h["grad_norm"], color=c, lw=0.5, alpha=0.6)
  cx.set_yscale("log")
  gx.set_yscale("log")
  cx.set(xlabel="step", ylabel="training loss (solid)", title="(c) loss and gradient norm")
  gx.set_ylabel("global gradient norm before clipping (thin)")
  cx.legend(fontsize=6.5)
  _caption(fig, caption)
  fig.subplots_adjust(bottom=0.16)
  return save(fig, path)
