"""A sweep as a job: cells saved as shards, resume, signals, progress, devices and processes.

Words (cell and its id: collapse_jax/sweep.py):

  shard      a finished cell's record, written atomically as ``OUT/cells/<id>.json`` the moment
             the cell ends; the final results are assembled from the shards only, so a resumed
             run writes the same results.csv as an uninterrupted one
  manifest   ``OUT/job.json``: the experiment, the flags that decide the results (the spec) and
             the cell ids; ``--resume`` refuses an OUT whose spec differs
  process    one of ``--num_processes`` hosts (collapse_jax/hosts.py: who owns which cell,
             the layout, the collectives)

SIGINT/SIGTERM end the job with one line saying how many cells are saved and how to resume:
the cells run in a worker thread while the main thread waits, prints a heartbeat and takes
the signal (a process cannot be interrupted inside a compiled XLA call otherwise).
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Sequence


from collapse_jax import results
from collapse_jax.hosts import (Processes, barrier, check_distributed, describe_layout,
                               failed_processes, gather_shards, layout, owner)

MANIFEST = "job.json"
CELLS = "cells"


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


def check_job_flags(fl: dict, spec: dict) -> None:
  """The job flags (``cli.JOB`` and --out) of an app's flag dict ``fl``, before anything is
  created: --heartbeat >= 0, the distributed flags (``hosts.check_distributed``) and --out
  for ``spec`` (:func:`check_out`). ValueError (one line)."""
  if fl["heartbeat"] < 0:
    raise ValueError(f"--heartbeat must be >= 0 seconds (0: none), got {fl['heartbeat']}")
  check_distributed(fl["coordinator"], fl["num_processes"], fl["process_id"], fl["distributed"])
  check_out(fl["out"], spec, fl["resume"], fl["num_processes"] or (2 if fl["distributed"] else 1))


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


# -- the whole job ------------------------------------------------------------------------------

def run_job(run_cells: Callable[[Sequence[str], Callable[[str, dict], None]], object],
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
    shards = gather_shards(load_shards(out, mine), procs)
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


@contextlib.contextmanager
def exit_on_failure():
  """For an experiment's main: a :class:`JobFailed` -> its one line on stderr, exit 1."""
  try:
    yield
  except JobFailed as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
