"""collapse_jax.theory.scorecard: the registry, the report, and fast checks' verdicts."""
import pytest

from collapse_jax.theory import scorecard


@pytest.fixture
def temporary_check():
  """Register checks for one test and remove them afterwards."""
  before = list(scorecard.CHECKS)
  yield scorecard.register
  scorecard.CHECKS[:] = before


def test_registry_names_are_unique_and_validated(temporary_check):
  names = [c.name for c in scorecard.CHECKS]
  assert len(names) == len(set(names)) and {"b1", "b9", "c3_synthetic"} <= set(names)
  with pytest.raises(ValueError, match="duplicate"):
    temporary_check("b1")(lambda full: [])
  assert scorecard.check_names(None) is None
  assert scorecard.check_names(["b4"]) == {"b4"}
  with pytest.raises(ValueError, match="unknown checks"):
    scorecard.check_names(["b4", "nope"])


def test_a_raising_check_is_a_fail_row_and_report_escapes_pipes(temporary_check):
  @temporary_check("boom")
  def boom(full):
    raise RuntimeError("x|y")

  @temporary_check("fine")
  def fine(full):
    return [scorecard.Row("a|b", "ref", f"full={full}", None, {})]

  rows = scorecard.run({"boom", "fine"}, full=True)
  assert [(r["check"], r["passed"]) for r in rows] == [("boom", False), ("fine", None)]
  assert "RuntimeError: x|y" in rows[0]["measured"] and "traceback" in rows[0]["details"]
  assert rows[1]["measured"] == "full=True"
  assert scorecard.tally(rows) == {"passed": 0, "failed": 1, "info": 1}
  md = scorecard.to_markdown(rows)
  assert "a\\|b" in md and "| FAIL |" in md and "| info |" in md


def test_fast_softmax_and_spectral_checks_pass():
  rows = scorecard.run({"b4", "b6_b7", "b8_spectral"})
  assert [r["check"] for r in rows] == ["b4", "b6_b7", "b8_spectral"]
  assert all(r["passed"] is True for r in rows), [r["measured"] for r in rows]

