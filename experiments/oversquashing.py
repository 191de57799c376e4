"""Over-squashing (section 5, appendix B.2): Theorem 5.1/B.5 and Lemma B.6/B.7, Prop. B.8.

  python -m experiments.oversquashing              # n = 256 tokens (seconds)
  python -m experiments.oversquashing --full       # n = 2048 tokens, 4 layers, spectral n to 4096

Writes <out>/results.json and <out>/oversquashing.png (``figures.theory.oversquashing_figure``):
  (a) ||d y_n / d v_i^(0)|| (spectral norm of the D x D block) for every position i of a
      random C.3 decoder with vector inputs (``theory.sensitivity.vector_decoder``), by
      reverse mode in cotangent chunks; with attention weights frozen (the theorem's
      assumption) and with the full gradient; next to the theorem's right-hand side on
      the measured attention matrices, its constants in closed form from the weights and
      the activations' norms (no Jacobian), and its per-position ("tight") variant. The
      record also holds the same path sum with the measured per-layer Jacobian norms
      ('factorised': it holds by the chain rule, a check that every path is counted). The
      U-shape: first tokens vs middle vs last.
  (b) Prop. B.8: max_i |((Lambda+I)/2)^L_{n,i} - [i=1]| vs L for uniform causal, random
      causal and the model's measured (head-weighted, layer-0) attention, with lambda_2^L.
  (c) layers needed to reach a tolerance vs n.
"""
from __future__ import annotations

import os
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, figures, results, xla_env
from collapse_jax.theory import sensitivity, spectral

FLAGS = flags.FLAGS
cli.define(out=None, full=False, max_len=None, layers=None, d_model=32, heads="2", pe="rope",
           mlp="gelu", dtype="float64", seeds="0")
flags.DEFINE_integer("vjp_chunk", 8, "cotangents per vmapped VJP chunk (memory ~ vjp_chunk "
                     "backward passes)")
flags.DEFINE_list("spectral_n", None, "n for convergence curves (default 8,64,512; --full "
                  "adds 4096)")
flags.DEFINE_integer("spectral_max_L", 120, "largest L for the convergence curves")
flags.DEFINE_float("tol", 1e-3, "tolerance for 'layers to converge'")


def main(argv):
  del argv
  xla_env.enable_x64()
  with cli.usage_errors():
    name = cli.one([p.name for p in cli.policies(FLAGS.dtype)], "dtype")
    seed = cli.one(cli.int_list(FLAGS.seeds, "seeds"), "seeds")
    heads = cli.one(cli.int_list(FLAGS.heads, "heads"), "heads")
    spec_ns = cli.int_list(FLAGS.spectral_n or ([8, 64, 512, 4096] if FLAGS.full
                                                 else [8, 64, 512]), "spectral_n")
    n = FLAGS.max_len or (2048 if FLAGS.full else 256)
    L = FLAGS.layers or (4 if FLAGS.full else 2)
    cfg, pol, params, x = sensitivity.vector_decoder(
        n, layers=L, d_model=FLAGS.d_model, heads=heads, pe=FLAGS.pe, mlp=FLAGS.mlp,
        policy=name, seed=seed)
  out = cli.run_dir(FLAGS.out, "oversquashing")

  t0 = time.time()
  sens = sensitivity.sensitivity_vs_bound(cfg, pol, params, x, chunk=FLAGS.vjp_chunk)
  seconds = time.time() - t0
  Ls = range(0, FLAGS.spectral_max_L + 1)
  curves = spectral.convergence_curves(spec_ns, Ls, seed=seed, tol=FLAGS.tol, extra={
      f"model_layer0_n{n}": sens["bound"]["Lambda"][0]})
  depths = spectral.convergence_depths(max(spec_ns), seed=seed, tol=FLAGS.tol)

  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "oversquashing", cli.app_flags(), config=cfg, policies=[pol],
      paper="Theorem 5.1/B.5, Lemma B.6/B.7, Prop. 5.2/B.8",
      settings={"max_len": n, "layers": L, "seeds": [seed], "spectral_n": spec_ns}),
      "sensitivity_and_bound_seconds": seconds,
      "ushape": sens["ushape"], "bound_check": sens["bound_check"],
      "sensitivity": {"full_spectral": sens["full"]["spectral"],
                      "frozen_spectral": sens["frozen"]["spectral"],
                      "full_frobenius": sens["full"]["frobenius"],
                      "frozen_frobenius": sens["frozen"]["frobenius"],
                      **{k: sens["bound"][k] for k in ("bound", "bound_tight", "path_sum")},
                      "factorised_bound": sens["factorised"]["bound"],
                      "factorised_bound_tight": sens["factorised"]["bound_tight"]},
      "spectral": curves, "layers_to_converge": depths})
  figures.theory.oversquashing_figure(
      sens, curves, depths, os.path.join(out, "oversquashing.png"), tol=FLAGS.tol,
      title=f"Thm 5.1: n={n}, L={L}, D={cfg.d_model}, {cfg.pe}, {pol.name}")
  print(f"wrote {out}/results.json and oversquashing.png")
  print("  bound:", {k: v for k, v in sens["bound_check"].items() if not hasattr(v, "__len__")})
  print("  u-shape:", sens["ushape"])
  for key, r in curves.items():
    print(f"  {key}: lambda2={r['lambda2']:.4f} rate={r['rate']:.4f} L_to_tol={r['layers_to_tol']}")


if __name__ == "__main__":
  app.run(main)
