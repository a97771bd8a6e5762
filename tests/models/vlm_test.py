"""VideoLanguageModel forward parity with transformers' Qwen2.5-VL, log-probs, options."""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax.models import stack, vlm
from tests import hf_reference

torch = pytest.importorskip("torch")
torch.set_num_threads(2)

CONFIGS = {
  "tiny": {},
  # Tied embeddings, no GQA, other mrope sections, 4x4-token windows, tokens_per_second
  # left at transformers' class default (4).
  "tied_mha": dict(
    text={
      "hidden_size": 40,
      "num_attention_heads": 2,
      "num_key_value_heads": 2,
      "intermediate_size": 43,
      "num_hidden_layers": 2,
      "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [3, 4, 3]},
    },
    vision={
      "out_hidden_size": 40,
      "window_size": 112,
      "fullatt_block_indexes": [0],
      "tokens_per_second": 4,
    },
    tie_word_embeddings=True,
  ),
}
# transformers 5.24 resumes text after a video at max(H, W) (see ModelConfig).
HF_RULE = {"text_position_after_video": "spatial"}


@functools.cache
def _pair(name, scan_layers=True):
  return hf_reference.build_pair(
    hf_reference.hf_config_dict(**CONFIGS[name]), seed=2, scan_layers=scan_layers, **HF_RULE
  )


def _logits(model, inp, **kw):
  grid = inp.get("video_grid_thw")
  fn = nnx.jit(lambda m, ids, mask, pix, spg: m(ids, mask, pix, grid, spg, **kw))
  return np.asarray(
    fn(
      model,
      inp["input_ids"],
      inp["attention_mask"],
      inp.get("pixel_values_videos"),
      inp.get("second_per_grid_ts"),
    )
  )


def _rel_err(ours, ref, mask):
  m = mask.astype(bool)
  return np.abs(ours[m] - ref[m]).max() / np.abs(ref[m]).max()


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
@pytest.mark.parametrize(
  "name,grids,text_lens,per_row,pad,spg",
  [
    ("tiny", [(2, 6, 10), (4, 10, 6)], [(3, 4), (6, 2)], [1, 1], "left", [1.0, 0.5]),
    ("tied_mha", [(3, 6, 6), (1, 4, 8), (2, 8, 4)], [(2, 3), (5, 1)], [2, 1], "right", None),
  ],
)
def test_forward_matches_transformers(name, grids, text_lens, per_row, pad, spg, scan_layers):
  hf, model = _pair(name, scan_layers)
  assert model.scan_layers == scan_layers
  inp = hf_reference.video_prompt_batch(
    model.config,
    grids,
    text_lens,
    np.random.default_rng(0),
    pad=pad,
    videos_per_row=per_row,
    seconds_per_grid=spg,
  )
  ref = hf_reference.hf_forward(hf, inp)
  ours = _logits(model, inp)
  assert ours.shape == ref.shape
  assert _rel_err(ours, ref, inp["attention_mask"]) <= 1e-4


def test_text_only_padded_batch_matches_unpadded_rows():
  hf, model = _pair("tiny")
  rng = np.random.default_rng(1)
  lens = [9, 5, 7]
  ids = np.full((3, 9), 150, np.int64)
  mask = np.zeros((3, 9), np.int64)
  for i, n in enumerate(lens):
    ids[i, 9 - n :] = rng.integers(0, 140, n)
    mask[i, 9 - n :] = 1
  ours = _logits(model, {"input_ids": ids, "attention_mask": mask})
  for i, n in enumerate(lens):
    ref = hf_reference.hf_forward(hf, {"input_ids": ids[i : i + 1, 9 - n :]})[0]
    assert np.abs(ours[i, 9 - n :] - ref).max() / np.abs(ref).max() <= 1e-4


def test_video_embeds_path_equals_pixels_path():
  _, model = _pair("tiny")
  inp = hf_reference.video_prompt_batch(
    model.config, [(3, 4, 6)], [(2, 3)], np.random.default_rng(2)
  )
  grid = inp["video_grid_thw"]
  embeds = nnx.jit(lambda m, p: m.encode_video(p, grid))(model, inp["pixel_values_videos"])
  by_pixels = _logits(model, inp)
  fn = nnx.jit(lambda m, ids, mask, e: m(ids, mask, video_grid_thw=grid, video_embeds=e))
  by_embeds = np.asarray(fn(model, inp["input_ids"], inp["attention_mask"], embeds))
  np.testing.assert_allclose(by_embeds, by_pixels, rtol=0, atol=1e-5)


def test_mismatched_video_tokens_name_the_fix():
  _, model = _pair("tiny")
  inp = hf_reference.video_prompt_batch(
    model.config, [(2, 4, 4)], [(2, 3)], np.random.default_rng(3)
  )
  # The prompt has placeholders for 2 temporal patches, the pixels hold 1.
  with pytest.raises(ValueError, match="hold 8 video tokens .* gives 4 embeddings"):
    model(
      inp["input_ids"],
      inp["attention_mask"],
      inp["pixel_values_videos"][:16],
      np.array([[1, 4, 4]]),
    )


@pytest.mark.parametrize("pad", ["left", "right"])
def test_token_logprobs_match_transformers(pad):
  hf, model = _pair("tiny")
  rng = np.random.default_rng(4)
  inp = hf_reference.video_prompt_batch(
    model.config,
    [(2, 4, 6), (1, 6, 4)],
    [(3, 1), (1, 4)],
    rng,
    pad=pad,
    seconds_per_grid=[1.0, 2.0],
  )
  b, p = inp["input_ids"].shape
  a = 6
  completion = rng.integers(0, 140, size=(b, a))
  comp_mask = np.ones((b, a), np.int64)
  comp_mask[1, 4:] = 0  # row 1 ended early
  grid = inp["video_grid_thw"]
  fn = nnx.jit(
    lambda m, ids, mask, c, cm, pix, spg: m.token_logprobs(
      ids,
      mask,
      c,
      cm,
      pixel_values_videos=pix,
      video_grid_thw=grid,
      second_per_grid_ts=spg,
      vocab_chunk=37,
      return_entropy=True,
    )
  )
  logp, ent = fn(
    model,
    inp["input_ids"],
    inp["attention_mask"],
    completion,
    comp_mask,
    inp["pixel_values_videos"],
    inp["second_per_grid_ts"],
  )
  # Reference: transformers on each row's real prompt followed by its completion.
  for i in range(b):
    keep = inp["attention_mask"][i].astype(bool)
    n = int(comp_mask[i].sum())
    row = {k: inp[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    ids = np.concatenate([inp["input_ids"][i, keep], completion[i, :n]])[None]
    row.update(input_ids=ids, mm_token_type_ids=np.where(ids == model.config.video_token_id, 2, 0))
    vid = np.arange(len(grid)) == i
    patches = np.repeat(vid, np.prod(grid, 1))
    row.update(
      pixel_values_videos=inp["pixel_values_videos"][patches],
      video_grid_thw=grid[vid],
      second_per_grid_ts=inp["second_per_grid_ts"][vid],
    )
    ref = torch.log_softmax(torch.from_numpy(hf_reference.hf_forward(hf, row)[0]), -1).numpy()
    start = int(keep.sum()) - 1
    ref_lp = ref[np.arange(start, start + n), completion[i, :n]]
    ref_ent = -(np.exp(ref) * ref).sum(-1)[start : start + n]
    np.testing.assert_allclose(np.asarray(logp)[i, :n], ref_lp, rtol=0, atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent)[i, :n], ref_ent, rtol=0, atol=2e-5)


def test_chunked_logprobs_match_dense_with_gradients():
  rng = np.random.default_rng(5)
  h = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((8, 29)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 29, (2, 3)))

  def dense(h, w):
    lp = jax.nn.log_softmax(jnp.einsum("bad,dv->bav", h, w), -1)
    return jnp.take_along_axis(lp, t[..., None], -1)[..., 0]

  def chunked(h, w):
    return vlm.chunked_logprobs(h, w, t, chunk=6)

  np.testing.assert_allclose(jax.jit(chunked)(h, w), dense(h, w), atol=1e-5)
  # Entropy, against a float64 NumPy log-softmax (29 columns: the last chunk is padded).
  z = np.einsum("bad,dv->bav", np.float64(h), np.float64(w))
  logsm = z - z.max(-1, keepdims=True)
  logsm -= np.log(np.exp(logsm).sum(-1, keepdims=True))
  logp, entropy = jax.jit(lambda h, w: vlm.chunked_logprobs(h, w, t, chunk=6, return_entropy=True))(
    h, w
  )
  np.testing.assert_allclose(
    logp, np.take_along_axis(logsm, np.asarray(t)[..., None], -1)[..., 0], atol=1e-5
  )
  np.testing.assert_allclose(entropy, -(np.exp(logsm) * logsm).sum(-1), atol=1e-5)
  g_dense = jax.jit(jax.grad(lambda h, w: dense(h, w).sum(), argnums=(0, 1)))(h, w)
  g_chunk = jax.jit(jax.grad(lambda h, w: chunked(h, w).sum(), argnums=(0, 1)))(h, w)
  for a, b in zip(g_chunk, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _same_weights(model, **options):
  """The model's weights in a model built with other options (dtype, remat, layers
  scanned or not)."""
  abstract = nnx.eval_shape(
    lambda: vlm.VideoLanguageModel(model.config, rngs=nnx.Rngs(0), **options)
  )
  state = stack.relayout(nnx.state(model), scan=abstract.scan_layers)
  return nnx.merge(nnx.graphdef(abstract), state)


def test_chunked_attention_model_matches_transformers():
  """attention_impl="chunked" (7-row query blocks, sequences not a multiple of 7)."""
  hf, model = _pair("tiny")
  chunked = _same_weights(model, attention_impl="chunked", attention_chunk=7)
  inp = hf_reference.video_prompt_batch(
    model.config,
    [(2, 6, 10), (4, 10, 6)],
    [(3, 4), (6, 2)],
    np.random.default_rng(8),
    pad="left",
    seconds_per_grid=[1.0, 0.5],
  )
  assert inp["input_ids"].shape[1] % 7
  ref = hf_reference.hf_forward(hf, inp)
  assert _rel_err(_logits(chunked, inp), ref, inp["attention_mask"]) <= 1e-4


def test_bfloat16_compute_tracks_float32():
  _, model = _pair("tiny")
  bf16 = _same_weights(model, dtype=jnp.bfloat16)
  inp = hf_reference.video_prompt_batch(
    model.config, [(2, 4, 4)], [(3, 3)], np.random.default_rng(6)
  )
  f32 = _logits(model, inp)
  low = _logits(bf16, inp)
  assert low.dtype == np.float32
  assert _rel_err(low, f32, inp["attention_mask"]) < 5e-2
  assert bf16.text.layers.attn.q.kernel[...].dtype == jnp.float32  # f32 master params


@pytest.mark.slow
@pytest.mark.parametrize(
  "policy,scan_layers",
  [
    ("full", True),
    ("dots", True),
    ("dots_no_batch", True),
    ("none", False),
    ("full", False),
    ("dots_no_batch", False),
  ],
)
def test_remat_and_layer_scan_keep_gradients(policy, scan_layers):
  """Every remat policy, scanned or unrolled layers: the same loss and gradients as the
  scanned model without remat (unrolled gradients stacked for the comparison)."""
  _, model = _pair("tiny")
  # Full attention in the middle block: window runs before and after it are scanned.
  assert model.config.vision.fullatt_block_indexes == (1,)
  inp = hf_reference.video_prompt_batch(
    model.config, [(2, 4, 4)], [(2, 2)], np.random.default_rng(7)
  )
  grid = inp["video_grid_thw"]

  def loss(m):
    return jnp.mean(
      m(inp["input_ids"], inp["attention_mask"], inp["pixel_values_videos"], grid) ** 2
    )

  value_and_grad = nnx.jit(nnx.value_and_grad(loss))
  plain_loss, plain = value_and_grad(model)
  other = _same_weights(model, remat_policy=policy, scan_layers=scan_layers)
  other_loss, grads = value_and_grad(other)
  grads = stack.relayout(nnx.state(grads), scan=True)
  np.testing.assert_allclose(other_loss, plain_loss, rtol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(plain))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
