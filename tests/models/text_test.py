"""KV-cache prefill/decode against transformers (step by step) and the full forward."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from chronoforge_jax import sharding
from chronoforge_jax.models import text
from tests import hf_reference

torch = pytest.importorskip("torch")
torch.set_num_threads(2)


@functools.cache
def _pair():
  return hf_reference.build_pair(
    hf_reference.hf_config_dict(), seed=3, text_position_after_video="spatial"
  )


def _generate(model, inp, completion, token_mask=None):
  """Prefill then teacher-forced decode; returns the logits that predict each token."""
  b, s = inp["input_ids"].shape
  a = completion.shape[1]
  grid = inp["video_grid_thw"]

  @nnx.jit
  def prefill(m, ids, mask, pix, spg):
    cache = m.init_cache(b, s + a + 2)
    return m.prefill(
      ids, mask, cache, pixel_values_videos=pix, video_grid_thw=grid, second_per_grid_ts=spg
    )

  step = nnx.jit(lambda m, tok, cache, tm: m.decode_step(tok, cache, tm))
  logits, cache, _ = prefill(
    model,
    inp["input_ids"],
    inp["attention_mask"],
    inp["pixel_values_videos"],
    inp.get("second_per_grid_ts"),
  )
  out = [np.asarray(logits)]
  for j in range(a - 1):
    tm = None if token_mask is None else jnp.asarray(token_mask[:, j])
    logits, cache = step(model, jnp.asarray(completion[:, j]), cache, tm)
    out.append(np.asarray(logits))
  return np.stack(out, axis=1), cache


@pytest.mark.parametrize("pad", ["left", "right"])
def test_decode_matches_transformers_step_by_step(pad):
  hf, model = _pair()
  rng = np.random.default_rng(0)
  inp = hf_reference.video_prompt_batch(
    model.config,
    [(2, 6, 10), (3, 4, 6)],
    [(3, 4), (6, 2)],
    rng,
    pad=pad,
    seconds_per_grid=[1.0, 0.5],
  )
  completion = rng.integers(0, 140, size=(2, 6))
  dec, cache = _generate(model, inp, completion)
  assert int(cache.end) == inp["input_ids"].shape[1] + completion.shape[1] - 1
  for i in range(2):
    # transformers on the row's real prompt followed by the completion so far.
    keep = inp["attention_mask"][i].astype(bool)
    ids = np.concatenate([inp["input_ids"][i, keep], completion[i]])[None]
    vid = np.arange(2) == i
    row = dict(
      input_ids=ids,
      mm_token_type_ids=np.where(ids == model.config.video_token_id, 2, 0),
      pixel_values_videos=inp["pixel_values_videos"][
        np.repeat(vid, np.prod(inp["video_grid_thw"], 1))
      ],
      video_grid_thw=inp["video_grid_thw"][vid],
      second_per_grid_ts=inp["second_per_grid_ts"][vid],
    )
    ref = hf_reference.hf_forward(hf, row)[0]
    n = int(keep.sum())
    ref = ref[n - 1 : n - 1 + completion.shape[1]]
    assert np.abs(dec[i] - ref).max() / np.abs(ref).max() <= 1e-4


@pytest.mark.slow
def test_decode_matches_own_full_forward_and_masks_finished_rows():
  _, model = _pair()
  rng = np.random.default_rng(1)
  inp = hf_reference.video_prompt_batch(
    model.config, [(2, 4, 4), (1, 4, 6)], [(2, 2), (4, 1)], rng, pad="left"
  )
  completion = rng.integers(0, 140, size=(2, 5))
  token_mask = np.ones((2, 5), bool)
  token_mask[0, 2:] = False  # row 0 finished after two generated tokens
  dec, cache = _generate(model, inp, completion, token_mask)
  full, full_cache = _generate(model, inp, completion)
  # Row 1 never sees row 0's masking.
  np.testing.assert_allclose(dec[1], full[1], atol=1e-6)
  # Row 0 stopped advancing after its two masked steps; those slots are masked out.
  s = inp["input_ids"].shape[1]
  np.testing.assert_array_equal(full_cache.next_pos - cache.next_pos, [2, 0])
  np.testing.assert_array_equal(np.asarray(cache.mask[0, s : s + 4]), [True, True, False, False])
  # Teacher-forced forward over prompt + completion gives the decode logits.
  ids = np.concatenate([inp["input_ids"], completion], axis=1)
  mask = np.concatenate([inp["attention_mask"], np.ones_like(completion)], axis=1)
  grid = inp["video_grid_thw"]
  logits = nnx.jit(lambda m, i, k, p: m(i, k, p, grid))(
    model, ids, mask, inp["pixel_values_videos"]
  )
  np.testing.assert_allclose(full, np.asarray(logits)[:, s - 1 : s + 4], atol=2e-5)


def test_cache_is_shardable_on_a_mesh():
  _, model = _pair()
  mesh = sharding.make_mesh((2, 1, 4))
  with jax.set_mesh(mesh):
    cache = nnx.jit(lambda m: m.init_cache(4, 16))(model)
  assert isinstance(cache, text.KVCache)
  assert cache.k.shape == (3, 4, 16, 1, 12)
  # Batch over data x fsdp; the single KV head cannot split over tensor (replicated).
  want = NamedSharding(mesh, P(None, ("data", "fsdp"), None, None, None))
  assert cache.k.sharding.is_equivalent_to(want, 5)
  assert cache.mask.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 2)
