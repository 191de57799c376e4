"""The host CPU, the vector ISA XLA:CPU generates code for, and the primitive probes that
show which steps of a forward pass change their low bits with that ISA.

Vocabulary (used in BUILD_NOTES' "What bitwise equal means"):
  * *native ISA*: the best x86 vector ISA this CPU has (``AVX512`` / ``AVX2`` / ``AVX`` /
    ``SSE4_2``), read from /proc/cpuinfo.
  * *cap*: the value of ``--xla_cpu_max_isa`` in XLA_FLAGS, if any.
  * *effective ISA*: the lower of the two; what XLA:CPU's LLVM backend generates code for.
  * *reference path*: XLA:CPU with the cap pinned by :mod:`collapse_jax.xla_env`
    (:data:`collapse_jax.xla_env.REFERENCE_ISA`), on which every "bitwise" claim of the
    suite is made.

:func:`probe_outputs` evaluates a fixed set of primitive ops (dots of several contraction
lengths, reductions, fused multiply-adds, transcendental kernels) on fixed random inputs
and returns their outputs; ``experiments.isa_probe`` runs it in one subprocess per cap and
compares the bits. Nothing here changes process state.
"""
from __future__ import annotations

import functools
import os
import platform
import re

# x86 ISA levels XLA:CPU's --xla_cpu_max_isa understands, lowest first, with the
# /proc/cpuinfo flags a CPU needs for each.
X86_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512")
_LEVEL_FLAGS = {
    "SSE4_2": ("sse4_2",),
    "AVX": ("avx",),
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f",),
}
_REPORTED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                   "avx512_bf16", "avx512_fp16", "amx_bf16", "neon", "asimd", "sve")


@functools.lru_cache(maxsize=None)  # the CPU does not change within a process
def _cpuinfo() -> tuple[str, frozenset[str]]:
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return model, frozenset(flags)
  m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
  if m:
    model = m.group(1).strip()
  m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
  if m:
    flags = set(m.group(1).split())
  return model, frozenset(flags)


def native_isa(flags: set[str] | None = None) -> str | None:
  """Best x86 level of :data:`X86_LEVELS` the CPU supports; None off x86."""
  if flags is None:
    flags = _cpuinfo()[1]
  best = None
  for level in X86_LEVELS:
    if all(f in flags for f in _LEVEL_FLAGS[level]):
      best = level
  return best


def max_isa_flag(xla_flags: str | None = None) -> str | None:
  """The value of the last ``--xla_cpu_max_isa`` in XLA_FLAGS (None if absent)."""
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  found = re.findall(r"--xla_cpu_max_isa=(\S*)", xla_flags)
  return found[-1] if found else None


def effective_isa(cap: str | None = None, native: str | None = None) -> str | None:
  """min(native, cap) over :data:`X86_LEVELS` (the native ISA when there is no cap)."""
  native = native_isa() if native is None else native
  cap = max_isa_flag() if cap is None else cap
  if native is None or not cap or cap.upper() not in X86_LEVELS:
    return native
  return X86_LEVELS[min(X86_LEVELS.index(native), X86_LEVELS.index(cap.upper()))]


def cpu_info() -> dict:
  """CPU model, its vector-ISA flags, and the ISA XLA:CPU compiles for (results files)."""
  model, flags = _cpuinfo()
  native = native_isa(flags)
  return {
      "cpu_model": model,
      "machine": platform.machine(),
      "cpu_isa_flags": sorted(f for f in _REPORTED_FLAGS if f in flags),
      "native_isa": native,
      "xla_cpu_max_isa": max_isa_flag(),
      "effective_isa": effective_isa(native=native),
  }


# -- primitive probes ------------------------------------------------------------------------
def probe_outputs(seed: int = 0) -> dict:
  """Outputs (numpy) of the primitive ops a forward pass is built from, each jitted on fixed
  random inputs. Keys name the op and its size; see BUILD_NOTES for what changes with ISA.

  * ``dot_f32_K<k>``: [8, k] x [k, 16] float32 matmul, HIGHEST precision (k = 8 ... 1024).
  * ``dot_bf16_K<k>``: the same with bf16 operands and f32 accumulation (products exact,
    so only the summation order can change bits).
  * ``sum_f32_<n>`` / ``sumsq_f32_<n>``: row sums of [64, n] f32 (and of its squares).
  * ``fma_f32``: ``a * b + c`` in one fusion (contracted to an FMA or not).
  * ``div_const``: ``x / 3`` (rewritten to a reciprocal multiply or not).
  * ``exp``, ``tanh``, ``logistic``, ``rsqrt``, ``sin``, ``cos``, ``log``: f32 kernels on
    2^16 inputs each.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(seed)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  hi = jax.lax.Precision.HIGHEST
  out = {}
  for k in (8, 16, 32, 64, 128, 256, 1024):
    a, b = f32(8, k), f32(k, 16)
    out[f"dot_f32_K{k}"] = jax.jit(lambda x, y: jnp.dot(x, y, precision=hi))(a, b)
    out[f"dot_bf16_K{k}"] = jax.jit(lambda x, y: jnp.dot(
        x.astype(jnp.bfloat16), y.astype(jnp.bfloat16), precision=hi,
        preferred_element_type=jnp.float32))(a, b)
  for n in (8, 16, 32, 64, 1024):
    x = f32(64, n)
    out[f"sum_f32_{n}"] = jax.jit(lambda v: jnp.sum(v, axis=-1))(x)
    out[f"sumsq_f32_{n}"] = jax.jit(lambda v: jnp.sum(v * v, axis=-1))(x)
  a, b, c = f32(1 << 14), f32(1 << 14), f32(1 << 14)
  out["fma_f32"] = jax.jit(lambda x, y, z: x * y + z)(a, b, c)
  out["div_const"] = jax.jit(lambda x: x / 3.0)(a)
  x = (4 * rng.standard_normal(1 << 16)).astype(np.float32)
  pos = np.abs(x) + np.float32(1e-3)
  kernels = {"exp": jnp.exp, "tanh": jnp.tanh, "logistic": jax.nn.sigmoid,
             "rsqrt": jax.lax.rsqrt, "sin": jnp.sin, "cos": jnp.cos, "log": jnp.log}
  for name, fn in kernels.items():
    arg = pos if name in ("rsqrt", "log") else x
    out[name] = jax.jit(fn)(arg)
  return {k: np.asarray(v) for k, v in out.items()}


def probe_under(setting: str, path: str) -> None:
  """Run :func:`probe_outputs` in a fresh process on one numerics path and save it (npz).

  ``setting``: 'reference' (collapse_jax's pinned path), 'native' (``COLLAPSE_JAX_ISA=
  native``) or an ISA cap for ``--xla_cpu_max_isa`` (e.g. 'SSE4_2', 'AVX2'). Raises
  RuntimeError with the child's last line if it fails."""
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "COLLAPSE_JAX_ISA")}
  if setting == "native":
    env["COLLAPSE_JAX_ISA"] = "native"
  elif setting != "reference":
    if setting.upper() not in X86_LEVELS:
      raise ValueError(f"unknown ISA setting {setting!r}; valid: reference, native, "
                       f"{', '.join(X86_LEVELS)}")
    env["XLA_FLAGS"] = f"--xla_cpu_max_isa={setting.upper()}"
  code = ("import sys, numpy as np, collapse_jax\n"
          "from collapse_jax import isa\n"
          "np.savez(sys.argv[1], **isa.probe_outputs())\n")
  r = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                     text=True)
  if r.returncode:
    last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"probe under {setting} failed: {last}")


def differing_fraction(outputs: dict, reference: str) -> dict:
  """{probe: {setting: fraction of elements whose bits differ from ``reference``'s}} for
  ``outputs`` = {setting: {probe: array}}."""
  import numpy as np
  ref = outputs[reference]
  return {k: {s: float(np.mean(np.asarray(o[k]).view(np.uint32)
                               != np.asarray(ref[k]).view(np.uint32)))
              for s, o in outputs.items()} for k in ref}
