r"""Which primitive ops change their bits with the vector ISA XLA:CPU compiles for?

  python -m experiments.isa_probe                      # reference, native, SSE4_2, AVX2
  python -m experiments.isa_probe --settings=reference,native --out=runs/isa-here

Runs ``collapse_jax.isa.probe_outputs`` (dots of several contraction lengths, f32 and bf16
operands; sums and sums of squares; a*b+c; x/3; exp, tanh, logistic, rsqrt, sin, cos, log)
in one fresh process per numerics path, and reports per probe the fraction of output
elements whose bits differ from the reference path. Writes results.json and isa.png.
"""
import os
import tempfile

import numpy as np
from absl import app, flags

from collapse_jax import cli, isa, plotting, results, xla_env

F = flags.FLAGS
cli.define(out=None)
flags.DEFINE_list("settings", ["reference", "native", "SSE4_2", "AVX2"],
                  "numerics paths: reference, native, or an --xla_cpu_max_isa cap "
                  f"({', '.join(isa.X86_LEVELS)})")


def _settings() -> list[str]:
  """--settings -> numerics-path names; ValueError on bad ones or a non-x86 host."""
  settings = [s if s in ("reference", "native") else s.upper() for s in F.settings]
  bad = [s for s in settings if s not in ("reference", "native") + isa.X86_LEVELS]
  if bad or "reference" not in settings:
    raise ValueError(f"--settings needs 'reference' and names from reference, native, "
                     f"{', '.join(isa.X86_LEVELS)}; got {bad or F.settings}")
  if isa.native_isa() is None:
    raise ValueError("the ISA probe needs an x86-64 CPU")
  return settings


def main(argv):
  del argv
  with cli.usage_errors():
    settings = _settings()
  out = cli.run_dir(F.out, "isa")
  outputs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for i, s in enumerate(settings):
      print(f"[{i + 1}/{len(settings)}] probing {s} ...", flush=True)
      path = os.path.join(tmp, f"{s}.npz")
      isa.probe_under(s, path)
      outputs[s] = dict(np.load(path))
  frac = isa.differing_fraction(outputs, "reference")
  cpu = isa.cpu_info()
  print(f"CPU {cpu['cpu_model']} (native {cpu['native_isa']}); fraction of elements whose "
        "bits differ from the reference path:")
  print(f"{'probe':16s}" + "".join(f"{s:>11s}" for s in settings))
  for k, row in frac.items():
    print(f"{k:16s}" + "".join(f"{row[s]:11.4f}" for s in settings))
  results.write_json(f"{out}/results.json", {
      "experiment": "isa_probe", "settings": settings, "reference_flags": dict(
          xla_env.REFERENCE_FLAGS), "environment": results.environment(),
      "differing_fraction": frac})
  plotting.isa_heatmap(frac, settings, f"{out}/isa.png",
                       f"bits vs the reference path (max ISA {xla_env.REFERENCE_ISA}) on "
                       f"{cpu['cpu_model']} ({cpu['native_isa']})")
  print(f"wrote {out}/results.json, isa.png")


if __name__ == "__main__":
  app.run(main)
