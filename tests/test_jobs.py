"""The job layer (collapse_jax/jobs.py): run directories and manifests, shards,
resume, progress and the resume line. In-process with plain-Python cells; the signal,
SIGKILL and two-process runs of the real job are in tests/test_experiments.py."""
import json
import math
import os

import pytest

from collapse_jax import hosts, jobs, results

IDS = [f"bfloat16/heads={h}/prefix_repeat/seed={s}" for h in (1, 4, 16) for s in (0, 1)]
SPEC = {"dtype": "bfloat16", "heads": ["1", "4", "16"], "max_len": 64}


def test_check_out_new_resume_and_mismatch(tmp_path):
  out = str(tmp_path / "run")
  jobs.check_out(out, SPEC, resume=False, procs_requested=1)  # new: fine
  with pytest.raises(ValueError, match="needs --out"):
    jobs.check_out(None, SPEC, resume=False, procs_requested=2)
  with pytest.raises(ValueError, match="holds no job"):
    jobs.check_out(out, SPEC, resume=True, procs_requested=1)
  jobs.open_out(out, "sweep", SPEC, IDS, "precision_sweep")
  with pytest.raises(FileExistsError, match="add --resume"):
    jobs.check_out(out, SPEC, resume=False, procs_requested=1)
  jobs.check_out(out, dict(SPEC), resume=True, procs_requested=1)
  with pytest.raises(ValueError, match="--max_len was 64, now 128"):
    jobs.check_out(out, dict(SPEC, max_len=128), resume=True, procs_requested=1)
  with pytest.raises(ValueError, match="--seeds was None"):
    jobs.check_out(out, dict(SPEC, seeds=["0"]), resume=True, procs_requested=1)


def test_check_out_refuses_files_in_the_way(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
    jobs.check_out(str(tmp_path / "f"), SPEC, resume=False, procs_requested=1)
  with pytest.raises(NotADirectoryError, match="cannot be created: .* is a file"):
    jobs.check_out(str(tmp_path / "f" / "run"), SPEC, resume=False, procs_requested=1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_out_unwritable_parent(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    with pytest.raises(PermissionError, match="not writable"):
      jobs.check_out(str(ro / "a" / "b"), SPEC, resume=False, procs_requested=1)
  finally:
    ro.chmod(0o700)


def _record(cell_id):
  """A record as run_grid returns one, with a non-finite value to round-trip."""
  h = int(cell_id.split("heads=")[1].split("/")[0])
  return {"dtype": "bfloat16", "heads": h, "linf": [1.0 / h, math.nan, math.inf], "seconds": 0.0}


def test_run_saves_shards_resumes_and_assembles(tmp_path):
  out = str(tmp_path / "run")
  ran, assembled, lines = [], {}, []

  def run_cells(todo, save, fail_after=None):
    for i, c in enumerate(todo):
      if fail_after is not None and i == fail_after:
        raise RuntimeError("cell failed")
      ran.append(c)
      save(c, _record(c))

  kw = dict(out=out, prefix="sweep", experiment="t", spec=SPEC, cell_ids=IDS,
            procs=hosts.Processes(), heartbeat_s=0, log=lines.append)
  with pytest.raises(jobs.JobFailed, match="RuntimeError: cell failed .2 of 6 cells saved") as e:
    jobs.run_job(lambda t, s: run_cells(t, s, fail_after=2), assembled.update, argv=["p.py"], **kw)
  assert "resume with: python p.py" in str(e.value) and "\n" not in str(e.value)
  assert "cell failed" in open(os.path.join(out, "error-process0.log")).read()  # the traceback
  assert ran == IDS[:2] and not assembled
  assert sorted(os.listdir(os.path.join(out, "cells"))) == sorted(
      os.path.basename(jobs.shard_path(out, c)) for c in IDS[:2])
  open(os.path.join(out, "cells", ".tmp-half-written.json"), "w").write("{")
  jobs.check_out(out, SPEC, resume=True, procs_requested=1)
  jobs.run_job(run_cells, lambda o, shards: assembled.update(shards), **kw)
  assert ran == IDS  # the first two were not run again
  assert list(assembled) == IDS
  for c in IDS:
    rec = assembled[c]["record"]
    assert rec["heads"] == _record(c)["heads"] and rec["linf"][0] == _record(c)["linf"][0]
    assert math.isnan(rec["linf"][1]) and rec["linf"][2] == math.inf
  assert not any(n.startswith(".tmp-") for n in os.listdir(os.path.join(out, "cells")))
  manifest = json.load(open(os.path.join(out, "job.json")))
  assert manifest["spec"] == SPEC and manifest["cells"] == IDS
  assert any("2 already saved, 4 to run" in line for line in lines)
  assert any(line.startswith("cell 6 of 6 done") for line in lines)


def test_progress_reports_eta_and_heartbeat():
  lines = []
  p = jobs.Progress(4, done_before=1, log=lines.append)
  p.end("a", 2.0)
  p.heartbeat()
  assert lines[0].startswith("cell 2 of 4 done: a (2.0s); elapsed 0m00s, ETA")
  assert "2 of 4 cells done" in lines[1]
  p.end("b", 1.0)
  p.end("c", 1.0)
  assert "ETA" not in lines[-1]


def test_resume_command_keeps_flags_and_names_the_run():
  argv = ["/x/precision_sweep.py", "--dtype=bfloat16", "--out", "old", "--heads=1,4"]
  cmd = jobs.resume_command(argv, "experiments.precision_sweep", "runs/sweep-1")
  assert cmd == ("python -m experiments.precision_sweep --dtype=bfloat16 --heads=1,4 "
                 "--out=runs/sweep-1 --resume")
  argv = ["p.py", "--out=a b", "--resume"]
  assert jobs.resume_command(argv, None, "a b") == "python p.py '--out=a b' --resume"


def test_from_jsonable_undoes_non_finite_strings():
  rec = {"linf": [1.5, float("nan"), float("-inf")], "dtype": "bfloat16", "n": 3}
  back = results.from_jsonable(json.loads(json.dumps(results.to_jsonable(rec))))
  assert back["linf"][0] == 1.5 and math.isnan(back["linf"][1]) and back["linf"][2] == -math.inf
  assert back["dtype"] == "bfloat16" and back["n"] == 3
