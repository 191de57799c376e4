"""Figures of the paper's theory (collapse_jax/theory/): ``softmax_lemmas_figure``,
``oversquashing_figure``, ``counting_figure``."""
from __future__ import annotations

import numpy as np

from collapse_jax.plotting import (dtype_style, equal_ticks, log_x, log_y, positive_for_log, save,
                                   subplots)


def softmax_lemmas_figure(b1: dict, b2: dict, b4: dict, path: str | None):
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
  ax.set(xlabel="sequence length n",
         ylabel=r"$\delta(\mathrm{softmax}(x), \mathrm{softmax}(x^*))$ (L1)",
         title=f"Fig. 9 / Lemma B.2 (k={b2['k']}; |: all seeds exactly 0, at {floor:g})")
  ax = axes[0, 1]
  ax.plot(b4["n"], b4["tv_float64"], "o-", color="C0", ms=3, label="B.4 alternating, float64")
  for p in precs:
    y, _ = positive_for_log(b4["tv_by_precision"][p], floor)
    ax.plot(b4["n"], y, marker=".", alpha=0.9, label=f"B.4 {p}", **dtype_style(p))
  ax.axhline(b4["limit"], color="k", ls="--", lw=1, label="2(e-1)/(e+1) = 0.9242")
  ax.plot(ns, mean64, "s-", color="C7", ms=3, label="B.2 decay, float64 mean")
  ax.set(xlabel="sequence length n (even)", ylabel="L1 distance",
         title="Lemma B.4 (no decay) vs Lemma B.2 (decay)")
  ax = axes[0, 2]
  ax.plot(b1["n"], b1["gap"], "o-", color="C0", ms=3, label="float64 (numpy)")
  ax.plot(b1["n"], b1["gap_closed_form"], "k--", lw=1, label=r"$e^{b+c}/(S(S+e^b))$")
  for p in precs:
    g = b1["gap_by_precision"][p]
    y, _ = positive_for_log(np.abs(g), 1e-12)
    ax.plot(b1["n"], y, marker=".", alpha=0.9, label=p, gid=f"series:{p}", **dtype_style(p))
    ax.plot(b1["n"][g < 0], y[g < 0], "x", color=dtype_style(p)["color"], ms=8,
            gid=f"marks:{p}")
  ax.set(xlabel="n (length of x; x* has n+1)",
         ylabel=r"softmax$(x)_n$ - softmax$(x^*)_{n+1}$",
         title=f"Lemma B.1 (b={b1['b']}, c={b1['c']}; zeros at 1e-12, x: gap < 0)")
  for ax in axes[0]:
    log_x(ax)
    log_y(ax)
    ax.legend(fontsize=7)
  return save(fig, path)


def oversquashing_figure(sens: dict, spectral: dict, depths: dict, path: str | None, *,
                         title: str, tol: float):
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
  ax.set(xlabel="input position i",
         ylabel=r"$\|\partial y_n / \partial v_i^{(0)}\|_2$", title=title)
  log_y(ax)
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
  log_y(ax)
  ax.legend(fontsize=6)
  ax = axes[0, 2]
  ax.plot(depths["n"], depths["uniform"], "o-", label="uniform causal")
  ax.plot(depths["n"], depths["random"], "s-", label="random causal (N(0,1) scores)")
  log_x(ax)
  ax.set(xlabel="n", ylabel=f"layers L to reach error < {tol:g}",
         title="Convergence depth vs sequence length")
  ax.legend(fontsize=7)
  return save(fig, path)


def counting_figure(b9: dict, b10: dict, path: str | None, *, base: str):
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
  ax.set(xlabel="depth (residual stream v^(l), final output y)",
         ylabel="max |rep(expanded) - rep(base)| / max |rep(base)|",
         title=f"Prop. B.9: '{base}' vs x{mults} (— blocks, -- tiled; {floor:g} = bitwise equal)")
  log_y(ax)
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
  ax.set(xlabel="n (sequence [BOS, a x (n-1)])",
         ylabel=r"$\|y_n - y_{n+1}\|_\infty$ (last token)",
         title="Cor. B.10: counts n-1 vs n (| at 1e-6: bitwise equal; : first confirmed)")
  log_x(ax)
  log_y(ax)
  ax.legend(fontsize=7)
  return save(fig, path)
