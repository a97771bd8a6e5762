"""Model configs: presets, config.json parsing in both layouts, validation."""

import dataclasses

import pytest

from chronoforge_jax.models import config as mc
from tests import hf_reference

# The published Qwen/Qwen2.5-VL-7B-Instruct config.json (flat layout), abridged only of
# fields the model does not use.
PUBLISHED_7B = {
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "vision_token_id": 151654,
  "image_token_id": 151655,
  "video_token_id": 151656,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 128000,
  "max_window_layers": 28,
  "model_type": "qwen2_5_vl",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": False,
  "torch_dtype": "bfloat16",
  "use_cache": True,
  "use_sliding_window": False,
  "vision_config": {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
  },
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 152064,
}


@pytest.mark.parametrize("name", sorted(mc.PRESETS))
def test_presets_build_and_round_trip_through_config_json(name):
  cfg = mc.get_preset(name)
  assert cfg.vision.out_hidden_size == cfg.text.hidden_size
  assert mc.from_hf_config(mc.to_hf_config(cfg)) == cfg


def test_published_7b_config_json_gives_the_7b_preset():
  assert mc.from_hf_config(PUBLISHED_7B) == mc.get_preset("qwen2_5_vl_7b")


def test_published_sizes():
  sizes = {
    n: mc.get_preset(n)
    for n in ("qwen2_5_vl_3b", "qwen2_5_vl_7b", "qwen2_5_vl_32b", "qwen2_5_vl_72b")
  }
  assert {n: c.text.head_dim for n, c in sizes.items()} == dict.fromkeys(sizes, 128)
  assert sizes["qwen2_5_vl_3b"].text.tie_word_embeddings
  assert not sizes["qwen2_5_vl_72b"].text.tie_word_embeddings
  assert [c.text.num_hidden_layers for c in sizes.values()] == [36, 28, 64, 80]
  assert [c.text.num_key_value_heads for c in sizes.values()] == [2, 4, 8, 8]
  assert all(c.vision.tokens_per_second == 2 for c in sizes.values())
  assert all(c.vision.window_merged == 4 for c in sizes.values())


def test_transformers_config_parses_identically():
  transformers = pytest.importorskip("transformers")
  hf_dict = hf_reference.hf_config_dict(vision={"tokens_per_second": 3})
  saved = transformers.Qwen2_5_VLConfig(**hf_dict).to_dict()  # nested v5 layout
  cfg = mc.from_hf_config(saved)
  assert cfg.text.mrope_section == (2, 2, 2)
  assert cfg.text.rope_theta == 10000.0
  assert cfg.vision.tokens_per_second == 3
  assert cfg.vision.fullatt_block_indexes == (1,)
  assert cfg.video_token_id == 145
  # What we write, transformers reads back with the same values.
  back = transformers.Qwen2_5_VLConfig(**mc.to_hf_config(cfg))
  assert back.text_config.vocab_size == cfg.text.vocab_size
  assert back.text_config.rope_parameters["mrope_section"] == [2, 2, 2]
  assert back.vision_config.tokens_per_second == 3
  assert back.vision_config.window_size == cfg.vision.window_size


def test_missing_tokens_per_second_takes_the_transformers_default():
  d = dict(PUBLISHED_7B, vision_config=dict(PUBLISHED_7B["vision_config"]))
  del d["vision_config"]["tokens_per_second"]
  assert mc.from_hf_config(d).vision.tokens_per_second == 4


@pytest.mark.parametrize(
  "change,field",
  [
    (
      lambda c: dataclasses.replace(c, text=dataclasses.replace(c.text, mrope_section=(2, 2, 3))),
      "text.mrope_section",
    ),
    (
      lambda c: dataclasses.replace(c, vision=dataclasses.replace(c.vision, out_hidden_size=40)),
      "vision.out_hidden_size",
    ),
    (
      lambda c: dataclasses.replace(c, vision=dataclasses.replace(c.vision, window_size=20)),
      "vision.window_size",
    ),
    (
      lambda c: dataclasses.replace(
        c, vision=dataclasses.replace(c.vision, fullatt_block_indexes=(3,))
      ),
      "vision.fullatt_block_indexes",
    ),
    (lambda c: dataclasses.replace(c, video_token_id=151), "video_token_id"),
    (
      lambda c: dataclasses.replace(c, text_position_after_video="last"),
      "text_position_after_video",
    ),
  ],
)
def test_validation_names_the_field(change, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    change(mc.get_preset("tiny"))


def test_unknown_preset_and_unsupported_checkpoints():
  with pytest.raises(KeyError, match="qwen2_5_vl_7b"):
    mc.get_preset("qwen_7b")
  with pytest.raises(ValueError, match="sliding"):
    mc.from_hf_config(dict(PUBLISHED_7B, use_sliding_window=True))
  with pytest.raises(ValueError, match="model_type"):
    mc.from_hf_config(dict(PUBLISHED_7B, model_type="qwen2_vl"))


def test_model_config_section_builds_the_model():
  from flax import nnx

  from chronoforge_jax import models
  from configs import common
  from configs import model as model_section

  smoke = model_section.get_config("smoke")
  assert models.config_from_section(smoke) == mc.get_preset("tiny")
  abstract = nnx.eval_shape(lambda: models.create_model(smoke, rngs=nnx.Rngs(0)))
  assert abstract.text.embed.get_value().shape == (151, 36)
  default = model_section.get_config("")
  assert (default.preset, default.dtype, default.param_dtype) == (
    "qwen2_5_vl_7b",
    "bfloat16",
    "float32",
  )
  with pytest.raises(common.ConfigError, match="model.remat_policy"):
    bad = model_section.get_config("smoke")
    bad.remat_policy = "some"
    model_section.validate(bad)
  for field, value in (("attention_impl", "flash"), ("attention_chunk", 0)):
    bad = model_section.get_config("smoke")
    bad[field] = value
    with pytest.raises(common.ConfigError, match=f"model.{field}"):
      model_section.validate(bad)
  chunked = model_section.get_config("smoke")
  chunked.attention_impl, chunked.attention_chunk = "chunked", 64
  layers = nnx.eval_shape(lambda: models.create_model(chunked, rngs=nnx.Rngs(0))).text.layers
  assert (layers.attention_impl, layers.attention_chunk) == ("chunked", 64)
  # Scanned by default: one stacked module, params [L, ...]; unrolled: one per layer.
  assert smoke.scan_layers and layers.attn.q.kernel.get_value().shape == (3, 36, 36)
  unrolled = model_section.get_config("smoke")
  unrolled.scan_layers = False
  layers = nnx.eval_shape(lambda: models.create_model(unrolled, rngs=nnx.Rngs(0))).text.layers
  assert len(layers) == 3 and layers[0].attn.q.kernel.get_value().shape == (36, 36)
  after = model_section.get_config("smoke")
  after.text_position_after_video = "spatial"
  assert models.config_from_section(after).text_position_after_video == "spatial"
