"""Softmax lemmas of appendix B.1: Lemma B.1, Lemma B.2 (Figure 9) and Lemma B.4.

  python -m experiments.softmax_lemmas                 # n up to 1e4 (seconds)
  python -m experiments.softmax_lemmas --full          # paper scale: n up to 1e5
  python -m experiments.softmax_lemmas --dtype=all --seeds=0,1,2 --max_len=3000

--full picks the "full" preset of SIZES instead of "small" (--max_len, --num_n); a flag given
explicitly wins over its preset.

Writes <out>/results.json and <out>/softmax_lemmas.png (``figures.theory.softmax_lemmas_figure``):
  (a) Figure 9: delta = sum |p - q| (the paper's total variation: L1, no 1/2) of softmax(x)
      and softmax(x*), x ~ U[0,1]^n, x* = x + U[0,0.1] on the first k=200 entries; float64
      mean with the min/max band over the seeds, the mean-field estimate, and every
      precision's curve through the policy's softmax;
  (b) Lemma B.4: the alternating pair's distance stays at 2(e-1)/(e+1) while B.2's decays;
  (c) Lemma B.1: the last-token weight gap after inserting a token, vs its closed form.
"""
from __future__ import annotations

import dataclasses
import os

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, figures, precision, results, xla_env
from collapse_jax.theory import softmax

# --full selects "full"; a flag given explicitly wins over its preset value.
SIZES = {"small": {"max_len": 10_000, "num_n": 13}, "full": {"max_len": 100_000, "num_n": 26}}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None, full=False, max_len=None, seeds="0,1,2,3,4",
             dtype="float32,bfloat16,float16,float8_e4m3fn,float8_e5m2")
  fv["max_len"].help += " (default 10000; --full 100000)"
  flags.DEFINE_integer("num_n", None, "log-spaced lengths (default 13, 26 with --full)",
                       flag_values=fv)
  flags.DEFINE_integer("min_n", 10, "smallest n for B.2/B.4", flag_values=fv)
  flags.DEFINE_integer("k", 200, "perturbed prefix length for Lemma B.2", flag_values=fv)
  flags.DEFINE_float("noise", 0.1, "x* = x + U[0, noise] on the first k entries",
                     flag_values=fv)
  flags.DEFINE_float("b", 1.0, "Lemma B.1: inserted token value", flag_values=fv)
  flags.DEFINE_float("c", 1.0, "Lemma B.1: last token value", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The lemmas' sweeps, parsed: ``dtypes`` the precisions, the lengths of each lemma
  (``ns_b1``, ``ns_b2``, ``ns_b4``: log-spaced up to ``max_len``, B.4's even); ``settings``:
  the resolved presets as results.json records them."""
  dtypes: list
  seeds: list
  ns_b1: list
  ns_b2: list
  ns_b4: list
  settings: dict
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one line)
  on a bad value. Reads no absl global."""
  size = cli.sized(fl, SIZES)
  precs = [p.name for p in cli.policies(fl["dtype"])]
  seeds = cli.int_list(fl["seeds"], "seeds")
  max_len, num_n, min_n = size["max_len"], size["num_n"], fl["min_n"]
  if min_n < 1:
    raise ValueError(f"--min_n must be >= 1, got {min_n}")
  if num_n < 1:
    raise ValueError(f"--num_n must be >= 1, got {num_n}")
  if max_len < max(2, min_n):
    raise ValueError(f"--max_len={max_len} is below --min_n={min_n}")
  settings = {"max_len": max_len, "num_n": num_n, "seeds": seeds, "dtype": precs}
  return Spec(precs, seeds, softmax.log_lengths(2, max_len, num_n),
              softmax.log_lengths(min_n, max_len, num_n),
              softmax.log_lengths(max(2, min_n), max_len, num_n, even=True), settings, dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  xla_env.enable_x64()
  out = cli.run_dir(fl["out"], "softmax_lemmas")

  logging.info("Lemma B.2: %d lengths x %d seeds", len(spec.ns_b2), len(spec.seeds))
  b2 = softmax.lemma_b2_sweep(spec.ns_b2, spec.seeds, k=fl["k"], noise=fl["noise"],
                              precisions=list(dict.fromkeys(spec.dtypes + ["float64"])))
  b4 = softmax.lemma_b4_sweep(spec.ns_b4, precisions=spec.dtypes)
  b1 = softmax.lemma_b1_sweep(spec.ns_b1, b=fl["b"], c=fl["c"], precisions=spec.dtypes)
  summary = softmax.lemmas_summary(b1, b2, b4)
  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "softmax_lemmas", fl, policies=[precision.get_policy(p) for p in b2["tv_by_precision"]],
      paper="Lemma B.1, Lemma B.2 (Fig. 9), Lemma B.4",
      distance="tv_* = the paper's total variation sum |p - q| (L1, no factor 1/2)",
      settings=spec.settings),
      "summary": summary,
      "lemma_b1": b1, "lemma_b2": b2, "lemma_b4": b4})
  figures.theory.softmax_lemmas_figure(b1, b2, b4, os.path.join(out, "softmax_lemmas.png"))
  print(f"wrote {out}/results.json and softmax_lemmas.png")
  for k, v in summary.items():
    print(f"  {k}: {v}")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
