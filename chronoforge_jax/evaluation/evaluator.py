"""Benchmark evaluation: multiple-choice accuracy per benchmark, duration bucket and task type.

  model = eval_lib.load_model(state.model_config(config, tok),  # config.model's preset
                              checkpoint="/runs/kf_grpo/checkpoints")
  settings = eval_lib.EvalSettings(selector="tad", num_keyframes=32, batch_size=8,
                                   mode="generate", max_new_tokens=512)
  result = eval_lib.evaluate(model, "data/videomme", tok, settings)
  eval_lib.write_result(result, "out/eval")      # <name>.jsonl, <name>.json, <name>.md
  print(eval_lib.compare_results([tad_result, uniform_result]))

Settings: one frozen `EvalSettings` (checked when built; `EvalSettings.from_config` reads
configs/eval.py's `eval` and `tad` sections); the model, mesh and output folder are
arguments of `evaluate`, not settings.

Data: a folder written by `launch/preprocess` (VideoMME, LVBench, ... in the shared
record format), read by the evaluation pipeline (`pipeline.eval_settings`: file order,
one pass, last batch padded, only the K keyframes of each question's video).

Two ways to read the model's answer:
  "generate"    greedy decoding with the KV-cache sampler (`sampling.generate`), then
                the answer is read by a named scoring (`scoring.SCORINGS`: "lenient",
                the project's reader, or "lmms_eval", lmms-eval's VideoMME rule, whose
                numbers compare with published ones); an answer that names no option is
                "unparseable" and counts as wrong (the paper's protocol).
  "likelihood"  each option letter L is scored as the summed log-probability of the
                completion `answer_template.format(letter=L)` (default
                "<answer>L</answer>") right after the prompt, by the trainer's scorer
                (`kf_grpo.completion_logprobs`), and the argmax is the answer. Fast
                and deterministic; no sampler involved. The whole completion is
                scored, not one token, so the choice does not depend on how the
                tokenizer splits the letter from its tags.

Results: an `EvalResult` holds one `QuestionResult` per question and the accuracy tables
(overall, per duration bucket, per task type, each with the unparseable fraction).
`results.write_result` writes them as JSONL + JSON + Markdown, each to a temporary file first and
renamed only once all three are complete, so a crash never replaces an earlier result
with a partial one (`evaluate` keeps everything in memory until the last batch is done).
`compare_results` puts several results (TAD vs uniform, before vs after) in one table.

Devices: one by default; pass a `mesh` (the model loaded onto it with `load_model(...,
mesh=)`) to shard the batch over its data axes and a large model over fsdp/tensor. With
several processes (multi-host, after `jax.distributed.initialize`), every process runs
the same loop on the same global batches (it reads every batch's frames, cheap next to
the model), the mesh spans all processes' devices, the model's outputs are gathered to
every host, so all processes hold the same results, and only process 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Mapping

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from chronoforge_jax import sharding, tad
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import pipeline, prompts, records
from chronoforge_jax.evaluation import results as results_lib
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.models import convert, sampling, vlm
from chronoforge_jax.rl import answer_rules, kf_grpo
from chronoforge_jax.rl import scoring as scoring_lib
from chronoforge_jax.rl import views as views_lib
from chronoforge_jax.train import checkpoint as ckpt_lib
from chronoforge_jax.train import steps as steps_lib

MODES = ("generate", "likelihood")
ANSWER_TEMPLATE = "<answer>{letter}</answer>"


# ---------------------------------------------------------------------------------------
# Building the model.
# ---------------------------------------------------------------------------------------


def load_model(
  config: model_config_lib.ModelConfig,
  *,
  checkpoint: str = "",
  hf_dir: str = "",
  random_init: bool = False,
  dtype=jnp.float32,
  param_dtype=jnp.float32,
  mesh: jax.sharding.Mesh | None = None,
  seed: int = 0,
  attention_impl: str = "xla",
) -> vlm.VideoLanguageModel:
  """Builds the model and restores its params.

  Sources, first match wins: `checkpoint` (a training run's checkpoint directory, one
  of its step directories, or a `checkpoint.save_params` directory, read by
  `checkpoint.load_params`), then `hf_dir` safetensors (`convert.load_hf_model`), then
  random weights if `random_init` (smoke tests only).

  Args:
    config: the ModelConfig (`train.state.model_config` of a config's `model` section).
    checkpoint: params checkpoint path ("" for none).
    hf_dir: HF checkpoint folder ("" for none).
    random_init: allow random weights when neither source is given.
    dtype, param_dtype: compute and storage dtypes.
    mesh: shard the params over this mesh by their logical axes (default: one device).
    seed: init seed (random weights, and the abstract model's RNG).
    attention_impl: the decoder's attention, one of `layers.ATTENTION_IMPLS` ("xla",
      "chunked", "cudnn" on NVIDIA GPUs, "splash" on TPUs, "splash_interpret" for
      tests; see `layers.attention`).

  Returns:
    The VideoLanguageModel.

  Raises:
    FileNotFoundError: for a missing or empty checkpoint / hf_dir.
    ValueError: when no source is given, or the checkpoint does not fit the config.
  """

  def create():
    return vlm.VideoLanguageModel(
      config,
      rngs=nnx.Rngs(seed),
      dtype=dtype,
      param_dtype=param_dtype,
      attention_impl=attention_impl,
    )

  if checkpoint:
    _check_dir(
      checkpoint,
      "checkpoint",
      "a training run's checkpoint directory, a step "
      "directory, or a checkpoint.save_params directory",
    )
    graphdef, abstract = nnx.split(nnx.eval_shape(create), nnx.Param)
    if mesh is not None:
      shardings = sharding.state_shardings(abstract, mesh)
    else:
      one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: one, abstract)
    abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    # Orbax needs absolute paths; users type them relative to where they stand.
    params = ckpt_lib.load_params(os.path.abspath(os.fspath(checkpoint)), abstract)
    return nnx.merge(graphdef, params)
  if hf_dir:
    _check_dir(hf_dir, "hf_dir", "a local HF Qwen2.5-VL folder with config.json and *.safetensors")
    return convert.load_hf_model(
      hf_dir, mesh=mesh, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl
    )
  if not random_init:
    raise ValueError(
      "no weights to evaluate: give a checkpoint or an hf_dir (random "
      "weights only with random_init=True, for smoke tests)"
    )
  return create()


def _check_dir(path: str, what: str, expected: str) -> None:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{what} {path!r}: no such directory; expected {expected}")
  if not os.listdir(path):
    raise FileNotFoundError(f"{what} {path!r} is empty; expected {expected}")


def check_data_dir(data_dir: str | os.PathLike) -> dict[str, Any]:
  """Fails with a clear message unless `data_dir` is a preprocessed set with questions.

  Returns:
    Its index.json.
  """
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f"data_dir {data_dir!r}: no such directory; preprocess the "
      "benchmark first: python -m launch.preprocess --out DIR ..."
    )
  index = records.load_index(data_dir)
  if not index.get("num_questions"):
    raise ValueError(
      f"data_dir {data_dir!r} holds no questions (all rejected? see "
      f"{os.path.join(data_dir, records.REJECTED)})"
    )
  return index


# ---------------------------------------------------------------------------------------
# Scoring (jit-compiled; the graphdef is static, params are an argument).
# ---------------------------------------------------------------------------------------


_VIDEO_KEYS = ("frames", "timestamps", "ordered_patches")


# The trainer's view encoder (each union encoded once), compiled for the ordered view.
_encode_views = jax.jit(steps_lib.views_fn, static_argnums=0, static_argnames="views")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _option_scores(graphdef, state, batch, completions_na, completion_mask_na):
  """Summed log-probs [B, N] of each of N option completions after each prompt.

  The N options are scored as N "samples" per prompt by `kf_grpo.completion_logprobs`
  (the trainer's scorer): row b * N + j of its output is option j after prompt b.
  """
  n = completions_na.shape[0]
  b = batch["prompt_ids"].shape[0]
  comp_mask = jnp.tile(completion_mask_na, (b, 1))
  logp = kf_grpo.completion_logprobs(
    nnx.merge(graphdef, state),
    batch,
    jnp.tile(completions_na, (b, 1)),
    comp_mask,
    view="ordered",
    num_samples=n,
  )
  return jnp.sum(jnp.where(comp_mask > 0, logp, 0.0), axis=1).reshape(b, n)


def option_completions(
  tokenizer: tokenizer_lib.Tokenizer, num_options: int, template: str = ANSWER_TEMPLATE
) -> tuple[np.ndarray, np.ndarray]:
  """Token ids [N, A] (right-padded) and mask [N, A] of each option letter's completion."""
  ids = [
    tokenizer.encode(template.format(letter=tokenizer_lib.LETTERS[j])) for j in range(num_options)
  ]
  a = max(len(i) for i in ids)
  comp = np.full((num_options, a), tokenizer.pad_id, np.int32)
  mask = np.zeros((num_options, a), np.int32)
  for j, i in enumerate(ids):
    comp[j, : len(i)] = i
    mask[j, : len(i)] = 1
  return comp, mask


def _device_batch(batch: Mapping[str, Any], mesh) -> dict[str, jax.Array]:
  """The whole global batch (on every process) -> arrays sharded over the mesh's batch axes."""
  dev, _ = pipeline.split_host(batch)
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in dev.items()}
  return {k: sharding.global_from_full(mesh, v) for k, v in dev.items()}


def _to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host sharded) array, whole, on this host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _likelihood(graphdef, state, dev, host, tokenizer, template: str):
  others = sorted({t for t in host["problem_type"] if t != results_lib.MULTIPLE_CHOICE})
  if others:
    raise ValueError(
      f"mode 'likelihood' scores option letters, but the data holds "
      f"{others} questions without options; use mode 'generate'"
    )
  num_options = [len(o) for o in host["options"]]
  comp, mask = option_completions(tokenizer, max(num_options), template)
  scores_bn = _to_host(
    _option_scores(
      graphdef, state, {k: dev[k] for k in (*_VIDEO_KEYS, "prompt_ids", "prompt_mask")}, comp, mask
    )
  ).astype(np.float64)
  out = []
  for b, n in enumerate(num_options):
    s = scores_bn[b, :n]
    pick = int(np.argmax(s))
    out.append(
      (pick, template.format(letter=tokenizer_lib.LETTERS[pick]), tuple(float(x) for x in s), None)
    )
  return out


def _generate(
  model,
  graphdef,
  state,
  dev,
  host,
  tokenizer,
  max_new_tokens: int,
  prompts: tuple[np.ndarray, np.ndarray],
  scoring: str = "lenient",
):
  video = {k: dev[k] for k in _VIDEO_KEYS}
  view = _encode_views(graphdef, state, video, views=("ordered",))["ordered"]
  grid = kf_grpo.view_grid(
    dev["frames"].shape, dev["ordered_patches"].shape[1], model.config.vision
  )
  # The sampler checks prompts on the host: the global batch's, in NumPy.
  inputs = dict(input_ids=prompts[0], attention_mask=prompts[1], video_grid_thw=grid, **view)
  out = sampling.generate(
    model,
    inputs,
    max_new_tokens=max_new_tokens,
    num_samples=1,
    temperature=0.0,
    stop_tokens=tokenizer.eos_ids,
    pad_id=tokenizer.pad_id,
    logprobs=(),
  )
  tokens, mask = _to_host(out.tokens), _to_host(out.completion_mask).astype(bool)
  results = []
  for b, options in enumerate(host["options"]):
    text = tokenizer.decode(tokens[b][mask[b]], skip_special_tokens=True)
    ptype = host["problem_type"][b]
    if ptype == results_lib.MULTIPLE_CHOICE:
      results.append((scoring_lib.score(scoring, text, list(options)), text, None, None))
    else:  # Video-R1's rule of the type, whatever `scoring` names (it reads letters).
      results.append(
        (None, text, None, answer_rules.ANSWER_RULES.get(ptype)(text, host["solution"][b]))
      )
  return results


# ---------------------------------------------------------------------------------------
# The evaluation loop.
# ---------------------------------------------------------------------------------------

FRAME_ORDERS = ("ordered", "shuffled", "zeroed")


def reorder_frames(
  batch: Mapping[str, Any], frame_order: str, rng: np.random.Generator, temporal_patch: int
) -> dict[str, Any]:
  """The batch with its keyframes' content shuffled or blanked (controls for evaluation).

  "shuffled" permutes each question's temporal patches of keyframes (one permutation per
  row) while the timestamps stay where they were, so the model sees the same frames in a
  random order with ordinary, increasing positions: nothing but content is left, and
  order questions drop to chance if the model reads order. "zeroed" makes every frame
  black (what the answer owes to the text alone). "ordered" returns the batch as is.
  """
  if frame_order not in FRAME_ORDERS:
    raise ValueError(f"frame_order={frame_order!r}: choose one of {FRAME_ORDERS}")
  if frame_order == "ordered":
    return dict(batch)
  frames = np.asarray(batch["frames"])
  if frame_order == "zeroed":
    return {**batch, "frames": np.zeros_like(frames)}
  b, u = frames.shape[:2]
  patches_bp = frames.reshape(b, u // temporal_patch, temporal_patch, *frames.shape[2:])
  perm_bp = np.stack([rng.permutation(patches_bp.shape[1]) for _ in range(b)])
  shuffled = np.take_along_axis(
    patches_bp, perm_bp.reshape(b, -1, *([1] * (patches_bp.ndim - 2))), axis=1
  )
  return {**batch, "frames": shuffled.reshape(frames.shape)}


# EvalSettings fields -> where an eval config (configs/eval.py) holds them, for messages.
_CONFIG_FIELDS = {
  "selector": "eval.selectors",
  "frame_order": "eval.frame_orders",
  "num_keyframes": "tad.k",
  "select_kwargs": "tad",
}


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How one evaluation runs: everything but the model, the data and where results go.

  Built directly (`EvalSettings(selector="uniform", num_keyframes=8)`) or from an eval
  config (`from_config`, configs/eval.py). `__post_init__` checks every field against
  the registries that serve it, so a bad setting fails before anything loads.

  Attributes:
    selector: keyframe selector, a name in `tad.SELECTORS` ("tad", "uniform").
    num_keyframes: K (even when `patch_mode` is "pair").
    batch_size: questions per forward pass.
    mode: "generate" (greedy answer + extraction) or "likelihood" (option scoring).
    max_new_tokens: answer length cap ("generate").
    select_kwargs: TAD settings (`tad.analyze`'s); unset ones take its defaults, so
      the field always holds all of them.
    prompt_buckets: allowed prompt lengths without video tokens (bounds recompiles).
    answer_template: the completion scored per option letter ("likelihood"); holds
      "{letter}".
    max_questions: evaluate only the first N questions (None: all).
    patch_mode: "pair" (two keyframes per temporal patch) or "duplicate" (one each),
      `views.PATCH_MODES`.
    frame_order: "ordered" (the benchmark), or the controls "shuffled" (each question's
      keyframes in a random order) and "zeroed" (black frames); see `reorder_frames`.
    frame_order_seed: seed of the "shuffled" permutations.
    scoring: how a generated answer is read, a name in `scoring.SCORINGS` ("lenient",
      "lmms_eval"); recorded in the result ("likelihood" mode needs none).
    prompt_template: the prompt's template (`prompts.PROMPT_TEMPLATES`); use the one the
      model was trained with.
  """

  selector: str = "tad"
  num_keyframes: int = 16
  batch_size: int = 8
  mode: str = "generate"
  max_new_tokens: int = 512
  select_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  prompt_buckets: tuple[int, ...] = (128, 256, 512)
  answer_template: str = ANSWER_TEMPLATE
  max_questions: int | None = None
  patch_mode: str = "pair"
  frame_order: str = "ordered"
  frame_order_seed: int = 0
  scoring: str = "lenient"
  prompt_template: str = "short"

  def __post_init__(self):
    def bad(field, message):
      raise ValueError(f"EvalSettings.{field}: {message}")

    def choice(field, names):
      if getattr(self, field) not in names:
        bad(field, f"got {getattr(self, field)!r}; choose one of {sorted(names)}")

    def positive_int(field):
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        bad(field, f"got {value!r}; need an int >= 1")

    choice("selector", tad.SELECTORS.names())
    choice("mode", MODES)
    choice("patch_mode", views_lib.PATCH_MODES)
    choice("frame_order", FRAME_ORDERS)
    choice("scoring", scoring_lib.SCORINGS.names())
    choice("prompt_template", prompts.PROMPT_TEMPLATES.names())
    for field in ("num_keyframes", "batch_size", "max_new_tokens"):
      positive_int(field)
    if self.patch_mode == "pair" and self.num_keyframes % 2:
      bad(
        "num_keyframes",
        f"got {self.num_keyframes}; patch_mode 'pair' needs an even K (keyframes pair "
        "into temporal patches; patch_mode 'duplicate' takes any K >= 1)",
      )
    if self.max_questions is not None:
      positive_int("max_questions")
    if not isinstance(self.frame_order_seed, int):
      bad("frame_order_seed", f"got {self.frame_order_seed!r}; need an int")
    if "{letter}" not in self.answer_template:
      bad("answer_template", f"got {self.answer_template!r}; it must contain {{letter}}")
    buckets = tuple(self.prompt_buckets)
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
      bad("prompt_buckets", f"got {self.prompt_buckets!r}; need one or more ints >= 1")
    known = tad.analyze_defaults()
    unknown = sorted(set(self.select_kwargs) - set(known))
    if unknown:
      bad("select_kwargs", f"unknown TAD settings {unknown}; known: {sorted(known)}")
    object.__setattr__(self, "prompt_buckets", buckets)
    object.__setattr__(self, "select_kwargs", {**known, **self.select_kwargs})

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, **overrides: Any) -> EvalSettings:
    """The settings of an eval config (configs/eval.py): its `eval` and `tad` sections.

    Args:
      config: holds `eval` (selectors, mode, batch size, ...) and `tad` (K and the TAD
        settings).
      **overrides: fields to set instead of the config's, e.g. the selector and frame
        order of one of the config's runs, or the training run's scoring.

    Returns:
      The settings of the first selector and frame order of the config, with overrides.

    Raises:
      ValueError: naming the config field (`config.eval.mode: ...`) of a bad value.
    """
    e, t = config.eval, config.tad
    fields = dict(
      selector=e.selectors[0] if e.selectors else "",
      num_keyframes=t.k,
      batch_size=e.batch_size,
      mode=e.mode,
      max_new_tokens=e.max_new_tokens,
      select_kwargs={k: t[k] for k in tad.analyze_defaults() if k in t},
      prompt_buckets=tuple(e.prompt_buckets),
      answer_template=e.answer_template,
      max_questions=e.max_questions or None,
      patch_mode=e.patch_mode,
      frame_order=e.frame_orders[0] if e.frame_orders else "",
      frame_order_seed=e.frame_order_seed,
      scoring=e.scoring or "lenient",
      prompt_template=e.prompt_template or "short",
    )
    try:
      return cls(**{**fields, **overrides})
    except ValueError as err:
      field = str(err).partition(":")[0].removeprefix("EvalSettings.")
      path = _CONFIG_FIELDS.get(field, f"eval.{field}")
      raise ValueError(f"config.{path}: {str(err).partition(': ')[2]}") from None

  @classmethod
  def from_train_config(cls, config: ml_collections.ConfigDict, **overrides: Any) -> EvalSettings:
    """The evaluation a training config (configs/kf_grpo.py) implies: as it was trained.

    K, TAD settings, patch mode, eval batch size, prompt buckets and template, scoring and
    the answer cap come from its `tad`, `input` and `rl` sections; `overrides` set any
    field (the selector, mode, frame order, ...).
    """
    i = config.input
    fields = dict(
      num_keyframes=config.tad.k,
      select_kwargs={k: config.tad[k] for k in tad.analyze_defaults() if k in config.tad},
      batch_size=i.eval_batch_size,
      patch_mode=i.patch_mode,
      prompt_buckets=tuple(i.prompt_buckets),
      prompt_template=i.prompt_template,
      scoring=i.eval_scoring,
      max_new_tokens=config.rl.max_new_tokens,
    )
    return cls(**{**fields, **overrides})

  def replace(self, **changes: Any) -> EvalSettings:
    """A copy with `changes` (checked again)."""
    return dataclasses.replace(self, **changes)

  @property
  def name(self) -> str:
    """The default result name: <selector>_k<K>_<mode>[_<frame order>]."""
    name = f"{self.selector}_k{self.num_keyframes}_{self.mode}"
    return name if self.frame_order == "ordered" else f"{name}_{self.frame_order}"

  def record(self) -> dict[str, Any]:
    """The settings as a result records them (`EvalResult.settings`)."""
    generate = self.mode == "generate"
    return {
      "selector": self.selector,
      "num_keyframes": self.num_keyframes,
      "patch_mode": self.patch_mode,
      "mode": self.mode,
      "frame_order": self.frame_order,
      "prompt_template": self.prompt_template,
      "scoring": self.scoring if generate else "likelihood",
      "batch_size": self.batch_size,
      "max_new_tokens": self.max_new_tokens if generate else None,
      "answer_template": None if generate else self.answer_template,
      "select_kwargs": dict(self.select_kwargs) if self.selector == "tad" else {},
    }


def evaluate(
  model: vlm.VideoLanguageModel,
  data_dir: str | os.PathLike,
  tokenizer: tokenizer_lib.Tokenizer,
  settings: EvalSettings | None = None,
  *,
  name: str | None = None,
  out_dir: str | os.PathLike | None = None,
  mesh: jax.sharding.Mesh | None = None,
  progress: bool = True,
  meta: Mapping[str, Any] | None = None,
) -> results_lib.EvalResult:
  """Evaluates `model` on every question of a preprocessed benchmark folder.

  Args:
    model: the VideoLanguageModel (its vision patch / merge sizes shape the prompts).
    data_dir: a `launch/preprocess` output folder.
    tokenizer: the tokenizer the model was trained with.
    settings: how to evaluate (`EvalSettings`; default: its defaults).
    name: result name (default `settings.name`).
    out_dir: if set, the result is written there (`results.write_result`) after the last batch.
    mesh: shard the batch over this mesh's data axes (the model must be on it too).
    progress: show a progress bar.
    meta: extra settings to record (checkpoint path, model preset, ...).

  Returns:
    The EvalResult.
  """
  s = settings if settings is not None else EvalSettings()
  if not isinstance(s, EvalSettings):
    raise TypeError(
      f"settings: got {type(s).__name__}; pass an EvalSettings "
      "(EvalSettings(...) or EvalSettings.from_config(config))"
    )
  if jax.process_count() > 1 and mesh is None:
    raise ValueError(
      f"{jax.process_count()} processes: pass a mesh over all processes' "
      "devices (launch/eval builds one) and load the model onto it"
    )
  index = check_data_dir(data_dir)
  vcfg = model.config.vision
  pipeline_settings = pipeline.eval_settings(
    s.batch_size,
    num_keyframes=s.num_keyframes,
    selector=s.selector,
    select_kwargs=dict(s.select_kwargs),
    patch_size=vcfg.patch_size,
    merge_size=vcfg.spatial_merge_size,
    prompt_buckets=s.prompt_buckets,
    patch_mode=s.patch_mode,
    prefetch_workers=0,
    prompt_template=s.prompt_template,
  )
  total = int(index["num_questions"])
  if s.max_questions is not None:
    total = min(s.max_questions, total)
  name = name or s.name
  graphdef, state = nnx.split(model)
  dataset = pipeline.make_dataset(data_dir, tokenizer, pipeline_settings)
  bar = None
  if progress and jax.process_index() == 0:
    import tqdm

    bar = tqdm.tqdm(total=total, unit="q", desc=f"eval {name}", dynamic_ncols=True)
  results: list[results_lib.QuestionResult] = []
  start = time.perf_counter()
  context = jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()
  try:
    with context:
      for batch_index, batch in enumerate(dataset):
        if len(results) >= total:
          break
        batch = reorder_frames(
          batch,
          s.frame_order,
          np.random.default_rng([s.frame_order_seed, batch_index]),
          vcfg.temporal_patch_size,
        )
        host = pipeline.split_host(batch)[1]
        dev = _device_batch(batch, mesh)
        if s.mode == "likelihood":
          answers = _likelihood(graphdef, state, dev, host, tokenizer, s.answer_template)
        else:
          answers = _generate(
            model,
            graphdef,
            state,
            dev,
            host,
            tokenizer,
            s.max_new_tokens,
            (batch["prompt_ids"], batch["prompt_mask"]),
            s.scoring,
          )
        for b, (pick, text, scores, score) in enumerate(answers):
          if not batch["example_valid"][b] or len(results) >= total:
            continue
          results.append(
            results_lib.QuestionResult(
              question_id=str(host["question_id"][b]),
              video_id=str(host["video_id"][b]),
              duration_bucket=str(host["duration_bucket"][b] or ""),
              task_type=str(host["task_type"][b] or ""),
              answer_index=int(batch["answer_index"][b]),
              predicted_index=pick,
              num_options=len(host["options"][b]),
              text=text,
              option_scores=scores,
              problem_type=str(host["problem_type"][b]),
              score=score,
              keyframe_indices=tuple(int(i) for i in batch["keyframe_indices"][b]),
            )
          )
          if bar is not None:
            bar.update(1)
        if bar is not None:
          bar.set_postfix(acc=f"{np.mean([r.correct for r in results]):.3f}")
  finally:
    if bar is not None:
      bar.close()
  run = {
    "data_dir": os.path.abspath(os.fspath(data_dir)),
    **s.record(),
    "num_questions": len(results),
    "seconds": round(time.perf_counter() - start, 2),
    "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    **dict(meta or {}),
  }
  result = results_lib.EvalResult.from_records(name, results, run)
  if out_dir is not None and jax.process_index() == 0:
    results_lib.write_result(result, out_dir)
  return result
