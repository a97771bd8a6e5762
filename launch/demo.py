r"""The end-to-end demo on the CPU: synthetic data -> TAD -> train -> eval -> report.

  python -m launch.demo --out demo_out          (what `make demo` runs)

Stages:
  1. data      the learnable synthetic colour-order set (real H.264 videos with four
               one-second colour flashes in long still stretches; "which colour flashes
               first / last?"; 2000 train / 400 held-out questions), preprocessed into
               ArrayRecord shards by running `launch.preprocess --config=configs/data.py:demo`.
  2. tad       TAD on one synthetic video: variation curve + contact sheet PNGs, and
               TAD vs uniform event recall over the eval videos.
  3. sft       the small VLM (`configs/kf_grpo.py:demo`): SFT warm-up on the ordered TAD
               keyframes; then the held-out split with TAD keyframes, uniform keyframes,
               the TAD keyframes shuffled and black frames.
  4. kf-grpo   KF-GRPO (`configs/kf_grpo.py:demo_rl`) initialised from the SFT checkpoint;
               then the held-out split again.
  5. report    report.md: the accuracy table (random init, after SFT, after KF-GRPO), the
               training curves, and a reading computed from the run's own numbers.

Rerunning with the same --out resumes: preprocessing skips finished shards and each
training run continues from its latest checkpoint (<out>/sft, <out>/kf_grpo); the TAD
pictures, evaluation and report are redone.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

from launch import tools

_OUT = flags.DEFINE_string("out", "demo_out", "Output folder (reused to resume).")
_SFT_STEPS = flags.DEFINE_integer(
  "sft_steps", None, "SFT steps (default: configs/kf_grpo.py:demo's sft_steps)."
)
_RL_STEPS = flags.DEFINE_integer(
  "rl_steps", None, "KF-GRPO steps (default: configs/kf_grpo.py:demo_rl's total_steps)."
)
_TRAIN_QUESTIONS = flags.DEFINE_integer(
  "train_questions", None, "Training questions (default: configs/data.py:demo, 2000)."
)
_EVAL_QUESTIONS = flags.DEFINE_integer(
  "eval_questions", None, "Held-out questions (default: configs/data.py:demo, 400)."
)
_MODE = flags.DEFINE_enum(
  "eval_mode",
  "likelihood",
  ["likelihood", "generate"],
  "How evaluation picks an answer (the other settings: configs/eval.py:demo).",
)


_PICTURE_K = 8  # Keyframes in the TAD pictures and the event-recall count.


def _stage(name: str, message: str) -> None:
  print(f"\n== {name}: {message}", flush=True)


def make_data(out: str) -> tuple[str, str]:
  """Writes and preprocesses the synthetic set; returns (train_dir, eval_dir)."""
  sizes = tuple(
    f"--config.preprocess.synthetic.num_{name}_questions={flag.value}"
    for name, flag in (("train", _TRAIN_QUESTIONS), ("eval", _EVAL_QUESTIONS))
    if flag.value is not None
  )
  return tools.preprocess_synthetic(
    out, "configs/data.py:demo", who="demo", extra_args=(*sizes, "--quiet")
  )


def tad_pictures(out: str, k: int = _PICTURE_K, fps: float = 4.0) -> dict[str, float]:
  """TAD on one synthetic video (PNGs), and event recall of TAD vs uniform sampling."""
  import jax.numpy as jnp
  import numpy as np

  from chronoforge_jax import tad
  from chronoforge_jax.data import decode
  from chronoforge_jax.tad import features
  from configs import tad as tad_config

  with open(os.path.join(out, "synthetic", "eval.json")) as f:
    items = json.load(f)
  events = {os.path.join(out, "synthetic", it["path"]): it.get("events", []) for it in items}
  first = sorted(events)[0]
  for selector in ("tad", "uniform"):
    tools.run_tool(
      [
        sys.executable,
        "-m",
        "launch.select_keyframes",
        f"--video={first}",
        f"--k={k}",
        f"--fps={fps}",
        f"--selector={selector}",
        f"--out={os.path.join(out, 'tad', selector)}",
      ],
      who="demo",
    )
  # Event recall over the eval videos: an event is found if a keyframe falls inside it.
  tad_kwargs = tad_config.tad_kwargs(tad_config.tad_section())
  hits, total = {"tad": 0, "uniform": 0}, 0
  for path, video_events in sorted(events.items()):
    video = decode.decode_video(path, fps=fps, size=160)
    feats = np.asarray(features.frame_features(jnp.asarray(video.frames[None])))
    # Pad to a fixed length (masked) so every video reuses one compiled selector.
    n = feats.shape[1]
    padded = np.zeros((1, -(-n // 128) * 128, feats.shape[2]), np.float32)
    padded[:, :n] = feats
    mask = np.arange(padded.shape[1])[None] < n
    for selector in hits:
      idx, valid = tad.select(
        selector,
        jnp.asarray(padded),
        k,
        jnp.asarray(mask),
        **(tad_kwargs if selector == "tad" else {}),
      )
      times = video.timestamps[[int(i) for i, v in zip(idx[0], valid[0]) if v]]
      hits[selector] += sum(any(e["start"] <= t <= e["end"] for t in times) for e in video_events)
    total += len(video_events)
  recall = {k_: v / max(total, 1) for k_, v in hits.items()}
  print(
    f"  event recall with {k} keyframes over {len(events)} eval videos ({total} events): "
    + ", ".join(f"{name} {v:.0%}" for name, v in recall.items())
  )
  with open(os.path.join(out, "tad", "event_recall.json"), "w") as f:
    json.dump({"k": k, "fps": fps, "events": total, "recall": recall}, f, indent=1)
  return recall


def train(out: str, train_dir: str, phase: str) -> str:
  """Runs one training phase; returns its workdir.

  "sft": `configs/kf_grpo.py:demo` up to its switch to KF-GRPO (sft_steps), in <out>/sft.
  "kf_grpo": `configs/kf_grpo.py:demo_rl` from the SFT checkpoint, in <out>/kf_grpo (its
  own run: far fewer prompts per step than SFT, see the config).
  """
  from chronoforge_jax.train import loop
  from configs import kf_grpo

  if phase == "sft":
    config = kf_grpo.get_config("demo")
    config.sft_steps = _SFT_STEPS.value or config.sft_steps
    config.total_steps = config.sft_steps
  else:
    config = kf_grpo.get_config("demo_rl")
    config.ckpt.init_from = os.path.join(out, "sft", "checkpoints")
    if _RL_STEPS.value is not None:
      config.total_steps = _RL_STEPS.value
  config.input.data_dir = train_dir
  workdir = os.path.join(out, phase)
  loop.train_and_evaluate(config, workdir)
  return workdir


def curves(sft_dir: str, rl_dir: str) -> list[dict]:
  """Both runs' metrics as one history (KF-GRPO steps numbered after the SFT steps)."""
  records = []
  for offset, path in ((0, sft_dir), (None, rl_dir)):
    with open(os.path.join(path, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    if offset is None:
      offset = max((r["step"] for r in records), default=0)
    records += [{**r, "step": r["step"] + offset} for r in rows]
  return records


# (label, selector, frame order) of each evaluation after a training phase.
_EVALS = {
  "sft": (("tad", "ordered"), ("uniform", "ordered"), ("tad", "shuffled"), ("tad", "zeroed")),
  "kf_grpo": (("tad", "ordered"), ("uniform", "ordered"), ("tad", "shuffled")),
}


def evaluate(out: str, train_dir: str, eval_dir: str, workdir: str, label: str) -> list:
  """The held-out split under the model of `label` ("init", "sft", "kf_grpo")."""
  from chronoforge_jax import tokenizer as tokenizer_lib
  from chronoforge_jax.evaluation import evaluator as eval_lib
  from chronoforge_jax.train import state as state_lib
  from configs import eval as eval_config

  # configs/eval.py:demo evaluates as configs/kf_grpo.py:demo trains (K, patches, prompts).
  config = eval_config.get_config("demo")
  config.eval.mode = _MODE.value
  tok = tokenizer_lib.Tokenizer.from_dir(os.path.join(train_dir, "tokenizer"))
  mcfg = state_lib.model_config(config, tok)
  if label == "init":
    model = eval_lib.load_model(mcfg, random_init=True)
  else:
    model = eval_lib.load_model(mcfg, checkpoint=os.path.join(workdir, "checkpoints"))
  results = []
  for selector, order in _EVALS.get(label, (("tad", "ordered"),)):
    result = eval_lib.evaluate(
      model,
      eval_dir,
      tok,
      eval_lib.EvalSettings.from_config(config, selector=selector, frame_order=order),
      name=f"{label}_{selector}" + ("" if order == "ordered" else f"_{order}"),
      out_dir=os.path.join(out, "eval"),
      progress=False,
    )
    print(
      f"  {result.name}: accuracy {result.tables['overall']['accuracy']:.1%} on "
      f"{result.tables['overall']['num_questions']} questions",
      flush=True,
    )
    results.append(result)
  return results


def reading(recall: dict[str, float], results: list, k: int) -> list[str]:
  """What the run shows, in words computed from its own numbers (report.md's notes)."""
  from chronoforge_jax.evaluation import report

  acc = {r.name: r.tables["overall"]["accuracy"] for r in results}
  n = max((r.tables["overall"]["num_questions"] for r in results), default=0)
  # 95% half-width of an accuracy near p on n questions (normal approximation).
  half = lambda p: 1.96 * (max(p * (1 - p), 1e-9) / max(n, 1)) ** 0.5
  notes = [
    f"TAD keyframes (K={k}) fall inside {recall.get('tad', 0):.0%} of the eval "
    f"videos' events, uniform sampling inside {recall.get('uniform', 0):.0%}: the "
    "selection KF-GRPO builds its ordered view from."
  ]
  chance = 0.25
  for label, title in (("sft", "After SFT"), ("kf_grpo", "After KF-GRPO")):
    tad_acc = acc.get(f"{label}_tad")
    if tad_acc is None:
      continue
    words = [
      f"{title} the model answers {tad_acc:.1%} of the {n} held-out questions "
      f"(+-{half(tad_acc):.1%}) with TAD keyframes (chance {chance:.0%}, random "
      f"init {acc.get('init_tad', float('nan')):.1%})"
    ]
    if f"{label}_uniform" in acc:
      u = acc[f"{label}_uniform"]
      words.append(f"{u:.1%} with uniform keyframes ({tad_acc - u:+.1%} for TAD)")
    if f"{label}_tad_shuffled" in acc:
      sh = acc[f"{label}_tad_shuffled"]
      words.append(
        f"{sh:.1%} with the same keyframes shuffled (order is worth {tad_acc - sh:+.1%})"
      )
    if f"{label}_tad_zeroed" in acc:
      words.append(f"{acc[f'{label}_tad_zeroed']:.1%} with black frames")
    notes.append(", ".join(words) + ".")
  if "sft_tad" in acc and "kf_grpo_tad" in acc:
    d = acc["kf_grpo_tad"] - acc["sft_tad"]
    notes.append(
      f"KF-GRPO changed held-out accuracy by {d:+.1%} "
      + (
        f"(within the +-{half(acc['sft_tad']) * 2**0.5:.1%} noise of two 400-question estimates)."
        if abs(d) < half(acc["sft_tad"]) * 2**0.5
        else "(beyond the noise of two estimates)."
      )
    )
  for r in results:
    _, share = report.most_frequent_answer(r)
    if share >= 0.9 and not r.name.endswith("zeroed") and not r.name.startswith("init"):
      notes.append(
        f"`{r.name}` gives the same answer to {share:.0%} of the questions: "
        'its accuracy is that letter\'s share (see "Answers by option letter").'
      )
  return notes


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  out = os.path.abspath(_OUT.value)
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  _stage("1/5 data", "synthetic temporal-QA videos -> ArrayRecord shards")
  train_dir, eval_dir = make_data(out)
  _stage("2/5 tad", "keyframes of one video, and event recall vs uniform sampling")
  recall = tad_pictures(out)
  _stage("3/5 sft", "small VLM: SFT warm-up, then the held-out split")
  results = evaluate(out, train_dir, eval_dir, "", "init")
  sft_dir = train(out, train_dir, "sft")
  results += evaluate(out, train_dir, eval_dir, sft_dir, "sft")
  _stage("4/5 kf-grpo", "KF-GRPO from the SFT'd policy, then the held-out split")
  rl_dir = train(out, train_dir, "kf_grpo")
  results += evaluate(out, train_dir, eval_dir, rl_dir, "kf_grpo")
  _stage("5/5 report", "curves, tables and plots")
  from chronoforge_jax.evaluation import report

  path = report.write_report(
    os.path.join(out, "report"),
    results=results,
    metrics=curves(sft_dir, rl_dir),
    title="ChronoForge-RL demo (small model, synthetic colour-order set)",
    notes=reading(recall, results, k=_PICTURE_K),
  )
  print(f"  {path}\n\ndemo done in {time.perf_counter() - start:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
