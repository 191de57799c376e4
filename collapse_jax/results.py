"""Results files: run directories, environment capture, atomic JSON/CSV writing."""
from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import math
import os
import platform
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from collapse_jax import xla_env


def make_run_dir(out: str | None, prefix: str) -> str:
  """``out`` if given (must not hold results already), else ``runs/<prefix>-<UTC stamp>``.
  Never silently overwrites an existing run: a non-empty ``out`` is an error."""
  if not out:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = os.path.join("runs", f"{prefix}-{stamp}")
    base, i = out, 1
    while os.path.exists(out):
      out, i = f"{base}-{i}", i + 1
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"--out {out!r} already holds files; choose a new directory "
                          "(runs are never overwritten)")
  os.makedirs(out, exist_ok=True)
  return out


def environment() -> dict:
  """Versions, backend, devices and XLA flags in force (for results.json)."""
  import jax
  import jaxlib
  import flax
  import ml_dtypes
  devs = jax.devices()
  return {
      "versions": {"python": sys.version.split()[0], "jax": jax.__version__,
                   "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                   "ml_dtypes": ml_dtypes.__version__, "numpy": np.__version__},
      "backend": jax.default_backend(),
      "device_kind": devs[0].device_kind,
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "process_count": jax.process_count(),
      "platform": platform.platform(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_guards_in_force": xla_env.guards_in_force(),
      # CPU model, ISA flags, effective max ISA and whether the bits are portable
      "numerics_path": xla_env.numerics_path(jax.default_backend()),
      "jax_enable_x64": bool(jax.config.jax_enable_x64),
      "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def header(experiment: str, flags: Mapping[str, Any], *, config: Any = None,
           policies: Iterable[Any] = (), **extra) -> dict:
  """The first keys of every results.json, in this order: ``experiment``; ``flags`` (the
  app's flags as given, ``cli.app_flags()``); ``config`` (a ``DecoderConfig`` or a dict of
  them, as dicts; omitted when None); ``policies`` (name -> ``Policy.describe()``; omitted
  when none); ``environment`` (:func:`environment`); then ``extra`` in the order given."""
  out: dict[str, Any] = {"experiment": experiment, "flags": dict(flags)}
  if config is not None:
    out["config"] = (config.to_dict() if hasattr(config, "to_dict")
                     else {k: c.to_dict() for k, c in config.items()})
  pols = list(policies)
  if pols:
    out["policies"] = {p.name: p.describe() for p in pols}
  return {**out, "environment": environment(), **extra}


def to_jsonable(obj: Any) -> Any:
  """numpy/jax scalars and arrays -> lists/numbers; non-finite floats -> strings."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
    arr = np.asarray(obj)
    if arr.dtype.kind == "V" or arr.dtype.itemsize == 1 and arr.dtype.kind == "f":
      arr = arr.astype(np.float32)
    if arr.ndim == 0:
      return to_jsonable(arr.item())
    if arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float64):
      arr = arr.astype(np.float64)
    return [to_jsonable(v) for v in arr.tolist()]
  if isinstance(obj, float) and not math.isfinite(obj):
    return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
  if isinstance(obj, (np.generic,)):
    return to_jsonable(obj.item())
  return obj


def from_jsonable(obj: Any) -> Any:
  """Undo :func:`to_jsonable`'s strings for non-finite floats ('nan', 'inf', '-inf'),
  recursively; everything else is returned as JSON gave it."""
  if isinstance(obj, dict):
    return {k: from_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [from_jsonable(v) for v in obj]
  if obj in ("nan", "inf", "-inf"):
    return float(obj)
  return obj


TMP_PREFIX = ".tmp-"  # atomic_open's temporary files


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
  """Open a temporary file next to ``path`` for writing; on success flush, fsync and rename
  it onto ``path`` (mode 0644), on any error delete it: ``path`` is either its old self or
  whole, never half-written."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def remove_temporaries(directory: str) -> None:
  """Delete the temporary files :func:`atomic_open` leaves in ``directory`` when a process is
  killed mid-write (a missing directory has none)."""
  for name in os.listdir(directory) if os.path.isdir(directory) else ():
    if name.startswith(TMP_PREFIX):
      try:
        os.unlink(os.path.join(directory, name))
      except FileNotFoundError:
        pass


def _atomic_write(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, data: Any, *, compact: bool = False) -> None:
  """Atomic JSON write (temp file in the same directory + rename). ``compact``: no
  indentation (large per-n arrays would otherwise put every number on its own line)."""
  text = (json.dumps(to_jsonable(data), separators=(",", ":")) if compact
          else json.dumps(to_jsonable(data), indent=1))
  _atomic_write(path, text + "\n")


def write_csv(path: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
  """Atomic CSV write, one dict per row restricted to ``columns``."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
  w.writeheader()
  for r in rows:
    w.writerow({k: to_jsonable(v) for k, v in r.items()})
  _atomic_write(path, buf.getvalue())


def write_jsonl(path: str, rows: Iterable[Any]) -> None:
  """Atomic JSON-lines write: one JSON object per row."""
  _atomic_write(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))


def read_results(directory: str, experiment: str) -> dict:
  """The results.json of an earlier ``experiment`` run in ``directory``; ValueError (one
  line) where there is none, it does not parse, or another experiment wrote it."""
  path = os.path.join(directory, "results.json")
  try:
    with open(path) as f:
      res = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: no readable results.json ({type(e).__name__})") from None
  if not isinstance(res, dict) or res.get("experiment") != experiment:
    got = res.get("experiment") if isinstance(res, dict) else None
    raise ValueError(f"{path}: written by {got!r}, not {experiment!r}")
  return res
