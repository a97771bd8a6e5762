"""Mesh construction, logical axis rules, shard(), and the model on an 8-device mesh."""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import pytest

from chronoforge_jax import sharding
from chronoforge_jax.models import vlm
from chronoforge_jax.models.config import get_preset
from tests import hf_reference


def test_make_mesh_fills_the_rest():
  mesh = sharding.make_mesh((2, -1, 1))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  cfg = ml_collections.ConfigDict({"data": 1, "fsdp": 2, "tensor": -1})
  assert dict(sharding.mesh_from_config(cfg).shape) == {"data": 1, "fsdp": 2, "tensor": 4}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh((3, 2, 2))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh((-1, -1, 2))


def test_logical_to_spec_rules_and_divisibility():
  mesh = sharding.make_mesh((2, 2, 2))
  assert sharding.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("batch", "act_seq", None)) == P(("data", "fsdp"), None, None)
  # 6 rows split over data*fsdp=4? No; over data=2: yes (longest dividing prefix).
  assert sharding.logical_to_spec(("batch", None), shape=(6, 3), mesh=mesh) == P("data", None)
  # 53 does not divide over tensor: replicated.
  assert sharding.logical_to_spec(("embed", "mlp"), shape=(36, 53), mesh=mesh) == P("fsdp", None)
  # A mesh axis is used at most once per spec.
  with sharding.axis_rules([("a", "tensor"), ("b", ("tensor", "fsdp"))]):
    assert sharding.logical_to_spec(("a", "b")) == P("tensor", None)
    assert sharding.logical_to_spec(("b", "a")) == P(("tensor", "fsdp"), None)
  assert sharding.logical_to_spec(("embed",)) == P("fsdp")  # rules restored


def test_shard_is_a_noop_without_mesh_and_constrains_with_one():
  x = jnp.ones((8, 6))
  assert sharding.shard(x, ("batch", "act_embed")) is x
  mesh = sharding.make_mesh((2, 2, 2))
  f = jax.jit(lambda x: sharding.shard(x * 2, ("batch", "act_mlp")))
  with jax.set_mesh(mesh):
    y = f(x)
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"), "tensor")), 2)
  np.testing.assert_array_equal(np.asarray(y), 2 * np.ones((8, 6)))
  with pytest.raises(ValueError, match="rank 2"), jax.set_mesh(mesh):
    sharding.shard(x, ("batch",))


def _random_model(cfg, seed=0, scan_layers=True):
  """A model with random weights of realistic scale, built without slow eager init."""
  abstract = nnx.eval_shape(
    lambda: vlm.VideoLanguageModel(cfg, rngs=nnx.Rngs(0), scan_layers=scan_layers)
  )
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  for path, v in nnx.to_flat_state(state):
    shape = v.get_value().shape
    if path[-1] in ("scale", "bias"):  # [(layers,) dim]
      x = 1.0 + 0.1 * rng.standard_normal(shape)
    else:  # [(layers,) in, out] kernels, [vocab, embed] and [embed, vocab] matrices
      x = rng.standard_normal(shape) / np.sqrt(shape[-2])
    v.set_value(jnp.asarray(x, jnp.float32))
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_state_shardings_follow_logical_axes(scan_layers):
  model = _random_model(get_preset("tiny"), scan_layers=scan_layers)
  mesh = sharding.make_mesh((1, 4, 2))
  shardings = sharding.state_shardings(model, mesh)
  # [151, 36]: 151 is prime, so the vocab stays unsplit; 36 splits over fsdp=4.
  assert shardings["text"]["embed"].get_value().spec == P(None, "fsdp")
  layers, blocks = shardings["text"]["layers"], shardings["visual"]["blocks"]
  if scan_layers:  # Stacked [3, ...]: the layer axis is replicated, the rest as before.
    assert layers["attn"]["q"]["kernel"].get_value().spec == P(None, "fsdp", "tensor")
    assert layers["attn"]["q"]["kernel"].logical_axes == ("layers", "embed", "heads")
    assert blocks["norm1"]["scale"].get_value().spec == P(None, None)
  else:
    assert layers[0]["attn"]["q"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert blocks[0]["norm1"]["scale"].get_value().spec == P(None)
  leaves = sharding.tree_shardings(nnx.state(model), mesh)
  assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(leaves))


@pytest.mark.slow
def test_tiny_model_on_8_device_mesh_matches_one_device():
  cfg = get_preset("tiny")
  model = _random_model(cfg, seed=1)
  inp = hf_reference.video_prompt_batch(
    cfg,
    [(2, 6, 4), (1, 4, 4), (3, 4, 6), (1, 6, 6)],
    [(2, 3), (4, 1), (1, 2), (3, 3)],
    np.random.default_rng(2),
    pad="left",
  )
  grid = inp["video_grid_thw"]

  def forward(m, ids, mask, pix):
    return m(ids, mask, pix, grid)

  single = np.asarray(
    nnx.jit(forward)(model, inp["input_ids"], inp["attention_mask"], inp["pixel_values_videos"])
  )
  mesh = sharding.make_mesh((2, 2, 2))
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, sharding.state_shardings(state, mesh))
  sharded_model = nnx.merge(graphdef, state)
  batch = NamedSharding(mesh, P(("data", "fsdp")))
  with jax.set_mesh(mesh):
    ids = jax.device_put(inp["input_ids"], batch)
    mask = jax.device_put(inp["attention_mask"], batch)
    out = nnx.jit(forward)(sharded_model, ids, mask, inp["pixel_values_videos"])
  assert out.sharding.mesh.size == 8
  np.testing.assert_allclose(np.asarray(out), single, rtol=0, atol=1e-5 * np.abs(single).max())
