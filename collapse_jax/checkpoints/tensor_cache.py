"""The cache of a checkpoint file's dequantized float32 tensors (GGUF loading, ``gguf.py``).

Entries are keyed by the file's stem, size and sha256, so a changed file is never served
from a stale entry. An entry is ``<key>.json`` (the metadata) and ``<key>.npz`` (the tensors),
both written atomically, the metadata first: a hit needs the npz, which is written last, so
a killed write leaves no half entry.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE_ENV = "COLLAPSE_JAX_GGUF_CACHE"


def default_cache_dir() -> Path:
  return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "collapse_jax"


def _file_key(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return f"{path.stem}-{path.stat().st_size}-{h.hexdigest()[:16]}"


def cache_dir(cache: bool | str | os.PathLike | None) -> Path | None:
  """The directory ``cache`` names: True = :func:`default_cache_dir`, a path = that
  directory, None = on iff env ``COLLAPSE_JAX_GGUF_CACHE`` is set (not '0'), False = none."""
  if cache is None:
    cache = os.environ.get(CACHE_ENV, "") not in ("", "0")
  return (default_cache_dir() if cache is True else Path(cache)) if cache else None


def cached_read(path: Path, cache: bool | str | os.PathLike | None,
                read: Callable[[Path], tuple[dict[str, Any], dict[str, np.ndarray]]]):
  """(metadata, tensors) of ``path``: from the cache when ``cache`` enables it and holds an
  entry, else ``read(path)`` (stored in the cache when enabled)."""
  where = cache_dir(cache)
  if where is None:
    return read(path)
  key = _file_key(path)
  npz, js = where / f"{key}.npz", where / f"{key}.json"
  if npz.is_file() and js.is_file():
    with np.load(npz) as z:
      tensors = {k: z[k] for k in z.files}
    return json.loads(js.read_text()), tensors
  md, tensors = read(path)
  where.mkdir(parents=True, exist_ok=True)
  tmp_js = js.with_suffix(f".tmp{os.getpid()}.json")
  tmp_js.write_text(json.dumps(md))
  os.replace(tmp_js, js)
  tmp = npz.with_suffix(f".tmp{os.getpid()}.npz")
  np.savez(tmp, **tensors)
  os.replace(tmp, npz)
  return md, tensors
