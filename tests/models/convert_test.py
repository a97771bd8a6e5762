"""HF safetensors <-> NNX conversion: round trip through transformers, errors, launcher."""

import functools
import json
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from chronoforge_jax.models import convert, vlm
from tests import hf_reference

torch = pytest.importorskip("torch")
torch.set_num_threads(2)
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

TIED = dict(
  text={
    "hidden_size": 40,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 43,
    "num_hidden_layers": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [3, 4, 3]},
  },
  vision={"out_hidden_size": 40},
  tie_word_embeddings=True,
)


@functools.cache
def _hf(tied):
  return hf_reference.build_hf_model(hf_reference.hf_config_dict(**(TIED if tied else {})), seed=4)


def _inputs(cfg):
  return hf_reference.video_prompt_batch(
    cfg, [(2, 4, 6)], [(3, 2), (1, 5)], np.random.default_rng(0), videos_per_row=[1, 0]
  )


def _logits(model, inp):
  grid = inp["video_grid_thw"]
  return np.asarray(
    nnx.jit(lambda m, i, k, p: m(i, k, p, grid))(
      model, inp["input_ids"], inp["attention_mask"], inp["pixel_values_videos"]
    )
  )


@pytest.mark.parametrize(
  "tied,scan_layers",
  [(False, True), (True, True), (False, False)],
  ids=["scan", "tied-scan", "unrolled"],
)
def test_round_trip_through_transformers(tmp_path, tied, scan_layers):
  hf = _hf(tied)
  hf.save_pretrained(tmp_path / "hf")
  model = convert.load_hf_model(
    str(tmp_path / "hf"), text_position_after_video="spatial", scan_layers=scan_layers
  )
  assert model.scan_layers == scan_layers
  # Small shards force the sharded layout with an index file.
  convert.save_hf(model, str(tmp_path / "out"), max_shard_bytes=20_000)
  files = os.listdir(tmp_path / "out")
  assert "model.safetensors.index.json" in files
  assert sum(f.endswith(".safetensors") for f in files) > 1
  reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
  for a, b in zip(hf.state_dict().items(), reloaded.state_dict().items()):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
  inp = _inputs(model.config)
  before = hf_reference.hf_forward(hf, inp)
  after = hf_reference.hf_forward(reloaded, inp)
  np.testing.assert_array_equal(after, before)
  ours = _logits(model, inp)
  m = inp["attention_mask"].astype(bool)
  assert np.abs(ours[m] - before[m]).max() / np.abs(before[m]).max() <= 1e-4


def _write(path, tensors):
  from safetensors.numpy import save_file

  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def _published_tensors(tmp_path):
  _hf(False).save_pretrained(tmp_path / "hf")
  reader = convert.SafetensorsReader(str(tmp_path / "hf"))
  return {n: np.array(reader.get(n)) for n in reader.names()}


def test_errors_name_missing_unexpected_and_misshaped_tensors(tmp_path):
  tensors = _published_tensors(tmp_path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.9.extra.weight"] = np.zeros((2,), np.float32)
  tensors["visual.blocks.0.attn.qkv.bias"] = np.zeros((7,), np.float32)
  _write(tmp_path / "bad", tensors)
  with open(tmp_path / "hf" / "config.json") as f:
    (tmp_path / "bad" / "config.json").write_text(f.read())
  with pytest.raises(ValueError) as err:
    convert.load_hf_model(str(tmp_path / "bad"))
  msg = str(err.value)
  assert "missing (1): model.layers.1.mlp.up_proj.weight" in msg
  assert "unexpected (1): model.layers.9.extra.weight" in msg
  assert "visual.blocks.0.attn.qkv.bias: checkpoint (7,), model expects (120,)" in msg


def test_transformers5_names_and_bfloat16_weights(tmp_path):
  tensors = _published_tensors(tmp_path)
  renamed = {}
  for name, x in tensors.items():
    if name.startswith("visual."):
      name = "model." + name
    elif name.startswith("model."):
      name = "model.language_model." + name[len("model.") :]
    renamed[name] = x.astype(ml_dtypes.bfloat16)
  _write(tmp_path / "v5", renamed)
  with open(tmp_path / "hf" / "config.json") as f:
    (tmp_path / "v5" / "config.json").write_text(f.read())
  model = convert.load_hf_model(str(tmp_path / "v5"), param_dtype=jnp.bfloat16)
  q = model.text.layers.attn.q.kernel[...]  # stacked [layers, in, out]
  assert q.dtype == jnp.bfloat16
  for i in range(q.shape[0]):
    want = tensors[f"model.layers.{i}.self_attn.q_proj.weight"].T.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(q[i]), want)


def test_load_onto_a_mesh_places_shards(tmp_path):
  _hf(False).save_pretrained(tmp_path / "hf")
  from chronoforge_jax import sharding

  mesh = sharding.make_mesh((2, 2, 2))
  model = convert.load_hf_model(str(tmp_path / "hf"), mesh=mesh)
  # [3, 36, 53] ('layers', 'embed', 'mlp'): the stacked layer axis is replicated.
  kernel = model.text.layers.mlp.gate.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)  # 53 prime
  embed = model.visual.blocks.qkv.kernel[...]  # [3, 40, 120]
  assert embed.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  ref = convert.load_hf_model(str(tmp_path / "hf"), scan_layers=False)
  for i in range(3):
    np.testing.assert_array_equal(
      np.asarray(embed[i]), np.asarray(ref.visual.blocks[i].qkv.kernel[...])
    )


def test_convert_launcher_writes_loadable_params(tmp_path):
  from chronoforge_jax.train import checkpoint
  from launch import convert_hf

  hf = _hf(True)
  hf.save_pretrained(tmp_path / "hf")
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  summary = convert_hf.convert(str(tmp_path / "hf"), str(tmp_path / "out"), mesh_shape=(1, -1, 1))
  per_layer = convert_hf.convert(
    str(tmp_path / "hf"), str(tmp_path / "out_per_layer"), mesh_shape=(1, -1, 1), scan_layers=False
  )
  assert "tokenizer.json" in summary["files"]
  model = convert.load_hf_model(str(tmp_path / "hf"))
  # Restore as the trainer does: into the abstract params of a freshly built (scanned)
  # model, from the stacked and from the per-layer output.
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: vlm.VideoLanguageModel(model.config, rngs=nnx.Rngs(0))), nnx.Param
  )
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
  want = jax.tree.leaves(nnx.state(model, nnx.Param))
  for out in ("out", "out_per_layer"):
    restored = nnx.merge(graphdef, checkpoint.load_params(str(tmp_path / out / "params"), abstract))
    got = jax.tree.leaves(nnx.state(restored, nnx.Param))
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(tmp_path / "out" / "config.json") as f:
    assert json.load(f)["tie_word_embeddings"] is True
  assert summary["params"] == per_layer["params"] == sum(x.size for x in want)


_SAVE_TWO_PROCESSES = """
import sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from chronoforge_jax import sharding
from chronoforge_jax.models import convert
mesh = sharding.make_mesh((1, 2, 1))  # fsdp over both processes' devices.
model = convert.load_hf_model(sys.argv[3], mesh=mesh, text_position_after_video="spatial")
kernel = model.text.layers.mlp.up.kernel.get_value()
assert not kernel.is_fully_addressable, kernel.sharding
convert.save_hf(model, sys.argv[4], max_shard_bytes=20_000)
"""


@pytest.mark.slow
def test_save_hf_from_two_processes(tmp_path):
  """Params sharded over two processes: every process gathers, process 0 writes."""
  import subprocess
  import sys

  from chronoforge_jax import testing

  hf = _hf(False)
  hf.save_pretrained(tmp_path / "hf")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo}
  env.pop("XLA_FLAGS", None)  # One CPU device per process.
  address = f"localhost:{testing.free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        _SAVE_TWO_PROCESSES,
        address,
        str(i),
        str(tmp_path / "hf"),
        str(tmp_path / "out"),
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  files = os.listdir(tmp_path / "out")
  assert "model.safetensors.index.json" in files and not [f for f in files if ".tmp" in f]
  reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
  for a, b in zip(hf.state_dict().items(), reloaded.state_dict().items()):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
