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


def apply_guards() -> dict[str, str]:
  """Append the guard flags to XLA_FLAGS (idempotent). Returns the flags this call added."""
  flags = os.environ.get("XLA_FLAGS", "")
  added = {}
  for name, value in GUARD_FLAGS:
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


def enable_x64() -> None:
  """Enable float64 globally (needed by the `float64` reference preset)."""
  import jax
  jax.config.update("jax_enable_x64", True)
