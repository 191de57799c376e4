"""Counting (section 6, appendix B.3): Proposition 6.1/B.9 and Corollary 6.2/B.10.

  python -m experiments.counting                 # small models (well under a minute)
  python -m experiments.counting --full          # more multipliers/precisions, N = 8192

--full picks the "full" preset of SIZES instead of "small" (multipliers, --dtype, --b10_n,
--b10_dtype); a flag given explicitly wins over its preset.

Writes <out>/results.json and <out>/counting.png (``figures.theory.counting_figure``):
  (a) Prop. B.9: a token model with pe='none' and NO causal mask gives '10' and its
      ratio-preserving expansions ('1100' blocks, '1010' tiled, x m) the same representation
      at every depth; measured as max |diff| / max |ref| per depth (0 drawn at the floor =
      bitwise equal), for each precision of --dtype. The causal model (same weights) is
      compared at the last position: equal at depth 1, different from depth 2 on.
  (b) Cor. B.10: one causal pass over [BOS, a, a, ..., a] (RoPE); the distance between the
      last-token outputs for n-1 and n a's (float64 reference and each precision of
      --b10_dtype); ticks where they are bitwise equal, i.e. counts the model must confuse.
The models are ``theory.counting.b9_models`` / ``b10_model``, as in the scorecard.
"""
from __future__ import annotations

import dataclasses
import os

from absl import app, flags

import collapse_jax  # noqa: F401  (XLA guards before JAX starts)
from collapse_jax import cli, config as config_lib, figures, results, xla_env
from collapse_jax.theory import counting

# --full selects "full"; a flag given explicitly wins over its preset value.
SIZES = {"small": {"multipliers": [2, 3, 4], "dtype": "bfloat16,float32",
                   "b10_n": 512, "b10_dtype": "bfloat16,float16"},
         "full": {"multipliers": [2, 3, 4, 5, 8], "dtype": "bfloat16,float16,float32,float64",
                  "b10_n": 8192, "b10_dtype": "bfloat16,float16,float32"}}
# The B.10 model's flags and the vocabulary flag each stands for (cli.decoder_config).
B10_FLAGS = {"b10_layers": "layers", "b10_d_model": "d_model", "b10_heads": "heads",
             "b10_pe": "pe"}


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None, full=False, seeds="0", layers=2, d_model=32, heads="2",
             dtype=None)  # the B.9 model and precisions
  fv["dtype"].help += " (default bfloat16,float32; --full bfloat16,float16,float32,float64)"
  flags.DEFINE_string("base", "10", "B.9 base sequence of digits (tokens)", flag_values=fv)
  flags.DEFINE_list("multipliers", None, "B.9 ratio-preserving multipliers (default 2,3,4; "
                    "--full 2,3,4,5,8)", flag_values=fv)
  flags.DEFINE_integer("b10_layers", 1, "B.10 model layers", flag_values=fv)
  flags.DEFINE_integer("b10_d_model", 16, "B.10 model width", flag_values=fv)
  flags.DEFINE_integer("b10_heads", 1, "B.10 model heads", flag_values=fv)
  flags.DEFINE_enum("b10_pe", "rope", [p for p in config_lib.PE_KINDS if p != "learned"],
                    "B.10 PE", flag_values=fv)
  flags.DEFINE_integer("b10_n", None, "B.10 sweep length N (default 512; 8192 with --full)",
                       flag_values=fv)
  flags.DEFINE_string("b10_dtype", None, "B.10 precisions: a comma list or 'all' (default "
                      "bfloat16,float16; --full adds float32)", flag_values=fv)
  flags.DEFINE_integer("confirm", 2, "B.10: collapsed n re-checked with exact-length forwards",
                       flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A counting run, parsed: ``cfg9`` the bidirectional B.9 model (its causal twin shares the
  weights), ``cfg10`` the B.10 model for sequences up to ``N``; ``settings``: the resolved
  presets as results.json records them."""
  multipliers: list
  dtypes: list
  b10_dtypes: list
  seed: int
  N: int
  cfg9: config_lib.DecoderConfig
  cfg10: config_lib.DecoderConfig
  settings: dict
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one line)
  on a bad value. Builds configs only (no weights, no JAX program). Reads no absl global."""
  size = cli.sized(fl, SIZES)
  mults = cli.int_list(size["multipliers"], "multipliers", minimum=1)
  precs = [p.name for p in cli.policies(size["dtype"])]
  b10_precs = [p.name for p in cli.policies(size["b10_dtype"], what="b10_dtype")]
  seed = cli.one(cli.int_list(fl["seeds"], "seeds"), "seeds")
  heads = cli.one(cli.int_list(fl["heads"], "heads"), "heads")
  N = size["b10_n"]
  if N < 2:
    raise ValueError(f"--b10_n must be >= 2 (n and n+1 a's are compared), got {N}")
  if fl["confirm"] < 0:
    raise ValueError(f"--confirm must be >= 0, got {fl['confirm']}")
  cfg9 = cli.decoder_config(fl, num_heads=heads, **counting.b9_fixed(fl["base"]))
  b10 = {name: fl[flag] for flag, name in B10_FLAGS.items()}
  cfg10 = cli.decoder_config({**b10, "heads": [b10["heads"]]}, **counting.b10_fixed(N))
  settings = {"seeds": [seed], "heads": heads, "multipliers": mults, "dtype": precs,
              "b10_n": N, "b10_dtype": b10_precs, "full": fl["full"]}
  return Spec(mults, precs, b10_precs, seed, N, cfg9, cfg10, settings, dict(fl))


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl = spec.flags
  xla_env.enable_x64()
  out = cli.run_dir(fl["out"], "counting")
  models = counting.b9_models_for(spec.cfg9, spec.seed)
  params10 = counting.init_params(spec.cfg10, spec.seed)

  b9 = counting.b9_sweep(models, spec.dtypes, base=fl["base"], multipliers=spec.multipliers)
  b9_summary = counting.b9_summary(b9)
  b10 = {p: counting.counting_collapse(spec.cfg10, p, params10, spec.N, confirm=fl["confirm"])
         for p in spec.b10_dtypes}
  b10_summary = counting.b10_summary(b10)

  results.write_json(os.path.join(out, "results.json"), {**results.header(
      "counting", fl, config=spec.cfg10, paper="Prop. 6.1/B.9, Cor. 6.2/B.10",
      settings=spec.settings),
      "b9_conditions": ("token inputs, pe='none', no sliding window, bidirectional mask; the "
                        "compared sequences are exact-length forwards with the same weights"),
      "b9_summary": b9_summary, "b9": b9, "b10_summary": b10_summary, "b10": b10})
  figures.theory.counting_figure(b9, b10, os.path.join(out, "counting.png"), base=fl["base"])
  print(f"wrote {out}/results.json and counting.png")
  for k, v in b9_summary.items():
    print(f"  B.9 {k}: {v}")
  for k, v in b10_summary.items():
    print(f"  B.10 {k}: first={v['first_collapse_n']} sustained={v['sustained_collapse_n']} "
          f"frac={v['fraction_equal']:.3f} wrong_count={v['wrong_count']}")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
