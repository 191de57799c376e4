"""The four prompt settings of the paper's Figure 5 as TOKEN pairs (A_n, B_n) for a real model.

Built with the model's GGUF tokenizer (:mod:`collapse_jax.checkpoints.tokenizer`) in one of two
prompt formats (:data:`PROMPT_FORMATS`; ``checkpoints.MODELS`` says which a model uses). The
user text is ``"{question} {digits}"``:

  * ``'chat'`` (instruction-tuned SmolLM2): SmolLM2-Instruct's chat template,

        <|im_start|>system\\n{default system prompt}<|im_end|>\\n<|im_start|>user\\n{question} {digits}
        <|im_end|>\\n<|im_start|>assistant\\n

  * ``'plain'`` (base models: Gemma 3 270M): plain text after BOS, ending in an answer cue,

        <bos>{question} {digits}\\nAnswer:

    A base model has no chat turns; the question, the digits and a cue are the text it was
    trained on. With Gemma 3's tokenizer the space before the digits is its own token ('▁',
    id 236743), every digit is one token ('1' is id 236770) and ',' is its own token (236764);
    the suffix is '\\n' 'Answer' ':' (3 tokens).

Tokenization (checked by :func:`check_tokenization` and tests/test_prompts.py):
  * SmolLM2's 'smollm' pre-tokenizer splits every digit on its own, so n digits are n tokens
    ('1' is id 33, '0'..'9' are ids 32..41), and the space before the digits is its own token
    ('Ġ', id 216). A comma is its own token (',' id 28) and never merges with a digit.
  * The digits are followed by the fixed suffix ``<|im_end|> \\n <|im_start|> ass istant \\n``
    (6 tokens). Tokenizing the whole chat text gives exactly ``prefix + digits + suffix``.

The compared representation is the LAST DIGIT TOKEN of A_n and of B_n (``position='digit'``,
the default): this is Theorem 4.2 / B.3's setting (two sequences that differ by a repeated
last token, compared at their last token), and it lets prefix pairs share one causal pass.
The end of the chat turn (``position='turn_end'``: the final ``\\n`` after ``assistant``, the
token whose output predicts the answer) is available for exact-length forwards only: there
A_n and B_n differ in the middle of the sequence, not at the last token.

Settings (n = number of DIGIT tokens in A_n; commas are not counted):
  (a) count ones:   A_n = prompt + 1^n,                  B_n = prompt + 1^(n+1).
  (b) count digits: A_n = prompt + x_1..x_{n-1} 1,       B_n = prompt + x_1..x_{n-1} 1 1,
      x_i uniform over '0'..'9' (seeded; the same x_1.. for every n). Theorem B.3's pair.
  (c) copy ones:    as (a) with the copy question.
  (d) copy ones with commas grouped thousands-style, FROM THE RIGHT ('1,111', '11,111'):
      A_n = prompt + g(n), B_n = prompt + g(n+1) where g(m) is m ones with ',' before every
      digit that has a multiple of 3 digits after it (as ``f"{int('1' * m):,}"`` writes it).
      The compared last digits of A_n and B_n then both close a full group of three, in the
      same place of their group. This is not prefix-consistent: A_4 = '1,111' is not a prefix
      of B_4 = '11,111', so no single pass holds the pairs (``one_pass`` and ``appended`` are
      False) and the engines resolve to ``exact`` (separate exact-length forwards).
  (d_left) the variant of (d) grouped FROM THE LEFT ('111,111,1'), so that the n-digit string
      is a prefix of the (n+1)-digit string: for n % 3 == 0, B_n = A_n + ',' '1' (two extra
      tokens), else A_n + '1'. One causal pass holds it, but the last digits of A_n and B_n
      sit at different places of their groups (e.g. A_3 ends a group, B_3 = '111,1' starts
      one), which keeps the pair apart partly by construction. Not a Figure-5 default:
      ``--settings=d_left`` (:data:`VARIANTS`).

Exactness of the one-pass formulations:
  * (a), (c), (d_left): A_n is a prefix of B_n, and every B_n is a prefix of ONE sequence
    (``stream``): one causal pass holds A_n's last digit at row ``rows(ns)[0]`` and B_n's
    at ``rows[1]``. Mathematically exact (causal attention); bits can differ from an
    exact-length forward because XLA's blocking depends on the shape.
  * (b): A_n is a prefix of B_n, but A_{n+1} = ... x_n 1 is NOT a prefix of B_n = ... 1 1 when
    x_n != 1, so there is no single sequence. The kv_cache sweep engine runs one pass over
    the stream ``prompt + x_1..x_{N-1}`` and then, per n, the two tokens [1, 1] at positions
    [P+n-1, P+n] attending to the first P+n-1 cached keys (len(A_n) = P + n).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from collapse_jax import pairs
from collapse_jax.config import check_token_ids

SETTINGS = ("a", "b", "c", "d")  # Figure 5's four panels (the default settings)
VARIANTS = ("d_left",)  # named variants, selectable by key
COMMAS = ("", "right", "left")  # no commas; thousands-style from the right; from the left
POSITIONS = ("digit", "turn_end")
PROMPT_FORMATS = {  # name -> how results and figures describe it
    "chat": "the chat template",
    "plain": "plain text '<bos>{question} {digits}\\nAnswer:'",
    "template": "the checkpoint's own chat template",
}
PLAIN_CUE = "\nAnswer:"  # the end of a 'plain' prompt (its "turn end")
COUNT_QUESTION = "How many ones are in the following sequences?"
COPY_QUESTION = "Can you copy the following number?"
_MARK = "\x00DIGITS\x00"

_SPEC = {
    "a": dict(question=COUNT_QUESTION, random_digits=False, commas="",
              title="(a) count: ones",
              pair="A_n = prompt + 1^n vs B_n = prompt + 1^(n+1)"),
    "b": dict(question=COUNT_QUESTION, random_digits=True, commas="",
              title="(b) count: random digits",
              pair="A_n = prompt + x_1..x_{n-1} 1 vs B_n = prompt + x_1..x_{n-1} 1 1 (x uniform 0-9)"),
    "c": dict(question=COPY_QUESTION, random_digits=False, commas="",
              title="(c) copy: ones",
              pair="A_n = prompt + 1^n vs B_n = prompt + 1^(n+1)"),
    "d": dict(question=COPY_QUESTION, random_digits=False, commas="right",
              title="(d) copy: ones with commas",
              pair="A_n = prompt + g(n) vs B_n = prompt + g(n+1), g = n ones grouped by 3 "
                   "from the right ('1,111')"),
    "d_left": dict(question=COPY_QUESTION, random_digits=False, commas="left",
                   title="(d, left) copy: ones with commas from the left",
                   pair="A_n = prompt + g(n) vs B_n = prompt + g(n+1), g = n ones, ',' after "
                        "every 3rd from the left ('111,1')"),
}


@dataclasses.dataclass(frozen=True)
class PromptSetting(pairs.PairSet):
  """One Figure-5 setting as a pair set of token ids (vocabulary: collapse_jax/pairs.py).

  Attributes:
    key: 'a'..'d' or a variant ('d_left'). title / pair: human-readable panel title and pair
      definition.
    question: the user question (the digits follow after one space).
    prefix_ids: chat template up to and including the space token before the digits.
    suffix_ids: the tokens after the digits (end of user turn + assistant header).
    one_id / comma_id: ids of '1' and ','. digit_ids: ids of '0'..'9'.
    random_digits: setting (b). commas: how commas group the ones (:data:`COMMAS`): '' (none),
      'right' (setting (d), thousands-style) or 'left' ('d_left'). seed: digit seed for (b).
    digit_stream: (b) only: the seeded digits x_1..x_K (ids), shared by every n.
    position: the compared token, 'digit' (the last digit) or 'turn_end' (the last token of
      the chat turn; A_n and B_n then differ before it: exact-length forwards only).
  """
  key: str
  title: str
  pair: str
  question: str
  prefix_ids: tuple
  suffix_ids: tuple
  one_id: int
  comma_id: int
  digit_ids: tuple
  random_digits: bool
  commas: str
  seed: int
  digit_stream: tuple = ()
  position: str = "digit"
  prompt_format: str = "chat"
  copy: str = "token"
  min_n: int = 1

  # -- the pair-set interface --------------------------------------------------------------
  @property
  def name(self) -> str:
    return self.key

  @property
  def token(self) -> int:
    return self.one_id

  @property
  def one_pass(self) -> bool:
    """(a), (c), (d_left) at the last digit: every B_n is a prefix of one sequence. Not (d):
    commas grouped from the right move when a digit is added ('1,111' -> '11,111')."""
    return (not self.random_digits and self.commas != "right"
            and self.position == "digit")

  @property
  def appended(self) -> bool:
    """(a), (b), (c) at the last digit: B_n = A_n + ['1']; (d) and (d_left) insert commas."""
    return not self.commas and self.position == "digit"

  @property
  def prefix_len(self) -> int:
    return len(self.prefix_ids)

  def lengths_ab(self, ns) -> np.ndarray:
    n = np.asarray(ns, np.int64)
    extra = self.prefix_len + (len(self.suffix_ids) if self.position == "turn_end" else 0)
    a = n + ((n - 1) // 3 if self.commas else 0)
    b = (n + 1) + (n // 3 if self.commas else 0)
    return np.stack([a + extra, b + extra])

  def stream(self, max_n: int, min_tokens: int = 0) -> np.ndarray:
    """One-pass settings: the sequence whose prefixes are every B_n (n <= max_n), continued
    until it has ``min_tokens`` tokens. (b): prompt + x_1..x_{max_n-1} (at least one digit)."""
    pre = np.asarray(self.prefix_ids, np.int32)
    if self.one_pass:
      m = max_n
      while len(pre) + len(self.digits(m, b_side=True)) < min_tokens:
        m += max(1, (min_tokens - len(pre) - len(self.digits(m, b_side=True))) // 2)
      return np.concatenate([pre, self.digits(m, b_side=True)])
    if not self.appended:
      raise ValueError(f"setting ({self.key}) at position {self.position!r} has no stream: "
                       "use the exact engine")
    k = max(max_n - 1, 1)
    if k > len(self.digit_stream):
      raise ValueError(f"setting (b) was built for n <= {len(self.digit_stream) + 1}")
    return np.concatenate([pre, np.asarray(self.digit_stream[:k], np.int32)])

  def pair_tokens(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(A_n, B_n) token ids: the prompt, the digits, and at ``position='turn_end'`` the chat
    suffix (each ends at its compared token)."""
    pre = np.asarray(self.prefix_ids, np.int32)
    suf = np.asarray(self.suffix_ids if self.position == "turn_end" else (), np.int32)
    return (np.concatenate([pre, self.digits(n), suf]),
            np.concatenate([pre, self.digits(n, b_side=True), suf]))

  # -- digits and text ---------------------------------------------------------------------
  def digits(self, n: int, *, b_side: bool = False) -> np.ndarray:
    """Token ids after the prompt of A_n (``b_side``: of B_n), up to its last digit."""
    if n < 1:
      raise ValueError(f"n must be >= 1, got {n}")
    if self.random_digits:
      if n - 1 > len(self.digit_stream):
        raise ValueError(f"setting (b) was built for n <= {len(self.digit_stream) + 1}")
      tail = [self.one_id] * (2 if b_side else 1)
      return np.asarray(list(self.digit_stream[:n - 1]) + tail, np.int32)
    m = n + 1 if b_side else n
    if not self.commas:
      return np.full(m, self.one_id, np.int32)
    out = []
    for i in range(m):  # a comma before digit i: from the left after every 3rd digit; from
      # the right before every digit with a multiple of 3 digits after it (thousands-style)
      if i and (i if self.commas == "left" else m - i) % 3 == 0:
        out.append(self.comma_id)
      out.append(self.one_id)
    return np.asarray(out, np.int32)

  def digit_text(self, n: int, *, b_side: bool = False) -> str:
    """The digits of A_n (B_n) as text (with commas for (d))."""
    table = {self.one_id: "1", self.comma_id: ","}
    table.update({i: str(d) for d, i in enumerate(self.digit_ids)})
    return "".join(table[int(t)] for t in self.digits(n, b_side=b_side))

  def user_text(self, n: int, *, b_side: bool = False) -> str:
    return f"{self.question} {self.digit_text(n, b_side=b_side)}"

  # -- bookkeeping -------------------------------------------------------------------------
  def token_counts(self, ns) -> dict:
    """Token counts of A_n / B_n per n (and the prompt/suffix lengths)."""
    n = np.asarray(ns, np.int64)
    a, b = self.lengths_ab(n)
    return {"prefix_tokens": self.prefix_len, "suffix_tokens": len(self.suffix_ids),
            "A_tokens": a, "B_tokens": b, "digit_tokens_A": n, "digit_tokens_B": n + 1}

  def describe(self) -> dict:
    return {**super().describe(), "key": self.key, "title": self.title, "pair": self.pair,
            "question": self.question, "commas": self.commas, "position": self.position,
            "prompt_format": self.prompt_format,
            "prefix_ids": list(self.prefix_ids), "suffix_ids": list(self.suffix_ids),
            "prefix_tokens": self.prefix_len, "suffix_tokens": len(self.suffix_ids),
            "one_id": self.one_id, "comma_id": self.comma_id, "digit_ids": list(self.digit_ids),
            "seed": self.seed if self.random_digits else None}


def task_format_name(prompt_format: str) -> str:
  """How the tasks' results and figures name a prompt format (their 'plain' prompts have
  no answer cue: plain text)."""
  return "plain text" if prompt_format == "plain" else PROMPT_FORMATS[prompt_format]


def _single(tokenizer, text: str) -> int:
  from collapse_jax.checkpoints.tokenizer import encode
  ids = encode(tokenizer, text)
  if len(ids) != 1:
    raise ValueError(f"{text!r} is not a single token here: {ids}")
  return ids[0]


class ChatTemplate(str):
  """The prompt format 'template': a checkpoint's own Jinja chat template (an HF directory's
  chat_template.jinja or tokenizer_config.json, a GGUF's ``tokenizer.chat_template``). It is
  the string 'template' (so results, captions and ``PROMPT_FORMATS`` name it) carrying the
  template ``source``; :meth:`render` renders one user turn as transformers'
  ``apply_chat_template`` does (sandboxed Jinja, trim_blocks, lstrip_blocks, loopcontrols,
  ``raise_exception``, ``tojson``), with ``add_generation_prompt=True``. ``bos_token``
  renders empty: every prompt here is encoded with BOS added by the tokenizer, where it adds
  one, so a template that writes it would give two."""

  def __new__(cls, source: str, eos_token: str = ""):
    self = super().__new__(cls, "template")
    self.source, self.eos_token = source, eos_token
    return self

  def __reduce__(self):
    return ChatTemplate, (self.source, self.eos_token)

  def render(self, user: str, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": user}]
    return self._compiled.render(messages=msgs, add_generation_prompt=True, bos_token="",
                                 eos_token=self.eos_token)

  @functools.cached_property
  def _compiled(self):
    """The template compiled once (a task grid renders it for every prompt)."""
    import json
    import jinja2.ext
    import jinja2.sandbox

    def fail(message):
      raise ValueError(f"the chat template refused the prompt: {message}")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, separators=None, \
        sort_keys=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii,
                                    separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = fail
    return env.from_string(self.source)


def prompt_text(user: str, prompt_format: str = "chat", *, system: str | None = None) -> str:
  """The whole prompt text for a user text (BOS is added by the tokenizer, not here)."""
  from collapse_jax.checkpoints.tokenizer import chat_prompt
  if isinstance(prompt_format, ChatTemplate):
    return prompt_format.render(user, system)
  if prompt_format == "chat":
    return chat_prompt(user, system=system)
  if prompt_format == "plain":
    if system is not None:
      raise ValueError("a 'plain' prompt has no system prompt")
    return user + PLAIN_CUE
  raise ValueError(f"unknown prompt format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")


def make_setting(key: str, tokenizer, *, max_n: int = 1000, seed: int = 0,
                 system: str | None = None, vocab_size: int | None = None,
                 position: str = "digit", prompt_format: str = "chat") -> PromptSetting:
  """Build setting ``key`` ('a'..'d', or a variant of :data:`VARIANTS`) with the tokenizer in ``prompt_format`` ('chat' or
  'plain', :func:`prompt_text`). ``max_n`` sizes (b)'s seeded digit stream (its first digits
  do not depend on max_n). ``vocab_size``: the model's; every id the setting uses must lie
  below it (ValueError otherwise)."""
  from collapse_jax.checkpoints.tokenizer import encode
  if key not in _SPEC:
    raise ValueError(f"unknown setting {key!r}; valid: {', '.join(SETTINGS + VARIANTS)}")
  if position not in POSITIONS:
    raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
  spec = _SPEC[key]
  text = prompt_text(f"{spec['question']} {_MARK}", prompt_format, system=system)
  pre_text, suf_text = text.split(_MARK)
  prefix, suffix = encode(tokenizer, pre_text, bos=True), encode(tokenizer, suf_text)
  digit_ids = tuple(_single(tokenizer, str(d)) for d in range(10))
  one_id, comma_id = digit_ids[1], _single(tokenizer, ",")
  stream = ()
  if spec["random_digits"]:
    rng = np.random.default_rng(seed)  # choice() is prefix-consistent in its size
    stream = tuple(int(i) for i in rng.choice(np.asarray(digit_ids), size=max(max_n, 2)))
  if vocab_size is not None:
    check_token_ids(list(prefix) + list(suffix) + list(digit_ids) + [comma_id], vocab_size,
                    f"setting ({key}): token ids")
  return PromptSetting(key=key, title=spec["title"], pair=spec["pair"], question=spec["question"],
                       prefix_ids=tuple(prefix), suffix_ids=tuple(suffix), one_id=one_id,
                       comma_id=comma_id, digit_ids=digit_ids, random_digits=spec["random_digits"],
                       commas=spec["commas"], seed=seed, digit_stream=stream, position=position,
                       prompt_format=prompt_format)


def check_tokenization(setting: PromptSetting, tokenizer, ns: Sequence[int] = (1, 2, 3, 4, 7)):
  """Assert that tokenizing the full prompt text of A_n and B_n (BOS included where the
  tokenizer adds one) gives exactly prefix + digit tokens + suffix (so the token pairs ARE
  the prompts' tokenizations)."""
  from collapse_jax.checkpoints.tokenizer import encode
  if setting.random_digits:  # (b) holds digits for n <= its stream + 1 only
    ns = [n for n in ns if n <= len(setting.digit_stream) + 1]
  for n in ns:
    for b_side in (False, True):
      ids = encode(tokenizer, prompt_text(setting.user_text(n, b_side=b_side),
                                          setting.prompt_format), bos=True)
      want = np.concatenate([setting.prefix_ids, setting.digits(n, b_side=b_side),
                             setting.suffix_ids]).astype(np.int64)
      if not np.array_equal(np.asarray(ids), want):
        raise AssertionError(f"setting ({setting.key}) n={n} {'B' if b_side else 'A'}: the "
                             f"prompt text tokenizes to {ids}, the pair definition says {want.tolist()}")


def figure5_caption(label: str, prompt_format: str, position: str, runs, seeds, keys,
                    windows) -> str:
  """Figure 5's caption: the model, its prompt format, the compared token, each setting's
  engine (from ``runs``), (b)'s seeds and the window modes when not native only."""
  return (f"{label} (-> f32 -> policy), {PROMPT_FORMATS[prompt_format]}, "
          "compared token = "
          + ("last digit of A_n / B_n" if position == "digit" else "end of the prompt")
          + "; n = digit tokens of A_n (every digit is one token); engines: "
          + ", ".join(dict.fromkeys(f"({r['pairs']}) {r['engine']}" for r in runs))
          + (f"; (b) seeds {','.join(map(str, seeds))}" if "b" in keys else "")
          + (f"; windows {','.join(windows)}" if list(windows) != ["native"] else ""))
