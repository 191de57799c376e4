"""Over-squashing (section 5, appendix B.2): Theorem 5.1/B.5 and Lemma B.6/B.7, Prop. B.8.

  python -m experiments.oversquashing              # n = 256 tokens (seconds)
  python -m experiments.oversquashing --full       # n = 2048 tokens, 4 layers, spectral n to 4096

--full picks the "full" preset of SIZES instead of "small" (--max_len, --layers,
--spectral_n); a flag given explicitly wins over its preset.

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

import dataclasses
import os
import time

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, config as config_lib, figures, results, xla_env
from collapse_jax.theory import sensitivity, spectral

# --full selects "full"; a flag given explicitly wins over its preset value.
SIZES = {"small": {"max_len": 256, "layers": 2, "spectral_n": [8, 64, 512]},
         "full": {"max_len": 2048, "layers": 4, "spectral_n": [8, 64, 512, 4096]}}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None, full=False, max_len=None, layers=None, d_model=32, heads="2",
             pe="rope", mlp="gelu", dtype="float64", seeds="0")
  fv["max_len"].help += " (default 256; --full 2048)"
  fv["layers"].help += " (default 2; --full 4)"
  flags.DEFINE_integer("vjp_chunk", 8, "cotangents per vmapped VJP chunk (memory ~ vjp_chunk "
                       "backward passes)", flag_values=fv)
  flags.DEFINE_list("spectral_n", None, "n for convergence curves (default 8,64,512; --full "
                    "adds 4096)", flag_values=fv)
  flags.DEFINE_integer("spectral_max_L", 120, "largest L for the convergence curves",
                       flag_values=fv)
  flags.DEFINE_float("tol", 1e-3, "tolerance for 'layers to converge'", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """An over-squashing run, parsed: ``cfg`` the vector-input decoder for ``n`` positions
  (``sensitivity.vector_fixed``), ``dtype`` its one precision, ``spectral_n`` the n of the
  convergence curves; ``settings``: the resolved presets as results.json records them."""
  dtype: str
  seed: int
  n: int
  cfg: config_lib.DecoderConfig
  spectral_n: list
  settings: dict
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one line)
  on a bad value or a model the bound does not cover (``sensitivity.check_bound``). Builds the
  config only (no weights, no JAX program). Reads no absl global."""
  size = cli.sized(fl, SIZES)
  name = cli.one([p.name for p in cli.policies(fl["dtype"])], "dtype")
  seed = cli.one(cli.int_list(fl["seeds"], "seeds"), "seeds")
  heads = cli.one(cli.int_list(fl["heads"], "heads"), "heads")
  spec_ns = cli.int_list(size["spectral_n"], "spectral_n", minimum=1)
  n, L = size["max_len"], size["layers"]
  if n < 1:
    raise ValueError(f"--max_len must be >= 1, got {n}")
  for flag, least in (("vjp_chunk", 1), ("spectral_max_L", 0)):
    if fl[flag] < least:
      raise ValueError(f"--{flag} must be >= {least}, got {fl[flag]}")
  cfg = cli.decoder_config(fl, num_layers=L, num_heads=heads, **sensitivity.vector_fixed(n))
  sensitivity.check_bound(cfg)
  settings = {"max_len": n, "layers": L, "seeds": [seed], "spectral_n": spec_ns}
  return Spec(name, seed, n, cfg, spec_ns, settings, dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl, n = spec.flags, spec.n
  xla_env.enable_x64()
  out = cli.run_dir(fl["out"], "oversquashing")
  cfg, pol, params, x = sensitivity.init_vector_decoder(spec.cfg, spec.dtype, n, seed=spec.seed)

  t0 = time.time()
  sens = sensitivity.sensitivity_vs_bound(cfg, pol, params, x, chunk=fl["vjp_chunk"])
  seconds = time.time() - t0
  Ls = range(0, fl["spectral_max_L"] + 1)
  curves = spectral.convergence_curves(spec.spectral_n, Ls, seed=spec.seed, tol=fl["tol"],
                                       extra={f"model_layer0_n{n}": sens["bound"]["Lambda"][0]})
  depths = spectral.convergence_depths(max(spec.spectral_n), seed=spec.seed, tol=fl["tol"])

  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "oversquashing", fl, config=cfg, policies=[pol],
      paper="Theorem 5.1/B.5, Lemma B.6/B.7, Prop. 5.2/B.8", settings=spec.settings),
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
      sens, curves, depths, os.path.join(out, "oversquashing.png"), tol=fl["tol"],
      title=f"Thm 5.1: n={n}, L={cfg.num_layers}, D={cfg.d_model}, {cfg.pe}, {pol.name}")
  print(f"wrote {out}/results.json and oversquashing.png")
  print("  bound:", {k: v for k, v in sens["bound_check"].items() if not hasattr(v, "__len__")})
  print("  u-shape:", sens["ushape"])
  for key, r in curves.items():
    print(f"  {key}: lambda2={r['lambda2']:.4f} rate={r['rate']:.4f} L_to_tol={r['layers_to_tol']}")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
