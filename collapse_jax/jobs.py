"""A sweep as a job: cells saved as shards, resume, signals, progress, devices and processes.

Words (cell and its id: collapse_jax/sweep.py):

  shard      a finished cell's record, written atomically as ``OUT/cells/<id>.json`` the moment
             the cell ends; the final results are assembled from the shards only, so a resumed
             run writes the same results.csv as an uninterrupted one
  manifest   ``OUT/job.json``: the experiment, the flags that decide the results (the spec) and
             the cell ids; ``--resume`` refuses an OUT whose spec differs
  process    one of ``--num_processes`` hosts joined by JAX's distributed runtime
             (``jax.distributed.initialize``); each runs the cells it owns (:func:`owner`) on its
             local devices, one cell per device at a time
  layout     processes x local devices, printed on the console and kept in results.json

SIGINT/SIGTERM end the job with one line saying how many cells are saved and how to resume:
the cells run in a worker thread while the main thread waits, prints a heartbeat and takes
the signal (a process cannot be interrupted inside a compiled XLA call otherwise).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Sequence

import numpy as np

from collapse_jax import results

MANIFEST = "job.json"
CELLS = "cells"


# -- processes -----------------------------------------------------------------------------------

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


# -- the run directory, manifest and shards ----------------------------------------------------

def shard_path(out: str, cell_id: str) -> str:
  return os.path.join(out, CELLS, cell_id.replace("/", "__") + ".json")


def check_out(out: str | None, spec: dict, resume: bool, procs_requested: int) -> None:
  """Validate --out before anything is created (ValueError/FileExistsError, one line): a
  new run needs a new or empty directory; ``resume`` needs a job of the same spec there. A
  job of several processes needs an explicit --out (they must agree on it)."""
  if procs_requested > 1 and not out:
    raise ValueError("a job of several processes needs --out (the same directory for all)")
  if resume:
    if not out:
      raise ValueError("--resume needs --out: the run directory to finish")
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
      raise ValueError(f"--resume: {out!r} holds no job ({MANIFEST} missing); start it "
                       "without --resume")
    with open(path) as f:
      stored = json.load(f)
    diff = [k for k in sorted(set(spec) | set(stored["spec"]))
            if json.dumps(spec.get(k)) != json.dumps(stored["spec"].get(k))]
    if diff:
      k = diff[0]
      raise ValueError(f"--resume: the flags differ from the stored job's ({len(diff)} differ; "
                       f"--{k} was {stored['spec'].get(k)!r}, now {spec.get(k)!r}); rerun "
                       "with the stored flags or choose a new --out")
    _check_writable(out)
    return
  if out and os.path.isdir(out) and os.listdir(out):
    hint = " (add --resume to finish it)" if os.path.exists(os.path.join(out, MANIFEST)) else ""
    raise FileExistsError(f"--out {out!r} already holds files{hint}; choose a new directory "
                          "(runs are never overwritten)")
  if out:
    _check_writable(out)


def _check_writable(out: str) -> None:
  """--out is (or can be made) a directory this process can write into."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise NotADirectoryError(f"--out {out!r} is a file, not a directory")
  target = os.path.abspath(out)
  while not os.path.exists(target):
    target = os.path.dirname(target)
  if not os.path.isdir(target):
    raise NotADirectoryError(f"--out {out!r} cannot be created: {target!r} is a file")
  if not os.access(target, os.W_OK | os.X_OK):
    verb = "written" if target == os.path.abspath(out) else "created"
    raise PermissionError(f"--out {out!r} cannot be {verb}: {target!r} is not writable")


def open_out(out: str | None, prefix: str, spec: dict, cell_ids: Sequence[str],
             experiment: str, clean: bool = True) -> str:
  """Create (or reopen) the run directory and write the manifest if it is missing; with
  ``clean``, removes the temporary files a killed run left (process 0 only, before the
  processes meet: on a shared --out another process's temporary file may be a shard being
  written). Call after :func:`check_out` (and after every process has checked, i.e. after
  :func:`start_processes`). No --out: a new timestamped directory (one process only)."""
  out = results.make_run_dir(out, prefix) if not out else out
  os.makedirs(os.path.join(out, CELLS), exist_ok=True)
  if clean:
    results.remove_temporaries(os.path.join(out, CELLS))
  if not os.path.exists(os.path.join(out, MANIFEST)):
    results.write_json(os.path.join(out, MANIFEST), {"experiment": experiment, "spec": spec,
                                                     "cells": list(cell_ids)})
  return out


def load_shards(out: str, cell_ids: Sequence[str]) -> dict[str, dict]:
  """The saved shards among ``cell_ids``: id -> shard ({'id', 'record', 'device', ...})."""
  got = {}
  for c in cell_ids:
    p = shard_path(out, c)
    if os.path.exists(p):
      with open(p) as f:
        got[c] = results.from_jsonable(json.load(f))
  return got


def save_shard(out: str, cell_id: str, record: dict, **meta) -> None:
  results.write_json(shard_path(out, cell_id), {"id": cell_id, **meta, "record": record},
                     compact=True)


# -- progress and signals --------------------------------------------------------------------

def say(line: str) -> None:
  """Print and flush: progress must reach a batch job's log file as it happens."""
  print(line, flush=True)


def clock(s: float) -> str:
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
  """'cell k of K' lines with elapsed time and an ETA (mean time per cell finished in this
  run, so the first cells, which compile, make it pessimistic), and a heartbeat."""

  def __init__(self, total: int, done_before: int = 0, log=None):
    self.total, self.done, self.log = total, done_before, log or say
    self.started = self.last = time.time()
    self.new = 0

  def end(self, cell_id: str, seconds: float) -> None:
    self.done, self.new, self.last = self.done + 1, self.new + 1, time.time()
    elapsed = time.time() - self.started
    left = self.total - self.done
    eta = f", ETA {clock(elapsed / self.new * left)}" if left else ""
    self.log(f"cell {self.done} of {self.total} done: {cell_id} ({seconds:.1f}s); elapsed "
             f"{clock(elapsed)}{eta}")

  def heartbeat(self) -> None:
    now = time.time()
    self.log(f"  ... working: {self.done} of {self.total} cells done, {clock(now - self.last)} "
             f"since the last one, elapsed {clock(now - self.started)}")


def resume_command(argv: Sequence[str], module: str | None, out: str) -> str:
  """The command line that resumes this run: the same flags, ``--out`` the run directory
  actually used, plus ``--resume``."""
  args, skip = [], False
  for a in argv[1:]:
    if skip:
      skip = False
    elif a in ("--out", "-out"):
      skip = True
    elif not (a.startswith(("--out=", "-out=", "--resume", "--noresume"))):
      args.append(a)
  head = ["python", "-m", module] if module else ["python", *argv[:1]]
  return shlex.join(head + args + [f"--out={out}", "--resume"])


def run_in_worker(work: Callable[[], object], *, heartbeat_s: float, progress: Progress,
                  on_signal: Callable[[str], str]) -> object:
  """Run ``work()`` in a thread; the main thread waits, calls ``progress.heartbeat()`` every
  ``heartbeat_s`` seconds (0: never) and handles SIGINT/SIGTERM: it prints the one line
  ``on_signal(name)`` returns and exits at once (130 / 143) without a traceback; saved
  shards are whole (atomic writes), a shard being written is discarded on resume.
  An exception in ``work`` is re-raised here."""
  box: dict = {}

  def target():
    try:
      box["value"] = work()
    except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
      box["error"] = e

  def handler(signum, frame):
    del frame
    name = signal.Signals(signum).name
    sys.stderr.write(on_signal(name) + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(128 + signum)  # no interpreter teardown while XLA threads run

  old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    worker = threading.Thread(target=target, name="cells", daemon=True)
    worker.start()
    last = time.time()
    while worker.is_alive():
      worker.join(timeout=0.2)
      if (heartbeat_s and time.time() - max(last, progress.last) >= heartbeat_s
          and worker.is_alive()):
        progress.heartbeat()
        last = time.time()
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  if "error" in box:
    raise box["error"]
  return box.get("value")


# -- gathering the shards of every process ---------------------------------------------------

def gather_shards(out: str, mine: Sequence[str], procs: Processes) -> dict[str, dict]:
  """Every process calls this (it holds collectives): each sends the shards of the cells it
  owns; all receive every shard. Works whether or not --out is a shared filesystem. One
  process: reads its own shards."""
  own = load_shards(out, mine)
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


# -- the whole job ------------------------------------------------------------------------------

def run(run_cells: Callable[[Sequence[str], Callable[[str, dict], None]], object],
        assemble: Callable[[str, dict[str, dict]], object], *, out: str | None, prefix: str,
        experiment: str, spec: dict, cell_ids: Sequence[str], procs: Processes,
        heartbeat_s: float = 60.0, argv: Sequence[str] = (), module: str | None = None,
        log=None) -> str:
  """Run a job: this process's unsaved cells, then (process 0) the final files. Returns out.

  ``run_cells(todo_ids, save)`` runs the cells named (those this process owns and has not
  saved yet) and calls ``save(cell_id, record)`` as each finishes; each is written as its
  shard at once. Then all processes meet (:func:`gather_shards`) and process 0 calls
  ``assemble(out, shards)`` with every shard by cell id (write the final files there,
  atomically). All of it runs under :func:`run_in_worker`, so SIGINT/SIGTERM at any point
  end with the resume line. Flags were checked by :func:`check_out` before the processes
  started."""
  log = log or say
  out = open_out(out, prefix, spec, cell_ids, experiment, clean=procs.index == 0)
  barrier("collapse_jax job opened", procs)  # no shard is written before process 0 cleaned
  own = owner(cell_ids, procs.count)
  mine = [c for c in cell_ids if own[c] == procs.index]
  done = load_shards(out, mine)
  todo = [c for c in mine if c not in done]
  log(describe_layout(layout(procs)))
  log(f"{len(mine)} of {len(cell_ids)} cells are this process's; {len(done)} already saved, "
      f"{len(todo)} to run -> {out}")
  progress = Progress(len(mine), len(done), log)
  resume = lambda: resume_command(argv, module, out)

  def save(cell_id: str, record: dict) -> None:
    save_shard(out, cell_id, record, process=procs.index)
    progress.end(cell_id, float(record.get("seconds", 0.0)))

  def interrupted(name: str) -> str:
    return (f"interrupted ({name}): {progress.done} of {progress.total} cells saved in {out}; "
            f"resume with: {resume()}")

  def work():
    error = None
    try:
      if todo:
        run_cells(todo, save)
    except Exception as e:  # noqa: BLE001 - every process must still meet, then raise
      error = e
    bad = failed_processes(error is not None, procs)
    if error is not None:
      raise error
    if bad:
      raise JobFailed(f"process(es) {bad} of the job failed (their consoles and "
                      f"{os.path.join(out, 'error-process<i>.log')} say why)")
    shards = gather_shards(out, mine, procs)
    missing = [c for c in cell_ids if c not in shards]
    if missing:
      raise RuntimeError(f"{len(missing)} cells have no shard after the run (first: "
                         f"{missing[0]})")
    if procs.index == 0:
      assemble(out, shards)

  try:
    run_in_worker(work, heartbeat_s=heartbeat_s, progress=progress, on_signal=interrupted)
  except Exception as e:
    path = os.path.join(out, f"error-process{procs.index}.log")
    with open(path, "w") as f:
      traceback.print_exception(e, file=f)
    first = (str(e).strip().splitlines() or [""])[0]
    raise JobFailed(f"{type(e).__name__}: {first} ({progress.done} of {progress.total} cells "
                    f"saved in {out}; traceback in {path}); once the cause is fixed, resume "
                    f"with: {resume()}") from e
  return out


class JobFailed(RuntimeError):
  """A job stopped by an error: its message is one line (the cause, the cells saved, where
  the traceback went and the resume command); :func:`exit_on_failure` prints it."""


def failed_processes(failed: bool, procs: Processes) -> list[int]:
  """The indices of the processes whose cells failed (a collective: every process calls it,
  whether or not it failed, so none waits for one that died of an exception)."""
  if procs.count == 1:
    return [0] if failed else []
  from jax.experimental import multihost_utils
  every = multihost_utils.process_allgather(np.asarray([int(failed)], np.int32))
  return [i for i, f in enumerate(np.asarray(every).reshape(-1)) if f]


@contextlib.contextmanager
def exit_on_failure():
  """For an experiment's main: a :class:`JobFailed` -> its one line on stderr, exit 1."""
  try:
    yield
  except JobFailed as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
