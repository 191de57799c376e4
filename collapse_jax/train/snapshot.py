"""Training snapshots: a TrainState's exact bits in one atomic npz (words: collapse_jax/train).

Not a checkpoint in the sense of ``collapse_jax.checkpoints`` (pretrained weights loaded into
the decoder): a snapshot is a training run's own state (step, master weights, optimizer
state) plus its history, written while it trains so that it can resume bit for bit.

One ``.npz`` written through ``results.atomic_open`` (temp file + rename: a half-written
snapshot never replaces a good one) holds every leaf by its key path, as raw bits: bf16 and
fp8 leaves (ml_dtypes' user-defined dtypes, which npz cannot describe) are stored as unsigned
ints of the same bits. A JSON header carries the leaf names, their dtypes and ``meta``
({'history', 'run': :func:`run_identity`}). Loading into a state of another structure, shape
or dtype, or with another identity, is a one-line ValueError: shapes alone cannot tell
float32 from bfloat16, or one task from another.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import results
from collapse_jax.config import DecoderConfig
from collapse_jax.train.state import Optimizer, TrainPrecision, TrainState

FILE = "snapshot.npz"


def run_identity(cfg: DecoderConfig, tp: TrainPrecision, opt: Optimizer, task: str, seed: int,
                 batch_size: int, l_train: int) -> dict:
  """What decides a run's trajectory (stored in its snapshots as meta['run'])."""
  return {"config": cfg.to_dict(), "preset": tp.name, "optimizer": dataclasses.asdict(opt),
          "task": task, "seed": int(seed), "batch_size": int(batch_size),
          "l_train": int(l_train)}


def _named_leaves(tree) -> tuple[list[str], list]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [jax.tree_util.keystr(k) for k, _ in flat], [v for _, v in flat]


def save(path: str, state: TrainState, meta: dict) -> None:
  """Write ``state`` (every leaf as raw bits, with its dtype name) and ``meta`` (JSON) to
  ``path`` atomically."""
  names, leaves = _named_leaves(state)
  arrays, dtypes = {}, {}
  for i, (name, leaf) in enumerate(zip(names, leaves)):
    a = np.asarray(jax.device_get(leaf))
    dtypes[name] = str(a.dtype)
    arrays[f"leaf_{i}"] = a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.isbuiltin == 2 else a
  header = json.dumps({"names": names, "dtypes": dtypes, "meta": meta})
  with results.atomic_open(path, "wb") as f:
    np.savez(f, header=np.frombuffer(header.encode(), np.uint8), **arrays)


def load(path: str, like: TrainState, expect: dict | None = None) -> tuple[TrainState, dict]:
  """(state, meta) from :func:`save`, into the structure of ``like`` (a fresh state of the
  same config, precision and optimizer). A file whose leaves differ in name, shape or dtype
  is a ValueError naming the first difference; so is one whose meta['run'] differs from
  ``expect`` (:func:`run_identity`)."""
  import ml_dtypes  # noqa: F401  (registers bfloat16 and the fp8 dtypes with numpy)
  with np.load(path) as z:
    header = json.loads(bytes(z["header"]).decode())
    names, leaves = _named_leaves(like)
    if header["names"] != names:
      extra = sorted(set(header["names"]) ^ set(names))[:3]
      raise ValueError(f"snapshot {path}: its state has other leaves than this run's "
                       f"(e.g. {extra}): a different model or optimizer")
    got = header["meta"].get("run")
    if expect is not None and got != json.loads(json.dumps(expect)):
      diff = sorted(k for k in set(expect) | set(got or {})
                    if json.dumps((got or {}).get(k)) != json.dumps(expect.get(k)))
      what = ", ".join(diff) if diff else "no run record"
      raise ValueError(f"snapshot {path} is of another run ({what} differ)")
    out = []
    for i, (name, ref) in enumerate(zip(names, leaves)):
      a = z[f"leaf_{i}"]
      dt = np.dtype(header["dtypes"][name])
      if a.dtype != dt:
        a = a.view(dt)
      if a.shape != tuple(ref.shape) or dt != np.dtype(ref.dtype):
        raise ValueError(f"snapshot {path}: {name} is {dt}{list(a.shape)}, this run needs "
                         f"{np.dtype(ref.dtype)}{list(ref.shape)}")
      out.append(jnp.asarray(a))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), out), header["meta"]


def restore(path: str, like: TrainState, expect: dict) -> tuple[TrainState, dict] | None:
  """:func:`load` if ``path`` holds a snapshot, else None; first removes the temporary files
  a killed write left beside it (the directory is the run's own)."""
  results.remove_temporaries(os.path.dirname(path) or ".")
  return load(path, like, expect) if os.path.exists(path) else None
