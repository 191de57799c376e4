"""Why does bf16 stop at ~1 ulp instead of collapsing? (BUILD_NOTES.md, issue 3 results)

Compares rows n-1 and n of ONE causal pass of the default sweep model on the prefix_repeat
family, per stored tensor: max |difference| and how many of the D coordinates differ, in
float64 and in a bf16 policy. Also reruns the sweep with a bf16 policy that does not round
the attention probabilities, to test whether probability rounding sets the floor.

  python scripts/diagnose_bf16_floor.py
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import collapse_jax as cj
from collapse_jax import families, model, precision, sweep, xla_env

xla_env.enable_x64()
CFG = cj.DecoderConfig(num_layers=2, d_model=64, num_heads=1, vocab_size=32, max_len=8200)


def stage_differences(pol_name, ns=(1000, 4000)):
  pol = precision.get_policy(pol_name)
  f = families.make_family("prefix_repeat", max(ns) + 1, seed=0, vocab_size=32)
  p = pol.cast_params(model.init_params(CFG, jax.random.key(0)))
  out = jax.jit(lambda p, x: model.forward(CFG, pol, p, x, collect=("residual", "heads")))(
      p, jnp.asarray(f.tokens)[None])
  heads = np.asarray(out["heads"][:, 0].astype(jnp.float64))
  res = np.asarray(out["residual"][:, 0].astype(jnp.float64))
  y = np.asarray(out["y"][0].astype(jnp.float64))
  for n in ns:
    a, b = n - 1, n
    parts = {"attn out L0": heads[0], "v^(1)": res[1], "attn out L1": heads[1], "v^(2)": res[2],
             "y": y}
    desc = "  ".join(f"{k}: {np.abs(v[a] - v[b]).max():.2g} ({int((v[a] != v[b]).sum())} coords)"
                     for k, v in parts.items())
    print(f"{pol_name:>9s} n={n}: |attn out L0|max={np.abs(heads[0, a]).max():.2f}  {desc}")


def probs_rounding_ablation():
  base = precision.get_policy("bfloat16")
  no_probs = dataclasses.replace(base, name="bfloat16_f32probs",
                                 round_at=precision.ALL_POINTS - {"probs"})
  lengths = families.parse_lengths("log:17:8192:300")
  for r in sweep.run_grid(CFG, [base, no_probs], [1], "prefix_repeat", lengths, [0],
                          log=lambda *a: None):
    lin, n = np.asarray(r["linf"]), np.asarray(r["lengths"])
    print(f"{r['dtype']:>18s}: onset {r['collapse_onset']}, |dy| at n~1000 "
          f"{lin[np.argmin(abs(n - 1000))]:.3g}, at n=8192 {lin[-1]:.3g}")


if __name__ == "__main__":
  stage_differences("float64")
  stage_differences("bfloat16")
  probs_rounding_ablation()
