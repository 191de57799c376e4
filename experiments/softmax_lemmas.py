"""Softmax lemmas of appendix B.1: Lemma B.1, Lemma B.2 (Figure 9) and Lemma B.4.

  python -m experiments.softmax_lemmas                 # n up to 1e4 (seconds)
  python -m experiments.softmax_lemmas --full          # paper scale: n up to 1e5

Writes <out>/results.json and <out>/softmax_lemmas.png:
  (a) Figure 9: L1 distance ("total variation", no 1/2) of softmax(x) and softmax(x*),
      x ~ U[0,1]^n, x* = x + U[0,0.1] on the first k=200 entries; float64 mean with the
      min/max band over 5 seeds, the mean-field estimate, and every precision's curve through
      the policy's softmax (exact zeros drawn at the floor, first all-zero n marked).
  (b) Lemma B.4: the alternating pair's distance stays at 2(e-1)/(e+1) while B.2's decays.
  (c) Lemma B.1: the last-token weight gap after inserting a token, vs its closed form.
"""
from __future__ import annotations

import os

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import plotting, precision, results, theory, xla_env

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "output directory (default runs/softmax_lemmas-<stamp>)")
flags.DEFINE_bool("full", False, "paper scale: n up to 1e5 and a denser grid")
flags.DEFINE_integer("max_n", None, "largest n (default 1e4, 1e5 with --full)")
flags.DEFINE_integer("num_n", None, "log-spaced lengths (default 13, 26 with --full)")
flags.DEFINE_integer("min_n", 10, "smallest n for B.2/B.4")
flags.DEFINE_integer("seeds", 5, "seeds for Lemma B.2 (min/max band)")
flags.DEFINE_integer("k", 200, "perturbed prefix length for Lemma B.2")
flags.DEFINE_float("noise", 0.1, "x* = x + U[0, noise] on the first k entries")
flags.DEFINE_float("b", 1.0, "Lemma B.1: inserted token value")
flags.DEFINE_float("c", 1.0, "Lemma B.1: last token value")
flags.DEFINE_list("precisions", ["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"],
                  "policies whose softmax is measured (float64 numpy is always the reference)")


def lengths(lo: int, hi: int, num: int, even: bool = False) -> list[int]:
  """Log-spaced integer lengths in [lo, hi], always including 1e3 and 1e4 when in range."""
  import numpy as np
  ns = set(np.unique(np.round(np.logspace(np.log10(lo), np.log10(hi), num)).astype(int)).tolist())
  ns |= {v for v in (1000, 10000, 100000) if lo <= v <= hi}
  if even:
    ns = {n + (n % 2) for n in ns}
  return sorted(ns)


def at(ns, values, n):
  return float(values[list(ns).index(n)]) if n in list(ns) else None


def main(argv):
  del argv
  xla_env.enable_x64()
  import numpy as np
  max_n = FLAGS.max_n or (100_000 if FLAGS.full else 10_000)
  num_n = FLAGS.num_n or (26 if FLAGS.full else 13)
  for p in FLAGS.precisions:
    precision.get_policy(p)
  out = results.make_run_dir(FLAGS.out, "softmax_lemmas")
  precs = list(FLAGS.precisions)

  ns2 = lengths(FLAGS.min_n, max_n, num_n)
  logging.info("Lemma B.2: %d lengths x %d seeds", len(ns2), FLAGS.seeds)
  b2 = theory.lemma_b2_sweep(ns2, range(FLAGS.seeds), k=FLAGS.k, noise=FLAGS.noise,
                             precisions=precs + ["float64"])
  ns4 = lengths(max(2, FLAGS.min_n), max_n, num_n, even=True)
  b4 = theory.lemma_b4_sweep(ns4, precisions=precs)
  ns1 = lengths(2, max_n, num_n)
  b1 = theory.lemma_b1_sweep(ns1, b=FLAGS.b, c=FLAGS.c, precisions=precs)

  mean64 = b2["tv_float64"].mean(axis=1)
  summary = {
      "b2_float64_mean_at_1e3": at(ns2, mean64, 1000),
      "b2_float64_mean_at_1e4": at(ns2, mean64, 10000),
      "b2_float64_mean_at_1e5": at(ns2, mean64, 100000),
      "b2_mean_field_at_1e3": theory.lemma_b2_mean_field(1000, FLAGS.k, FLAGS.noise),
      "b2_mean_field_at_1e4": theory.lemma_b2_mean_field(10000, FLAGS.k, FLAGS.noise),
      "b2_first_zero_by_precision": b2["first_zero_by_precision"],
      "b4_limit": theory.B4_LIMIT,
      "b4_max_abs_error_float64": float(b4["abs_error_float64"].max()),
      "b4_first_zero_by_precision": b4["first_zero_by_precision"],
      "b1_all_positive_float64": bool(np.all(b1["gap"] > 0)),
      "b1_strictly_decreasing_float64": bool(np.all(np.diff(b1["gap"]) < 0)),
      "b1_max_rel_error_vs_closed_form": float(np.max(np.abs(b1["gap"] / b1["gap_closed_form"] - 1))),
      "b1_first_zero_by_precision": b1["first_zero_by_precision"],
      "b1_negative_gap_count_by_precision": {
          p: int(np.sum(b1["gap_by_precision"][p] < 0)) for p in precs},
      "b1_underflow_first_n_by_precision": {
          p: theory.first_zero(ns1, b1["w_x_by_precision"][p]) for p in precs},
  }
  results.write_json(os.path.join(out, "results.json"), {
      "experiment": "softmax_lemmas", "paper": "Lemma B.1, Lemma B.2 (Fig. 9), Lemma B.4",
      "flags": {k: FLAGS[k].value for k in ("full", "min_n", "seeds", "k", "noise", "b", "c",
                                             "precisions")} | {"max_n": max_n, "num_n": num_n},
      "policies": {p: precision.get_policy(p).describe() for p in precs + ["float64"]},
      "environment": results.environment(), "summary": summary,
      "lemma_b1": b1, "lemma_b2": b2, "lemma_b4": b4})

  fig, axes = plotting.subplots(1, 3)
  colors = dict(zip(precs + ["float64"], [f"C{i}" for i in range(1, 10)]))
  ax = axes[0, 0]
  ns = np.array(ns2)
  floor = 1e-7 if max_n <= 1e5 else None
  ax.fill_between(ns, b2["tv_float64"].min(1), b2["tv_float64"].max(1), color="C0", alpha=0.25,
                  label="float64 min/max over seeds")
  ax.plot(ns, mean64, "o-", color="C0", ms=3, label="float64 mean (numpy)")
  ax.plot(ns, b2["mean_field"], "k--", lw=1, label="mean-field estimate")
  for p in precs:
    y, fl = plotting.positive_for_log(b2["tv_by_precision"][p].mean(1), floor)
    ax.plot(ns, y, ".-", color=colors[p], lw=0.8, label=p)
    nz = b2["first_zero_by_precision"][p]
    if nz is not None:
      ax.plot([nz], [fl], "v", color=colors[p], ms=9)
  ax.axhline(floor, color="gray", lw=0.5, ls=":")
  ax.set(xscale="log", yscale="log", xlabel="sequence length n",
         ylabel=r"$\delta(\mathrm{softmax}(x), \mathrm{softmax}(x^*))$ (L1)",
         title=f"Fig. 9 / Lemma B.2 (k={FLAGS.k}; zeros at {floor:g}, ▼ first all-zero n)")
  ax.legend(fontsize=7)

  ax = axes[0, 1]
  ax.plot(b4["n"], b4["tv_float64"], "o-", color="C0", ms=3, label="B.4 alternating, float64")
  for p in precs:
    y, fl = plotting.positive_for_log(b4["tv_by_precision"][p], floor)
    ax.plot(b4["n"], y, ".-", color=colors[p], lw=0.8, label=f"B.4 {p}")
  ax.axhline(theory.B4_LIMIT, color="k", ls="--", lw=1, label="2(e-1)/(e+1) = 0.9242")
  ax.plot(ns, mean64, "s-", color="C7", ms=3, label="B.2 decay, float64 mean")
  ax.set(xscale="log", yscale="log", xlabel="sequence length n (even)", ylabel="L1 distance",
         title="Lemma B.4 (no decay) vs Lemma B.2 (decay)")
  ax.legend(fontsize=7)

  ax = axes[0, 2]
  ax.plot(b1["n"], b1["gap"], "o-", color="C0", ms=3, label="float64 (numpy)")
  ax.plot(b1["n"], b1["gap_closed_form"], "k--", lw=1, label=r"$e^{b+c}/(S(S+e^b))$")
  for p in precs:
    g = b1["gap_by_precision"][p]
    y, fl = plotting.positive_for_log(np.abs(g), 1e-12)
    ax.plot(b1["n"], y, ".-", color=colors[p], lw=0.8, label=p)
    neg = g < 0
    if neg.any():
      ax.plot(b1["n"][neg], y[neg], "x", color=colors[p], ms=8)
  ax.set(xscale="log", yscale="log", xlabel="n (length of x; x* has n+1)",
         ylabel=r"softmax$(x)_n$ - softmax$(x^*)_{n+1}$",
         title=f"Lemma B.1 (b={FLAGS.b}, c={FLAGS.c}; zeros at 1e-12, x: gap < 0)")
  ax.legend(fontsize=7)
  plotting.save(fig, os.path.join(out, "softmax_lemmas.png"))
  print(f"wrote {out}/results.json and softmax_lemmas.png")
  for k, v in summary.items():
    print(f"  {k}: {v}")


if __name__ == "__main__":
  app.run(main)
