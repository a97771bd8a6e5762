"""The memory plan equals what the initialised, sharded train state really occupies."""

import math

import jax
import pytest

from chronoforge_jax import planning
from chronoforge_jax import sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax import train_lib
from configs import kf_grpo


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  tok_dir = tmp_path_factory.mktemp("tok")
  tokenizer_lib.build_tiny_tokenizer(tok_dir)
  c = kf_grpo.get_config("smoke")
  c.input.tokenizer_dir = str(tok_dir)
  c.input.data_dir = str(tok_dir)
  c.rl.beta = 0.04
  return c


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 2), (1, 8, 1)])
def test_plan_matches_the_real_sharded_state(config, shape):
  mesh = sharding.make_mesh(shape, devices=jax.devices()[:math.prod(shape)])
  s = train_lib.setup(config, mesh)
  rows = {r.name: r for r in planning.plan(config, mesh, s.model_config, frame_size=56)}
  with jax.set_mesh(mesh):
    state = s.init_state()
  params = state["params"]
  assert rows["visual params"].elements + rows["text params"].elements == sum(
      x.size for x in jax.tree.leaves(params))
  assert (rows["visual params"].device_bytes + rows["text params"].device_bytes ==
          planning.measured_device_bytes(params))
  assert rows["optimizer state"].device_bytes == planning.measured_device_bytes(
      state["opt_state"])
  assert rows["reference params (beta > 0)"].device_bytes == planning.measured_device_bytes(
      params)
  if shape != (1, 1, 1):  # Sharding actually splits the params.
    assert planning.measured_device_bytes(params) < rows["visual params"].global_bytes + \
        rows["text params"].global_bytes


def test_rollout_cache_rows_count_prompt_video_and_answer(config):
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  model_cfg = train_lib.model_config(config, tokenizer_lib.Tokenizer.from_dir(
      config.input.tokenizer_dir))
  layers, rows, length, kv, head_dim = planning.rollout_cache_shape(config, model_cfg, 56)
  t = model_cfg.text
  video = (config.tad.k // 2) * (56 // 28) ** 2
  assert (layers, kv, head_dim) == (t.num_hidden_layers, t.num_key_value_heads,
                                    t.hidden_size // t.num_attention_heads)
  assert rows == config.input.batch_size * config.rl.num_generations
  assert length == max(config.input.prompt_buckets) + video + config.rl.max_new_tokens
  cache = {r.name: r for r in planning.plan(config, mesh, model_cfg, frame_size=56)}
  assert cache["rollout KV cache (K+V)"].global_bytes == 2 * layers * rows * length * kv * \
      head_dim * 4  # float32 compute in the smoke config
