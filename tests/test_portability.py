"""Portable bits: the reference path, what the ISA and the core count may change, and the
goldens that prove it on whatever CPU runs the suite (BUILD_NOTES "What bitwise equal means").

* ``test_reference_path_bits_match_goldens``: SHA-256 of the primitive probes
  (``isa.probe_outputs``) and of small-model forwards in every preset, computed on the
  reference path, against the goldens of the CPU's native ISA class:
  ``goldens/reference_bits.json`` (a 2-core AMD EPYC, AVX2, no AVX-512) and
  ``goldens/reference_bits_AVX512.json`` (a 2-core AMD EPYC with AVX-512), jaxlib 0.10.2.
  XLA:CPU's dot kernels follow the native ISA whatever the cap, so dots and forwards are
  portable only within a class; a class without goldens, a different jaxlib, the native ISA
  or a non-CPU backend skips (the reason is printed). Record this CPU's class with
  ``python tests/test_portability.py --write``.
* ``test_non_dot_probes_agree_across_isas``: the probes without a dot against every class's
  goldens (the cap does make those portable).
* ``test_blocked_dots_do_not_depend_on_the_core_count``: a 4100-term contraction on one
  core vs all cores: identical with ``Policy.accum_block`` (measured: XLA:CPU's own order
  differs in 82% of elements between 1 and 2 cores).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import subprocess
import sys

import collapse_jax  # noqa: F401  (XLA guards before any computation)
import jax
import jaxlib
import numpy as np
import pytest

from collapse_jax import engines, isa, metrics, model, pairs, precision, xla_env
from collapse_jax.config import DecoderConfig

HERE = os.path.dirname(os.path.abspath(__file__))
# One golden file per native ISA class: XLA:CPU's dot kernels are not code that
# --xla_cpu_max_isa caps (measured on an AVX-512 EPYC: f32 dots are a sequential FMA
# accumulation under the AVX cap, and their bits differ from the AVX2 EPYC's), so the
# forwards and dot probes are portable only between CPUs of the same native ISA; the other
# probes are portable across all of them (``test_non_dot_probes_agree_across_isas``).
GOLDEN = os.path.join(HERE, "goldens", "reference_bits.json")  # AVX2 (the first recorded)


def golden_path(native: str | None) -> str:
  return GOLDEN if native == "AVX2" else os.path.join(HERE, "goldens",
                                                      f"reference_bits_{native}.json")


def _dot_dependent(key: str) -> bool:
  """Fingerprints that contain a dot: the dot probes and every forward."""
  return not key.startswith("probe/") or key.startswith("probe/dot_")
ROOT = os.path.dirname(HERE)
CFG = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, pe="rope",
                    norm="layernorm", mlp="gelu", mlp_dim=64, vocab_size=40)
PRESETS = ("float32", "bfloat16", "bfloat16_pure", "float16", "float8_e4m3fn", "float8_e5m2")


def _sha(a) -> str:
  a = np.ascontiguousarray(np.asarray(a))
  return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def fingerprints() -> dict:
  """SHA-256 per probe and per (preset, output) of a forward over 300 tokens (long enough
  for a blocked contraction in the attention's value sum)."""
  out = {f"probe/{k}": _sha(v) for k, v in isa.probe_outputs().items()}
  ids = np.random.default_rng(7).integers(0, CFG.vocab_size, (2, 300)).astype(np.int32)
  params = model.init_params(CFG, jax.random.key(0))
  for name in PRESETS:
    pol = precision.get_policy(name)
    if pol.unavailable_reason():
      continue
    res = jax.jit(lambda p, x: model.forward(CFG, pol, p, x, collect=("residual", "logits")))(
        pol.cast_params(params), ids)
    for key, val in res.items():
      out[f"{name}/{key}"] = _sha(val)
  return out


def _skip_reason(golden_file: str) -> str | None:
  path = xla_env.numerics_path()
  if not path["portable"]:
    return f"not on the portable reference path: {path['name']}"
  if not os.path.exists(golden_file):
    return (f"no goldens recorded for native ISA {path['native_isa']} (the dot kernels' bits "
            f"depend on it; record them with python tests/test_portability.py --write)")
  with open(golden_file) as f:
    golden = json.load(f)
  if golden["jaxlib"] != jaxlib.__version__:
    return f"goldens are for jaxlib {golden['jaxlib']}, this is {jaxlib.__version__}"
  return None


@pytest.mark.bitwise
def test_reference_path_bits_match_goldens():
  """Every fingerprint against the goldens of this CPU's native ISA class."""
  golden_file = golden_path(isa.native_isa())
  reason = _skip_reason(golden_file)
  if reason:
    pytest.skip(reason)
  with open(golden_file) as f:
    golden = json.load(f)
  got = fingerprints()
  wrong = sorted(k for k in golden["sha256"] if k in got and got[k] != golden["sha256"][k])
  missing = sorted(set(golden["sha256"]) - set(got))
  assert not missing or all(k.split("/")[0] in ("float16", "float8_e4m3fn", "float8_e5m2")
                            for k in missing), missing
  cpu = isa.cpu_info()
  assert not wrong, (f"reference-path bits differ from the goldens ({golden['cpu']}) on "
                     f"{cpu['cpu_model']} ({cpu['native_isa']}): {wrong}")


@pytest.mark.bitwise
def test_non_dot_probes_agree_across_isas():
  """The probes without a dot (sums, sums of squares, a*b+c, x/3, the f32 kernels, rsqrt)
  are LLVM-emitted code that the reference path's cap does fix: the same bits here as in the
  goldens of every recorded ISA class."""
  files = sorted(glob.glob(os.path.join(HERE, "goldens", "reference_bits*.json")))
  reason = _skip_reason(files[0])
  if reason:
    pytest.skip(reason)
  got = {f"probe/{k}": _sha(v) for k, v in isa.probe_outputs().items()}
  for golden_file in files:
    with open(golden_file) as f:
      golden = json.load(f)["sha256"]
    keys = [k for k in golden if not _dot_dependent(k)]
    assert len(keys) >= 15
    wrong = sorted(k for k in keys if got[k] != golden[k])
    assert not wrong, (os.path.basename(golden_file), wrong)


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
  q = dataclasses.replace(pol, accum_block=block)
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


def test_blocked_einsum_splits_the_longest_contracted_axis():
  """K <= block: one dot, bitwise the einsum; K > block: the blocks' partial sums added in
  order, equal to an explicit numpy loop over the same blocks of exactly-summable data."""
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  a = rng.integers(-8, 8, (3, 600)).astype(np.float32)
  b = rng.integers(-8, 8, (600, 5)).astype(np.float32)
  f = lambda blk: np.asarray(precision.blocked_einsum("nk,kd->nd", jnp.asarray(a), jnp.asarray(b),
                                                       jnp.float32, None, blk))
  np.testing.assert_array_equal(f(None), a @ b)  # integers: exact in any order
  np.testing.assert_array_equal(f(256), a @ b)
  np.testing.assert_array_equal(f(7), a @ b)
  # a contraction over two axes (heads x head_dim, like the output projection)
  h = rng.standard_normal((2, 9, 64)).astype(np.float32)
  w = rng.standard_normal((9, 64, 8)).astype(np.float32)
  got = precision.blocked_einsum("bhk,hkd->bd", jnp.asarray(h), jnp.asarray(w), jnp.float32,
                                 None, 256)
  want = sum(np.einsum("bhk,hkd->bd", h[:, i:i + 4].astype(np.float64), w[i:i + 4])
             for i in (0, 4, 8))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  with pytest.raises(ValueError, match="accum_block"):
    dataclasses.replace(precision.get_policy("float32"), accum_block=0)


def test_numerics_path_names_the_reference_path():
  path = xla_env.numerics_path()
  for key in ("name", "portable", "cpu_model", "cpu_isa_flags", "native_isa",
              "xla_cpu_max_isa", "effective_isa"):
    assert key in path
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


# -- helpers that used to do the wrong thing on bad input now raise ---------------------------
def test_onsets_reject_flags_and_lengths_of_different_shapes():
  with pytest.raises(ValueError, match="one flag per swept length"):
    metrics.collapse_onset(np.ones(6, bool), np.arange(3))
  with pytest.raises(ValueError, match="one flag per swept length"):
    metrics.sustained_onset(np.ones((2, 6), bool), np.arange(3))


def test_forward_names_an_empty_sequence():
  pol = precision.get_policy("float32")
  params = model.init_params(CFG, jax.random.key(0))
  with pytest.raises(ValueError, match="N >= 1 tokens"):
    model.forward(CFG, pol, params, np.zeros((1, 0), np.int32))


def test_out_of_vocabulary_ids_are_rejected_on_the_host():
  pol = precision.get_policy("float32")
  params = jax.tree_util.tree_map(lambda x: x[None], pol.cast_params(
      model.init_params(CFG, jax.random.key(0))))
  for bad in (40, -1):
    toks = np.full((1, 12), 3, np.int32)
    toks[0, 5] = bad
    with pytest.raises(ValueError, match=r"outside the model vocabulary \[0, 40\)"):
      engines.run(CFG, pol, params, [pairs.Family("repeat", 1, toks[0], 1)], [4, 8],
                  engine="causal")
  with pytest.raises(ValueError, match="the repeated token"):
    engines.run(CFG, pol, params, [pairs.Family("repeat", 99, np.full(12, 3, np.int32), 1)],
                [4, 8], engine="kv_cache")


if __name__ == "__main__":
  if "--write" in sys.argv:
    path = xla_env.numerics_path()
    if not path["portable"]:
      sys.exit(f"refusing to write goldens off the reference path: {path['name']}")
    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py does
    data = {"jaxlib": jaxlib.__version__, "jax": jax.__version__,
            "cpu": f"{path['cpu_model']} ({path['native_isa']}, {os.cpu_count()} cores)",
            "path": path["name"], "sha256": fingerprints()}
    out_file = golden_path(path["native_isa"])
    with open(out_file, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    print(f"wrote {len(data['sha256'])} fingerprints to {out_file}")
