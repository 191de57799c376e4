"""GGUF tokenizers (SmolLM2's byte-level BPE, Gemma 3's SentencePiece) and SmolLM2's chat
template, rebuilt from GGUF metadata (no hub, no files).

Gemma 3 (``tokenizer.ggml.model = 'llama'``: a SentencePiece BPE vocabulary of 262,144 pieces,
spaces spelled '▁', byte fallback '<0x..>', no merges stored): the merges are rebuilt from
the vocabulary -- every way of cutting a piece into two pieces of the vocabulary, the pieces
taken in file order (a piece's rank is its position; Gemma's scores do not follow the merge
order) and, within a piece, the longest left part first -- which is transformers' reading of
the same file (tests/test_checkpoints_tokenizer.py compares the two). Pieces of two or more spaces are
stored as real spaces and are respelled '▁'. No prefix space is added
(``add_space_prefix = False``); spaces become '▁' before the BPE; control pieces (<bos>,
<start_of_turn>, ...) are matched whole. Every digit is its own piece, so n digits are n
tokens. ``encode(tok, text, bos=True)`` prepends <bos> (id 2) as
``tokenizer.ggml.add_bos_token`` says.

A GGUF carries no tokenizer.json, only ``tokenizer.ggml.*`` metadata: the byte-level BPE
vocabulary (``tokens``, already spelled in GPT-2's byte alphabet: 'Ġ' is a space), the
``merges`` and the token types (3 = control, e.g. ``<|im_start|>``), plus
``tokenizer.ggml.pre = 'smollm'``. llama.cpp's 'smollm' pre-tokenizer splits every digit on
its own (``\\p{N}``) before the GPT-2 regex, which in the ``tokenizers`` library is
``Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False,
use_regex=True)])`` -- the pre-tokenizer of SmolLM2's tokenizer.json on the hub.
Consequence for the experiments: a run of n digits is exactly n tokens ("1111" -> 4 tokens)
and " 1" is two tokens (' ', '1').

SmolLM2-Instruct adds no BOS token (``tokenizer.ggml.add_bos_token = False``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable unicode map (the 'byte alphabet')."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _tokenizers():
  try:
    import tokenizers
  except ImportError as e:
    raise ImportError("the GGUF tokenizer needs `tokenizers`: pip install 'collapse_jax[llm]' "
                      "(or pip install tokenizers)") from e
  return tokenizers


def tokenizer_from_metadata(md: Mapping[str, Any]):
  """A ``tokenizers.Tokenizer`` from GGUF metadata: gpt2-type BPE ('smollm' or 'gpt2'
  pre-tokenizer) or a Gemma SentencePiece vocabulary (``tokenizer.ggml.model = 'llama'`` with
  ``general.architecture`` gemma*)."""
  kind = md.get("tokenizer.ggml.model")
  if kind == "llama":
    arch = str(md.get("general.architecture", ""))
    if not arch.startswith("gemma"):
      raise ValueError(f"SentencePiece (tokenizer.ggml.model='llama') vocabularies are supported "
                       f"for Gemma models only, not architecture {arch!r}")
    return _gemma_tokenizer(md)
  if kind != "gpt2":
    raise ValueError(f"tokenizer.ggml.model={kind!r} is not supported (only byte-level BPE "
                     "'gpt2' and Gemma's SentencePiece 'llama')")
  t = _tokenizers()
  AddedToken, Tokenizer, decoders, models, pre_tokenizers = (
      t.AddedToken, t.Tokenizer, t.decoders, t.models, t.pre_tokenizers)
  pre = md.get("tokenizer.ggml.pre")
  if pre not in ("smollm", "gpt2", "default", None):
    raise ValueError(f"tokenizer.ggml.pre={pre!r} is not supported (only 'smollm' and 'gpt2')")
  tokens = list(md["tokenizer.ggml.tokens"])
  types = list(md.get("tokenizer.ggml.token_type") or [1] * len(tokens))
  alphabet = set(_bytes_to_unicode().values())
  spell = _bytes_to_unicode()
  # Tokens outside the byte alphabet (none in SmolLM2) are re-spelled byte by byte, as
  # transformers' GGUF converter does.
  vocab = {(t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i
           for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  splits = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if pre == "smollm":
    splits.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
  tok.decoder = decoders.ByteLevel()
  control = [AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if ty == 3 and set(t) <= alphabet]
  tok.add_special_tokens(control)
  return tok


def gemma_merges(tokens: list[str]) -> list[tuple[str, str]]:
  """BPE merges implied by a SentencePiece vocabulary listed best-first: for each piece in
  order, every split into two vocabulary pieces, longest left part first."""
  vocab = set(tokens)
  merges = []
  for tok in tokens:
    for i in range(len(tok) - 1, 0, -1):
      left, right = tok[:i], tok[i:]
      if left in vocab and right in vocab:
        merges.append((left, right))
  return merges


def _gemma_tokenizer(md: Mapping[str, Any]):
  for key in ("tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix"):
    if md.get(key):
      raise ValueError(f"{key}=True is not supported by the Gemma tokenizer builder")
  t = _tokenizers()
  raw = list(md["tokenizer.ggml.tokens"])
  types = list(md.get("tokenizer.ggml.token_type") or [1] * len(raw))
  # runs of spaces are stored as spaces; the model spells them '▁'
  tokens = ["\u2581" * len(x) if x and not x.strip(" ") else x for x in raw]
  unk = tokens[int(md.get("tokenizer.ggml.unknown_token_id", 3))]
  vocab = {}
  for i, x in enumerate(tokens):
    vocab.setdefault(x, i)
  tok = t.Tokenizer(t.models.BPE(vocab=vocab, merges=gemma_merges(tokens), unk_token=unk,
                                 fuse_unk=True, byte_fallback=True, dropout=None))
  tok.normalizer = t.normalizers.Replace(" ", "\u2581")
  tok.decoder = t.decoders.Sequence([t.decoders.Replace("\u2581", " "), t.decoders.ByteFallback(),
                                     t.decoders.Fuse()])
  tok.add_special_tokens([t.AddedToken(x, special=True, normalized=False)
                          for x, ty in zip(tokens, types) if ty == 3])
  tok.add_tokens([t.AddedToken(x, special=False, normalized=False)
                  for x, r, ty in zip(tokens, raw, types) if ty == 4 and x == r])
  if md.get("tokenizer.ggml.add_bos_token", True):
    bos_id = int(md.get("tokenizer.ggml.bos_token_id", 2))
    bos = tokens[bos_id]
    tok.post_processor = t.processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, bos_id)])
  return tok


def encode(tokenizer, text: str, *, bos: bool = False) -> list[int]:
  """Token ids of ``text`` (special tokens like <|im_start|> are matched). ``bos``: prepend the
  BOS token where the tokenizer's metadata adds one (Gemma 3; SmolLM2 adds none)."""
  return tokenizer.encode(text, add_special_tokens=bos).ids


def apply_chat_template(messages: Iterable[Mapping[str, str]], *,
                        add_generation_prompt: bool = True,
                        default_system: str = DEFAULT_SYSTEM_PROMPT) -> str:
  """SmolLM2-Instruct's chat template (the Jinja template in the GGUF's
  ``tokenizer.chat_template``) as plain Python:

      <|im_start|>system\\n{default_system}<|im_end|>\\n  (if the first message is not 'system')
      <|im_start|>{role}\\n{content}<|im_end|>\\n             (each message)
      <|im_start|>assistant\\n                               (if add_generation_prompt)
  """
  messages = list(messages)
  out = []
  for i, m in enumerate(messages):
    if i == 0 and m["role"] != "system":
      out.append(f"{IM_START}system\n{default_system}{IM_END}\n")
    out.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
  if add_generation_prompt:
    out.append(f"{IM_START}assistant\n")
  return "".join(out)


def chat_prompt(user: str, *, system: str | None = None, add_generation_prompt: bool = True) -> str:
  """One user turn (optionally with a system prompt) in the chat template."""
  msgs = ([{"role": "system", "content": system}] if system is not None else []) + \
      [{"role": "user", "content": user}]
  return apply_chat_template(msgs, add_generation_prompt=add_generation_prompt)
