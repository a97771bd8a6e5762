"""Vision tower parity with transformers, the temporal-patch contract, pixel preprocessing."""

import functools
import tempfile

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax.models import convert, vlm
from chronoforge_jax.models.config import VisionConfig, get_preset
from tests import hf_reference

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

CONFIGS = {
  # window 56 px = 2 merged tokens, full attention in block 1.
  "tiny": {},
  # window 112 px = 4 merged tokens, head dim 8, two full-attention blocks.
  "wide_window": {
    "vision": {
      "hidden_size": 24,
      "num_heads": 3,
      "intermediate_size": 31,
      "window_size": 112,
      "fullatt_block_indexes": [0, 2],
    }
  },
}


@functools.cache
def _pair(name):
  hf = hf_reference.build_hf_model(hf_reference.hf_config_dict(**CONFIGS[name]), seed=1)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model = convert.load_hf_model(d)
  return hf, model


def _hf_encode(hf, pixels, grid):
  with torch.no_grad():
    out = hf.model.get_video_features(torch.from_numpy(pixels), torch.from_numpy(grid))
  return torch.cat(out.pooler_output).numpy()


def _encode(model, pixels, grid):
  return np.asarray(nnx.jit(lambda m, p: m.encode_video(p, grid))(model, pixels))


@pytest.mark.parametrize(
  "name,grids",
  [
    # Merged grids 3x5 and 5x3 leave ragged edge windows; two sizes in one call.
    ("tiny", [(2, 6, 10), (1, 4, 4), (3, 10, 6)]),
    # 7x9 merged tokens in 4x4 windows; one video.
    ("wide_window", [(2, 14, 18)]),
  ],
)
def test_encode_video_matches_transformers(name, grids):
  hf, model = _pair(name)
  grid = np.asarray(grids, np.int64)
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal(
    (int(np.prod(grid, 1).sum()), model.config.vision.patch_dim), dtype=np.float32
  )
  ref = _hf_encode(hf, pixels, grid)
  ours = _encode(model, pixels, grid)
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


def test_temporal_patches_encode_independently():
  """The trainer's contract: encoding a video once and gathering whole temporal patches
  equals encoding the gathered patches as their own video."""
  _, model = _pair("tiny")
  t, h, w = 4, 6, 4
  per_t = h * w
  rng = np.random.default_rng(1)
  pixels = rng.standard_normal((t * per_t, model.config.vision.patch_dim), dtype=np.float32)
  full = _encode(model, pixels, np.array([[t, h, w]]))
  keep = [3, 0, 2]  # reordered subset, as a disordered view would use
  sub_pixels = np.concatenate([pixels[i * per_t : (i + 1) * per_t] for i in keep])
  sub = _encode(model, sub_pixels, np.array([[len(keep), h, w]]))
  tok = per_t // 4
  gathered = np.concatenate([full[i * tok : (i + 1) * tok] for i in keep])
  np.testing.assert_allclose(sub, gathered, rtol=0, atol=1e-5 * np.abs(full).max())


def test_bad_pixel_shape_names_the_fix():
  _, model = _pair("tiny")
  with pytest.raises(ValueError, match=r"needs \[48, 1176\]"):
    model.encode_video(np.zeros((47, 1176), np.float32), np.array([[2, 6, 4]]))
  with pytest.raises(ValueError, match="spatial_merge_size"):
    model.encode_video(np.zeros((30, 1176), np.float32), np.array([[2, 5, 3]]))


def _numpy_video_processor(frames_bthwc, mean, std, p=14, tp=2, m=2):
  """NumPy transcription of transformers' Qwen2VLVideoProcessor fused rescale+normalise
  and `patchify` (the fast processor needs torchvision, which is not installed)."""
  videos = frames_bthwc.transpose(0, 1, 4, 2, 3).astype(np.float32)  # B T C H W
  mean255 = (np.asarray(mean, np.float32) * np.float32(255.0))[:, None, None]
  std255 = (np.asarray(std, np.float32) * np.float32(255.0))[:, None, None]
  videos = (videos - mean255) / std255
  b, t, c, h, w = videos.shape
  if pad := -t % tp:
    videos = np.concatenate([videos, np.repeat(videos[:, -1:], pad, axis=1)], axis=1)
    t += pad
  gt, gh, gw = t // tp, h // p, w // p
  patches = videos.reshape(b, gt, tp, c, gh // m, m, p, gw // m, m, p)
  patches = patches.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
  return patches.reshape(b * gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def test_frames_to_pixel_values_matches_processor_transcription():
  vision = get_preset("tiny").vision
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, size=(2, 5, 56, 84, 3), dtype=np.uint8)  # odd T: padded
  pixels, grid = vlm.frames_to_pixel_values(frames, vision)
  ref, (gt, gh, gw) = _numpy_video_processor(frames, vlm.OPENAI_CLIP_MEAN, vlm.OPENAI_CLIP_STD)
  np.testing.assert_array_equal(grid, [[gt, gh, gw]] * 2)
  np.testing.assert_allclose(np.asarray(pixels), ref, rtol=0, atol=1e-5)


def test_frames_to_pixel_values_matches_hf_image_processor():
  """transformers' own (PIL-backend) image processor treats a still image as a video of
  temporal_patch_size identical frames: an independent check of the patch layout."""
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

  vision = get_preset("tiny").vision
  img = np.random.default_rng(3).integers(0, 256, size=(84, 56, 3), dtype=np.uint8)
  ref = Qwen2VLImageProcessorPil()(images=[img], do_resize=False, return_tensors="np")
  pixels, grid = vlm.frames_to_pixel_values(np.stack([img, img]), vision)
  np.testing.assert_array_equal(grid, ref["image_grid_thw"])
  np.testing.assert_allclose(np.asarray(pixels), ref["pixel_values"], rtol=0, atol=1e-5)


def test_frames_to_pixel_values_rejects_unaligned_size():
  with pytest.raises(ValueError, match="multiple of patch\\*merge = 28"):
    vlm.frames_to_pixel_values(np.zeros((2, 30, 56, 3), np.uint8), get_preset("tiny").vision)


def test_frames_to_pixel_values_jits():
  vision = VisionConfig(
    depth=1,
    hidden_size=8,
    intermediate_size=8,
    num_heads=2,
    out_hidden_size=8,
    fullatt_block_indexes=(0,),
  )
  frames = np.random.default_rng(4).integers(0, 256, size=(4, 28, 28, 3), dtype=np.uint8)
  jitted = jax.jit(lambda f: vlm.frames_to_pixel_values(f, vision)[0])(jnp.asarray(frames))
  eager, _ = vlm.frames_to_pixel_values(frames, vision)
  np.testing.assert_array_equal(np.asarray(jitted), np.asarray(eager))
