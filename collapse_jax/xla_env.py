"""Process-level numerics guards, applied once, before JAX initialises a backend.

XLA reads ``XLA_FLAGS`` when its first backend starts (the first array op), not when
``jax`` is imported, so appending flags here is effective as long as no JAX computation
ran before ``import collapse_jax``. We *append* to the user's ``XLA_FLAGS`` and never
override a flag the user set. XLA aborts the process on a flag it does not know, so a
flag is only added if the installed jaxlib binary contains its name.

Guards:
  * ``--xla_cpu_experimental_ynn_fusion_type=`` (empty): XLA:CPU's YNNPACK fusions gave
    wrong results for a vmapped masked attention at N=1024 (error 2.37 vs float64) and
    for jit(jacrev) (0.13) on jaxlib 0.10.2. Disabling them fixes both
    (tests/test_xla_env.py keeps the regression).
  * ``--xla_allow_excess_precision=false``: forbids XLA from skipping our explicit
    f32->bf16->f32 rounding round trips (the precision policy's rounding points).

The reference path (on x86-64, unless ``COLLAPSE_JAX_ISA=native``):
  * ``--xla_cpu_max_isa=AVX``: XLA:CPU's LLVM backend generates code for AVX only, on every
    CPU. Without the cap it targets the host's best ISA, and two steps then change their low
    bits with the CPU (measured, BUILD_NOTES "What bitwise equal means"): FMA contraction of
    ``a*b+c`` (AVX2 has FMA, AVX does not; this also changes short sums of squares) and the
    f32 polynomial kernels (tanh, exp, logistic, log) built on it. AVX is the floor: every
    jaxlib wheel refuses to import on a CPU without AVX, and below AVX (SSE4_2) XLA:CPU
    cannot convert float16 (jaxlib 0.10.2: "Failed to materialize symbols").
  * ``--xla_cpu_enable_platform_dependent_math=false``: rsqrt from sqrt and divide instead
    of the ISA's approximate reciprocal square root (whose bits differ between SSE, AVX and
    AVX2 codegen).

  The third ISA- and machine-dependent step, the summation order of long dot contractions
  (Eigen splits contractions longer than ~512 differently for different core counts), is
  made explicit in the precision policy (``Policy.accum_block``), not here.

  ``COLLAPSE_JAX_ISA=native`` drops both reference flags: faster on AVX2/AVX-512 machines,
  but low bits (and so bitwise-equality onsets) may then differ from one CPU to another. A
  ``--xla_cpu_max_isa`` the user put in XLA_FLAGS is always respected.
"""
from __future__ import annotations

import glob
import mmap
import os
import warnings

GUARD_FLAGS = (
    ("xla_cpu_experimental_ynn_fusion_type", ""),
    ("xla_allow_excess_precision", "false"),
)
REFERENCE_ISA = "AVX"
REFERENCE_FLAGS = (
    ("xla_cpu_max_isa", REFERENCE_ISA),
    ("xla_cpu_enable_platform_dependent_math", "false"),
)
ISA_ENV = "COLLAPSE_JAX_ISA"  # "reference" (default) or "native"
ISA_MODES = ("reference", "native")

_applied: dict[str, str] = {}
_applied_after_backend_start = False


def _jaxlib_binaries() -> list[str]:
  import importlib.util
  spec = importlib.util.find_spec("jaxlib")
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  return sorted(glob.glob(os.path.join(root, "*.so")), key=os.path.getsize, reverse=True)[:3]


def jaxlib_knows_flag(name: str) -> bool:
  """True if a jaxlib shared library contains the flag name (cheap mmap scan)."""
  needle = name.encode()
  for path in _jaxlib_binaries():
    try:
      with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m.find(needle) >= 0:
          return True
    except (OSError, ValueError):
      continue
  return False


def _backend_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(getattr(xla_bridge, "_backends", {}))
  except Exception:  # private API moved: assume not started
    return False


def isa_mode() -> str:
  """``COLLAPSE_JAX_ISA``: 'reference' (default) or 'native'; anything else raises."""
  mode = os.environ.get(ISA_ENV, "reference").strip().lower() or "reference"
  if mode not in ISA_MODES:
    raise ValueError(f"{ISA_ENV}={mode!r}: expected one of {', '.join(ISA_MODES)}")
  return mode


def _wanted_flags() -> tuple:
  from collapse_jax import isa
  if isa_mode() == "native" or isa.native_isa() is None:  # no x86 reference off x86
    return GUARD_FLAGS
  return GUARD_FLAGS + REFERENCE_FLAGS


def apply_guards() -> dict[str, str]:
  """Append the guard flags (and, by default, the reference-path flags) to XLA_FLAGS
  (idempotent). Returns the flags this call added."""
  flags = os.environ.get("XLA_FLAGS", "")
  added = {}
  for name, value in _wanted_flags():
    if f"--{name}" in flags:  # the user (or an earlier call) decided: respect it
      continue
    if not jaxlib_knows_flag(name):
      continue
    flags = (flags + f" --{name}={value}").strip()
    added[name] = value
  if added:
    global _applied_after_backend_start
    if _backend_started():
      _applied_after_backend_start = True
      warnings.warn(
          "collapse_jax was imported after JAX started a backend; its XLA guard flags "
          f"{sorted(added)} cannot take effect in this process. Import collapse_jax (or set "
          "XLA_FLAGS) before running any JAX computation.", RuntimeWarning, stacklevel=3)
    os.environ["XLA_FLAGS"] = flags
    _applied.update(added)
  return added


def guards_in_force() -> bool:
  """False if collapse_jax appended its guard flags after a JAX backend had started (they
  then do not apply to this process); True otherwise."""
  return not _applied_after_backend_start


def numerics_path(backend: str | None = None) -> dict:
  """Which path computes the bits, for results files and console lines.

  ``portable`` is True on XLA:CPU when the effective ISA is the reference ISA and the
  platform-dependent math is off: then the code XLA:CPU generates itself (elementwise ops,
  reductions, the f32 kernels, rsqrt) gives the same bits on every x86-64 CPU. Its dot
  kernels do not: they pick their blocking from the CPU (ISA, cache sizes, core count)
  whatever the cap, so a dot, and so a forward, may differ between two CPUs even of one ISA
  class (BUILD_NOTES "What bitwise equal means"). Hence the CPU's identity (vendor, family,
  model number, stepping), its cache sizes and core counts are recorded too
  (``isa.cpu_info``; None where the host does not say)."""
  from collapse_jax import isa
  if backend is None:
    import jax
    backend = jax.default_backend()
  flags = os.environ.get("XLA_FLAGS", "")
  eff = isa.effective_isa()
  portable_math = "--xla_cpu_enable_platform_dependent_math=false" in flags
  if backend != "cpu":
    name, portable = f"{backend} backend (not the CPU reference path)", False
  elif eff is None:
    name, portable = "XLA:CPU, non-x86 host (no reference path)", False
  elif eff == REFERENCE_ISA and portable_math and guards_in_force():
    name, portable = f"XLA:CPU reference path (max ISA {eff}, no FMA, portable math)", True
  else:
    how = "native ISA" if isa.max_isa_flag() is None else "max ISA"
    name, portable = f"XLA:CPU {how} {eff} (bits may differ on other CPUs)", False
  return {"name": name, "portable": portable, "isa_mode": isa_mode(), "backend": backend,
          **isa.cpu_info()}


def enable_x64() -> None:
  """Enable float64 globally (needed by the `float64` reference preset)."""
  import jax
  jax.config.update("jax_enable_x64", True)
