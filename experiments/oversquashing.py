"""Over-squashing (section 5, appendix B.2): Theorem 5.1/B.5 and Lemma B.6/B.7, Prop. B.8.

  python -m experiments.oversquashing              # n = 256 tokens (seconds)
  python -m experiments.oversquashing --full       # n = 2048 tokens, 4 layers, spectral n to 4096

Writes <out>/results.json and <out>/oversquashing.png:
  (a) ||d y_n / d v_i^(0)|| (spectral norm of the D x D block) for every position i of a
      random C.3 decoder with vector inputs, computed by reverse mode in cotangent chunks;
      with attention weights frozen (the theorem's assumption) and with the full gradient;
      next to the theorem's right-hand side from the measured attention matrices
      (C times the (n, i) entry of prod_l (Lambda^(l)/beta_1 + I)) and its per-position
      ("tight") variant. The U-shape discussion: first tokens vs middle vs last.
  (b) Prop. B.8: max_i |((Lambda+I)/2)^L_{n,i} - [i=1]| vs L for uniform causal, random
      causal and the model's measured (head-weighted, layer-0) attention, with lambda_2^L.
  (c) layers needed to reach a tolerance vs n.
"""
from __future__ import annotations

import os
import time

from absl import app, flags, logging

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import model, plotting, precision, results, theory, xla_env

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "output directory (default runs/oversquashing-<stamp>)")
flags.DEFINE_bool("full", False, "paper-like scale: n=2048, 4 layers, spectral n up to 4096")
flags.DEFINE_integer("n", None, "sequence length (default 256; 2048 with --full)")
flags.DEFINE_integer("layers", None, "decoder layers (default 2; 4 with --full)")
flags.DEFINE_integer("d_model", 32, "model width D")
flags.DEFINE_integer("heads", 2, "attention heads")
flags.DEFINE_enum("pe", "rope", ["rope", "sinusoidal", "alibi", "none"], "positional encoding")
flags.DEFINE_enum("mlp", "gelu", ["gelu", "swiglu", "geglu"], "MLP kind")
flags.DEFINE_string("precision", "float64", "policy for forward and derivatives")
flags.DEFINE_integer("seed", 0, "parameter and input seed")
flags.DEFINE_integer("chunk", 8, "cotangents per vmapped VJP chunk (memory ~ chunk backward passes)")
flags.DEFINE_list("spectral_n", None, "n for convergence curves (default 8,64,512)")
flags.DEFINE_integer("spectral_max_L", 120, "largest L for the convergence curves")
flags.DEFINE_float("tol", 1e-3, "tolerance for 'layers to converge'")


def main(argv):
  del argv
  xla_env.enable_x64()
  import jax
  import jax.numpy as jnp
  import numpy as np
  from collapse_jax.config import DecoderConfig

  n = FLAGS.n or (2048 if FLAGS.full else 256)
  L = FLAGS.layers or (4 if FLAGS.full else 2)
  spec_ns = [int(v) for v in (FLAGS.spectral_n or ([8, 64, 512, 4096] if FLAGS.full
                                                  else [8, 64, 512]))]
  out = results.make_run_dir(FLAGS.out, "oversquashing")
  cfg = DecoderConfig(num_layers=L, d_model=FLAGS.d_model, num_heads=FLAGS.heads,
                      vocab_size=0, pe=FLAGS.pe, mlp=FLAGS.mlp, causal=True,
                      max_len=max(4096, n))
  pol = precision.get_policy(FLAGS.precision)
  kp, kx = jax.random.split(jax.random.PRNGKey(FLAGS.seed))
  params = pol.cast_params(model.init_params(cfg, kp))
  x = jax.random.normal(kx, (n, cfg.d_model), jnp.float32).astype(pol.storage_dtype)

  t0 = time.time()
  full = theory.last_token_sensitivity(cfg, pol, params, x, chunk=FLAGS.chunk)
  t_full = time.time() - t0
  frozen = theory.last_token_sensitivity(cfg, pol, params, x, chunk=FLAGS.chunk,
                                         frozen_attention=True)
  bnd = theory.oversquashing_bound(cfg, pol, params, x)
  logging.info("sensitivity %.1fs", t_full)
  sf, sz, b, bt = full["spectral"], frozen["spectral"], bnd["bound"], bnd["bound_tight"]
  mid = slice(n // 4, 3 * n // 4)
  head = slice(0, max(1, n // 32))
  ushape = {
      "first_token": float(sf[0]), "first_1/32_mean": float(sf[head].mean()),
      "middle_half_median": float(np.median(sf[mid])), "second_to_last": float(sf[-2]),
      "last_token": float(sf[-1]),
      "first_over_middle": float(sf[0] / np.median(sf[mid])),
      "argmin_position": int(np.argmin(sf)),
      "bound_first_over_middle": float(b[0] / np.median(b[mid])),
  }
  bound_check = {
      "frozen_le_bound_all": bool(np.all(sz <= b * (1 + 1e-9))),
      "frozen_le_tight_all": bool(np.all(sz <= bt * (1 + 1e-9))),
      "max_frozen_over_bound": float(np.max(sz / b)),
      "max_frozen_over_tight": float(np.max(sz / bt)),
      "full_le_bound_fraction": float(np.mean(sf <= b)),
      "max_full_over_bound": float(np.max(sf / b)),
      "C": bnd["C"], "inv_beta1": bnd["inv_beta1"], "sigma_over_beta2": bnd["sigma_over_beta2"],
      "inv_beta3": bnd["inv_beta3"],
  }

  Ls = list(range(0, FLAGS.spectral_max_L + 1))
  spectral = {}
  for sn in spec_ns:
    for name, lam in (("uniform", theory.uniform_causal(sn)),
                      ("random", theory.random_causal(sn, FLAGS.seed))):
      r = theory.spectral_convergence(lam, Ls, full=sn <= 64)
      r["layers_to_tol"] = theory.layers_to_converge(lam, FLAGS.tol)
      spectral[f"{name}_n{sn}"] = r
  lam_model = bnd["Lambda"][0]
  r = theory.spectral_convergence(lam_model, Ls, full=False)
  r["layers_to_tol"] = theory.layers_to_converge(lam_model, FLAGS.tol)
  spectral[f"model_layer0_n{n}"] = r
  conv_ns = sorted({int(v) for v in np.unique(np.round(np.logspace(0.5, np.log10(max(spec_ns)),
                                                                   8)))})
  conv = {"n": conv_ns,
          "uniform": [theory.layers_to_converge(theory.uniform_causal(m), FLAGS.tol) for m in conv_ns],
          "random": [theory.layers_to_converge(theory.random_causal(m, FLAGS.seed), FLAGS.tol)
                     for m in conv_ns],
          "lambda2_uniform": [theory.stochastic_checks(theory.uniform_causal(m))["lambda2"]
                              for m in conv_ns],
          "lambda2_random": [theory.stochastic_checks(theory.random_causal(m, FLAGS.seed))["lambda2"]
                             for m in conv_ns]}

  results.write_json(os.path.join(out, "results.json"), {
      "experiment": "oversquashing", "paper": "Theorem 5.1/B.5, Lemma B.6/B.7, Prop. 5.2/B.8",
      "config": cfg.to_dict(), "policy": pol.describe(),
      "flags": {"n": n, "layers": L, "seed": FLAGS.seed, "chunk": FLAGS.chunk, "tol": FLAGS.tol,
                "spectral_n": spec_ns, "full": FLAGS.full},
      "environment": results.environment(), "sensitivity_seconds": t_full,
      "ushape": ushape, "bound_check": bound_check,
      "sensitivity": {"full_spectral": sf, "frozen_spectral": sz,
                      "full_frobenius": full["frobenius"], "frozen_frobenius": frozen["frobenius"],
                      "bound": b, "bound_tight": bt, "path_sum": bnd["path_sum"]},
      "spectral": spectral, "layers_to_converge": conv})

  fig, axes = plotting.subplots(1, 3)
  ax = axes[0, 0]
  pos = np.arange(1, n + 1)
  ax.plot(pos, b, color="k", lw=1.2, label="Thm 5.1 bound (paper constants)")
  ax.plot(pos, bt, color="gray", lw=1, ls="--", label="bound, per-position factors")
  ax.plot(pos, sz, color="C1", lw=0.8, label="sensitivity, attention frozen")
  ax.plot(pos, sf, color="C0", lw=0.8, alpha=0.8, label="sensitivity, full gradient")
  ax.set(yscale="log", xlabel="input position i", ylabel=r"$\|\partial y_n / \partial v_i^{(0)}\|_2$",
         title=f"Thm 5.1: n={n}, L={L}, D={cfg.d_model}, {cfg.pe}, {pol.name}")
  ax.legend(fontsize=7)
  ax = axes[0, 1]
  for i, (key, r) in enumerate(spectral.items()):
    y, _ = plotting.positive_for_log(r["err_last_row"], 1e-17)
    ax.plot(r["L"], y, color=f"C{i}", lw=1, label=f"{key} ($\\lambda_2$={r['lambda2']:.3f}, "
                                                   f"rate={r['rate']:.3f})")
    ax.plot(r["L"], r["lambda2"] ** np.asarray(r["L"], float), color=f"C{i}", lw=0.6, ls=":")
  ax.set(yscale="log", ylim=(1e-17, 2), xlabel="layers L",
         ylabel=r"$\max_i |((\Lambda+I)/2)^L_{n,i} - [i=1]|$",
         title=r"Prop. B.8: convergence to first column (dotted: $\lambda_2^L$)")
  ax.legend(fontsize=6)
  ax = axes[0, 2]
  ax.plot(conv["n"], conv["uniform"], "o-", label="uniform causal")
  ax.plot(conv["n"], conv["random"], "s-", label="random causal (N(0,1) scores)")
  ax.set(xscale="log", xlabel="n", ylabel=f"layers L to reach error < {FLAGS.tol:g}",
         title="Convergence depth vs sequence length")
  ax.legend(fontsize=7)
  plotting.save(fig, os.path.join(out, "oversquashing.png"))
  print(f"wrote {out}/results.json and oversquashing.png")
  print("  bound:", {k: v for k, v in bound_check.items() if not hasattr(v, "__len__")})
  print("  u-shape:", ushape)
  for key, r in spectral.items():
    print(f"  {key}: lambda2={r['lambda2']:.4f} rate={r['rate']:.4f} L_to_tol={r['layers_to_tol']}")


if __name__ == "__main__":
  app.run(main)
