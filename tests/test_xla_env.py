"""XLA guards: flags appended without clobbering, and the YNN-fusion regression.

On jaxlib 0.10.2 XLA:CPU's YNN fusions gave a 2.37 max error (vs float64) for a vmapped
masked attention at N=1024 and 0.13 for jit(jacrev); collapse_jax disables them on import.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import collapse_jax  # noqa: F401  (applies the guards)
import collapse_jax.isa
from collapse_jax import xla_env


def test_guard_flag_in_force_when_jaxlib_knows_it():
  flags = os.environ.get("XLA_FLAGS", "")
  for name, value in xla_env.GUARD_FLAGS:
    if xla_env.jaxlib_knows_flag(name):
      assert f"--{name}" in flags
  assert not xla_env.jaxlib_knows_flag("xla_this_flag_does_not_exist_zzz")


def test_user_flags_are_kept_and_respected():
  code = ("import os, collapse_jax; print(os.environ['XLA_FLAGS'])")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3 "
             "--xla_allow_excess_precision=true")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout.strip()
  assert "--xla_force_host_platform_device_count=3" in out
  assert "--xla_allow_excess_precision=true" in out and "excess_precision=false" not in out
  if xla_env.jaxlib_knows_flag("xla_cpu_experimental_ynn_fusion_type"):
    assert "--xla_cpu_experimental_ynn_fusion_type=" in out


def _attention_last_row(X, Wq, Wk, Wv, n):
  N = X.shape[0]
  q, k, v = X @ Wq, X @ Wk, X @ Wv
  s = q @ k.T / 8.0
  i, j = jnp.arange(N)[:, None], jnp.arange(N)[None, :]
  p = jax.nn.softmax(jnp.where((j <= i) & (j < n), s, -jnp.inf), -1)
  return (p @ v)[n - 1]


def test_ynn_regression_vmapped_attention_n1024():
  N, d = 1024, 64
  X = jax.random.normal(jax.random.key(0), (N, d), jnp.float32)
  W = [jax.random.normal(jax.random.key(i), (d, d), jnp.float32) / 8 for i in (1, 2, 3)]
  lens = jnp.asarray([4, 37, 100, N - 1, N])
  got = np.asarray(jax.jit(jax.vmap(_attention_last_row, in_axes=(None, None, None, None, 0)))(
      X, *W, lens))
  Xn, Wn = np.asarray(X, np.float64), [np.asarray(w, np.float64) for w in W]
  for row, n in zip(got, np.asarray(lens)):
    x = Xn[:n]
    q, k, v = x @ Wn[0], x @ Wn[1], x @ Wn[2]
    s = q[-1] @ k.T / 8.0
    w = np.exp(s - s.max()); w /= w.sum()
    np.testing.assert_allclose(row, w @ v, atol=1e-4, rtol=0)  # broken path: 2.37


def test_ynn_regression_jit_jacrev():
  N, d = 64, 16
  X = jax.random.normal(jax.random.key(4), (N, d), jnp.float32)
  W = [jax.random.normal(jax.random.key(i), (d, d), jnp.float32) / 4 for i in (5, 6, 7)]
  f = lambda x: _attention_last_row(x, *W, N)
  jac = np.asarray(jax.jit(jax.jacrev(f))(X))
  with jax.enable_x64(True):
    Xd = jnp.asarray(np.asarray(X), jnp.float64)
    Wd = [jnp.asarray(np.asarray(w), jnp.float64) for w in W]
    ref = np.asarray(jax.jacrev(lambda x: _attention_last_row(x, *Wd, N))(Xd))
  np.testing.assert_allclose(jac, ref, atol=2e-5, rtol=0)  # broken path: 0.13


def _flags_in_child(env_extra: dict) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "COLLAPSE_JAX_ISA")}
  env.update(env_extra)
  code = "import os, collapse_jax; print(os.environ.get('XLA_FLAGS', ''))"
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.skipif(collapse_jax.isa.native_isa() is None, reason="the reference path is x86-only")
def test_reference_path_is_pinned_unless_native_or_user_cap():
  ref = _flags_in_child({}).stdout
  assert f"--xla_cpu_max_isa={xla_env.REFERENCE_ISA}" in ref
  assert "--xla_cpu_enable_platform_dependent_math=false" in ref
  native = _flags_in_child({"COLLAPSE_JAX_ISA": "native"}).stdout
  assert "xla_cpu_max_isa" not in native and "platform_dependent_math" not in native
  user = _flags_in_child({"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}).stdout
  assert user.count("--xla_cpu_max_isa") == 1 and "--xla_cpu_max_isa=AVX2" in user
  bad = _flags_in_child({"COLLAPSE_JAX_ISA": "fast"})
  assert bad.returncode != 0 and "COLLAPSE_JAX_ISA='fast'" in bad.stderr


def _fake_cache(root, entries):
  for i, (level, kind, size) in enumerate(entries):
    d = root / f"index{i}"
    d.mkdir(parents=True)
    for name, value in (("level", level), ("type", kind), ("size", size)):
      (d / name).write_text(f"{value}\n")


def test_cache_sizes_from_sysfs_and_lscpu(tmp_path):
  """L1d/L2/L3 bytes of one instance from sysfs (instruction caches ignored), the missing ones
  from lscpu's NAME ONE-SIZE table, None where neither says; never an exception."""
  from collapse_jax import isa
  _fake_cache(tmp_path / "cache", [(1, "Data", "48K"), (1, "Instruction", "32K"),
                                   (2, "Unified", "2048K"), (3, "Unified", "32M")])
  assert isa.cache_sizes(str(tmp_path / "cache"), lscpu=None) == {
      "cache_l1d": 48 << 10, "cache_l2": 2 << 20, "cache_l3": 32 << 20}
  _fake_cache(tmp_path / "partial", [(1, "Data", "32K")])
  script = tmp_path / "lscpu"
  script.write_text("#!/bin/sh\nprintf 'NAME ONE-SIZE\\nL1d 65536\\nL1i 32768\\nL2 1048576\\n'\n")
  script.chmod(0o755)
  assert isa.cache_sizes(str(tmp_path / "partial"), lscpu=(str(script),)) == {
      "cache_l1d": 32 << 10, "cache_l2": 1 << 20, "cache_l3": None}
  nowhere = str(tmp_path / "no-such-dir")
  assert isa.cache_sizes(nowhere, lscpu=(str(tmp_path / "no-lscpu"),)) == {
      "cache_l1d": None, "cache_l2": None, "cache_l3": None}
  _fake_cache(tmp_path / "garbled", [("x", "Data", "lots")])
  assert isa.cache_sizes(str(tmp_path / "garbled"), lscpu=None)["cache_l1d"] is None


def test_cpu_identity_and_core_counts():
  from collapse_jax import isa
  text = ("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
          "model name\t: AMD EPYC 9R14\nstepping\t: 1\n")
  assert isa.cpu_identity(text) == {"cpu_vendor": "AuthenticAMD", "cpu_family": 25,
                                    "cpu_model_number": 17, "cpu_stepping": 1}
  arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n"
  assert set(isa.cpu_identity(arm).values()) == {None}
  assert set(isa.cpu_identity("").values()) == {None}
  cores = isa.core_counts()
  assert cores["cpu_count"] == os.cpu_count() and 1 <= cores["cpu_count_usable"] <= os.cpu_count()
  info = xla_env.numerics_path()
  for key in ("cpu_family", "cpu_model_number", "cpu_stepping", "cache_l1d", "cache_l2",
              "cache_l3", "cpu_count", "cpu_count_usable"):
    assert key in info
  line = isa.describe_cpu({"cpu_model": "X", "native_isa": "AVX512", "cpu_family": 25,
                           "cache_l2": 1 << 20, "cache_l3": 32 << 20, "cpu_count": 2})
  assert line == "X (AVX512; family 25; L2 1 MiB, L3 32 MiB; 2 cores)"
