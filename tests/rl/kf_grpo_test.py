"""Encode-once views: gathering encoded temporal patches equals encoding the view directly."""

from flax import nnx
import jax.numpy as jnp
import numpy as np

from chronoforge_jax.models import config as model_config
from chronoforge_jax.models import vlm
from chronoforge_jax.rl import kf_grpo


def _model():
  return vlm.VideoLanguageModel(model_config.get_preset("tiny"), rngs=nnx.Rngs(3))


def _frames(rng, b, u, size=56):
  return rng.integers(0, 256, (b, u, size, size, 3), dtype=np.uint8)


def test_gathered_view_equals_direct_encoding_of_shuffled_frames():
  model = _model()
  rng = np.random.default_rng(0)
  b, u = 2, 10  # 5 temporal patches per union
  frames = _frames(rng, b, u)
  patches = np.array([[3, 0, 4], [1, 4, 2]], np.int32)  # disordered views, K/2 = 3
  timestamps = np.tile(np.arange(u, dtype=np.float32) * 0.5, (b, 1))
  tokens = kf_grpo.encode_union(model, jnp.asarray(frames))
  view = kf_grpo.view_inputs(
    tokens,
    jnp.asarray(patches),
    jnp.asarray(timestamps),
    grid_hw=(4, 4),
    temporal_patch=2,
    real_time=False,
  )
  # Reference: build the view's frames by moving whole frame pairs, then encode them.
  direct = []
  for i in range(b):
    order = np.concatenate([[2 * p, 2 * p + 1] for p in patches[i]])
    pixels, grid = vlm.frames_to_pixel_values(jnp.asarray(frames[i, order]), model.config.vision)
    direct.append(model.encode_video(pixels, np.asarray(grid).reshape(1, 3)))
  direct = jnp.concatenate(direct)
  np.testing.assert_allclose(
    np.asarray(view["video_embeds"]), np.asarray(direct), rtol=1e-5, atol=1e-5
  )
  assert view["video_grid_thw"].tolist() == [[3, 4, 4]] * b


def test_ordered_view_positions_follow_real_time_and_disordered_are_even():
  model = _model()
  rng = np.random.default_rng(1)
  frames = _frames(rng, 1, 6)
  timestamps = np.array([[0.0, 0.5, 4.0, 4.5, 9.0, 9.5]], np.float32)
  tokens = kf_grpo.encode_union(model, jnp.asarray(frames))
  patches = jnp.asarray([[0, 1, 2]])
  ordered = kf_grpo.view_inputs(
    tokens, patches, jnp.asarray(timestamps), grid_hw=(4, 4), temporal_patch=2, real_time=True
  )
  shuffled = kf_grpo.view_inputs(
    tokens,
    jnp.asarray([[2, 0, 1]]),
    jnp.asarray(timestamps),
    grid_hw=(4, 4),
    temporal_patch=2,
    real_time=False,
  )
  np.testing.assert_allclose(np.asarray(ordered["patch_timestamps"]), [[0.0, 4.0, 9.0]])
  np.testing.assert_allclose(np.asarray(shuffled["patch_timestamps"]), [[0.0, 1.0, 2.0]])


def test_forward_with_gathered_embeds_matches_pixel_forward():
  """The full model on a gathered ordered view equals the model fed the view's pixels."""
  model = _model()
  cfg = model.config
  rng = np.random.default_rng(2)
  frames = _frames(rng, 1, 8)
  timestamps = np.arange(8, dtype=np.float32)[None] * 0.5
  patches = np.array([[0, 2, 3]], np.int32)
  tokens = kf_grpo.encode_union(model, jnp.asarray(frames))
  view = kf_grpo.view_inputs(
    tokens,
    jnp.asarray(patches),
    jnp.asarray(timestamps),
    grid_hw=(4, 4),
    temporal_patch=2,
    real_time=True,
  )
  n_video = 3 * 4  # 3 temporal patches x (4/2 * 4/2) merged tokens
  ids = np.array(
    [
      [1, 2, cfg.vision_start_token_id]
      + [cfg.video_token_id] * n_video
      + [cfg.vision_end_token_id, 5, 6]
    ],
    np.int32,
  )
  mask = np.ones_like(ids)
  got = model(ids, mask, **view)
  order = np.concatenate([[2 * p, 2 * p + 1] for p in patches[0]])
  pixels, grid = vlm.frames_to_pixel_values(jnp.asarray(frames[0, order]), cfg.vision)
  want = model(
    ids,
    mask,
    pixel_values_videos=pixels,
    video_grid_thw=np.asarray(grid).reshape(1, 3),
    patch_timestamps=jnp.asarray(timestamps[:, order[::2]]),
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_single_view_encodes_only_its_frames_and_equals_the_union_gather():
  model = _model()
  rng = np.random.default_rng(4)
  frames = _frames(rng, 2, 10)
  batch = {
    "frames": jnp.asarray(frames),
    "timestamps": jnp.asarray(np.cumsum(rng.random((2, 10)), axis=1).astype(np.float32)),
    "ordered_patches": jnp.asarray([[0, 1, 2], [0, 1, 2]], jnp.int32),
    "disordered_patches": jnp.asarray([[4, 0, 3], [2, 4, 1]], jnp.int32),
  }
  both = kf_grpo.batch_views(model, batch)
  for name in ("ordered", "disordered"):
    one = kf_grpo.batch_views(model, batch, views=(name,), repeat=2)[name]
    want = kf_grpo.view_inputs(
      kf_grpo.encode_union(model, batch["frames"]),
      batch[f"{name}_patches"],
      batch["timestamps"],
      grid_hw=(4, 4),
      temporal_patch=2,
      real_time=name == "ordered",
      repeat=2,
    )
    np.testing.assert_allclose(
      np.asarray(one["video_embeds"]), np.asarray(want["video_embeds"]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
      np.asarray(one["patch_timestamps"]), np.asarray(want["patch_timestamps"])
    )
    assert one["video_grid_thw"].tolist() == want["video_grid_thw"].tolist()
    want_once = kf_grpo.view_inputs(
      kf_grpo.encode_union(model, batch["frames"]),
      batch[f"{name}_patches"],
      batch["timestamps"],
      grid_hw=(4, 4),
      temporal_patch=2,
      real_time=name == "ordered",
    )
    np.testing.assert_allclose(
      np.asarray(both[name]["video_embeds"]),
      np.asarray(want_once["video_embeds"]),
      rtol=1e-5,
      atol=1e-5,
    )


def test_duplicate_patch_mode_encodes_each_keyframe_on_its_own():
  """patch_mode="duplicate": a keyframe's tokens depend on that frame only; paired, on both."""
  model = _model()
  rng = np.random.default_rng(5)
  a, b, c = _frames(rng, 3, 1)[:, 0]
  encode = lambda *fs: np.asarray(kf_grpo.encode_union(model, jnp.asarray(np.stack(fs)[None])))
  dup_ab, dup_ac = encode(a, a, b, b), encode(a, a, c, c)
  np.testing.assert_array_equal(dup_ab[0, 0], dup_ac[0, 0])  # a's patch ignores its neighbour.
  pair_ab, pair_ac = encode(a, b), encode(a, c)
  assert np.abs(pair_ab[0, 0] - pair_ac[0, 0]).max() > 1e-3  # A pair mixes both frames.
  # A disordered view of duplicated frames gathers exactly what encoding it directly gives.
  frames = np.repeat(_frames(rng, 1, 4), 2, axis=1)  # [k0 k0 k1 k1 n0 n0 n1 n1]
  patches = np.array([[2, 0, 3]], np.int32)
  tokens = kf_grpo.encode_union(model, jnp.asarray(frames))
  view = kf_grpo.view_inputs(
    tokens,
    jnp.asarray(patches),
    jnp.asarray(np.repeat(np.arange(4.0, dtype=np.float32), 2)[None]),
    grid_hw=(4, 4),
    temporal_patch=2,
    real_time=False,
  )
  order = np.repeat(patches[0] * 2, 2)
  pixels, grid = vlm.frames_to_pixel_values(jnp.asarray(frames[0, order]), model.config.vision)
  direct = model.encode_video(pixels, np.asarray(grid).reshape(1, 3))
  np.testing.assert_allclose(
    np.asarray(view["video_embeds"]), np.asarray(direct), rtol=1e-5, atol=1e-5
  )
