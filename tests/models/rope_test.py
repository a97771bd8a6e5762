"""M-RoPE position ids and rotary tables against transformers and NumPy transcriptions."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax.models import rope
from chronoforge_jax.models.config import from_hf_config
from tests import hf_reference

torch = pytest.importorskip("torch")
from transformers import Qwen2_5_VLConfig  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
  Qwen2_5_VLModel,
  Qwen2_5_VLRotaryEmbedding,
)

CFG_DICT = hf_reference.hf_config_dict()
CFG = from_hf_config(CFG_DICT)


class _RopeIndexOnly:
  """Runs transformers' own get_rope_index without building a model."""

  get_rope_index = Qwen2_5_VLModel.get_rope_index
  get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

  def __init__(self, config):
    self.config = config


def _hf_rope_index(inp):
  ref = _RopeIndexOnly(Qwen2_5_VLConfig(**CFG_DICT))
  spg = inp.get("second_per_grid_ts")
  pos, deltas = ref.get_rope_index(
    torch.from_numpy(inp["input_ids"]),
    torch.from_numpy(inp["mm_token_type_ids"]),
    video_grid_thw=torch.from_numpy(inp["video_grid_thw"]),
    second_per_grid_ts=None if spg is None else torch.from_numpy(spg),
    attention_mask=torch.from_numpy(inp["attention_mask"]),
  )
  return pos.numpy(), deltas.numpy().ravel()


def _ours(inp, mode, **kw):
  # One jit compile is much faster than dispatching each op eagerly.
  spg = kw.pop("spg", inp.get("second_per_grid_ts"))
  fn = jax.jit(
    functools.partial(
      rope.mrope_position_ids,
      video_token_id=CFG.video_token_id,
      grids_v3=inp["video_grid_thw"],
      spatial_merge_size=2,
      tokens_per_second=CFG.vision.tokens_per_second,
      text_after_video=mode,
      **kw,
    )
  )
  pos, deltas = fn(
    jnp.asarray(inp["input_ids"]), jnp.asarray(inp["attention_mask"]), second_per_grid_ts=spg
  )
  return np.asarray(pos), np.asarray(deltas)


def _qwen_original_rope_index(ids, mask, grids, spg, tps, video_id, merge=2):
  """NumPy transcription of Qwen's original get_rope_index (transformers <= 5.2):
  text after a video starts at 1 + the video's largest position id."""
  b, s = ids.shape
  out = np.zeros((3, b, s), np.int64)
  deltas = []
  g = 0
  for i in range(b):
    tokens = ids[i][mask[i] == 1]
    pos, cur, j = [], 0, 0
    while j < len(tokens):
      if tokens[j] == video_id:
        t, h, w = grids[g]
        h, w = h // merge, w // merge
        interval = np.float32(tps) * np.float32(spg[g])
        tt = np.floor(np.arange(t, dtype=np.float32) * interval).astype(np.int64)
        ti, hi, wi = np.meshgrid(tt, np.arange(h), np.arange(w), indexing="ij")
        block = np.stack([ti.ravel(), hi.ravel(), wi.ravel()]) + cur
        pos.append(block)
        cur = block.max() + 1
        j += t * h * w
        g += 1
      else:
        pos.append(np.full((3, 1), cur))
        cur += 1
        j += 1
    pos = np.concatenate(pos, axis=1)
    out[:, i, mask[i] == 1] = pos
    deltas.append(pos.max() + 1 - len(tokens))
  return out, np.asarray(deltas)


@pytest.mark.parametrize("seed,pad", [(0, "left"), (1, "right"), (2, "left")])
def test_position_ids_match_transformers(seed, pad):
  rng = np.random.default_rng(seed)
  grids = [
    (int(rng.integers(1, 6)), 2 * int(rng.integers(1, 6)), 2 * int(rng.integers(1, 6)))
    for _ in range(3)
  ]
  spg = rng.choice([0.5, 1.0, 2 / 3, 1.5, 0.08], size=3)
  inp = hf_reference.video_prompt_batch(
    CFG, grids, [(3, 4), (6, 2)], rng, pad=pad, videos_per_row=[2, 1], seconds_per_grid=spg
  )
  ref_pos, ref_deltas = _hf_rope_index(inp)
  pos, deltas = _ours(inp, "spatial")
  m = inp["attention_mask"].astype(bool)
  np.testing.assert_array_equal(pos[:, m], ref_pos[:, m])
  assert (pos[:, ~m] == 0).all()
  # transformers' rope_deltas are 1 + max position - length; ours are the next text
  # position - length. They agree whenever the row's last text follows the largest id.
  last_is_max = np.array([pos[:, i, m[i]].max() == pos[0, i, m[i]][-1] for i in range(2)])
  np.testing.assert_array_equal(deltas[last_is_max], ref_deltas[last_is_max])


def test_max_mode_matches_qwen_original_rule():
  rng = np.random.default_rng(3)
  # Long videos with 2 s per temporal patch: temporal ids exceed spatial ones, which is
  # where the two rules differ.
  grids = [(6, 4, 6), (5, 6, 4)]
  spg = np.array([2.0, 1.0], np.float32)
  inp = hf_reference.video_prompt_batch(
    CFG, grids, [(2, 5), (4, 3)], rng, pad="left", seconds_per_grid=spg
  )
  ref_pos, ref_deltas = _qwen_original_rope_index(
    inp["input_ids"], inp["attention_mask"], grids, spg, 2, CFG.video_token_id
  )
  pos, deltas = _ours(inp, "max")
  m = inp["attention_mask"].astype(bool)
  np.testing.assert_array_equal(pos[:, m], ref_pos[:, m])
  np.testing.assert_array_equal(deltas, ref_deltas)
  spatial, _ = _ours(inp, "spatial")
  assert (spatial[:, m] != pos[:, m]).any(), "test inputs do not separate the two rules"


@pytest.mark.parametrize("fps", [1.0, 2.0, 3.0, 4.0, 6.0, 24.0, 25.0, 29.97, 30.0])
def test_even_timestamps_reduce_to_reference(fps):
  t = 40
  spg = np.float32(2 / fps)  # temporal_patch_size / fps, as the processor computes it
  grids = np.array([[t, 2, 2]])
  by_spg = rope.temporal_offsets(grids, 2, second_per_grid_ts=jnp.asarray([spg]))
  start = 17.25
  ts = (start + np.arange(t, dtype=np.float64) * (2 / fps)).astype(np.float32)[None]
  by_ts = rope.temporal_offsets(grids, 2, patch_timestamps=jnp.asarray(ts - start))
  np.testing.assert_array_equal(by_ts, by_spg)
  # Reference arithmetic: floor(t * float32(tokens_per_second * spg)).
  expect = np.floor(np.arange(t, dtype=np.float32) * (np.float32(2) * spg)).astype(np.int64)
  np.testing.assert_array_equal(np.asarray(by_spg)[0], expect)


def test_uneven_timestamps_follow_real_time():
  grids = np.array([[4, 2, 2], [3, 2, 2]])
  ts = jnp.asarray([[10.0, 10.5, 13.0, 20.25], [0.0, 7.0, 1.0, 99.0]])  # 99: past T
  off = np.asarray(rope.temporal_offsets(grids, 2, patch_timestamps=ts))
  np.testing.assert_array_equal(off, [[0, 1, 6, 20], [0, 14, 2, 0]])


def test_text_only_positions_skip_padding():
  ids = jnp.asarray([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
  mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  pos, deltas = rope.mrope_position_ids(
    ids, mask, video_token_id=145, grids_v3=None, spatial_merge_size=2, tokens_per_second=2
  )
  np.testing.assert_array_equal(np.asarray(pos)[0], [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
  assert (np.asarray(pos)[0] == np.asarray(pos)[2]).all()
  np.testing.assert_array_equal(deltas, [0, 0])


def test_position_ids_jit_with_traced_ids_and_timestamps():
  rng = np.random.default_rng(4)
  grids = np.array([(3, 4, 4)])
  inp = hf_reference.video_prompt_batch(CFG, grids, [(2, 3)], rng)
  ts = jnp.asarray([[0.0, 1.0, 2.0]])

  @jax.jit
  def f(ids, mask, ts):
    return rope.mrope_position_ids(
      ids,
      mask,
      video_token_id=CFG.video_token_id,
      grids_v3=grids,
      spatial_merge_size=2,
      tokens_per_second=2,
      patch_timestamps=ts,
    )

  pos, _ = f(inp["input_ids"], inp["attention_mask"], ts)
  eager, _ = _ours(inp, "max", spg=jnp.asarray([1.0]))
  np.testing.assert_array_equal(np.asarray(pos), eager)


def test_mrope_tables_match_transformers():
  hcfg = Qwen2_5_VLConfig(
    **hf_reference.hf_config_dict(
      text={
        "hidden_size": 48,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 2]},
      }
    )
  )
  rot = Qwen2_5_VLRotaryEmbedding(hcfg.text_config)
  rng = np.random.default_rng(5)
  pos = rng.integers(0, 3000, size=(3, 2, 7))
  cos_ref, sin_ref = rot(torch.zeros(1, dtype=torch.float32), torch.from_numpy(pos))
  cos, sin = rope.mrope_cos_sin(jnp.asarray(pos), 24, 1e6, (4, 6, 2))
  # Angles up to 3000 rad carry float32 rounding of ~1e-4 rad; a wrong section layout or
  # frequency would be off by O(1).
  np.testing.assert_allclose(np.asarray(cos), cos_ref.numpy(), atol=5e-5)
  np.testing.assert_allclose(np.asarray(sin), sin_ref.numpy(), atol=5e-5)


def test_vision_tables_match_numpy():
  hpos, wpos = np.array([0, 3, 7]), np.array([5, 1, 2])
  cos, sin = rope.vision_cos_sin(jnp.asarray(hpos), jnp.asarray(wpos), 8, 10000.0)
  inv = 1.0 / 10000.0 ** (np.arange(0, 4, 2) / 4)
  f = np.concatenate([hpos[:, None] * inv, wpos[:, None] * inv], axis=1)
  f = np.concatenate([f, f], axis=1)
  np.testing.assert_allclose(np.asarray(cos), np.cos(f), atol=1e-6)
  np.testing.assert_allclose(np.asarray(sin), np.sin(f), atol=1e-6)
  assert math.isclose(float(cos[0, 0]), 1.0)
