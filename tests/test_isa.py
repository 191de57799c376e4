"""collapse_jax.isa and the portable bits: the reference path, what the ISA and the core count may change, and the
goldens that prove what the project controls on whatever CPU runs the suite (BUILD_NOTES
"What bitwise equal means").

* ``test_controlled_probes_match_goldens``: SHA-256 of the primitive probes without a dot
  (sums, sums of squares, a*b+c, x/3, exp/tanh/logistic/log/sin/cos, rsqrt:
  ``isa.controlled``), computed on the reference path, against ``goldens/reference_bits.json``.
  Those goldens are keyed by what decides the probes' bits (jaxlib, backend, effective ISA,
  platform-dependent math), not by the CPU: the reference path makes them the same on every
  x86-64 CPU, so a difference fails. Another key (another jaxlib, the native ISA, a user cap)
  skips with the reason.
* Dot probes and whole forwards are NOT tested across machines: XLA:CPU's dot kernels pick
  their blocking from the CPU (ISA, cache sizes, core count), whatever ``--xla_cpu_max_isa``
  says (measured: two AVX-512 EPYCs differ in the K=1024 dots). They are recorded per CPU in
  ``goldens/reference_bits_recorded.json`` and compared by ``python -m experiments.isa_probe``,
  a report. ``test_goldens_hold_only_controlled_claims`` keeps them out of the tested goldens.
* ``test_blocked_dots_do_not_depend_on_the_core_count``: a 4100-term contraction on one
  core vs all cores: identical with ``Policy.accum_block`` (measured: XLA:CPU's own order
  differs in 82% of elements between 1 and 2 cores). One machine, so a claim we control.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import collapse_jax  # noqa: F401  (XLA guards before any computation)
import jax
import jaxlib
import numpy as np
import pytest

from collapse_jax import isa, xla_env

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "goldens", "reference_bits.json")  # tested: controlled probes
RECORDED = os.path.join(HERE, "goldens", "reference_bits_recorded.json")  # reported only
ROOT = os.path.dirname(HERE)


def golden_key() -> dict:
  """What decides the bits of the controlled probes in this process: the jaxlib version, the
  backend, the effective ISA XLA:CPU generates code for and whether platform-dependent math
  (the ISA's approximate rsqrt) is on."""
  return {"jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
          "effective_isa": isa.effective_isa(),
          "platform_dependent_math": "--xla_cpu_enable_platform_dependent_math=false"
                                     not in os.environ.get("XLA_FLAGS", "")}


def _load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _golden_for(key: dict) -> dict | None:
  return next((g for g in _load(GOLDEN)["goldens"] if g["key"] == key), None)


@pytest.mark.bitwise
def test_controlled_probes_match_goldens():
  """The probes the reference path controls: the same bits here as in the goldens of this
  key, on any x86-64 CPU."""
  key, path = golden_key(), xla_env.numerics_path()
  if not (path["portable"] and xla_env.guards_in_force()):
    pytest.skip(f"not on the portable reference path: {path['name']}")
  golden = _golden_for(key)
  if golden is None:
    pytest.skip(f"no goldens for {key} (they are for "
                f"{[g['key'] for g in _load(GOLDEN)['goldens']]}; record with "
                "python tests/test_isa.py --write)")
  got = {k: v for k, v in isa.probe_fingerprints().items() if isa.controlled(k)}
  assert sorted(got) == sorted(golden["sha256"]), "probes added or removed: rewrite the goldens"
  wrong = sorted(k for k in got if got[k] != golden["sha256"][k])
  cpu = isa.describe_cpu(isa.cpu_info())
  assert not wrong, (f"reference-path bits of controlled probes differ from the goldens "
                     f"(verified on {golden['verified_on']}) on {cpu}: {wrong}")


def test_goldens_hold_only_controlled_claims():
  """The tested goldens hold no dot and no forward (the CPU's dot kernels decide those), and
  every recorded CPU agrees with them on the controlled probes of its jaxlib."""
  goldens = _load(GOLDEN)["goldens"]
  assert goldens and all(g["sha256"] and all(isa.controlled(k) for k in g["sha256"])
                         for g in goldens)
  assert len({json.dumps(g["key"], sort_keys=True) for g in goldens}) == len(goldens)
  records = _load(RECORDED)["records"]
  assert records
  for rec in records:
    for g in goldens:
      if g["key"]["jaxlib"] == rec["jaxlib"] and g["key"]["effective_isa"] == rec["cpu"].get(
          "effective_isa"):
        cmp = isa.compare_fingerprints(rec["sha256"], g["sha256"])
        assert not cmp["differ"]["controlled"] and not cmp["missing"], (rec["cpu"], cmp)


def test_recorded_comparison_is_a_report_of_what_differs():
  """``isa.compare_fingerprints`` sorts keys into controlled and reported, equal and differing;
  a changed dot or forward is reported, a changed controlled probe is named as such."""
  rec = _load(RECORDED)["records"][0]["sha256"]
  same = isa.compare_fingerprints(rec, rec)
  assert not same["differ"]["controlled"] and not same["differ"]["reported"]
  assert len(same["equal"]["controlled"]) == 19
  assert "probe/dot_f32_K1024" in same["equal"]["reported"]
  assert "float32/y" in same["equal"]["reported"]
  got = dict(rec, **{"probe/dot_bf16_K1024": "0", "float32/y": "0", "probe/tanh": "0"})
  del got["probe/exp"]
  cmp = isa.compare_fingerprints(got, rec)
  assert cmp["differ"] == {"controlled": ["probe/tanh"],
                           "reported": ["float32/y", "probe/dot_bf16_K1024"]}
  assert cmp["missing"] == ["probe/exp"]
  assert not isa.controlled("probe/dot_f32_K8") and not isa.controlled("bfloat16/logits")
  assert isa.controlled("probe/rsqrt") and isa.controlled("probe/sum_f32_1024")


CORE_SCRIPT = r"""
import os, sys, dataclasses
if sys.argv[2] == "1":
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import numpy as np, jax, collapse_jax as cj
rng = np.random.default_rng(1)
p = rng.random((2, 4, 64, 4100)).astype(np.float32)
v = rng.standard_normal((2, 4100, 4, 16)).astype(np.float32)
pol = cj.get_policy("bfloat16")
out = {}
for name, block in (("blocked", pol.accum_block), ("backend", None)):
  q = dataclasses.replace(pol, accum_block=block, row_tile=pol.row_tile if block else None)
  out[name] = np.asarray(jax.jit(lambda x, y: q.dot("bhnm,bmhd->bnhd", x, y))(p, v))
np.savez(sys.argv[1], **out)
"""


@pytest.mark.bitwise
def test_blocked_dots_do_not_depend_on_the_core_count(tmp_path):
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("needs at least 2 cores to compare with 1")
  res = {}
  for cores in ("1", "all"):
    path = str(tmp_path / f"{cores}.npz")
    r = subprocess.run([sys.executable, "-c", CORE_SCRIPT, path, cores], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res[cores] = dict(np.load(path))
  assert np.array_equal(res["1"]["blocked"].view(np.uint32), res["all"]["blocked"].view(np.uint32))
  # the blocked order is a different (explicit) order, close to the backend's
  np.testing.assert_allclose(res["all"]["blocked"], res["all"]["backend"], rtol=0, atol=1e-4)


def test_numerics_path_names_the_reference_path():
  path = xla_env.numerics_path()
  for key in ("name", "portable", "cpu_model", "cpu_isa_flags", "native_isa",
              "xla_cpu_max_isa", "effective_isa", "cpu_vendor", "cpu_family", "cpu_model_number",
              "cpu_stepping", "cache_l1d", "cache_l2", "cache_l3", "cpu_count",
              "cpu_count_usable"):
    assert key in path
  assert path["cpu_count"] == os.cpu_count()
  if isa.native_isa() is not None and xla_env.isa_mode() == "reference" and (
      isa.max_isa_flag() == xla_env.REFERENCE_ISA):
    assert path["portable"] and "reference path" in path["name"]


def test_effective_isa_is_the_lower_of_cap_and_cpu():
  assert isa.effective_isa("AVX", "AVX512") == "AVX"
  assert isa.effective_isa("AVX512", "AVX2") == "AVX2"
  assert isa.effective_isa("", "AVX2") == "AVX2"  # no cap
  assert isa.max_isa_flag("--a=1 --xla_cpu_max_isa=SSE4_2 --xla_cpu_max_isa=AVX2") == "AVX2"
  assert isa.native_isa({"sse4_2", "avx", "avx2", "fma"}) == "AVX2"
  assert isa.native_isa({"sse4_2", "avx", "avx2"}) == "AVX"  # AVX2 without FMA


if __name__ == "__main__":
  if "--write" in sys.argv:  # this key's goldens of the controlled probes
    path = xla_env.numerics_path()
    if not path["portable"]:
      sys.exit(f"refusing to write goldens off the reference path: {path['name']}")
    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py does
    data = _load(GOLDEN)
    key, cpu = golden_key(), isa.describe_cpu(isa.cpu_info())
    entry = {"key": key, "verified_on": [cpu],
             "sha256": {k: v for k, v in isa.probe_fingerprints().items() if isa.controlled(k)}}
    data["goldens"] = [g for g in data["goldens"] if g["key"] != key] + [entry]
    with open(GOLDEN, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    print(f"wrote {len(entry['sha256'])} fingerprints for {key} to {GOLDEN}")
