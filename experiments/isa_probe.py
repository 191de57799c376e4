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
``tests/test_portability.py`` fails then.
"""
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
cli.define(out=None)
flags.DEFINE_list("settings", ["reference", "native", "SSE4_2", "AVX2"],
                  "numerics paths: reference, native, or an --xla_cpu_max_isa cap "
                  f"({', '.join(isa.X86_LEVELS)})")
flags.DEFINE_string("recorded", os.path.join(REPO, "tests", "goldens",
                                             "reference_bits_recorded.json"),
                    "recorded fingerprints to compare this machine with ('' skips)")
flags.DEFINE_bool("forwards", True, "also fingerprint a small model's forward in every preset "
                  "(needs this process on the reference path)")
flags.DEFINE_bool("record", False, "add this machine's fingerprints to --recorded (replacing "
                  "a record of the same CPU, jaxlib and commit); reference path only")
PRESETS = ("float32", "bfloat16", "bfloat16_pure", "float16", "float8_e4m3fn", "float8_e5m2")


def _settings() -> list[str]:
  """--settings -> numerics-path names; ValueError on bad ones or a non-x86 host."""
  settings = [s if s in ("reference", "native") else s.upper() for s in F.settings]
  bad = [s for s in settings if s not in ("reference", "native") + isa.X86_LEVELS]
  if bad or "reference" not in settings:
    raise ValueError(f"--settings needs 'reference' and names from reference, native, "
                     f"{', '.join(isa.X86_LEVELS)}; got {bad or F.settings}")
  if isa.native_isa() is None:
    raise ValueError("the ISA probe needs an x86-64 CPU")
  if F.record and not (F.forwards and xla_env.numerics_path()["portable"]):
    raise ValueError("--record needs --forwards and this process on the reference path "
                     "(no COLLAPSE_JAX_ISA=native, no --xla_cpu_max_isa in XLA_FLAGS)")
  return settings


def forward_fingerprints() -> dict:
  """``{"<preset>/<y|residual|logits>": fingerprint}`` of a 2-layer model's forward over 300
  tokens (long enough for a blocked contraction in the attention's value sum)."""
  import jax
  from collapse_jax import model, precision
  from collapse_jax.config import DecoderConfig
  cfg = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, pe="rope",
                      norm="layernorm", mlp="gelu", mlp_dim=64, vocab_size=40)
  ids = np.random.default_rng(7).integers(0, cfg.vocab_size, (2, 300)).astype(np.int32)
  params = model.init_params(cfg, jax.random.key(0))
  out = {}
  for name in PRESETS:
    pol = precision.get_policy(name)
    if pol.unavailable_reason():
      continue
    res = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "logits")))(
        pol.cast_params(params), ids)
    out.update({f"{name}/{k}": isa.fingerprint(v) for k, v in res.items()})
  return out


def _commit() -> str | None:
  try:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                       timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return r.stdout.strip() or None


def compare_with_records(got: dict, records: list, here: dict) -> list:
  """Print and return one comparison per record (``isa.compare_fingerprints``)."""
  print(f"\nthis machine: {isa.describe_cpu(here['cpu'])}, jaxlib {here['jaxlib']}; "
        "against the recorded fingerprints:")
  rows = []
  for i, rec in enumerate(records):
    cmp = isa.compare_fingerprints(got, rec["sha256"])
    rows.append({"cpu": rec["cpu"], "jaxlib": rec["jaxlib"], "commit": rec.get("commit"),
                 "date": rec.get("date"), **cmp})
    count = lambda kind: (len(cmp["equal"][kind]),
                          len(cmp["equal"][kind]) + len(cmp["differ"][kind]))
    print(f"[{i + 1}] {isa.describe_cpu(rec['cpu'])}, jaxlib {rec['jaxlib']}, recorded "
          f"{rec.get('date') or '?'} at commit {(rec.get('commit') or '?')[:10]}:\n"
          "    controlled (no dot) %d/%d equal; reported (dots, forwards) %d/%d equal"
          % (*count("controlled"), *count("reported")))
    for kind in ("controlled", "reported"):
      if cmp["differ"][kind]:
        print(f"    {kind} differ: {', '.join(cmp['differ'][kind])}")
    if rec["jaxlib"] != here["jaxlib"]:
      print("    (another jaxlib: any fingerprint may differ)")
  print("A reported difference is XLA:CPU's dot kernels on another CPU (or other code since "
        "the recorded commit), not an error; a controlled one breaks the reference path's "
        "claim and fails tests/test_portability.py.")
  return rows


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
  print(f"CPU {isa.describe_cpu(cpu)}; fraction of elements whose bits differ from the "
        "reference path:")
  print(f"{'probe':16s}" + "".join(f"{s:>11s}" for s in settings))
  for k, row in frac.items():
    print(f"{k:16s}" + "".join(f"{row[s]:11.4f}" for s in settings))
  got = isa.probe_fingerprints(outputs["reference"])
  if F.forwards and xla_env.numerics_path()["portable"]:
    got.update(forward_fingerprints())
  elif F.forwards:
    print("forwards not fingerprinted: this process is not on the reference path")
  import jax
  import jaxlib
  here = {"cpu": cpu, "jaxlib": jaxlib.__version__, "jax": jax.__version__,
          "commit": _commit(), "date": datetime.date.today().isoformat(),
          "path": xla_env.numerics_path()["name"], "sha256": got}
  recorded = {"records": []}
  if F.recorded and os.path.exists(F.recorded):
    with open(F.recorded) as f:
      recorded = json.load(f)
  comparison = compare_with_records(got, recorded["records"], here) if F.recorded else []
  results.write_json(f"{out}/results.json", {
      "experiment": "isa_probe", "settings": settings, "reference_flags": dict(
          xla_env.REFERENCE_FLAGS), "environment": results.environment(),
      "differing_fraction": frac, "fingerprints": here, "recorded": F.recorded,
      "comparison": comparison})
  figures.sweep.isa_heatmap(frac, settings, f"{out}/isa.png",
                            f"bits vs the reference path (max ISA {xla_env.REFERENCE_ISA}) on "
                            f"{cpu['cpu_model']} ({cpu['native_isa']})")
  print(f"wrote {out}/results.json, isa.png")
  if F.record:
    same = lambda r: (r["cpu"], r["jaxlib"], r.get("commit")) == (cpu, here["jaxlib"],
                                                                   here["commit"])
    recorded["records"] = [r for r in recorded["records"] if not same(r)] + [here]
    with open(F.recorded, "w") as f:
      json.dump(recorded, f, indent=1, sort_keys=True)
    print(f"recorded this machine's {len(got)} fingerprints in {F.recorded}")


if __name__ == "__main__":
  app.run(main)
