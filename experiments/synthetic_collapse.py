r"""Synthetic representational collapse (Theorem 4.2 / appendix C.3, Figures 8 and 10).

One attention layer (no MLP), d=64, a random token stream x and a final token a:
A_n = [x_1..x_{n-1}, a] vs B_n = [x_1..x_{n-1}, a, a] (the last token copied). Per
precision: the distance of the last token's attention output sum_j alpha_nj v_j (the
quantity of Theorem B.3's proof) vs n, float64 as
ground truth, the n at which each precision becomes bitwise equal, and the onset predicted
from the float64 distance and the dtype's ulp at the attention output's magnitude.

  python -m experiments.synthetic_collapse                      # Fig 8: sinusoidal, N(0, 1/d)
  python -m experiments.synthetic_collapse --figure=10          # Fig 10: N(0, 1), every PE
  python -m experiments.synthetic_collapse --figure=10 --max_len=16384 --lengths=log:2:16384:300
"""
import dataclasses

import numpy as np
from absl import app, flags, logging

from collapse_jax import cli, figures, pairs, results, sweep, xla_env

# --figure -> (the PEs compared, the weights' variance as a function of d_model)
FIGURES = {"8": (["sinusoidal"], lambda d: 1.0 / d),
           "10": (["rope", "alibi", "learned", "sinusoidal", "none"], lambda d: 1.0)}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, dtype="float32,bfloat16,float16,float8_e4m3fn,float8_e5m2", d_model=64,
             vocab=1024, max_len=2048, lengths=None, seeds=["0"], out=None, plot=True)
  flags.DEFINE_enum("figure", "8", list(FIGURES), "8: sinusoidal PE, weights N(0,1/d); "
                    "10: weights N(0,1), PEs rope/alibi/learned/sinusoidal/none", flag_values=fv)
  flags.DEFINE_enum("copy", "vector", pairs.COPIES, "vector: B_n's copied last token keeps "
                    "position n-1, i.e. the whole input vector (PE included) is copied, as in "
                    "C.3; token: the copy takes position n (absolute PEs then never converge)",
                    flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A synthetic collapse run, parsed: ``pes`` and ``init_var`` of --figure, the grid of n
  (``lengths``), the precisions run next to float64 (``dtypes``)."""
  dtypes: list
  seeds: list
  lengths: np.ndarray
  pes: list
  init_var: float
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one line)
  on a bad value, including a --d_model a PE of the figure cannot take (the one-layer models
  of ``sweep.synthetic_collapse_grid``, configs only). Reads no absl global."""
  dtypes = [p.name for p in cli.policies(fl["dtype"])]
  seeds = cli.int_list(fl["seeds"], "seeds")
  # default: 120 log-spaced n from 2 (n = 1 is trivial when the vector is copied: [a] and
  # [a, a] attend to identical keys)
  lengths = cli.lengths(fl["lengths"] or f"log:2:{fl['max_len']}:120", fl["max_len"])
  pes, var = FIGURES[fl["figure"]]
  init_var = var(fl["d_model"]) if fl["d_model"] >= 1 else 1.0
  if fl["vocab"] < 2:
    raise ValueError(f"--vocab must be >= 2 (the final token a is id 1), got {fl['vocab']}")
  for pe in pes:  # the config synthetic_collapse_grid builds (it validates --d_model)
    cli.decoder_config(fl, num_layers=1, num_heads=1, use_mlp=False, pe=pe, init_var=init_var,
                       max_len=int(np.max(lengths)) + 1)
  return Spec(dtypes, seeds, lengths, pes, init_var, dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  xla_env.enable_x64()
  out = cli.run_dir(fl["out"], "synthetic")
  by_pe, cfgs = {}, {}
  for pe in spec.pes:
    cfgs[pe], by_pe[pe] = sweep.synthetic_collapse_grid(
        pe, spec.init_var, spec.lengths, spec.seeds, spec.dtypes, d_model=fl["d_model"],
        vocab=fl["vocab"], copy=fl["copy"], log=logging.info)
  results.write_json(f"{out}/results.json", results.header(
      "synthetic_collapse", fl, config=cfgs, figure=fl["figure"],
      runs=[r for rs in by_pe.values() for r in rs]))
  if fl["plot"]:
    figures.sweep.synthetic_figure(
        by_pe, f"{out}/synthetic_collapse.png",
        f"Fig {fl['figure']}: 1 attention layer, d={fl['d_model']}, weights "
        f"N(0, {spec.init_var:.3g}), last token copied ({fl['copy']}); float64 = ground truth")
  for pe, recs in by_pe.items():
    for r in recs:
      print(f"{pe:>10s} {r['dtype']:>14s} seed={r['seed']}: attention-output onset="
            f"{r['attn_onset']:>6d} predicted={r['predicted_onset']:>6d} sustained="
            f"{r['attn_sustained_onset']:>6d} linf[n={r['lengths'][-1]}]={r['attn_linf'][-1]:.3g}"
            f"  (residual y onset {r['collapse_onset']})")
  print(f"wrote {out}/results.json" + (", synthetic_collapse.png" if fl["plot"] else ""))


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
