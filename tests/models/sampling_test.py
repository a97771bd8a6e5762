"""The KV-cache sampler against independent references.

References: a NumPy float64 transcription of HF's logits warpers (temperature, top-k,
top-p), chi-square goodness of fit for the sampled distributions, the model's cache-free
full forward (step-by-step argmax, log-softmax of its logits), the training forward
(`token_logprobs`), and, in the slow test, HF transformers' own greedy `generate`.
"""

import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from chronoforge_jax import sharding
from chronoforge_jax.models import sampling, stack
from chronoforge_jax.models.config import get_preset
from chronoforge_jax.models.vision import VisionTower
from chronoforge_jax.models.vlm import VideoLanguageModel
from tests import hf_reference

CFG = get_preset("tiny")
SUPPRESS = (CFG.image_token_id, CFG.video_token_id)
T_NEW = 6
GRIDS = ((2, 4, 6), (1, 6, 4))  # one video per prompt row, odd-ish sizes
TEXT_LENS = ((3, 4), (6, 1))  # rows of different lengths -> left padding


# ------------------------------------------------------------------------------------
# NumPy float64 references.
# ------------------------------------------------------------------------------------


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=-1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def np_warp(logits, temperature, top_k=0, top_p=1.0, suppress=()):
  """HF's SuppressTokens, Temperature, TopK and TopP warpers, transcribed in float64."""
  x = np.array(logits, np.float64)
  x[..., list(suppress)] = -np.inf
  x = x / temperature
  if top_k:
    kth = np.sort(x, axis=-1)[..., -top_k][..., None]
    x = np.where(x < kth, -np.inf, x)
  if top_p < 1.0:
    for row in x.reshape(-1, x.shape[-1]):
      order = np.argsort(row)  # ascending, as HF
      cum = np.cumsum(np.exp(np_log_softmax(row[order])))
      remove = cum <= 1 - top_p
      remove[-1] = False  # min_tokens_to_keep = 1
      row[order[remove]] = -np.inf
  return x


def np_probs(logits, **kw):
  return np.exp(np_log_softmax(np_warp(logits, **kw)))


def chi_square_pvalue(tokens, probs):
  """Goodness of fit of integer draws to `probs`; draws outside the support fail."""
  counts = np.bincount(np.asarray(tokens), minlength=len(probs))
  support = probs > 0
  assert counts[~support].sum() == 0, (
    f"drew tokens {np.flatnonzero(counts * ~support)} outside the support"
  )
  expected = probs[support] * counts.sum()
  return stats.chisquare(counts[support], expected).pvalue


# ------------------------------------------------------------------------------------
# Pure sampling math.
# ------------------------------------------------------------------------------------

SETTINGS = [
  dict(temperature=1.0, top_k=5),
  dict(temperature=0.7, top_p=0.8),
  dict(temperature=1.3, top_k=9, top_p=0.6),
  dict(temperature=1.0, top_p=0.95, suppress=(0, 3)),
]


@pytest.mark.parametrize("kw", SETTINGS)
def test_process_logits_matches_hf_warpers(kw):
  logits = np.random.default_rng(0).normal(0, 2, (7, 23)).astype(np.float32)
  params = sampling.SamplingParams(**kw)
  got = np.asarray(sampling.process_logits(jnp.asarray(logits), params))
  want = np_warp(logits, **kw)
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
  np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)], rtol=1e-6)


@pytest.mark.parametrize("kw", SETTINGS[:3])
def test_sample_step_draws_from_the_warped_distribution(kw):
  n = 40000
  logits_v = np.random.default_rng(1).normal(0, 1.5, (17,)).astype(np.float32)
  params = sampling.SamplingParams(**kw)
  keys = jax.random.split(jax.random.key(1234), n)
  tokens, lp, plp, mlp = jax.jit(sampling.sample_step, static_argnums=2)(
    keys, jnp.broadcast_to(jnp.asarray(logits_v), (n, 17)), params
  )
  probs = np_probs(logits_v, **kw)
  assert chi_square_pvalue(tokens, probs) > 1e-3
  # The test has power: the same draws are rejected against the unfiltered softmax.
  assert (
    stats.chisquare(
      np.bincount(np.asarray(tokens), minlength=17), np.exp(np_log_softmax(logits_v)) * n
    ).pvalue
    < 1e-6
  )
  tokens = np.asarray(tokens)
  np.testing.assert_allclose(lp, np.log(probs[tokens]), atol=1e-5)
  np.testing.assert_allclose(plp, np_log_softmax(logits_v / kw["temperature"])[tokens], atol=1e-5)
  np.testing.assert_allclose(mlp, np_log_softmax(logits_v)[tokens], atol=1e-5)


def test_greedy_sample_step_takes_the_unsuppressed_argmax():
  logits = np.random.default_rng(2).normal(0, 1, (5, 11)).astype(np.float32)
  top = np.argmax(logits, axis=-1)
  params = sampling.SamplingParams(temperature=0.0, suppress=(int(top[0]),))
  tokens, lp, plp, mlp = sampling.sample_step(None, jnp.asarray(logits), params)
  want = np.argmax(np_warp(logits, 1.0, suppress=(int(top[0]),)), axis=-1)
  np.testing.assert_array_equal(tokens, want)
  assert tokens[0] != top[0]
  np.testing.assert_array_equal(lp, 0.0)
  np.testing.assert_allclose(mlp, np_log_softmax(logits)[np.arange(5), want], atol=1e-6)
  np.testing.assert_array_equal(plp, mlp)


def test_row_keys_distinct_deterministic_and_batch_independent():
  rng = jax.random.key(7)
  data = jax.random.key_data(sampling.row_keys(rng, 3, 4))
  assert len({tuple(np.asarray(k).ravel()) for k in data}) == 12
  np.testing.assert_array_equal(data, jax.random.key_data(sampling.row_keys(rng, 3, 4)))
  # Sample g of prompt b has the same key whatever the batch size behind it.
  np.testing.assert_array_equal(data[:8], jax.random.key_data(sampling.row_keys(rng, 2, 4)))


def test_config_section_gives_generate_kwargs():
  from configs import common
  from configs import sampling as sampling_config

  for variant in sampling_config.VARIANTS:
    section = sampling_config.get_config(variant).sampling
    kw = sampling_config.sampling_kwargs(section)
    params = sampling.SamplingParams(
      temperature=kw["temperature"], top_k=kw["top_k"], top_p=kw["top_p"]
    )
    assert params.greedy == (variant == "eval")
    assert kw["num_samples"] == section.num_samples
  section = sampling_config.get_config("smoke").sampling
  section.top_p = 1.5
  with pytest.raises(common.ConfigError, match="sampling.top_p"):
    sampling_config.sampling_kwargs(section)
  with pytest.raises(common.ConfigError, match="unknown config arg"):
    sampling_config.get_config("temp=2")


def test_sampling_params_validation():
  with pytest.raises(ValueError, match="top_p"):
    sampling.SamplingParams(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    sampling.SamplingParams(temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    sampling.SamplingParams(top_k=-2)


# ------------------------------------------------------------------------------------
# The tiny VLM.
# ------------------------------------------------------------------------------------


def tiny_model(seed: int = 0) -> VideoLanguageModel:
  """The tiny VLM with weights of realistic scale (the 0.02 init makes every logit ~0).

  Built abstractly and filled from NumPy: an eager init of the tiny model is slow.
  """
  abstract = nnx.eval_shape(lambda: VideoLanguageModel(CFG, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  for path, var in nnx.to_flat_state(state):
    shape = var.get_value().shape  # stacked layers: [layers, in, out]
    noise = rng.standard_normal(shape).astype(np.float32)
    scale = {"embed": 1.0, "scale": 0.2, "bias": 0.1}.get(path[-1])
    scale = 1 / np.sqrt(shape[-2]) if scale is None else scale
    var.set_value(jnp.asarray((path[-1] == "scale") + scale * noise))
  return nnx.merge(graphdef, state)


def unrolled(model: VideoLanguageModel) -> VideoLanguageModel:
  """The same weights in a model whose layers are unrolled (`scan_layers=False`)."""
  abstract = nnx.eval_shape(lambda: VideoLanguageModel(CFG, rngs=nnx.Rngs(0), scan_layers=False))
  return nnx.merge(nnx.graphdef(abstract), stack.relayout(nnx.state(model), scan=False))


@pytest.fixture(scope="module")
def model():
  return tiny_model()


@pytest.fixture(scope="module")
def batch():
  inp = hf_reference.video_prompt_batch(CFG, GRIDS, TEXT_LENS, np.random.default_rng(3))
  inp.pop("mm_token_type_ids")
  return inp


def unpadded_rows(batch):
  return [ids[m > 0] for ids, m in zip(batch["input_ids"], batch["attention_mask"])]


def _static_grid(grid):
  return None if grid is None else tuple(map(tuple, np.asarray(grid).tolist()))


@functools.cache
def _jitted(graphdef, method, grid, names):
  @jax.jit
  def run(state, args, kwargs):
    fn = getattr(nnx.merge(graphdef, state), method)
    return fn(*args, video_grid_thw=None if grid is None else np.asarray(grid), **kwargs)

  return run


def call(model, method, *args, video_grid_thw=None, **kwargs):
  """model.method(*args, **kwargs) under jit (eager runs of the tiny model are slow)."""
  graphdef, state = nnx.split(model)
  run = _jitted(graphdef, method, _static_grid(video_grid_thw), tuple(sorted(kwargs)))
  return run(state, args, kwargs)


def full_forward(model, batch, ids, mask):
  return np.asarray(
    call(
      model,
      "__call__",
      ids,
      mask,
      pixel_values_videos=batch["pixel_values_videos"],
      video_grid_thw=batch["video_grid_thw"],
    )
  )


def reference_greedy(model, batch, steps):
  """Step-by-step argmax of the cache-free forward, prompts right-padded (unlike the
  sampler's left padding), so padding and positions are handled independently."""
  rows = unpadded_rows(batch)
  b, length = len(rows), max(map(len, rows)) + steps
  ids = np.full((b, length), CFG.pad_token_id, np.int32)
  mask = np.zeros((b, length), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)], mask[i, : len(r)] = r, 1
  tokens = np.zeros((b, steps), np.int32)
  logps = np.zeros((b, steps))
  for t in range(steps):
    logits = full_forward(model, batch, ids, mask)
    for i, r in enumerate(rows):
      row = np_warp(logits[i, len(r) + t - 1], 1.0, suppress=SUPPRESS)
      tokens[i, t] = np.argmax(row)
      logps[i, t] = np_log_softmax(logits[i, len(r) + t - 1])[tokens[i, t]]
      ids[i, len(r) + t], mask[i, len(r) + t] = tokens[i, t], 1
  return tokens, logps


def completion_pixels(batch, num_samples):
  """The batch's videos, each repeated num_samples times (one copy per answer row)."""
  bounds = np.cumsum([np.prod(g) for g in GRIDS])[:-1]
  per_video = np.split(batch["pixel_values_videos"], bounds)
  return np.concatenate([v for v in per_video for _ in range(num_samples)])


def completion_logits(model, batch, completions_rt, num_samples):
  """Full-forward logits [R, T, V] that predict each completion token (prompt repeated)."""
  rows = unpadded_rows(batch)
  r, t = completions_rt.shape
  length = max(map(len, rows)) + t
  ids = np.full((r, length), CFG.pad_token_id, np.int32)
  mask = np.zeros((r, length), np.int32)
  starts = []
  for i in range(r):
    p = rows[i // num_samples]
    ids[i, : len(p)], ids[i, len(p) : len(p) + t] = p, completions_rt[i]
    mask[i, : len(p) + t] = 1
    starts.append(len(p) - 1)
  rep = dict(batch)
  # Each row now holds its own copy of its prompt's video.
  rep["pixel_values_videos"] = completion_pixels(batch, num_samples)
  rep["video_grid_thw"] = np.repeat(np.asarray(GRIDS), num_samples, axis=0)
  logits = full_forward(model, rep, ids, mask)
  return np.stack([logits[i, s : s + t] for i, s in enumerate(starts)])


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_greedy_equals_full_forward_argmax(model, batch, scan_layers):
  """G = 2 greedy answers per prompt (shared-prefix cache): both equal the reference."""
  sampler_model = model if scan_layers else unrolled(model)
  out = sampling.generate(
    sampler_model, batch, max_new_tokens=T_NEW, num_samples=2, temperature=0.0, stop_tokens=[]
  )
  want_tokens, want_logps = reference_greedy(model, batch, T_NEW)
  want_tokens, want_logps = (np.repeat(x, 2, axis=0) for x in (want_tokens, want_logps))
  np.testing.assert_array_equal(out.tokens, want_tokens)
  np.testing.assert_array_equal(out.completion_mask, 1)
  np.testing.assert_array_equal(out.lengths, T_NEW)
  assert not np.asarray(out.stopped).any()
  np.testing.assert_allclose(out.model_logprobs, want_logps, atol=1e-5)
  np.testing.assert_array_equal(out.logprobs, 0.0)


def test_sampled_logprobs_match_training_forward(model, batch):
  kw = dict(temperature=0.7, top_k=20, top_p=0.9)
  g = 3
  out = sampling.generate(
    model, batch, max_new_tokens=T_NEW, num_samples=g, stop_tokens=[], rng=jax.random.key(0), **kw
  )
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (2 * g, T_NEW)
  assert len({tuple(t) for t in tokens}) == 2 * g, "group members drew identical answers"
  again = sampling.generate(
    model, batch, max_new_tokens=T_NEW, num_samples=g, stop_tokens=[], rng=jax.random.key(0), **kw
  )
  np.testing.assert_array_equal(again.tokens, tokens)
  other = sampling.generate(
    model, batch, max_new_tokens=T_NEW, num_samples=g, stop_tokens=[], rng=jax.random.key(1), **kw
  )
  assert (np.asarray(other.tokens) != tokens).any()

  logits = completion_logits(model, batch, tokens, g)
  idx = (np.arange(2 * g)[:, None], np.arange(T_NEW)[None], tokens)
  # The training forward's log-probs of the sampled answers (prompts repeated per sample).
  rep = lambda x: np.repeat(x, g, axis=0)
  train_lp = call(
    model,
    "token_logprobs",
    rep(batch["input_ids"]),
    rep(batch["attention_mask"]),
    tokens,
    pixel_values_videos=completion_pixels(batch, g),
    video_grid_thw=rep(np.asarray(GRIDS)),
  )
  np.testing.assert_allclose(out.model_logprobs, train_lp, atol=1e-5, rtol=0)
  np.testing.assert_allclose(out.model_logprobs, np_log_softmax(logits)[idx], atol=1e-5)
  np.testing.assert_allclose(
    out.policy_logprobs, np_log_softmax(logits / kw["temperature"])[idx], atol=1e-5
  )
  warped = np_log_softmax(np_warp(logits, suppress=SUPPRESS, **kw))
  np.testing.assert_allclose(out.logprobs, warped[idx], atol=1e-5)

  # Only what is asked for is computed; the tokens are the same either way.
  only = sampling.generate(
    model,
    batch,
    max_new_tokens=T_NEW,
    num_samples=g,
    stop_tokens=[],
    rng=jax.random.key(0),
    logprobs=("model_logprobs",),
    **kw,
  )
  none = sampling.generate(
    model,
    batch,
    max_new_tokens=T_NEW,
    num_samples=g,
    stop_tokens=[],
    rng=jax.random.key(0),
    logprobs=(),
    **kw,
  )
  for o in (only, none):
    np.testing.assert_array_equal(o.tokens, tokens)
    assert o.logprobs is None and o.policy_logprobs is None
  np.testing.assert_array_equal(only.model_logprobs, out.model_logprobs)
  assert none.model_logprobs is None
  with pytest.raises(ValueError, match="unknown.*'policy'"):
    sampling.generate(
      model,
      batch,
      max_new_tokens=T_NEW,
      num_samples=g,
      stop_tokens=[],
      rng=jax.random.key(0),
      logprobs=("policy",),
      **kw,
    )


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scan", "unrolled"])
def test_shared_prefix_samples_equal_the_former_layout(model, batch, scan_layers):
  """Same rng, same tokens: the shared prompt cache vs G full copies (`repeat_cache`),
  with stop tokens so finished rows are exercised too."""
  sampler_model = model if scan_layers else unrolled(model)
  kw = dict(
    max_new_tokens=T_NEW,
    num_samples=3,
    temperature=0.9,
    top_k=30,
    rng=jax.random.key(11),
    stop_tokens=[15, 37, 47],
  )
  shared = sampling.generate(sampler_model, batch, **kw)
  former = sampling.generate(sampler_model, batch, shared_prefix=False, **kw)
  for name in ("tokens", "completion_mask", "lengths", "stopped"):
    np.testing.assert_array_equal(getattr(shared, name), getattr(former, name), err_msg=name)
  for name in ("logprobs", "policy_logprobs", "model_logprobs"):
    np.testing.assert_allclose(
      getattr(shared, name), getattr(former, name), atol=2e-6, err_msg=name
    )
  assert len({tuple(t) for t in np.asarray(shared.tokens)}) > 1
  # Some rows stop on a stop token, others run to max_new_tokens (sizes of this model).
  assert 0 < np.asarray(shared.stopped).sum() < 6


def test_shared_prefix_samples_equal_independent_prompts(model, batch, monkeypatch):
  """Sample g of prompt b equals the answer to an independent copy of prompt b (its own
  prefill, num_samples=1) drawn with the same key: the repeated-prompt computation."""
  g, t = 3, T_NEW + 1  # No other test compiles T_NEW + 1, so the patched keys trace anew.
  kw = dict(max_new_tokens=t, temperature=1.0, top_p=0.95, stop_tokens=[], rng=jax.random.key(12))
  shared = sampling.generate(model, batch, num_samples=g, **kw)
  rep = lambda x: np.repeat(x, g, axis=0)
  copies = dict(
    input_ids=rep(batch["input_ids"]),
    attention_mask=rep(batch["attention_mask"]),
    pixel_values_videos=completion_pixels(batch, g),
    video_grid_thw=rep(np.asarray(GRIDS)),
  )
  row_keys = sampling.row_keys
  b = batch["input_ids"].shape[0]
  # Row r = b * G + g of the copies gets fold_in(fold_in(rng, b), g), as in the group.
  monkeypatch.setattr(
    sampling, "row_keys", lambda rng, batch, num: row_keys(rng, batch // g, g * num)
  )
  indep = sampling.generate(model, copies, num_samples=1, **kw)
  monkeypatch.undo()
  assert np.asarray(indep.tokens).shape == (b * g, t)
  np.testing.assert_array_equal(shared.tokens, indep.tokens)
  np.testing.assert_allclose(shared.model_logprobs, indep.model_logprobs, atol=2e-6)
  np.testing.assert_allclose(shared.logprobs, indep.logprobs, atol=2e-6)


def test_kv_cache_bytes_formula_matches_the_caches(model):
  text_cfg = CFG.text
  b, s, t, g = 2, 40, 9, 3
  prefilled = jax.eval_shape(lambda: model.init_cache(b, s))
  nbytes = lambda c: sum(x.size * x.dtype.itemsize for x in (c.k, c.v))
  shared = jax.eval_shape(
    lambda c: sampling.share_prefix(c, g, sampling.answer_slots(t)), prefilled
  )
  former = jax.eval_shape(lambda c: sampling.repeat_cache(c, g, s + t - 1), prefilled)
  assert shared.suffix.k.shape == (
    text_cfg.num_hidden_layers,
    b * g,
    t - 1,
    text_cfg.num_key_value_heads,
    text_cfg.head_dim,
  )
  kw = dict(prompt_len=s, max_new_tokens=t, num_samples=g, dtype=jnp.float32)
  assert nbytes(shared.prefix) + nbytes(shared.suffix) == b * sampling.kv_cache_bytes(
    text_cfg, **kw
  )
  assert nbytes(former) == b * sampling.kv_cache_bytes(text_cfg, shared_prefix=False, **kw)
  # The case: G = 8 answers of 128 tokens to a 1,000-token prompt.
  kw = dict(prompt_len=1000, max_new_tokens=128, num_samples=8, dtype=jnp.bfloat16)
  after = sampling.kv_cache_bytes(text_cfg, **kw)
  before = sampling.kv_cache_bytes(text_cfg, shared_prefix=False, **kw)
  per_slot = 2 * text_cfg.num_hidden_layers * text_cfg.num_key_value_heads * text_cfg.head_dim * 2
  assert (after, before) == ((1000 + 8 * 127) * per_slot, 8 * (1000 + 127) * per_slot)
  assert sampling.answer_slots(1) == 1


def test_stop_tokens_and_lengths(model, batch):
  free = sampling.generate(model, batch, max_new_tokens=T_NEW, temperature=0.0, stop_tokens=[])
  tokens = np.asarray(free.tokens)
  # Row 0 stops at its 2nd token, row 1 at the first occurrence of its 4th token.
  first = lambda row, tok: int(np.flatnonzero(row == tok)[0])
  stop_at = [first(tokens[0], tokens[0, 1]), first(tokens[1], tokens[1, 3])]
  stops = np.array([[tokens[0, 1]], [tokens[1, 3]]])
  out = sampling.generate(model, batch, max_new_tokens=T_NEW, temperature=0.0, stop_tokens=stops)
  np.testing.assert_array_equal(out.lengths, np.array(stop_at) + 1)
  np.testing.assert_array_equal(out.stopped, [True, True])
  for i, n in enumerate(np.array(stop_at) + 1):
    np.testing.assert_array_equal(out.tokens[i, :n], tokens[i, :n])
    np.testing.assert_array_equal(out.tokens[i, n:], CFG.pad_token_id)
    np.testing.assert_array_equal(out.completion_mask[i], np.arange(T_NEW) < n)
    np.testing.assert_array_equal(out.model_logprobs[i, n:], 0.0)
    np.testing.assert_allclose(out.model_logprobs[i, :n], free.model_logprobs[i, :n], atol=1e-6)
  np.testing.assert_array_equal(free.lengths, [T_NEW, T_NEW])
  np.testing.assert_array_equal(free.stopped, [False, False])


def test_group_samples_share_one_prefill_and_match_the_full_forward(model, batch, monkeypatch):
  """3000 samples of one prompt: one vision tower run, first tokens pass a chi-square."""
  calls = []
  tower = VisionTower.__call__

  def counting(self, pixel_values, grid_thw):
    calls.append(pixel_values.shape)
    return tower(self, pixel_values, grid_thw)

  monkeypatch.setattr(VisionTower, "__call__", counting)
  one = {k: v[:1] for k, v in batch.items() if k in ("input_ids", "attention_mask")}
  one.update(
    pixel_values_videos=batch["pixel_values_videos"][: int(np.prod(GRIDS[0]))],
    video_grid_thw=np.asarray(GRIDS[:1]),
  )
  kw = dict(temperature=0.8, top_k=12, top_p=0.9)
  # num_samples=3000 is used nowhere else, so this call traces afresh.
  out = sampling.generate(
    model, one, max_new_tokens=1, num_samples=3000, rng=jax.random.key(5), **kw
  )
  assert calls == [one["pixel_values_videos"].shape], "the tower ran per sample"
  monkeypatch.undo()
  row = unpadded_rows(one)[0]
  logits = full_forward(model, one, row[None].astype(np.int32), np.ones((1, len(row)), np.int32))[
    0, -1
  ]
  probs = np_probs(logits, suppress=SUPPRESS, **kw)
  assert 3 <= (probs > 0).sum() <= 12
  assert chi_square_pvalue(np.asarray(out.tokens)[:, 0], probs) > 1e-3


def test_precomputed_video_embeds_of_a_reordered_view(model):
  """The trainer's path: encode once, gather whole temporal patches, sample on the view."""
  grid = np.array([[3, 4, 4]])
  inp = hf_reference.video_prompt_batch(CFG, grid, [(2, 3)], np.random.default_rng(4))
  perm = np.array([2, 0, 1])
  pix_per_patch, tok_per_patch = 16, 4
  embeds = call(model, "encode_video", inp["pixel_values_videos"], video_grid_thw=grid)
  view = jnp.asarray(embeds).reshape(3, tok_per_patch, -1)[perm].reshape(12, -1)
  pixels = inp["pixel_values_videos"].reshape(3, pix_per_patch, -1)[perm].reshape(48, -1)
  times = np.array([[2.0, 0.5, 1.0]])
  common = dict(
    input_ids=inp["input_ids"],
    attention_mask=inp["attention_mask"],
    video_grid_thw=grid,
    patch_timestamps=times,
  )
  a = sampling.generate(
    model, dict(common, video_embeds=view), max_new_tokens=T_NEW, temperature=0.0
  )
  b = sampling.generate(
    model, dict(common, pixel_values_videos=pixels), max_new_tokens=T_NEW, temperature=0.0
  )
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5)


@pytest.mark.slow
def test_runs_under_the_training_mesh(model, batch):
  kw = dict(
    max_new_tokens=T_NEW,
    num_samples=2,
    temperature=1.0,
    top_p=0.9,
    stop_tokens=[],
    rng=jax.random.key(3),
  )
  single = sampling.generate(model, batch, **kw)
  mesh = sharding.make_mesh((2, 2, 2))
  graphdef, state = nnx.split(model)
  with jax.set_mesh(mesh):
    state = jax.device_put(state, sharding.state_shardings(state, mesh))
    sharded_model = nnx.merge(graphdef, state)
    out = sampling.generate(sharded_model, batch, **kw)
    lowered = sampling.lower_generate(sharded_model, batch, **kw)
  assert len(out.tokens.sharding.device_set) == 8
  np.testing.assert_array_equal(out.tokens, single.tokens)
  np.testing.assert_allclose(out.model_logprobs, single.model_logprobs, atol=1e-5)
  hlo = lowered.as_text()
  assert "while" in hlo
  assert "callback" not in hlo and "outfeed" not in hlo, "host round trip in the loop"


def test_bad_inputs_name_the_problem(model, batch):
  with pytest.raises(ValueError, match="unknown inputs \\['pixel_values'\\]"):
    sampling.generate(model, dict(batch, pixel_values=1), max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match="needs rng"):
    sampling.generate(model, batch, max_new_tokens=2)
  with pytest.raises(ValueError, match="no pixel_values_videos or video_embeds"):
    sampling.generate(model, {"input_ids": batch["input_ids"]}, max_new_tokens=2, temperature=0.0)
  with pytest.raises(ValueError, match="rows \\[1\\] have no real tokens"):
    sampling.generate(
      model,
      {"input_ids": np.ones((2, 3), np.int32), "attention_mask": np.array([[1, 1, 1], [0, 0, 0]])},
      max_new_tokens=2,
      temperature=0.0,
    )
  with pytest.raises(ValueError, match="stop_tokens has shape"):
    sampling.generate(
      model, batch, max_new_tokens=2, temperature=0.0, stop_tokens=np.ones((3, 2), np.int32)
    )
  with pytest.raises(ValueError, match="max_new_tokens"):
    sampling.generate(model, batch, max_new_tokens=0, temperature=0.0)


# ------------------------------------------------------------------------------------
# HF transformers' greedy generate.
# ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_greedy_equals_hf_generate_with_video(tmp_path):
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  from chronoforge_jax.models import convert

  cfg_dict = hf_reference.hf_config_dict()
  hf = hf_reference.build_hf_model(cfg_dict, seed=1)
  hf.save_pretrained(tmp_path)
  ours = convert.load_hf_model(str(tmp_path), text_position_after_video="spatial")
  inp = hf_reference.video_prompt_batch(ours.config, GRIDS, TEXT_LENS, np.random.default_rng(8))
  steps = 12
  hf_inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in inp.items()}

  def hf_greedy(stop):
    with torch.no_grad():
      out = hf.generate(
        **hf_inputs,
        max_new_tokens=steps,
        do_sample=False,
        suppress_tokens=list(SUPPRESS),
        eos_token_id=stop,
        pad_token_id=ours.config.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
      )
    return out.sequences[:, inp["input_ids"].shape[1] :].numpy(), out.logits

  # A stop token that row 1 reaches mid-answer, so stopping and padding are compared too.
  free, _ = hf_greedy(ours.config.eos_token_id)
  stop = int(free[1, 3])
  hf_tokens, hf_logits = hf_greedy(stop)
  inp.pop("mm_token_type_ids")
  out = sampling.generate(ours, inp, max_new_tokens=steps, temperature=0.0, stop_tokens=[stop])
  n = hf_tokens.shape[1]
  assert np.asarray(out.stopped)[1] and np.asarray(out.lengths)[1] <= 4
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, :n], hf_tokens)
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, n:], ours.config.pad_token_id)
  hf_lp = np.stack([np_log_softmax(x.numpy()) for x in hf_logits], axis=1)
  hf_lp = np.take_along_axis(hf_lp, hf_tokens[..., None], axis=-1)[..., 0]
  mask = np.asarray(out.completion_mask)[:, :n] > 0
  np.testing.assert_allclose(np.asarray(out.model_logprobs)[:, :n][mask], hf_lp[mask], atol=1e-4)
