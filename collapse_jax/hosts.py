"""The processes of a job: JAX's distributed runtime, who owns which cell, the collectives.

Words (cell, shard: collapse_jax/jobs.py):

  process    one of ``--num_processes`` hosts joined by JAX's distributed runtime
             (``jax.distributed.initialize``); each runs the cells it owns (:func:`owner`) on its
             local devices, one cell per device at a time
  layout     processes x local devices, printed on the console and kept in results.json

The collectives (:func:`gather_shards`, :func:`barrier`, :func:`failed_processes`) must be
called on every process, never in a branch; with one process they talk to nobody.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from collapse_jax import results


@dataclasses.dataclass(frozen=True)
class Processes:
  """The processes of a job: ``count`` and this one's ``index`` (0 assembles the results)."""
  count: int = 1
  index: int = 0


def check_distributed(coordinator: str | None, num_processes: int | None,
                      process_id: int | None, auto: bool) -> None:
  """ValueError (one line) for an inconsistent set of distributed flags."""
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if auto and any(given):
    raise ValueError("--distributed auto-detects the cluster (TPU pods, Slurm); do not also "
                     "give --coordinator/--num_processes/--process_id")
  if any(given) and not all(given):
    raise ValueError("--coordinator, --num_processes and --process_id go together "
                     "(or use --distributed to auto-detect)")
  if all(given):
    if ":" not in coordinator:
      raise ValueError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id must be in [0, {num_processes}) for --num_processes="
                       f"{num_processes}, got {process_id}")


def start_processes(coordinator: str | None = None, num_processes: int | None = None,
                    process_id: int | None = None, auto: bool = False) -> Processes:
  """Join JAX's distributed runtime when asked (before any JAX computation); returns this
  process's place. Waits until every process has connected."""
  check_distributed(coordinator, num_processes, process_id, auto)
  if not (auto or coordinator):
    return Processes()
  import jax
  try:
    if auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator, num_processes=num_processes,
                                 process_id=process_id)
  except (RuntimeError, ValueError) as e:  # no cluster detected, coordinator unreachable
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(f"jax.distributed.initialize failed: {first}") from None
  return Processes(jax.process_count(), jax.process_index())


def owner(cell_ids: Sequence[str], count: int) -> dict[str, int]:
  """Which process runs each cell: its place among the sorted cell ids, modulo the process
  count. Stable (it depends only on the set of ids, which --resume checks), balanced (counts
  differ by at most one), and the same on every process without talking."""
  return {c: i % count for i, c in enumerate(sorted(cell_ids))}


def layout(procs: Processes) -> dict:
  """Processes x local devices, for the console and results.json."""
  import jax
  local = jax.local_devices()
  return {"processes": procs.count, "process_index": procs.index,
          "devices_total": jax.device_count(), "local_devices": [str(d) for d in local],
          "platform": local[0].platform,
          "sharded": procs.count > 1 or len(local) > 1,
          "how": "cells (dtype x model x seed) spread over processes by cell id and over each "
                 "process's devices one cell per device; a long cell (attention in query "
                 "chunks under --memory_budget) spreads its chunks over all of the process's "
                 "devices; either way a cell's bits equal a one-device run's"}


def describe_layout(lay: dict) -> str:
  return (f"layout: {lay['processes']} process(es) x {len(lay['local_devices'])} local "
          f"{lay['platform']} device(s) ({lay['devices_total']} in all); this is process "
          f"{lay['process_index']}; " + ("cells spread one per device, a long cell's query "
                                         "chunks over all" if lay["sharded"]
                                         else "one device, not sharded"))


def gather_shards(own: dict[str, dict], procs: Processes) -> dict[str, dict]:
  """Every process calls this (it holds collectives): each sends ``own``, the shards of the
  cells it owns (``jobs.load_shards``); all receive every shard by cell id. Works whether or
  not --out is a shared filesystem. One process: ``own`` itself."""
  if procs.count == 1:
    return own
  from jax.experimental import multihost_utils
  blob = np.frombuffer(json.dumps(results.to_jsonable(list(own.values()))).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([blob.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:blob.size] = blob
  every = multihost_utils.process_allgather(padded)
  got = {}
  for size, row in zip(np.asarray(sizes).reshape(-1), np.asarray(every)):
    for shard in json.loads(bytes(row[:int(size)]).decode()):
      got[shard["id"]] = results.from_jsonable(shard)
  return got


def barrier(name: str, procs: Processes) -> None:
  """Wait for every process (a collective: call it on every process, never in a branch)."""
  if procs.count > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def failed_processes(failed: bool, procs: Processes) -> list[int]:
  """The indices of the processes whose cells failed (a collective: every process calls it,
  whether or not it failed, so none waits for one that died of an exception)."""
  if procs.count == 1:
    return [0] if failed else []
  from jax.experimental import multihost_utils
  every = multihost_utils.process_allgather(np.asarray([int(failed)], np.int32))
  return [i for i, f in enumerate(np.asarray(every).reshape(-1)) if f]
