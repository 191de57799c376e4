"""Softmax lemmas of appendix B.1: Lemma B.1, Lemma B.2 (Figure 9) and Lemma B.4.

  python -m experiments.softmax_lemmas                 # n up to 1e4 (seconds)
  python -m experiments.softmax_lemmas --full          # paper scale: n up to 1e5
  python -m experiments.softmax_lemmas --dtype=all --seeds=0,1,2 --max_len=3000

Writes <out>/results.json and <out>/softmax_lemmas.png (``figures.theory.softmax_lemmas_figure``):
  (a) Figure 9: delta = sum |p - q| (the paper's total variation: L1, no 1/2) of softmax(x)
      and softmax(x*), x ~ U[0,1]^n, x* = x + U[0,0.1] on the first k=200 entries; float64
      mean with the min/max band over the seeds, the mean-field estimate, and every
      precision's curve through the policy's softmax;
  (b) Lemma B.4: the alternating pair's distance stays at 2(e-1)/(e+1) while B.2's decays;
  (c) Lemma B.1: the last-token weight gap after inserting a token, vs its closed form.
"""
from __future__ import annotations

import os

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, figures, precision, results, xla_env
from collapse_jax.theory import softmax

FLAGS = flags.FLAGS
cli.define(out=None, full=False, max_len=None, seeds="0,1,2,3,4",
           dtype="float32,bfloat16,float16,float8_e4m3fn,float8_e5m2")
flags.DEFINE_integer("num_n", None, "log-spaced lengths (default 13, 26 with --full)")
flags.DEFINE_integer("min_n", 10, "smallest n for B.2/B.4")
flags.DEFINE_integer("k", 200, "perturbed prefix length for Lemma B.2")
flags.DEFINE_float("noise", 0.1, "x* = x + U[0, noise] on the first k entries")
flags.DEFINE_float("b", 1.0, "Lemma B.1: inserted token value")
flags.DEFINE_float("c", 1.0, "Lemma B.1: last token value")


def main(argv):
  del argv
  xla_env.enable_x64()
  with cli.usage_errors():
    precs = [p.name for p in cli.policies(FLAGS.dtype)]
    seeds = cli.int_list(FLAGS.seeds, "seeds")
    max_len = FLAGS.max_len or (100_000 if FLAGS.full else 10_000)
    num_n = FLAGS.num_n or (26 if FLAGS.full else 13)
    if max_len < max(2, FLAGS.min_n):
      raise ValueError(f"--max_len={max_len} is below --min_n={FLAGS.min_n}")
  out = cli.run_dir(FLAGS.out, "softmax_lemmas")

  ns2 = softmax.log_lengths(FLAGS.min_n, max_len, num_n)
  logging.info("Lemma B.2: %d lengths x %d seeds", len(ns2), len(seeds))
  b2 = softmax.lemma_b2_sweep(ns2, seeds, k=FLAGS.k, noise=FLAGS.noise,
                              precisions=list(dict.fromkeys(precs + ["float64"])))
  b4 = softmax.lemma_b4_sweep(softmax.log_lengths(max(2, FLAGS.min_n), max_len, num_n, even=True),
                              precisions=precs)
  b1 = softmax.lemma_b1_sweep(softmax.log_lengths(2, max_len, num_n), b=FLAGS.b, c=FLAGS.c,
                              precisions=precs)
  summary = softmax.lemmas_summary(b1, b2, b4)
  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "softmax_lemmas", cli.app_flags(),
      policies=[precision.get_policy(p) for p in b2["tv_by_precision"]],
      paper="Lemma B.1, Lemma B.2 (Fig. 9), Lemma B.4",
      distance="tv_* = the paper's total variation sum |p - q| (L1, no factor 1/2)",
      settings={"max_len": max_len, "num_n": num_n, "seeds": seeds, "dtype": precs}),
      "summary": summary,
      "lemma_b1": b1, "lemma_b2": b2, "lemma_b4": b4})
  figures.theory.softmax_lemmas_figure(b1, b2, b4, os.path.join(out, "softmax_lemmas.png"))
  print(f"wrote {out}/results.json and softmax_lemmas.png")
  for k, v in summary.items():
    print(f"  {k}: {v}")


if __name__ == "__main__":
  app.run(main)
