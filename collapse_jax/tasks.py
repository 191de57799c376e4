"""The paper's copy and count tasks (Section 3, Appendix C.1) asked of a real model, scored
as lm-evaluation-harness does, plus the answer preference the paper's argument is about.

Words (used by experiments/tasks.py, records and figures):

  task        one of :data:`TASKS`. n is the length of the task's sequence: digits for the
              copy and count tasks (commas not counted), ones for ``sum``, words for
              ``count_word``. Seeded tasks (``count_bernoulli``, ``count_word``) draw
              ``samples`` sequences per n; the others have one sequence per n.
  mode        'direct' (the C.1 prompt), 'cot_no_shot' (the prompt, then C.1's "Let's think
              step by step, showing me your reasoning."), 'cot_few_shot' (that sentence,
              "Here are a few examples:", worked examples, then the prompt). Count tasks
              only for the CoT modes: C.1 gives no CoT text for copying.
  slot        the answer template's prefix: 'The answer to your question is: ' (copy) or
              'The final answer to your maths question is: ' (count).
  strict      the number right after the slot text in the output (first match), as
              lm-eval's strict-match filter reads a template. flexible: the last number
              anywhere in the output.
  preference  log p(answer) for every number up to ``max_digits`` digits, read at the slot:
              context = prompt + (CoT modes: the model's own text before the slot, or all of
              it and a newline) + slot; log p(number) = sum of its digit tokens' log-probs +
              log p(the next token is not a digit). ``margin`` = log p(correct) - max over
              wrong numbers (> 0: the model prefers the right answer). The top-2 numbers are
              found exactly by a best-first walk over the digit trie that drops any prefix
              less likely than the second-best complete number (a number is never more
              likely than its prefix).

Verbatim from C.1: the copy prompt, the three count prompts (their typos kept: "xxxx is",
"answer..") and the sum few-shot example. Ours, and said so in results: the sequence
renderings (count and copy digits written without spaces, as Figure 5's; sum as
'1 + 1 + ... + 1'), the first few-shot example's question (C.1 shows only its working), the
hint's wording (the issue's "Hint: It's not necessarily a 1, check carefully"; the paper prints
"*Hint* ..."), the copy-first question ("first digit"), the few-shot examples of the other
count tasks ("with similar strategies for the 4 experiments"), and the word task's sentence.
"""
from __future__ import annotations

import dataclasses
import heapq
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import pairs, prompts, scoring
from collapse_jax.checkpoints.tokenizer import encode

COPY_TASKS = ("copy_last", "copy_first", "copy_last_hint", "copy_first_hint",
              "copy_last_interleaved", "copy_first_interleaved", "copy_last_commas",
              "copy_first_commas")
COUNT_TASKS = ("sum", "count_ones", "count_bernoulli", "count_word")
TASKS = COPY_TASKS + COUNT_TASKS
MODES = ("direct", "cot_no_shot", "cot_few_shot")
BRIDGE_TASKS = ("count_ones", "copy_last")  # the tasks the harness bridges (bridge_sequences)
SEEDED = ("count_bernoulli", "count_word")

COPY_SLOT = "The answer to your question is: "
COUNT_SLOT = "The final answer to your maths question is: "
COPY_PROMPT = ("Consider the following sequence: {seq}. What is the {which} digit in this "
               "sequence? Please answer exactly as 'The answer to your question is: <ANSWER>'")
HINT = " Hint: It's not necessarily a 1, check carefully"
SUM_PROMPT = ("Please perform the following sum: {seq}. Please give the answer on the final line "
              "exactly as 'The final answer to your maths question is: xxxx', where 'xxxx' is "
              "your answer..")
ONES_PROMPT = ("Please count the number of ones in the following sequence:{seq}. Please give the "
               "answer on the final line exactly as 'The final answer to your maths question is: "
               "xxxx', where 'xxxx is your answer.")
WORD_PROMPT = ("Please count the number of times 'car' appears in the following sentence: "
               "'{seq}'. Please give the answer on the final line exactly as 'The final answer "
               "to your maths question is: xxxx', where 'xxxx' is your answer.")
COT = "Let's think step by step, showing me your reasoning."
FEW_SHOT_HEAD = COT + " Here are a few examples:"
WORDS = ("car", "bus", "tree", "house", "road", "dog")  # count_word: each word uniform

# C.1's sum examples (the first one's question restored), and ours for the other tasks.
_SUM_SHOTS = (
    "Please perform the following sum: " + " + ".join(["1"] * 12) + "\n\nWe divide the sum into "
    "groups of 5. (1 + 1 + 1 + 1 + 1) + (1 + 1 + 1 + 1 + 1) + 1 + 1\n\nThe answer is then "
    "2 * 5 + 2 = 12\n\nThe final answer to your maths question is: 12",
    "Please perform the following sum: 1 + 1 + 1 + 1 + 1 + 1\n\nWe divide the sum into groups "
    "of 5.\n\n(1 + 1 + 1 + 1 + 1) + 1\n\nThe answer is then 1 * 5 + 1 = 6\n\nThe final answer to "
    "your maths question is: 6")
_ONES_SHOTS = (
    "Please count the number of ones in the following sequence:111111111111\n\nWe divide the "
    "sequence into groups of 5. (11111) (11111) 11\n\nThe answer is then 2 * 5 + 2 = 12\n\nThe "
    "final answer to your maths question is: 12",
    "Please count the number of ones in the following sequence:111111\n\nWe divide the sequence "
    "into groups of 5.\n\n(11111) 1\n\nThe answer is then 1 * 5 + 1 = 6\n\nThe final answer to "
    "your maths question is: 6")
_BERNOULLI_SHOTS = (
    "Please count the number of ones in the following sequence:1101110111\n\nWe divide the "
    "sequence into groups of 5. (11011) (10111)\n\nThe groups have 4 and 4 ones.\n\nThe answer "
    "is then 4 + 4 = 8\n\nThe final answer to your maths question is: 8",
    "Please count the number of ones in the following sequence:101101\n\nWe divide the sequence "
    "into groups of 5.\n\n(10110) 1\n\nThe groups have 3 and 1 ones.\n\nThe answer is then 3 + 1 "
    "= 4\n\nThe final answer to your maths question is: 4")
_WORD_SHOTS = (
    "Please count the number of times 'car' appears in the following sentence: 'car bus car "
    "tree car'\n\nWe go through the words one by one: car (1), bus, car (2), tree, car (3).\n\n"
    "The final answer to your maths question is: 3",
    "Please count the number of times 'car' appears in the following sentence: 'dog car road'"
    "\n\nWe go through the words one by one: dog, car (1), road.\n\nThe final answer to your "
    "maths question is: 1")
SHOTS = {"sum": _SUM_SHOTS, "count_ones": _ONES_SHOTS, "count_bernoulli": _BERNOULLI_SHOTS,
         "count_word": _WORD_SHOTS}


def _commas(digits: str) -> str:
  """',' after every third digit, grouped from the left ('111,111,10')."""
  return ",".join(digits[i:i + 3] for i in range(0, len(digits), 3))


def sequence(task: str, n: int, sample: int = 0) -> tuple[str, int]:
  """(the task's sequence text, the correct answer) for length n and sample index."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
  if n < (2 if task.startswith("copy") else 1):
    raise ValueError(f"task {task} needs n >= {2 if task.startswith('copy') else 1}, got {n}")
  if task.startswith("copy"):
    last = task.startswith("copy_last")
    if task.endswith("interleaved"):  # alternating, the answer digit 0 at its end
      digits = "".join("01"[(n - 1 - i) % 2] if last else "01"[i % 2] for i in range(n))
    else:
      digits = "1" * (n - 1) + "0" if last else "0" + "1" * (n - 1)
    return (_commas(digits) if task.endswith("commas") else digits), 0
  if task == "sum":
    return " + ".join(["1"] * n), n
  if task == "count_ones":
    return "1" * n, n
  rng = np.random.default_rng([sample, n, 7 if task == "count_bernoulli" else 11])
  if task == "count_bernoulli":
    digits = "".join(np.where(rng.random(n) < 0.7, "1", "0"))
    return digits, digits.count("1")
  words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
  return " ".join(words), words.count("car")


def bridge_sequences(task: str, n: int) -> tuple[tuple[str, int], tuple[str, int]]:
  """The bridge's pair at n, ((A's sequence text, its answer), (B's, its answer)), built so
  that the two correct answers DIFFER: where the model gives both one answer, at least one
  is wrong, so identical answers can reveal a collapse.

    count_ones, sum   n vs n + 1 ones (Fig. 5a), answers n and n + 1; B is the task's n + 1.
    copy tasks        the task's n-digit sequence vs the same digits with the asked digit
                      flipped (copy_last: 1^(n-1)0 vs 1^n), answers 0 and 1: one length,
                      one token apart, at the place the question asks about.

  (Theorem 4.2's own pair, the last token repeated, keeps the answer of a copy task:
  1^(n-1)0 vs 1^n0 both answer 0, and identical answers there show nothing.) The seeded
  count tasks have no nested n + 1 and are not bridged."""
  if task in ("count_ones", "sum"):
    return sequence(task, n), sequence(task, n + 1)
  if task not in COPY_TASKS:
    raise ValueError(f"task {task!r} has no bridge pair; bridgeable: count_ones, sum and the "
                     "copy tasks")
  seq, answer = sequence(task, n)
  digits = [i for i, ch in enumerate(seq) if ch in "01"]
  at = digits[-1] if task.startswith("copy_last") else digits[0]
  flipped = seq[:at] + "10"[int(seq[at])] + seq[at + 1:]
  return (seq, answer), (flipped, 1 - answer)


def user_text(task: str, mode: str, n: int, sample: int = 0, seq: str | None = None) -> str:
  """The user turn for (task, mode, n, sample); ``seq``: this sequence text instead of the
  task's own (the bridge's B prompts, :func:`bridge_sequences`)."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
  if mode != "direct" and task not in COUNT_TASKS:
    raise ValueError(f"mode {mode} is for the count tasks (C.1 gives no CoT prompt for "
                     f"copying), not {task}")
  if seq is None:
    seq, _ = sequence(task, n, sample)
  if task.startswith("copy"):
    text = COPY_PROMPT.format(seq=seq, which="last" if "last" in task else "first")
    text += HINT if task.endswith("hint") else ""
  else:
    text = {"sum": SUM_PROMPT, "count_word": WORD_PROMPT}.get(task, ONES_PROMPT).format(seq=seq)
  if mode == "cot_no_shot":
    return text + "\n" + COT
  if mode == "cot_few_shot":
    return FEW_SHOT_HEAD + "\n\n" + "\n\n".join(SHOTS[task]) + "\n\n" + text
  return text


def slot(task: str) -> str:
  return COPY_SLOT if task.startswith("copy") else COUNT_SLOT


def prompt_text(user: str, prompt_format: str) -> str:
  """'chat' or a checkpoint's own template (prompts.prompt_text); 'plain' (base models): BOS
  is added by the tokenizer, then the user text and one newline, and the model continues."""
  return user + "\n" if prompt_format == "plain" else prompts.prompt_text(user, prompt_format)


@dataclasses.dataclass(frozen=True)
class Item:
  """One prompt: task, mode, n, sample, the correct answer, and its token ids."""
  task: str
  mode: str
  n: int
  sample: int
  answer: int
  text: str
  ids: tuple


def items(tokenizer, task: str, mode: str, ns: Sequence[int], samples: int,
          prompt_format: str) -> list[Item]:
  """The prompts of one (task, mode) over the grid; unseeded tasks get sample 0 only."""
  out = []
  for n in ns:
    for s in range(samples if task in SEEDED else 1):
      text = prompt_text(user_text(task, mode, int(n), s), prompt_format)
      out.append(Item(task, mode, int(n), s, sequence(task, int(n), s)[1], text,
                      tuple(encode(tokenizer, text, bos=True))))
  return out


def bridge_items(tokenizer, task: str, n: int, prompt_format: str) -> tuple[Item, Item]:
  """The bridge's two direct-mode prompts at n (:func:`bridge_sequences`) as items: A is the
  task's grid item at n; B is the task's item at n + 1 (count tasks) or the one with the
  asked digit flipped (copy tasks, n kept)."""
  (seq_a, ans_a), (seq_b, ans_b) = bridge_sequences(task, n)
  out = []
  for seq, ans, m in ((seq_a, ans_a, n), (seq_b, ans_b, n + 1 if task in COUNT_TASKS else n)):
    text = prompt_text(user_text(task, "direct", m, seq=seq), prompt_format)
    out.append(Item(task, "direct", m, 0, ans, text, tuple(encode(tokenizer, text, bos=True))))
  return out[0], out[1]


_NUM = re.compile(r"-?\d+")


def extract(task: str, output: str) -> dict:
  """The strict (template) and flexible (last number) answers of an output; None if absent."""
  pat = re.escape(slot(task).strip()) + r"\s*\**\s*(-?\d+)"
  m = re.search(pat, output)
  nums = _NUM.findall(output)
  return {"strict": int(m.group(1)) if m else None,
          "flexible": int(nums[-1]) if nums else None}


def digit_ids(tokenizer) -> list[int]:
  return [prompts._single(tokenizer, str(d)) for d in range(10)]


def slot_context(tokenizer, item: Item, output: str = "") -> list[int]:
  """The token ids whose next-token distribution is read as the answer: the prompt, then
  (CoT modes) the model's text before the slot (or all of it and a newline), then the slot.
  Checked: the slot text followed by digits tokenizes as context + one token per digit."""
  s = slot(item.task)
  before = ""
  if item.mode != "direct":
    i = output.find(s.strip())
    before = output[:i] if i >= 0 else output.rstrip() + "\n"
  text = item.text + before + s
  ids = encode(tokenizer, text, bos=True)
  digits = digit_ids(tokenizer)
  if encode(tokenizer, text + "10", bos=True) != ids + [digits[1], digits[0]]:
    raise ValueError(f"the answer slot {s!r} does not tokenize as context + digit tokens")
  return ids


def preference(cfg, policy, params, context_ids: Sequence[int], answer: int, digits,
               max_digits: int = 4) -> dict:
  """log p of the correct number and of the two most likely numbers at the slot (see the
  module docstring). Returns {'logp_correct', 'top' [(number, logp), (number, logp)],
  'best_wrong', 'logp_best_wrong', 'margin', 'passes', 'slot_digit' (the most likely digit
  token at the slot: the answer's first digit as the slot's own logits choose it)}."""
  want = str(int(answer))
  max_digits = max(max_digits, len(want))
  ctx = scoring.context(cfg, policy, params, context_ids)
  first = np.asarray(jax.nn.log_softmax(ctx.logits.astype(jnp.float32)), np.float64)
  frontier = {str(d): float(first[digits[d]]) for d in range(10)}  # the slot's own logits
  complete: dict = {}
  passes = 0
  for level in range(1, max_digits + 1):
    best2 = heapq.nlargest(2, complete.values())
    thr = best2[1] if len(best2) == 2 else -np.inf
    keep = {s: lp for s, lp in frontier.items() if lp > thr or want.startswith(s)}
    if not keep:
      break
    _, nxt, rest = scoring.score(cfg, policy, params, ctx,
                                  [[digits[int(c)] for c in s] for s in keep], digits,
                                  pad_to=max_digits)
    passes += 1
    frontier = {}
    for (s, lp), nx, r in zip(keep.items(), nxt, rest):
      complete[s] = lp + float(r)
      if level < max_digits and s != "0":  # no leading zeros
        frontier.update({s + str(d): lp + float(nx[d]) for d in range(10)})
  top = heapq.nlargest(2, complete.items(), key=lambda kv: kv[1])
  wrong = next((kv for kv in top if kv[0] != want), None)
  return {"logp_correct": complete[want], "top": [(int(k), v) for k, v in top],
          "best_wrong": int(wrong[0]), "logp_best_wrong": wrong[1],
          "margin": complete[want] - wrong[1], "passes": passes,
          "slot_digit": int(np.argmax([first[digits[d]] for d in range(10)]))}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval of k successes in n trials (95% by default)."""
  if n == 0:
    return (float("nan"), float("nan"))
  p = k / n
  den = 1 + z * z / n
  mid = (p + z * z / (2 * n)) / den
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
  return (max(0.0, mid - half), min(1.0, mid + half))


@dataclasses.dataclass(frozen=True)
class TaskPairs(pairs.PairSet):
  """The bridge's pairs as a pair set (vocabulary: collapse_jax/pairs.py): A_n and B_n are
  the slot contexts of the bridge's two prompts at n (:func:`bridge_sequences`: their correct
  answers differ); the compared token is the slot's last token. Not one-pass, not appended:
  the exact engine. ``contexts``: ((n, A's ids, B's ids), ...) for every n of the grid."""
  name: str
  token: int
  contexts: tuple
  min_n: int = 1
  copy: str = "token"

  @property
  def one_pass(self) -> bool:
    return False

  @property
  def appended(self) -> bool:
    return False

  def _ids(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = {int(m): (a, b) for m, a, b in self.contexts}[int(n)]
    return np.asarray(a, np.int32), np.asarray(b, np.int32)

  def lengths_ab(self, ns) -> np.ndarray:
    return np.asarray([[len(self._ids(n)[k]) for n in ns] for k in (0, 1)])

  def stream(self, max_n: int, min_tokens: int = 0) -> np.ndarray:
    raise ValueError("task pairs have no stream: use the exact engine")

  def pair_tokens(self, n: int):
    return self._ids(n)
