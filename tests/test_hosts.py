"""The processes of a job (collapse_jax/hosts.py): cell owners and the distributed flags.
The collectives run in the two-process job of tests/test_experiments.py (slow)."""
import pytest

from collapse_jax import hosts

IDS = [f"bfloat16/heads={h}/prefix_repeat/seed={s}" for h in (1, 4, 16) for s in (0, 1)]


def test_owner_is_stable_balanced_and_order_free():
  for count in (1, 2, 4, 7):
    own = hosts.owner(IDS, count)
    assert own == hosts.owner(list(reversed(IDS)), count)  # the set of ids decides, not order
    per = [sum(v == p for v in own.values()) for p in range(count)]
    assert sum(per) == len(IDS) and max(per) - min(per) <= 1
  assert set(hosts.owner(IDS, 1).values()) == {0}


@pytest.mark.parametrize("args,msg", [
    (dict(coordinator="localhost:1", num_processes=None, process_id=None, auto=False),
     "go together"),
    (dict(coordinator="localhost", num_processes=2, process_id=0, auto=False), "HOST:PORT"),
    (dict(coordinator="h:1", num_processes=2, process_id=2, auto=False), "[0, 2)"),
    (dict(coordinator="h:1", num_processes=2, process_id=0, auto=True), "auto-detects"),
])
def test_distributed_flags_are_checked(args, msg):
  with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace(")", r"\)")):
    hosts.check_distributed(**args)
  hosts.check_distributed("h:1", 2, 1, False)
  hosts.check_distributed(None, None, None, True)
  assert hosts.start_processes() == hosts.Processes(1, 0)


def test_one_process_gathers_its_own_shards_and_fails_alone():
  own = {"a": {"id": "a", "record": {}}}
  assert hosts.gather_shards(own, hosts.Processes()) is own
  assert hosts.failed_processes(True, hosts.Processes()) == [0]
  assert hosts.failed_processes(False, hosts.Processes()) == []
