"""The one flag vocabulary of every experiment, defined once.

Every ``experiments/*.py`` app defines its flags with :func:`define`, which takes the names
below (with the experiment's own defaults) and gives each the same type and meaning:

  --dtype        precision presets: one name, a comma list, or ``all`` (every preset)
  --seeds        comma list of seeds (model init and random tokens): ``0,1,2``
  --max_len      the largest n (sequence length) swept
  --lengths      the grid of n: ``a:b``, ``a:b:step``, ``log:a:b:count`` or ``1,2,8``;
                 every n must be <= --max_len (default: every n in 1..max_len)
  --heads        comma list of attention head counts
  --out          output directory (default ``runs/<experiment>-<UTC time>``; never overwritten)
  --plot         write the figures
  --layers / --d_model / --pe / --norm / --mlp / --vocab / --attn_softcap   the synthetic model
  --engine       sweep engine (collapse_jax.engines.ENGINES; default: resolved per pair set)
  --chunk        lengths per vmapped chunk (kv_cache / masked engines)
  --memory_budget  GiB an engine may use per device (chunked causal attention above it)
  --fp8_scaling  per-tensor amax scaling for the fp8 presets
  --model        a real model by name (collapse_jax.checkpoints.MODELS: smollm2, gemma3)
  --windows      attention windows to compare: native (the model's own), global (none) or a
                 window size for every layer, as a comma list
  --full         paper-scale settings instead of the fast defaults

Job flags (experiments run as jobs of cells, collapse_jax/jobs.py; ``define(**JOB)``):

  --resume       finish the run in --out: same flags, finished cells kept, the rest run
  --heartbeat    seconds between "still working" lines inside long cells (0: none)
  --coordinator / --num_processes / --process_id   join JAX's distributed runtime (all three)
  --distributed  let jax.distributed.initialize() auto-detect the cluster (TPU pods, Slurm)

The parsers (:func:`policies`, :func:`int_list`, :func:`lengths`, :func:`decoder_config`,
:func:`sized`) are plain functions of values, so they are tested without absl. Bad values
raise ValueError with a one-line message; :func:`usage_errors` prints it as one line and
exits with status 2.

An app has three parts: ``define_flags(flag_values)`` (called by its ``__main__`` only, so
importing it defines nothing), ``parse(flag_dict) -> Spec`` (a pure function of the flag
values: :func:`app_flags` in the app, :func:`parse_argv` in a test) and ``main``. Its
results.json starts with ``results.header(experiment, app_flags(), ...)``.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Sequence

import numpy as np
from absl import flags

from collapse_jax import checkpoints
from collapse_jax import config as config_lib
from collapse_jax import pairs
from collapse_jax import precision
from collapse_jax import results

FLAGS = flags.FLAGS

# name -> (absl kind, help). Enum flags take their choices from the library.
VOCABULARY = {
    "dtype": ("string", "precision presets: a name, a comma list, or 'all' ("
              + ", ".join(precision.preset_names()) + ")"),
    "seeds": ("list", "comma list of seeds (model init and random tokens)"),
    "max_len": ("integer", "largest n (sequence length) swept"),
    "lengths": ("string", "grid of n: 'a:b', 'a:b:step', 'log:a:b:count' or '1,2,8' (every "
                "n <= --max_len; default: every n in 1..max_len)"),
    "heads": ("list", "comma list of attention head counts (each must divide d_model)"),
    "out": ("string", "output directory (default runs/<experiment>-<UTC time>; never "
            "overwritten)"),
    "plot": ("bool", "write the figures"),
    "layers": ("integer", "decoder layers"),
    "d_model": ("integer", "model width"),
    "pe": (("enum", config_lib.PE_KINDS), "positional encoding"),
    "norm": (("enum", config_lib.NORM_KINDS), "normalisation"),
    "mlp": (("enum", config_lib.MLP_KINDS), "MLP kind"),
    "vocab": ("integer", "vocabulary size of the synthetic token model"),
    "attn_softcap": ("float", "Gemma 2's softcap of the synthetic model's attention logits, "
                     "cap * tanh(s / cap), rounded at 'attn_softcap' (default: none)"),
    "engine": ("string", "sweep engine: causal, kv_cache, masked or exact (default: the "
               "pair set's own, see collapse_jax.engines.resolve)"),
    "chunk": ("integer", "lengths per vmapped chunk (kv_cache / masked engines)"),
    "memory_budget": ("float", "GiB an engine run may use per device: above it the causal "
                      "attention runs in chunks of query rows (memory linear in n); a run that "
                      "cannot fit is refused before it starts. Forced CPU devices share the "
                      "host's memory: there the cells running at once add up"),
    "fp8_scaling": ("bool", "per-tensor amax scaling for the fp8 presets"),
    "model": ("string", "real model: a name of collapse_jax.checkpoints.MODELS "
              f"({', '.join(checkpoints.MODELS)}), a local HF directory or a .gguf file"),
    "windows": ("list", "attention windows, each run on the same pairs: 'native' (the model's "
                "own local/global pattern), 'global' (no window) or a size (every layer that "
                "window), e.g. native,global,512"),
    "full": ("bool", "paper-scale settings instead of the fast defaults"),
    "resume": ("bool", "finish the run in --out: the stored flags must match; finished cells "
               "are kept and the rest run"),
    "heartbeat": ("float", "seconds between 'still working' lines inside long cells (0: none)"),
    "coordinator": ("string", "HOST:PORT of process 0, to run as one of several processes "
                    "(with --num_processes and --process_id)"),
    "num_processes": ("integer", "number of processes of a distributed job"),
    "process_id": ("integer", "this process's index in a distributed job (0 assembles the "
                   "results)"),
    "distributed": ("bool", "jax.distributed.initialize() with auto-detection (TPU pods, "
                    "Slurm)"),
}

# The job flags with their defaults: ``define(**JOB)``. They decide where and how a run
# happens, never its results, so --resume does not compare them (:func:`job_spec`).
JOB = {"resume": False, "heartbeat": 60.0, "coordinator": None, "num_processes": None,
       "process_id": None, "distributed": False}
NOT_RESULTS = set(JOB) | {"out", "plot", "beside"}  # beside: tasks' --beside (a figure)


def define(flag_values: flags.FlagValues | None = None, **defaults) -> None:
  """Define the named vocabulary flags with these defaults, e.g.
  ``define(dtype="bfloat16", seeds="0", max_len=2048, out=None)``, into ``flag_values``
  (default the global ``FLAGS``). A name outside :data:`VOCABULARY` is an error: an
  experiment's own flags are defined next to it."""
  fv = FLAGS if flag_values is None else flag_values
  for name, default in defaults.items():
    if name not in VOCABULARY:
      raise KeyError(f"{name!r} is not in the flag vocabulary ({', '.join(VOCABULARY)})")
    kind, help_ = VOCABULARY[name]
    if isinstance(kind, tuple):
      flags.DEFINE_enum(name, default, kind[1], help_, flag_values=fv)
    else:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=fv)


def parse_argv(define_flags: Callable[[flags.FlagValues], None],
               argv: Sequence[str] = ()) -> dict:
  """The flag values an app's ``define_flags(flag_values)`` defines, parsed from ``argv``
  (the arguments only, no program name) in a fresh ``FlagValues``: an app's ``parse``
  tested in process, without absl's global flags. A value absl itself rejects (an
  integer flag given 'x') raises ``flags.Error``."""
  fv = flags.FlagValues()
  define_flags(fv)
  fv(["app", *argv])
  return fv.flag_values_dict()


def app_flags(main_file: str | None = None, also: Sequence[str] = ()) -> dict:
  """Every flag of this vocabulary and of the experiment's own module (``main_file``,
  default ``sys.argv[0]``) with its value: what results.json records (``results.header``),
  without absl's own flags (logging, help). ``also``: the names of modules whose flags the
  experiment defines too (an experiment built on another's flags)."""
  import os
  main_file = os.path.abspath(main_file or sys.argv[0])
  out = {}
  for name, value in FLAGS.flag_values_dict().items():
    module = FLAGS.find_module_defining_flag(name)
    if module is not None and (module == __name__ or module in also
                               or os.path.abspath(module) == main_file):
      out[name] = value
  return out


def job_spec(flag_dict: dict) -> dict:
  """The flags that decide a run's results (stored in the job manifest; --resume compares
  them): ``flag_dict`` (:func:`app_flags`) except :data:`NOT_RESULTS`."""
  return {k: v for k, v in flag_dict.items() if k not in NOT_RESULTS}


# Flags of the vocabulary that set a synthetic model, and the DecoderConfig field each sets.
MODEL_FLAGS = {"layers": "num_layers", "d_model": "d_model", "pe": "pe", "norm": "norm",
               "mlp": "mlp", "vocab": "vocab_size", "heads": "num_heads",
               "attn_softcap": "attn_softcap"}


def decoder_config(fl: dict, **overrides) -> config_lib.DecoderConfig:
  """The synthetic model the flags in ``fl`` describe: each of :data:`MODEL_FLAGS` present
  (``--heads``: its first value) sets its field, ``overrides`` win, the rest are
  ``DecoderConfig``'s defaults. Validated by ``DecoderConfig`` (ValueError, one line)."""
  kw = {}
  for flag, field in MODEL_FLAGS.items():
    if fl.get(flag) is not None:
      kw[field] = int_list(fl[flag], "heads")[0] if flag == "heads" else fl[flag]
  return config_lib.DecoderConfig(**{**kw, **overrides})


def sized(fl: dict, presets: dict[str, dict]) -> dict:
  """An app's named size presets resolved against its flags: ``presets['full']`` with
  --full, else ``presets['small']``; a flag given explicitly (not None) wins over the
  preset's value for it. Returns the resolved values by name (every key of the presets)."""
  if set(presets) != {"small", "full"} or set(presets["small"]) != set(presets["full"]):
    raise KeyError("size presets are 'small' and 'full' with the same keys")
  chosen = presets["full" if fl.get("full") else "small"]
  return {k: fl[k] if fl.get(k) is not None else v for k, v in chosen.items()}


def policies(spec: str, *, fp8_scaling: bool = False, what: str = "dtype"
             ) -> list[precision.Policy]:
  """'bfloat16', 'float32,bfloat16' or 'all' -> policies (unknown names: ValueError).
  ``fp8_scaling`` applies to the fp8 presets and is an error when none is selected.
  ``what``: the flag's name in the messages."""
  names = precision.preset_names() if spec.strip() == "all" else [
      s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise ValueError(f"--{what} is empty: name a preset, a comma list or 'all'")
  if len(set(names)) != len(names):
    raise ValueError(f"--{what} repeats a preset: {','.join(names)}")
  pols = [precision.get_policy(n) for n in names]
  if fp8_scaling and not any(p.is_fp8 for p in pols):
    raise ValueError("--fp8_scaling applies to fp8 presets only; none selected")
  return [precision.get_policy(p.name, fp8_scaling=True) if fp8_scaling and p.is_fp8 else p
          for p in pols]


# The smallest value of an integer list flag of the vocabulary (numpy's seeds are >= 0).
MINIMA = {"seeds": 0, "heads": 1}


def int_list(values: Sequence[str] | str, what: str, minimum: int | None = None) -> list[int]:
  """['0', '1'] or '0,1' -> [0, 1]; a non-integer, a repeated value, one below ``minimum``
  (default ``MINIMA[what]``) or an empty list is a ValueError."""
  minimum = MINIMA.get(what) if minimum is None else minimum
  if isinstance(values, str):
    values = values.split(",")
  try:
    out = [int(v) for v in values if str(v).strip()]
  except ValueError as e:
    raise ValueError(f"--{what} must be a comma list of integers, got {','.join(values)!r}") from e
  if not out:
    raise ValueError(f"--{what} is empty")
  if len(set(out)) != len(out):
    raise ValueError(f"--{what} repeats a value: {out}")
  if minimum is not None and min(out) < minimum:
    raise ValueError(f"--{what} must be >= {minimum}, got {min(out)}")
  return out


def window_modes(values: Sequence[str] | str) -> list[str]:
  """['native', 'global', '512'] -> the same, validated: each is 'native', 'global' or a
  window size >= 1, none repeated (ValueError otherwise)."""
  if isinstance(values, str):
    values = values.split(",")
  out = [str(v).strip() for v in values if str(v).strip()]
  if not out:
    raise ValueError("--windows is empty")
  if len(set(out)) != len(out):
    raise ValueError(f"--windows repeats a mode: {','.join(out)}")
  for v in out:
    try:
      config_lib.window_mode(v)
    except ValueError:
      raise ValueError(f"--windows takes native, global or a window size >= 1, got {v!r}") from None
  return out


def one(values: Sequence, what: str):
  """The single value of a vocabulary list flag in an experiment that takes one (e.g.
  ``--seeds`` where one model is studied); more than one is a ValueError, not ignored."""
  if len(values) != 1:
    raise ValueError(f"--{what} takes one value in this experiment, got {list(values)}")
  return values[0]


def lengths(spec: str | None, max_len: int, hint: str = "") -> np.ndarray:
  """The grid of n (``pairs.parse_lengths``); default every n in 1..max_len. An n beyond
  ``max_len`` is a ValueError (the model's tables and the engines are sized by max_len),
  with ``hint`` appended."""
  if max_len < 1:
    raise ValueError(f"--max_len must be >= 1, got {max_len}")
  grid = pairs.parse_lengths(spec or f"1:{max_len}")
  if grid[-1] > max_len:
    raise ValueError(f"--lengths reaches n={grid[-1]}, beyond --max_len={max_len}{hint}")
  return grid


check_model = checkpoints.check_model  # --model's value, checked without loading (ValueError)


def load_model(name: str, log: Callable[[str], None] = print):
  """``checkpoints.load_model(name)`` for an app's main: a missing package, a missing file or
  a refused checkpoint -> ``error: <reason>`` in one line on stderr and exit status 1; the
  load time goes to ``log``."""
  t0 = time.perf_counter()
  try:
    ckpt = checkpoints.load_model(name)
  except (OSError, ImportError, checkpoints.CheckpointError) as e:  # one line, no traceback
    sys.exit(f"error: {' '.join(str(e).split())}")
  log(f"loaded {ckpt.label} in {time.perf_counter() - t0:.1f}s")
  return ckpt


def run_dir(out: str | None, prefix: str) -> str:
  """``results.make_run_dir`` with an existing or unwritable --out as a one-line error."""
  with usage_errors():
    return results.make_run_dir(out, prefix)


@contextlib.contextmanager
def usage_errors():
  """Bad flag values (ValueError/KeyError raised while setting up; an --out that exists or
  cannot be written) -> one line on stderr, ``error: <reason> (see --help)``, and exit
  status 2: no traceback, and no page of flag help before the reason."""
  try:
    yield
  except (ValueError, KeyError, FileExistsError, PermissionError, NotADirectoryError) as e:
    print(f"error: {str(e).strip(chr(39) + chr(34))} (see --help)", file=sys.stderr)
    sys.exit(2)
