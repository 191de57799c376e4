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

What the reference path controls (:func:`controlled`): the probes without a dot, code that
XLA:CPU's LLVM backend generates under the cap; their fingerprints are goldens that must
hold on every x86-64 CPU (tests/test_isa.py). What it does not: XLA:CPU's dot
kernels choose their blocking from the CPU (ISA, cache sizes, core count; :func:`cpu_info`
records them), so dot probes and whole forwards are compared with recorded CPUs as a report
(:func:`compare_fingerprints`, ``python -m experiments.isa_probe``), never as a test.
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
  text = _proc_cpuinfo()
  if text is None:
    return model, frozenset(flags)
  m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
  if m:
    model = m.group(1).strip()
  m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
  if m:
    flags = set(m.group(1).split())
  return model, frozenset(flags)


@functools.lru_cache(maxsize=None)
def _proc_cpuinfo() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      return f.read()
  except OSError:
    return None


def cpu_identity(cpuinfo: str | None = None) -> dict:
  """The CPU's vendor, family, model number and stepping (x86 ``/proc/cpuinfo``; None where a
  field is absent: off Linux, or on aarch64, which names them differently)."""
  text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
  out = {"cpu_vendor": None, "cpu_family": None, "cpu_model_number": None, "cpu_stepping": None}
  if not text:
    return out
  for key, field in (("cpu_vendor", "vendor_id"), ("cpu_family", "cpu family"),
                     ("cpu_model_number", "model"), ("cpu_stepping", "stepping")):
    m = re.search(rf"^{field}\s*:\s*(.+)$", text, re.M)
    if m:
      value = m.group(1).strip()
      out[key] = int(value) if key != "cpu_vendor" and value.isdigit() else value
  return out


CACHE_LEVELS = ("l1d", "l2", "l3")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size_bytes(text: str) -> int | None:
  """'32K' / '16384K' / '1M' / '524288' -> bytes; None if unreadable."""
  m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.I)
  return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()] if m else None


def _cache_name(level: str, kind: str) -> str | None:
  kind = kind.strip().lower()
  if level.strip() == "1":
    return "l1d" if kind == "data" else None
  if level.strip() in ("2", "3") and kind in ("unified", "data"):
    return f"l{level.strip()}"
  return None


def cache_sizes(sysfs: str = "/sys/devices/system/cpu/cpu0/cache",
                lscpu: tuple | None = ("lscpu", "-B", "-C=NAME,ONE-SIZE")) -> dict:
  """Bytes of ONE instance of the L1 data, L2 and L3 caches that CPU 0 uses (what XLA:CPU's
  dot kernels may size their blocking from): ``{"cache_l1d": ..., "cache_l2": ...,
  "cache_l3": ...}``. Read from ``sysfs`` (Linux), else from ``lscpu`` (``None`` skips it);
  a size that neither gives is None. Never raises (non-Linux hosts give all None)."""
  out = {f"cache_{k}": None for k in CACHE_LEVELS}

  def read(*path):
    with open(os.path.join(sysfs, *path)) as f:
      return f.read()

  try:
    for entry in sorted(os.listdir(sysfs)):
      if not entry.startswith("index"):
        continue
      name = _cache_name(read(entry, "level"), read(entry, "type"))
      if name and out[f"cache_{name}"] is None:
        out[f"cache_{name}"] = _size_bytes(read(entry, "size"))
  except (OSError, ValueError):
    pass
  if lscpu and any(v is None for v in out.values()):
    import subprocess
    try:
      text = subprocess.run(list(lscpu), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError, ValueError):
      text = ""
    for line in text.splitlines():  # NAME ONE-SIZE, e.g. "L2   524288"
      parts = line.split()
      key = f"cache_{parts[0].lower()}" if len(parts) >= 2 else None
      if key in out and out[key] is None:
        out[key] = _size_bytes(parts[1])
  return out


def core_counts() -> dict:
  """``cpu_count``: logical CPUs of the host; ``cpu_count_usable``: those this process may
  run on (its affinity mask; None where the OS has no such call). XLA:CPU sizes its thread
  pool, and so how it splits a dot, from the usable count."""
  try:
    usable = len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    usable = None
  return {"cpu_count": os.cpu_count(), "cpu_count_usable": usable}


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
  """CPU model, its vector-ISA flags, the ISA XLA:CPU compiles for, and what else XLA:CPU's
  dot kernels may pick their blocking from (results files): vendor, family, model number and
  stepping (:func:`cpu_identity`), cache sizes in bytes (:func:`cache_sizes`) and core counts
  (:func:`core_counts`). Absent fields are None."""
  model, flags = _cpuinfo()
  native = native_isa(flags)
  return {
      "cpu_model": model,
      **cpu_identity(),
      "machine": platform.machine(),
      "cpu_isa_flags": sorted(f for f in _REPORTED_FLAGS if f in flags),
      "native_isa": native,
      "xla_cpu_max_isa": max_isa_flag(),
      "effective_isa": effective_isa(native=native),
      **_cache_sizes_once(),
      **core_counts(),
  }


@functools.lru_cache(maxsize=None)
def _cache_sizes_once() -> dict:
  return cache_sizes()


def describe_cpu(info: dict) -> str:
  """One line naming a CPU from a :func:`cpu_info` dict (missing fields left out): model,
  native ISA, family/model/stepping, caches and cores."""
  kib = lambda b: (f"{b >> 20} MiB" if b % (1 << 20) == 0 else f"{b >> 10} KiB")
  parts = [str(info.get("native_isa") or "no x86 ISA")]
  ident = [f"{k} {info[f]}" for k, f in (("family", "cpu_family"), ("model", "cpu_model_number"),
                                          ("stepping", "cpu_stepping")) if info.get(f) is not None]
  caches = [f"{k.upper()} {kib(info[f'cache_{k}'])}" for k in CACHE_LEVELS
            if info.get(f"cache_{k}")]
  if ident:
    parts.append(" ".join(ident))
  if caches:
    parts.append(", ".join(caches))
  if info.get("cpu_count_usable") or info.get("cpu_count"):
    parts.append(f"{info.get('cpu_count_usable') or info.get('cpu_count')} cores")
  return f"{info.get('cpu_model', '?')} ({'; '.join(parts)})"


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


# -- fingerprints: what the reference path controls, and what it only reports ---------------
def fingerprint(a) -> str:
  """SHA-256 of an array's dtype, shape and bytes (the goldens' and records' format)."""
  import hashlib
  import numpy as np
  a = np.ascontiguousarray(np.asarray(a))
  return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()


def probe_fingerprints(outputs: dict | None = None) -> dict:
  """``{"probe/<name>": fingerprint}`` of :func:`probe_outputs` (computed here if not given)."""
  outputs = probe_outputs() if outputs is None else outputs
  return {f"probe/{k}": fingerprint(v) for k, v in outputs.items()}


def controlled(key: str) -> bool:
  """True for the fingerprints whose bits the reference path decides on every x86 CPU: the
  probes without a dot (sums, sums of squares, ``a*b+c``, ``x/3``, the f32 kernels, rsqrt),
  code that XLA:CPU's LLVM backend generates under the ISA cap and portable math. False for
  a dot probe and for a whole forward: XLA:CPU's dot kernels pick their blocking, and so
  their summation order, from the CPU (its ISA, caches and core count), whatever the cap
  (BUILD_NOTES "What bitwise equal means")."""
  return key.startswith("probe/") and not key.startswith("probe/dot_")


def compare_fingerprints(got: dict, recorded: dict) -> dict:
  """This machine's fingerprints ``got`` against one recorded set: the keys both have, split
  into ``equal`` / ``differ``, each as ``controlled`` (:func:`controlled`) and ``reported``
  keys, plus ``missing`` (recorded, not computed here)."""
  both = sorted(set(got) & set(recorded))
  out = {"equal": {"controlled": [], "reported": []}, "differ": {"controlled": [], "reported": []},
         "missing": sorted(set(recorded) - set(got))}
  for k in both:
    out["equal" if got[k] == recorded[k] else "differ"][
        "controlled" if controlled(k) else "reported"].append(k)
  return out


# -- the isa_probe app's fingerprints and report ---------------------------------------------

FORWARD_PRESETS = ("float32", "bfloat16", "bfloat16_pure", "float16", "float8_e4m3fn",
                   "float8_e5m2")


def forward_fingerprints() -> dict:
  """``{"<preset>/<y|residual|logits>": fingerprint}`` of a 2-layer model's forward over 300
  tokens (long enough for a blocked contraction in the attention's value sum)."""
  import jax
  import numpy as np
  from collapse_jax import model, precision
  from collapse_jax.config import DecoderConfig
  cfg = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, pe="rope",
                      norm="layernorm", mlp="gelu", mlp_dim=64, vocab_size=40)
  ids = np.random.default_rng(7).integers(0, cfg.vocab_size, (2, 300)).astype(np.int32)
  params = model.init_params(cfg, jax.random.key(0))
  out = {}
  for name in FORWARD_PRESETS:
    pol = precision.get_policy(name)
    if pol.unavailable_reason():
      continue
    res = jax.jit(lambda p, x: model.forward(cfg, pol, p, x, collect=("residual", "logits")))(
        pol.cast_params(params), ids)
    out.update({f"{name}/{k}": fingerprint(v) for k, v in res.items()})
  return out


def compare_with_records(got: dict, records: list, here: dict) -> list:
  """Print and return one comparison per record (``compare_fingerprints``)."""
  print(f"\nthis machine: {describe_cpu(here['cpu'])}, jaxlib {here['jaxlib']}; "
        "against the recorded fingerprints:")
  rows = []
  for i, rec in enumerate(records):
    cmp = compare_fingerprints(got, rec["sha256"])
    rows.append({"cpu": rec["cpu"], "jaxlib": rec["jaxlib"], "commit": rec.get("commit"),
                 "date": rec.get("date"), **cmp})
    count = lambda kind: (len(cmp["equal"][kind]),
                          len(cmp["equal"][kind]) + len(cmp["differ"][kind]))
    print(f"[{i + 1}] {describe_cpu(rec['cpu'])}, jaxlib {rec['jaxlib']}, recorded "
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
        "claim and fails tests/test_isa.py.")
  return rows
