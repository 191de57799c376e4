"""collapse_jax.checkpoints (the package's own functions): a model by name or by path
(``check_model``, ``load_model``). The loaders are tested in test_checkpoints_gguf.py,
test_checkpoints_hf.py and test_checkpoints_tokenizer.py."""
import pytest

from collapse_jax import checkpoints

try:  # rootdir import (pytest's rootdir on sys.path) or package import
  from checkpoint_helpers import needs_smollm2
except ImportError:
  from tests.checkpoint_helpers import needs_smollm2


def test_check_model_takes_names_hf_directories_and_gguf_files(tmp_path):
  assert checkpoints.check_model("smollm2") == "smollm2"
  for bad in ("llama", str(tmp_path), str(tmp_path / "x.gguf")):
    with pytest.raises(ValueError, match="is neither a name .smollm2, gemma3. nor a local HF"):
      checkpoints.check_model(bad)
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "m.gguf").write_bytes(b"GGUF")
  assert checkpoints.check_model(str(tmp_path)) == str(tmp_path)
  assert checkpoints.check_model(str(tmp_path / "m.gguf")).endswith("m.gguf")
  with pytest.raises(ValueError, match="neither a name"):
    checkpoints.load_model("nope")  # checked before anything is read


@pytest.mark.slow
@needs_smollm2
def test_a_gguf_by_path_loads_as_the_named_model_with_its_own_template():
  """The same file by name and by path: the same config and weights; by path the label names
  the file and the prompts come from the file's own chat template ('template'), which
  renders exactly the named model's 'chat' prompt (SmolLM2's ChatML)."""
  import numpy as np
  from collapse_jax import prompts
  path = checkpoints.find_smollm2_gguf()
  by_name, by_path = checkpoints.load_model("smollm2"), checkpoints.load_model(str(path))
  assert by_path.config == by_name.config and by_path.eos_token_ids == by_name.eos_token_ids
  assert by_path.prompt_format == "template" and by_name.prompt_format == "chat"
  assert (prompts.prompt_text("Count 111", by_path.prompt_format)
          == prompts.prompt_text("Count 111", "chat"))
  assert path.name in by_path.label and by_path.name == str(path)
  np.testing.assert_array_equal(by_path.params["layer_3"]["attn"]["q"],
                                by_name.params["layer_3"]["attn"]["q"])
