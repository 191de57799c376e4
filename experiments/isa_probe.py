r"""Which primitive ops change their bits with the vector ISA XLA:CPU compiles for, and how
does this machine compare with the CPUs whose fingerprints were recorded?

  python -m experiments.isa_probe                      # reference, native, SSE4_2, AVX2
  python -m experiments.isa_probe --settings=reference,native --out=runs/isa-here
  python -m experiments.isa_probe --settings=reference --record   # add this CPU's record

Runs ``collapse_jax.isa.probe_outputs`` (dots of several contraction lengths, f32 and bf16
operands; sums and sums of squares; a*b+c; x/3; exp, tanh, logistic, rsqrt, sin, cos, log)
in one fresh process per numerics path, and reports per probe the fraction of output
elements whose bits differ from the reference path. Writes results.json and isa.png.

Then it compares this machine's reference-path fingerprints (the probes, and with
``--forwards`` a 2-layer model's forward in every preset) with each record of ``--recorded``
(``tests/goldens/reference_bits_recorded.json``: the CPU, jaxlib and commit each was made
on). This is a report, not a test: a dot or a forward that differs is XLA:CPU's dot kernels
choosing another blocking on another CPU (BUILD_NOTES "What bitwise equal means"). Only a
*controlled* probe (no dot: ``isa.controlled``) that differs breaks a claim of the project;
``tests/test_isa.py`` fails then.
"""
import dataclasses
import datetime
import json
import os
import subprocess
import tempfile

import numpy as np
from absl import app, flags

from collapse_jax import cli, figures, isa, results, xla_env

F = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED = os.path.join(REPO, "tests", "goldens", "reference_bits_recorded.json")


def define_flags(fv: flags.FlagValues) -> None:
  cli.define(fv, out=None)
  flags.DEFINE_list("settings", ["reference", "native", "SSE4_2", "AVX2"],
                    "numerics paths: reference, native, or an --xla_cpu_max_isa cap "
                    f"({', '.join(isa.X86_LEVELS)})", flag_values=fv)
  flags.DEFINE_string("recorded", RECORDED, "recorded fingerprints to compare this machine "
                      "with ('' skips)", flag_values=fv)
  flags.DEFINE_bool("forwards", True, "also fingerprint a small model's forward in every "
                    "preset (needs this process on the reference path)", flag_values=fv)
  flags.DEFINE_bool("record", False, "add this machine's fingerprints to --recorded "
                    "(replacing a record of the same CPU, jaxlib and commit); reference path "
                    "only", flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A probe, parsed: ``settings``, the numerics-path names run in the order given (one
  fresh process each; 'reference' among them, the x86 levels upper-cased)."""
  settings: list
  flags: dict


def parse(fl: dict) -> Spec:
  """Flags (``cli.app_flags()`` or ``cli.parse_argv``) -> :class:`Spec`; ValueError (one
  line) on bad --settings, a non-x86 host or a --record this process cannot make. Reads no
  absl global."""
  settings = [s if s in ("reference", "native") else s.upper() for s in fl["settings"]]
  bad = [s for s in settings if s not in ("reference", "native") + isa.X86_LEVELS]
  if bad or "reference" not in settings:
    raise ValueError(f"--settings needs 'reference' and names from reference, native, "
                     f"{', '.join(isa.X86_LEVELS)}; got {bad or fl['settings']}")
  if isa.native_isa() is None:
    raise ValueError("the ISA probe needs an x86-64 CPU")
  if fl["record"] and not (fl["forwards"] and xla_env.numerics_path()["portable"]):
    raise ValueError("--record needs --forwards and this process on the reference path "
                     "(no COLLAPSE_JAX_ISA=native, no --xla_cpu_max_isa in XLA_FLAGS)")
  return Spec(settings, dict(fl))


def _commit() -> str | None:
  try:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                       timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return r.stdout.strip() or None


def main(argv):
  del argv
  with cli.usage_errors():
    spec = parse(cli.app_flags(__file__))
  fl, settings = spec.flags, spec.settings
  out = cli.run_dir(fl["out"], "isa")
  outputs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for i, s in enumerate(settings):
      print(f"[{i + 1}/{len(settings)}] probing {s} ...", flush=True)
      path = os.path.join(tmp, f"{s}.npz")
      isa.probe_under(s, path)
      outputs[s] = dict(np.load(path))
  frac = isa.differing_fraction(outputs, "reference")
  cpu = isa.cpu_info()
  print(f"CPU {isa.describe_cpu(cpu)}; fraction of elements whose bits differ from the "
        "reference path:")
  print(f"{'probe':16s}" + "".join(f"{s:>11s}" for s in settings))
  for k, row in frac.items():
    print(f"{k:16s}" + "".join(f"{row[s]:11.4f}" for s in settings))
  got = isa.probe_fingerprints(outputs["reference"])
  if fl["forwards"] and xla_env.numerics_path()["portable"]:
    got.update(isa.forward_fingerprints())
  elif fl["forwards"]:
    print("forwards not fingerprinted: this process is not on the reference path")
  import jax
  import jaxlib
  here = {"cpu": cpu, "jaxlib": jaxlib.__version__, "jax": jax.__version__,
          "commit": _commit(), "date": datetime.date.today().isoformat(),
          "path": xla_env.numerics_path()["name"], "sha256": got}
  recorded = {"records": []}
  if fl["recorded"] and os.path.exists(fl["recorded"]):
    with open(fl["recorded"]) as f:
      recorded = json.load(f)
  comparison = isa.compare_with_records(got, recorded["records"], here) if fl["recorded"] else []
  results.write_json(f"{out}/results.json", results.header(
      "isa_probe", fl, settings=settings,
      reference_flags=dict(xla_env.REFERENCE_FLAGS), differing_fraction=frac,
      fingerprints=here, recorded=fl["recorded"], comparison=comparison))
  figures.sweep.isa_heatmap(frac, settings, f"{out}/isa.png",
                            f"bits vs the reference path (max ISA {xla_env.REFERENCE_ISA}) on "
                            f"{cpu['cpu_model']} ({cpu['native_isa']})")
  print(f"wrote {out}/results.json, isa.png")
  if fl["record"]:
    same = lambda r: (r["cpu"], r["jaxlib"], r.get("commit")) == (cpu, here["jaxlib"],
                                                                   here["commit"])
    recorded["records"] = [r for r in recorded["records"] if not same(r)] + [here]
    with open(fl["recorded"], "w") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
    print(f"recorded this machine's {len(got)} fingerprints in {fl['recorded']}")


if __name__ == "__main__":
  define_flags(F)
  app.run(main)
