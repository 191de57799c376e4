"""collapse_jax.checkpoints.tokenizer: our GGUF-metadata tokenizers and SmolLM2's chat template
vs an independent plain-Python BPE with llama.cpp's 'smollm' pre-tokenizer semantics and vs
transformers' GGUF tokenizers (tests/goldens/smollm2_tokenizer.json, gemma3_tokenizer.json),
and on a tiny synthetic GGUF."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from collapse_jax.config import DecoderConfig
try:  # rootdir import (pytest's rootdir on sys.path) or package import
  from checkpoint_helpers import (GOLDENS, _tiny_hf_state_dict, _write_tiny_gguf, gemma3, needs_gemma3, needs_gguf, needs_smollm2, needs_tokenizers, smollm2)  # noqa: F401 (fixtures)
except ImportError:
  from tests.checkpoint_helpers import (GOLDENS, _tiny_hf_state_dict, _write_tiny_gguf, gemma3, needs_gemma3, needs_gguf, needs_smollm2, needs_tokenizers, smollm2)  # noqa: F401


@needs_smollm2
def test_tokenizer_matches_reference(smollm2):
  from collapse_jax.checkpoints.tokenizer import encode, tokenizer_from_metadata
  tok = tokenizer_from_metadata(smollm2.metadata)
  ref = json.loads((GOLDENS / "smollm2_tokenizer.json").read_text())
  bad = [(c["text"], encode(tok, c["text"]), c["ids"]) for c in ref["cases"]
         if encode(tok, c["text"]) != c["ids"]]
  assert not bad, bad
  assert len(ref["cases"]) >= 30
  # transformers' own GGUF tokenizer ignores pre='smollm' (plain GPT-2 split) and so differs
  # from llama.cpp / SmolLM2's tokenizer.json exactly on whitespace runs before a digit; on
  # every other case it is a second, agreeing reference.
  differ = {c["text"] for c in ref["cases"] if c["ids"] != c["transformers_gguf_ids"]}
  assert all(re.search(r"\s{2,}\d", t) for t in differ), differ
  assert len(differ) < len(ref["cases"]) // 4
  # digits are single tokens: n ones are n tokens; commas are their own token
  assert encode(tok, "1" * 50) == [33] * 50
  assert encode(tok, "1,111") == [33, 28, 33, 33, 33]
  assert tok.decode(encode(tok, "Hello, 1,111  x")) == "Hello, 1,111  x"
  golden_ids = np.load(GOLDENS / "smollm2_forward.npz")
  for text, ids, n in zip(golden_ids["prompts"], golden_ids["ids"], golden_ids["lengths"]):
    assert encode(tok, str(text)) == ids[:n].tolist()


def test_chat_template_matches_reference():
  from collapse_jax.checkpoints.tokenizer import apply_chat_template, chat_prompt
  ref = json.loads((GOLDENS / "smollm2_tokenizer.json").read_text())
  for c in ref["chat"]:
    assert apply_chat_template(c["messages"],
                               add_generation_prompt=c["add_generation_prompt"]) == c["text"]
  assert chat_prompt("Hi") == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
                               "trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                               "<|im_start|>assistant\n")


@needs_smollm2
def test_smollm2_chat_template_in_gguf(smollm2):
  """Our plain-Python template renders like the Jinja template stored in the GGUF."""
  jinja2 = pytest.importorskip("jinja2", reason="needs jinja2 to render the GGUF template")
  from collapse_jax.checkpoints.tokenizer import apply_chat_template
  tpl = jinja2.Environment().from_string(smollm2.metadata["tokenizer.chat_template"])
  for msgs in ([{"role": "user", "content": "1,111 ones"}],
               [{"role": "system", "content": "S"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}]):
    for gen in (True, False):
      assert tpl.render(messages=msgs, add_generation_prompt=gen) == \
          apply_chat_template(msgs, add_generation_prompt=gen)


@needs_gguf
@needs_tokenizers
def test_gguf_tokenizer_synthetic(tmp_path):
  from collapse_jax.checkpoints import gguf as g
  from collapse_jax.checkpoints import encode, load_tokenizer, tokenizer_from_metadata
  cfg = DecoderConfig(num_layers=1, d_model=16, num_heads=2, mlp="swiglu", mlp_dim=32,
                      norm="rmsnorm", vocab_size=300)
  path = tmp_path / "tok.gguf"
  tokens = _write_tiny_gguf(path, cfg, _tiny_hf_state_dict(cfg, np.random.default_rng(0)),
                            q8_embedding=False)
  tok = load_tokenizer(path)
  idx = {t: i for i, t in enumerate(tokens)}
  # 'smollm' splits digits first: the '1 1' and 'Ġ 1' merges can never apply
  assert encode(tok, " 11") == [idx["Ġ"], idx["1"], idx["1"]]
  assert encode(tok, "ab") == [idx["ab"]]
  assert encode(tok, "<|im_start|>ab") == [1, idx["ab"]]
  md = g.load_gguf(path).metadata
  gpt2 = tokenizer_from_metadata({**md, "tokenizer.ggml.pre": "gpt2"})
  assert encode(gpt2, " 11") == [idx["Ġ"], idx["11"]]  # (Ġ1 ranks after 11)


@needs_gemma3
@pytest.mark.slow  # CI's slow step: ~100 s, mostly reading the 262k-token metadata
@needs_tokenizers
def test_gemma3_tokenizer_matches_transformers(gemma3):
  """Digits, spaces, newlines, commas, unicode, control tokens: the same ids as transformers'
  GGUF tokenizer, BOS included (``add_bos_token``); every digit is one token."""
  from collapse_jax.checkpoints.tokenizer import encode
  ref = json.loads((GOLDENS / "gemma3_tokenizer.json").read_text())
  tok = gemma3.tokenizer
  bad = [(c["text"], encode(tok, c["text"], bos=True), c["ids"]) for c in ref["cases"]
         if encode(tok, c["text"], bos=True) != c["ids"]]
  assert not bad, bad[:3]
  assert encode(tok, "1" * 7) == [encode(tok, "1")[0]] * 7 and encode(tok, "1", bos=True)[0] == 2
  assert [tok.id_to_token(i) for i in encode(tok, " 1,1\n")] == ["\u2581", "1", ",", "1", "\n"]
