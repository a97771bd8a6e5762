"""Grain pipelines that turn preprocessed shards into fixed-shape train and eval batches.

  question ids -> shuffle(seed) -> repeat -> global batches of ids
    -> this process's slice of each global batch (per-process sharding)
    -> per example: TAD/uniform keyframes (by name) -> ordered + hybrid disordered views
       -> read only the union's frames -> chat-template prompt, reference answer
    -> pad to length buckets chosen per GLOBAL batch -> to_iter_dataset -> mp_prefetch

Every random choice is a function of (seed, global position), so the batches do not
depend on the number of processes or prefetch workers, and the Grain iterator state
(`get_state`/`set_state`, saved with the checkpoint) restores an exact continuation.
The prompt/target bucket of a step is chosen from the lengths of the whole global batch
(all processes compute the same), so processes always agree on shapes.

A batch is a dict of NumPy arrays (P patches per view and U frames in the union: P = K/2
and U = K + 2M pairing keyframes, P = K and U = 2(K + M) duplicating them; rl/views.py):
  frames u8 [B,U,H,W,3], timestamps f32 [B,U], frame_valid bool [B,U],
  ordered_patches i32 [B,P], disordered_patches i32 [B,P], keyframe_indices i32 [B,K],
  prompt_ids i32 [B,L] (left-padded), prompt_mask bool [B,L], answer_index i32 [B],
  target_ids i32 [B,A] (right-padded), target_mask bool [B,A], target_answer_mask bool
  [B,A] (the tokens that name the answer: those that change with the answer letter),
  example_valid bool [B],
and host-only object arrays (HOST_KEYS): question_id, video_id, duration_bucket,
task_type, options, problem_type (Video-R1's five; answer_index is -1 for all but
multiple choice), solution ("<answer>X</answer>", what the type's reward scores against)
and media ("video" or "image": a still stored as a one-frame video, whose K keyframe
slots all repeat that frame, as for any video shorter than K).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from chronoforge_jax import models, tad
from chronoforge_jax import settings as settings_lib
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import prompts, records
from chronoforge_jax.rl import answer_rules
from chronoforge_jax.rl import views as views_lib

HOST_KEYS = (
  "question_id",
  "video_id",
  "duration_bucket",
  "task_type",
  "options",
  "problem_type",
  "solution",
  "media",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineSettings:
  """What a batch looks like and how it is produced: the `input` config section, with
  K and the selector from `tad` and the patch sizes from `model` (`from_config`).

  Attributes:
    batch_size: GLOBAL batch size (all processes); each process gets batch_size/count.
    num_keyframes: K (even when pairing: consecutive keyframes share a temporal patch).
    selector: keyframe selector registered in `tad.SELECTORS` ("tad", "uniform").
    select_kwargs: TAD settings (`tad.TADSettings.select_kwargs()`; any subset of them).
    disorder_ratio: fraction of the disordered view taken from non-keyframes, in [0, 1].
    num_nonkey_pairs: M non-keyframe temporal patches stored; -1 = round(ratio * P);
      0 = none.
    patch_mode: "pair" (two keyframes per temporal patch) or "duplicate" (each frame
      repeated into a patch of its own: exact per-frame encoding, twice the tokens).
    patch_size, merge_size: the model's vision patch side and spatial merge
      (`VisionConfig.patch_size`, `.spatial_merge_size`; `from_config` reads them from
      the `model` section); a temporal patch of HxW frames gives
      (H/patch/merge) * (W/patch/merge) video tokens.
    prompt_buckets: allowed prompt lengths NOT counting the video tokens.
    target_buckets: allowed reference-answer lengths.
    prompt_template: the user text's template, a name in `prompts.PROMPT_TEMPLATES`
      ("short": question, options, one instruction; "videor1": Video-R1's prompt).
    target_reasoning: SFT targets carry the annotation's reasoning inside <think>; False
      leaves <think></think> empty (short targets: the tiny demo model learns the format
      in a few dozen steps).
    seed: shuffling and per-example randomness.
    shuffle: shuffle questions (train) or keep file order (eval).
    num_epochs: passes over the data (>= 1); None repeats forever.
    pad_final_batch: pad the last global batch with invalid examples instead of dropping
      it (evaluation: every question is seen exactly once).
    prefetch_workers: Grain worker processes (0 = build batches in this process).
    prefetch_buffer: batches buffered per worker / reader (>= 1).
    read_threads: threads building batches in each process (0 = Grain's default).
  """

  batch_size: int
  num_keyframes: int = 16
  selector: str = "tad"
  select_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  disorder_ratio: float = 0.5
  num_nonkey_pairs: int = -1
  patch_mode: str = "pair"
  patch_size: int = models.VisionConfig.patch_size
  merge_size: int = models.VisionConfig.spatial_merge_size
  prompt_buckets: tuple[int, ...] = (128, 256, 512)
  target_buckets: tuple[int, ...] = (64, 128, 256)
  prompt_template: str = "short"
  target_reasoning: bool = True
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  pad_final_batch: bool = False
  prefetch_workers: int = 0
  prefetch_buffer: int = 2
  read_threads: int = 1

  def __post_init__(self):
    req, is_int = settings_lib.require, settings_lib.is_int
    req(is_int(self.batch_size, 1), self, "batch_size", self.batch_size, "need an int >= 1")
    settings_lib.choice(self, "patch_mode", self.patch_mode, views_lib.PATCH_MODES)
    pairing = self.patch_mode == "pair"
    req(
      is_int(self.num_keyframes, 1) and not (pairing and self.num_keyframes % 2),
      self,
      "num_keyframes",
      self.num_keyframes,
      "need an even K >= 2 (pairs of consecutive keyframes form Qwen2.5-VL temporal "
      "patches; input.patch_mode='duplicate' takes any K >= 1)"
      if pairing
      else "need K >= 1",
    )
    known = tuple(tad.analyze_defaults())
    unknown = sorted(set(self.select_kwargs) - set(known))
    req(
      not unknown,
      self,
      "select_kwargs",
      dict(self.select_kwargs),
      f"unknown TAD settings {unknown}; known: {list(known)}",
    )
    with settings_lib.renamed({"selector": f"{type(self).__name__}.selector"}):
      tad.TADSettings(selector=self.selector, **self.select_kwargs)
    req(
      settings_lib.is_number(self.disorder_ratio) and 0.0 <= self.disorder_ratio <= 1.0,
      self,
      "disorder_ratio",
      self.disorder_ratio,
      "need a number in [0, 1]",
    )
    req(
      is_int(self.num_nonkey_pairs, -1),
      self,
      "num_nonkey_pairs",
      self.num_nonkey_pairs,
      "need -1 (auto) or an int >= 0",
    )
    for field in ("patch_size", "merge_size"):
      value = getattr(self, field)
      req(is_int(value, 1), self, field, value, "need an int >= 1")
    for field in ("prompt_buckets", "target_buckets"):
      b = getattr(self, field)
      ok = (
        isinstance(b, (tuple, list))
        and len(b) > 0
        and all(is_int(x, 1) for x in b)
        and list(b) == sorted(set(b))
      )
      req(ok, self, field, b, "need increasing positive lengths, e.g. (128, 256)")
      object.__setattr__(self, field, tuple(b))
    settings_lib.choice(self, "prompt_template", self.prompt_template, prompts.PROMPT_TEMPLATES)
    for field in ("target_reasoning", "shuffle", "pad_final_batch"):
      value = getattr(self, field)
      req(isinstance(value, bool), self, field, value, "need true or false")
    req(is_int(self.seed), self, "seed", self.seed, "need an int")
    req(
      self.num_epochs is None or is_int(self.num_epochs, 1),
      self,
      "num_epochs",
      self.num_epochs,
      "need None (forever) or an int >= 1",
    )
    for field, low in (("prefetch_workers", 0), ("prefetch_buffer", 1), ("read_threads", 0)):
      value = getattr(self, field)
      req(is_int(value, low), self, field, value, f"need an int >= {low}")

  @classmethod
  def from_config(
    cls, config: Any, *, train: bool = True, selector: str | None = None
  ) -> PipelineSettings:
    """From a config's `input` section, its `tad` section (K, selector, TAD settings)
    and its `model` section (the vision patch sizes).

    Args:
      config: a ConfigDict with `input` (configs/data.py) and usually `tad`
        (configs/tad.py) and `model` (configs/model.py). Without `tad`, TAD's defaults
        (K = 16); without `model`, Qwen2.5-VL's vision (14-pixel patches merged 2x2).
      train: training settings (tad.k keyframes, shuffled, disordered view) or evaluation
        settings (input.eval_num_keyframes, file order, padded last batch).
      selector: overrides tad.selector (e.g. evaluate "uniform" and "tad" side by side).

    Returns:
      PipelineSettings. A bad field raises SettingsError naming it as the config does
      (`config.input.batch_size=0: ...`, `config.tad.k=5: ...`).
    """
    inp = config.input
    tad_settings = tad.TADSettings.from_config(config.tad) if "tad" in config else tad.TADSettings()
    vision = (
      models.ModelSettings.from_config(config.model).model_config().vision
      if "model" in config
      else models.VisionConfig
    )
    names = {f.name: f"config.input.{f.name}" for f in dataclasses.fields(cls)}
    names.update(
      selector="config.tad.selector",
      patch_size="config.model (its vision patch_size)",
      merge_size="config.model (its vision spatial_merge_size)",
    )
    if train:
      names.update(num_keyframes="config.tad.k")
      mode = dict(num_keyframes=tad_settings.k, batch_size=inp.batch_size)
      mode.update(num_nonkey_pairs=inp.num_nonkey_pairs, num_epochs=inp.num_epochs)
    else:
      names.update(
        num_keyframes="config.input.eval_num_keyframes",
        batch_size="config.input.eval_batch_size",
      )
      mode = dict(num_keyframes=inp.eval_num_keyframes, batch_size=inp.eval_batch_size)
      mode.update(shuffle=False, num_epochs=1, pad_final_batch=True, num_nonkey_pairs=0)
    with settings_lib.renamed(names):
      return cls(
        selector=selector or tad_settings.selector,
        select_kwargs=tad_settings.select_kwargs(),
        disorder_ratio=inp.disorder_ratio,
        patch_mode=inp.patch_mode,
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        prompt_buckets=inp.prompt_buckets,
        target_buckets=inp.target_buckets,
        target_reasoning=inp.target_reasoning,
        prompt_template=inp.prompt_template,
        seed=inp.seed,
        prefetch_workers=inp.prefetch_workers,
        prefetch_buffer=inp.prefetch_buffer,
        read_threads=inp.read_threads,
        **mode,
      )

  @property
  def num_pairs(self) -> int:
    if self.num_nonkey_pairs >= 0:
      return self.num_nonkey_pairs
    return views_lib.default_num_pairs(self.num_keyframes, self.disorder_ratio, self.patch_mode)

  @property
  def num_patches(self) -> int:
    """P, temporal patches of a view."""
    return views_lib.view_patches(self.num_keyframes, self.patch_mode)

  @property
  def num_frames(self) -> int:
    """U, frames stored per example."""
    return views_lib.union_frames(self.num_keyframes, self.num_pairs, self.patch_mode)


def num_video_tokens(
  num_patches: int,
  height: int,
  width: int,
  patch_size: int = models.VisionConfig.patch_size,
  merge_size: int = models.VisionConfig.spatial_merge_size,
) -> int:
  """`<|video_pad|>` count for `num_patches` temporal patches of HxW frames."""
  unit = patch_size * merge_size
  if height % unit or width % unit:
    raise ValueError(
      f"frames of {height}x{width} are not multiples of patch_size * "
      f"merge_size = {unit}; preprocess with --size a multiple of {unit}"
    )
  return num_patches * (height // unit) * (width // unit)


def _bucket(length: int, buckets: Sequence[int], what: str, field: str) -> int:
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(
    f"{what} is {length} tokens, longer than the largest of "
    f"{field}={tuple(buckets)}; add a larger bucket"
  )


@functools.lru_cache(maxsize=8)
def _cpu_select(name: str, k: int, kwargs: tuple) -> Any:
  """A jitted selector pinned to the host CPU (never the accelerator the trainer uses)."""
  fn = jax.jit(lambda f, m: tad.select(name, f, k, m, **dict(kwargs)))
  cpu = jax.local_devices(backend="cpu")[0]  # This process's own CPU (multi-process safe).

  def run(features_btd: np.ndarray, mask_bt: np.ndarray):
    idx, valid = fn(jax.device_put(features_btd, cpu), jax.device_put(mask_bt, cpu))
    return np.asarray(idx), np.asarray(valid)

  return run


def _worker_init(index: int, count: int) -> None:
  """Grain worker processes compute keyframes on the CPU, never on the accelerator."""
  del index, count
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # Imported already (e.g. by the spawned __main__): set it too.
    sys.modules["jax"].config.update("jax_platforms", "cpu")


class _BatchBuilder:
  """Builds this process's slice of global batch `step` (picklable for Grain workers)."""

  def __init__(
    self,
    data_dir: str,
    tokenizer,
    settings: PipelineSettings,
    *,
    shard_index: int,
    shard_count: int,
  ):
    self.data = records.PreprocessedData(data_dir)
    self.tok = tokenizer
    self.s = settings
    self.shard_index, self.local = shard_index, settings.batch_size // shard_count
    h, w = self.data.frame_shape[:2]
    self.num_video = num_video_tokens(
      settings.num_patches, h, w, settings.patch_size, settings.merge_size
    )
    self.max_t = max(int(self.data.index["max_frames_per_video"]), 1)
    self.text_len, self.target_len = self._lengths()
    self._select = None

  def _question_texts(self, q: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    prompt = self._prompt(q, 0)
    reasoning = q.get("reasoning", "") if self.s.target_reasoning else ""
    target = self.tok.encode(self._answer_turn(q, reasoning))
    return prompt, target

  def _answer_turn(self, q: Mapping[str, Any], reasoning: str = "") -> str:
    """The reference assistant turn: <think>R</think><answer>X</answer><|im_end|>."""
    if _problem_type(q) == prompts.MULTIPLE_CHOICE:
      return self.tok.answer_text(q["answer_index"], reasoning)
    answer = answer_rules.solution_answer(q["solution"])
    return f"<think>{reasoning.strip()}</think><answer>{answer}</answer>{tokenizer_lib.IM_END}"

  def _prompt(self, q: Mapping[str, Any], num_video: int) -> list[int]:
    return prompts.encode_prompt(
      self.tok,
      self.s.prompt_template,
      q["question"],
      q["options"],
      num_video,
      q.get("problem_type") or prompts.MULTIPLE_CHOICE,
    )

  def _lengths(self) -> tuple[np.ndarray, np.ndarray]:
    """Prompt text and target lengths of every question (checked against the buckets)."""
    n = len(self.data)
    text, target = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
      q = self.data.question(i)
      p, t = self._question_texts(q)
      text[i] = len(p)
      _bucket(
        len(p),
        self.s.prompt_buckets,
        f"question {q['question_id']!r}: the prompt without video tokens",
        "input.prompt_buckets",
      )
      target[i] = min(len(t), self.s.target_buckets[-1])
    return text, target

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_select"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._select = None

  def _target(self, q: Mapping[str, Any], length: int) -> list[int]:
    ids = self._question_texts(q)[1]
    if len(ids) <= length:
      return ids
    # Too long: shorten the reasoning, keep the answer and the end-of-turn token.
    head = self.tok.encode("<think>")
    tail = self.tok.encode(self._answer_turn(q)[len("<think>") :])
    body = self.tok.encode(q.get("reasoning", "").strip() if self.s.target_reasoning else "")
    return head + body[: max(0, length - len(head) - len(tail))] + tail

  def __call__(self, step: int, question_ids_g: np.ndarray) -> dict[str, np.ndarray]:
    s, n = self.s, len(self.data)
    ids_g = np.asarray(question_ids_g, np.int64)
    valid_g = ids_g < n  # Padding of the final eval batch points past the end.
    safe_g = np.where(valid_g, ids_g, 0)
    prompt_len = self.num_video + _bucket(
      int(self.text_len[safe_g].max()), s.prompt_buckets, "prompt", "input.prompt_buckets"
    )
    target_len = _bucket(
      int(self.target_len[safe_g].max()), s.target_buckets, "target", "input.target_buckets"
    )
    lo = self.shard_index * self.local
    local_ids, local_valid = safe_g[lo : lo + self.local], valid_g[lo : lo + self.local]
    questions = [self.data.question(int(i)) for i in local_ids]
    videos = [self.data.video(q["video_key"]) for q in questions]
    key_bk, key_valid_bk = self._keyframes(videos)
    examples = []
    for j, (q, video) in enumerate(zip(questions, videos)):
      position = step * s.batch_size + lo + j
      rng = np.random.default_rng([s.seed, position])
      v = views_lib.build_views(
        video.num_frames,
        key_bk[j],
        key_valid_bk[j],
        num_pairs=s.num_pairs,
        disorder_ratio=s.disorder_ratio,
        rng=rng,
        patch_mode=s.patch_mode,
      )
      examples.append(self._example(q, video, v, prompt_len, target_len, local_valid[j]))
    return _collate(examples)

  def _keyframes(self, videos: Sequence[records.VideoRecord]):
    if self._select is None:
      self._select = _cpu_select(
        self.s.selector, self.s.num_keyframes, tuple(sorted(dict(self.s.select_kwargs).items()))
      )
    d = videos[0].features.shape[1]
    feats_btd = np.zeros((len(videos), self.max_t, d), np.float32)
    mask_bt = np.zeros((len(videos), self.max_t), bool)
    for b, v in enumerate(videos):  # Padded to one length: one compile per process.
      feats_btd[b, : v.num_frames] = v.features
      mask_bt[b, : v.num_frames] = True
    return self._select(feats_btd, mask_bt)

  def _answer_span(
    self, q: Mapping[str, Any], target: Sequence[int], target_len: int
  ) -> tuple[int, int]:
    """[start, end) of the target tokens that spell the answer letter: what differs from
    the same target with another letter (BPE may merge the letter with its tags)."""
    if _problem_type(q) == prompts.MULTIPLE_CHOICE:
      other_q = {**q, "answer_index": (q["answer_index"] + 1) % 4}
    else:  # A one-character answer that merges with nothing around it.
      other_q = {**q, "solution": "<answer>~</answer>"}
    other = self._target(other_q, target_len)
    shortest = min(len(target), len(other))
    start = 0
    while start < shortest and target[start] == other[start]:
      start += 1
    tail = 0
    while tail < shortest - start and target[-1 - tail] == other[-1 - tail]:
      tail += 1
    return start, len(target) - tail

  def _example(
    self, q, video, v: views_lib.Views, prompt_len: int, target_len: int, valid: bool
  ) -> dict[str, Any]:
    prompt = self._prompt(q, self.num_video)
    target = self._target(q, target_len)
    lo, hi = self._answer_span(q, target, target_len)
    pad = self.tok.pad_id
    return {
      "frames": self.data.frames(video, v.frame_indices),
      "timestamps": video.timestamps[v.frame_indices].astype(np.float32),
      "frame_valid": v.frame_valid & valid,
      "ordered_patches": v.ordered_patches,
      "disordered_patches": v.disordered_patches,
      "keyframe_indices": v.keyframe_indices,
      "prompt_ids": np.array([pad] * (prompt_len - len(prompt)) + prompt, np.int32),
      "prompt_mask": np.arange(prompt_len) >= prompt_len - len(prompt),
      "answer_index": np.int32(q["answer_index"]),
      "target_ids": np.array(target + [pad] * (target_len - len(target)), np.int32),
      "target_mask": np.arange(target_len) < len(target),
      "target_answer_mask": (np.arange(target_len) >= lo) & (np.arange(target_len) < hi),
      "example_valid": np.bool_(valid),
      "question_id": q["question_id"],
      "video_id": q["video_id"],
      "duration_bucket": q.get("duration_bucket", ""),
      "task_type": q.get("task_type", ""),
      "options": list(q["options"]),
      "problem_type": _problem_type(q),
      "solution": q.get("solution") or f"<answer>{chr(65 + q['answer_index'])}</answer>",
      "media": q.get("media", "video"),
    }


def _problem_type(q: Mapping[str, Any]) -> str:
  return q.get("problem_type") or prompts.MULTIPLE_CHOICE


def _collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  out = {}
  for key in examples[0]:
    if key in HOST_KEYS:
      arr = np.empty(len(examples), object)
      for i, e in enumerate(examples):  # Element-wise: option lists stay lists.
        arr[i] = e[key]
      out[key] = arr
    else:
      out[key] = np.stack([np.asarray(e[key]) for e in examples])
  return out


def split_host(batch: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(device arrays, host-only metadata) of a batch."""
  return (
    {k: v for k, v in batch.items() if k not in HOST_KEYS},
    {k: v for k, v in batch.items() if k in HOST_KEYS},
  )


def _check_shard(settings: PipelineSettings, shard_index: int, shard_count: int) -> None:
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must lie in [0, shard_count={shard_count})")
  if settings.batch_size % shard_count:
    raise ValueError(
      f"batch_size={settings.batch_size} (global) is not divisible by "
      f"{shard_count} processes; set input.batch_size to a multiple"
    )


def make_dataset(
  data_dir: str | os.PathLike,
  tokenizer,
  settings: PipelineSettings,
  *,
  shard_index: int = 0,
  shard_count: int = 1,
):
  """The Grain pipeline over a preprocessed folder.

  Args:
    data_dir: folder written by `launch/preprocess`.
    tokenizer: a `chronoforge_jax.tokenizer.Tokenizer`.
    settings: PipelineSettings (use `train_settings`/`eval_settings` for defaults).
    shard_index: this process's index (`jax.process_index()`).
    shard_count: number of processes (`jax.process_count()`).

  Returns:
    A `grain.IterDataset` of batches; `iter(ds)` has `get_state()`/`set_state()`.
  """
  import grain

  _check_shard(settings, shard_index, shard_count)
  builder = _BatchBuilder(
    os.fspath(data_dir), tokenizer, settings, shard_index=shard_index, shard_count=shard_count
  )
  n = len(builder.data)
  ids = grain.MapDataset.range(n)
  if settings.pad_final_batch:
    total = -(-n // settings.batch_size) * settings.batch_size
    ids = grain.MapDataset.range(total)  # Ids >= n mark padding (example_valid False).
  if settings.shuffle:
    ids = ids.shuffle(seed=settings.seed)
  if settings.num_epochs != 1:
    ids = ids.repeat(settings.num_epochs)
  if len(ids) < settings.batch_size:
    raise ValueError(
      f"{data_dir}: {n} questions cannot fill one global batch of "
      f"{settings.batch_size}; lower input.batch_size"
    )
  ds = ids.batch(settings.batch_size, drop_remainder=True).map_with_index(builder)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=settings.read_threads, prefetch_buffer_size=settings.prefetch_buffer
    )
  )
  if settings.prefetch_workers > 0:
    from absl import flags

    if not flags.FLAGS.is_parsed():
      # Grain's worker start reads its absl flags; outside an absl app (pytest, a
      # notebook) they were never parsed, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=settings.prefetch_workers, per_worker_buffer_size=settings.prefetch_buffer
      ),
      worker_init_fn=_worker_init,
    )
  return ds


def settings_from_config(
  config, *, train: bool = True, selector: str | None = None
) -> PipelineSettings:
  """`PipelineSettings.from_config` (the trainer and the planner call it by this name)."""
  return PipelineSettings.from_config(config, train=train, selector=selector)


def train_settings(batch_size: int, **overrides) -> PipelineSettings:
  """Training defaults: shuffled, repeated forever, with the disordered view."""
  return PipelineSettings(batch_size=batch_size, **overrides)


def eval_settings(batch_size: int, **overrides) -> PipelineSettings:
  """Evaluation defaults: file order, one pass, padded last batch, no non-keyframes."""
  base = dict(shuffle=False, num_epochs=1, pad_final_batch=True, num_nonkey_pairs=0)
  return PipelineSettings(batch_size=batch_size, **{**base, **overrides})
