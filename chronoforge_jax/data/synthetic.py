"""Synthetic temporal-QA set: real mp4 videos whose answers depend on when things happen.

Each video is a long, uneventful scene (a still background) with a few short events.
Short events separated by long stretches are what uniform frame sampling tends to miss
and TAD should find. Two variants (`SyntheticSettings.variant`):

  colour_order  (learnable; the demo's and the ablation's) four one-second full-screen
                flashes in distinct colours (red, green, blue, yellow, in random order);
                "Which colour flashes first / last?". The options are always
                A. red / B. green / C. blue / D. yellow, so the answer letter names a
                colour and the model only has to learn what each flash looks like and
                which came first: the frames' content AND their order decide the answer
                (a single frame or shuffled frames leave chance), and the letters are
                uniform because the order is.
  events        a shape appears, moves across or changes colour, or the screen flashes;
                every event uses its own shape (or flash colour), so any frame of an event
                identifies it; what a single frame cannot tell is the ORDER. Four-option
                questions ask which event came first, last, right after or right before
                another, each option a shuffled text description: a language task first
                (a small model must learn what ~25 words look like), harder to learn.

`write_dataset` renders and encodes the videos (PyAV, H.264), writes `train.json` and
`eval.json` in the Video-R1 style (read by `benchmarks.load_annotations("synthetic", ...)`),
and a tiny tokenizer. Everything is deterministic per seed; the tokenizer is not: it is
trained on every text either variant can produce (`vocabulary_texts`), so every seed and
split tokenizes alike and a held-out split made with another seed can be scored by a
model trained on the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Sequence

import numpy as np

from chronoforge_jax import tokenizer as tokenizer_lib

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {
  "red": (230, 40, 40),
  "green": (40, 200, 60),
  "blue": (50, 90, 240),
  "yellow": (240, 220, 40),
  "white": (245, 245, 245),
  "purple": (160, 60, 200),
  "orange": (250, 140, 20),
  "cyan": (40, 220, 230),
}
KINDS = ("appear", "move", "recolour", "flash")
TASKS = ("first", "last", "after", "before")
VARIANTS = ("colour_order", "events")
# colour_order: the flash colours, which are also the fixed options A-D in this order.
FLASH_COLOURS = ("red", "green", "blue", "yellow")
COLOUR_TASKS = ("first", "last")
_DIRECTIONS = {
  "left to right": (0.0, -1.0, 0.0, 1.0),
  "right to left": (0.0, 1.0, 0.0, -1.0),
  "top to bottom": (-1.0, 0.0, 1.0, 0.0),
  "bottom to top": (1.0, 0.0, -1.0, 0.0),
}
_MANIFEST = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
  """Settings of the synthetic set (all in the manifest; a rerun with equal settings skips).

  Attributes:
    variant: "colour_order" (colour-flash order; learnable by a small model) or "events"
      (shapes and flashes described in words); see the module docstring.
    num_train_questions: questions in train.json.
    num_eval_questions: questions in eval.json.
    questions_per_video: questions asked about each video (a shared video is decoded once).
    num_events: events per video: 5-6 for "events" (so 'right after' questions have 3
      distractors), 2-4 flashes for "colour_order".
    event_seconds: length of one event; short relative to the video on purpose.
    min_video_seconds, max_video_seconds: video length range.
    fps: native frame rate of the encoded videos.
    size: frame side in pixels (even).
    vocab_size: size of the tiny tokenizer built with the set.
    seed: everything follows from it (held-out splits: another seed).
  """

  variant: str = "events"
  num_train_questions: int = 64
  num_eval_questions: int = 32
  questions_per_video: int = 2
  num_events: int = 5
  event_seconds: float = 1.0
  min_video_seconds: float = 12.0
  max_video_seconds: float = 20.0
  fps: float = 8.0
  size: int = 112
  vocab_size: int = 512
  seed: int = 0

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"variant={self.variant!r}: choose one of {VARIANTS}")
    lo, hi = (2, len(FLASH_COLOURS)) if self.variant == "colour_order" else (5, len(SHAPES) + 1)
    if not lo <= self.num_events <= hi:
      raise ValueError(
        f"num_events={self.num_events}: must be in [{lo}, {hi}] for variant={self.variant!r}"
      )
    tasks = self.tasks
    if not 1 <= self.questions_per_video <= len(tasks):
      raise ValueError(
        f"questions_per_video={self.questions_per_video}: must be in "
        f"[1, {len(tasks)}] for variant={self.variant!r}"
      )
    if self.size % 2 or self.size < 16:
      raise ValueError(f"size={self.size}: must be even and >= 16 (H.264 yuv420p)")
    if not 0 < self.min_video_seconds <= self.max_video_seconds:
      raise ValueError("need 0 < min_video_seconds <= max_video_seconds")
    need = self.num_events * self.event_seconds * 2 + self.event_seconds
    if self.min_video_seconds < need:
      raise ValueError(
        f"min_video_seconds={self.min_video_seconds}: {self.num_events} events "
        f"of {self.event_seconds} s with gaps need >= {need} s"
      )
    if self.num_train_questions < 0 or self.num_eval_questions < 0:
      raise ValueError("num_train_questions and num_eval_questions must be >= 0")

  @property
  def tasks(self) -> tuple[str, ...]:
    """The question types of the variant."""
    return COLOUR_TASKS if self.variant == "colour_order" else TASKS

  def video_tag(self) -> str:
    """A short hash of what a video's pixels depend on (part of its file name), so a
    folder reused with other settings or another seed never serves a stale video."""
    keys = (
      "variant",
      "num_events",
      "event_seconds",
      "min_video_seconds",
      "max_video_seconds",
      "fps",
      "size",
      "seed",
    )
    blob = json.dumps({k: getattr(self, k) for k in keys}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class Event:
  """One event: `kind` happens during [start, end) seconds."""

  kind: str
  shape: str
  colour: str
  colour2: str
  direction: str
  start: float
  end: float
  x: float
  y: float

  @property
  def description(self) -> str:
    article = "an" if self.colour[0] in "aeiou" else "a"
    if self.kind == "appear":
      return f"{article} {self.colour} {self.shape} appears"
    if self.kind == "move":
      return f"{article} {self.colour} {self.shape} moves from {self.direction}"
    if self.kind == "recolour":
      return f"a {self.shape} changes colour from {self.colour} to {self.colour2}"
    return f"the screen flashes {self.colour}"


def make_events(
  rng: np.random.Generator, duration: float, settings: SyntheticSettings
) -> list[Event]:
  """Draws `num_events` non-overlapping events over [0, duration), in time order."""
  n, length = settings.num_events, settings.event_seconds
  gap = length  # Uneventful stretches at least one event long, usually much longer.
  slack = duration - n * length - (n + 1) * gap
  starts = gap + np.sort(rng.uniform(0, slack, size=n)) + np.arange(n) * (length + gap)
  if settings.variant == "colour_order":
    colours = rng.permutation(FLASH_COLOURS)[:n]
    return [
      Event(
        kind="flash",
        shape="",
        colour=str(c),
        colour2="",
        direction="",
        start=float(t),
        end=float(t + length),
        x=0.5,
        y=0.5,
      )
      for c, t in zip(colours, starts)
    ]
  kinds = list(rng.choice(KINDS[:3], size=n))
  if n > len(SHAPES) or rng.random() < 0.5:
    kinds[int(rng.integers(n))] = "flash"
  shapes = iter(rng.permutation(SHAPES))
  colours = list(COLOURS)
  events = []
  for kind, start in zip(kinds, starts):
    c1, c2 = rng.choice(colours, size=2, replace=False)
    events.append(
      Event(
        kind=str(kind),
        shape="" if kind == "flash" else str(next(shapes)),
        colour=str(c1),
        colour2=str(c2) if kind == "recolour" else "",
        direction=str(rng.choice(list(_DIRECTIONS))) if kind == "move" else "",
        start=float(start),
        end=float(start + length),
        x=float(rng.uniform(0.3, 0.7)),
        y=float(rng.uniform(0.3, 0.7)),
      )
    )
  return events


def _shape_mask(
  shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
  dy, dx = (yy - cy) / r, (xx - cx) / r
  if shape == "circle":
    return dx * dx + dy * dy <= 1.0
  if shape == "square":
    return (np.abs(dx) <= 0.85) & (np.abs(dy) <= 0.85)
  if shape == "triangle":
    return (dy <= 0.8) & (np.abs(dx) <= (dy + 1.0) * 0.55)
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= 1.0
  if shape == "cross":
    return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
  raise ValueError(f"unknown shape {shape!r}")


def render_frames(
  events: Sequence[Event], duration: float, settings: SyntheticSettings, seed: int | Sequence[int]
) -> np.ndarray:
  """Renders uint8 frames [T, S, S, 3] at `settings.fps` (frame j shows time j / fps)."""
  size = settings.size
  num = max(1, int(math.ceil(duration * settings.fps)))
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  rng = np.random.default_rng(seed)
  tint = rng.uniform(30, 70, size=3)
  background_hwc = (tint + 25 * (yy / size)[..., None]).astype(np.float32)
  frames_thwc = np.empty((num, size, size, 3), np.uint8)
  r = size * 0.14
  for j in range(num):
    t = j / settings.fps
    frame_hwc = background_hwc.copy()
    for e in events:
      if not e.start <= t < e.end:
        continue
      phase = (t - e.start) / (e.end - e.start)
      if e.kind == "flash":
        frame_hwc[:] = COLOURS[e.colour]
        continue
      cy, cx = e.y * size, e.x * size
      colour = e.colour
      if e.kind == "move":
        y0, x0, y1, x1 = _DIRECTIONS[e.direction]
        cy = size * (0.5 + 0.35 * (y0 + (y1 - y0) * phase))
        cx = size * (0.5 + 0.35 * (x0 + (x1 - x0) * phase))
      elif e.kind == "recolour" and phase >= 0.5:
        colour = e.colour2
      frame_hwc[_shape_mask(e.shape, yy, xx, cy, cx, r)] = COLOURS[colour]
    frames_thwc[j] = np.clip(frame_hwc, 0, 255).astype(np.uint8)
  return frames_thwc


def encode_mp4(path: str, frames_thwc: np.ndarray, fps: float) -> None:
  """Writes frames as an H.264 mp4 (yuv420p), to a temporary name then renamed."""
  from fractions import Fraction

  import av  # Optional dependency (extra `video`), imported late.

  tmp = f"{path}.tmp{os.getpid()}.mp4"
  with av.open(tmp, mode="w") as container:
    stream = container.add_stream("h264", rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = frames_thwc.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
    for frame_hwc in frames_thwc:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_hwc, format="rgb24")))
    container.mux(stream.encode(None))
  os.replace(tmp, path)


def make_questions(
  events: Sequence[Event], rng: np.random.Generator, num: int
) -> list[dict[str, Any]]:
  """`num` four-option questions of distinct task types about one video's events.

  Returns:
    dicts with task_type, problem, options (texts), answer_index, reasoning.
  """
  desc = [e.description for e in events]
  out = []
  for task in rng.choice(TASKS, size=num, replace=False):
    if task in ("first", "last"):
      correct = 0 if task == "first" else len(events) - 1
      anchor = None
      problem = f"Which event happens {task} in the video?"
      reasoning = f"{desc[correct]} at {events[correct].start:.0f} s is the {task} event."
    else:
      anchor = (
        int(rng.integers(0, len(events) - 1))
        if task == "after"
        else int(rng.integers(1, len(events)))
      )
      correct = anchor + 1 if task == "after" else anchor - 1
      word = "right after" if task == "after" else "right before"
      problem = f"Which event happens {word} {desc[anchor]}?"
      reasoning = (
        f"{desc[anchor]} at {events[anchor].start:.0f} s; {desc[correct]} at "
        f"{events[correct].start:.0f} s comes {word}."
      )
    others = [i for i in range(len(events)) if i not in (correct, anchor)]
    chosen = [correct, *rng.choice(others, size=3, replace=False).tolist()]
    order = rng.permutation(4)
    out.append(
      {
        "task_type": str(task),
        "problem": problem,
        "options": [desc[chosen[i]] for i in order],
        "answer_index": int(np.flatnonzero(order == 0)[0]),
        "reasoning": reasoning[0].upper() + reasoning[1:],
      }
    )
  return out


def make_colour_questions(
  events: Sequence[Event], rng: np.random.Generator, num: int
) -> list[dict[str, Any]]:
  """`num` questions of distinct types ("first", "last") about a colour_order video.

  The options are always FLASH_COLOURS in order, so answer letter j means colour j.
  """
  out = []
  for task in rng.choice(COLOUR_TASKS, size=num, replace=False):
    e = events[0] if task == "first" else events[-1]
    out.append(
      {
        "task_type": str(task),
        "problem": f"Which colour flashes {task} in the video?",
        "options": list(FLASH_COLOURS),
        "answer_index": FLASH_COLOURS.index(e.colour),
        "reasoning": f"The {e.colour} flash at {e.start:.0f} s comes {task}.",
      }
    )
  return out


def vocabulary_texts() -> list[str]:
  """Every phrase either variant can put in a question, option or reasoning (seed-free):
  the tiny tokenizer is trained on these, so it is the same for every seed and split."""
  texts = [f"Which colour flashes {t} in the video?" for t in COLOUR_TASKS]
  texts += [f"The {c} flash at 12 s comes {t}." for c in FLASH_COLOURS for t in COLOUR_TASKS]
  texts += [f"Which event happens {t} in the video?" for t in ("first", "last")]
  descriptions = []
  for colour in COLOURS:
    descriptions.append(Event("flash", "", colour, "", "", 0, 1, 0, 0).description)
    for shape in SHAPES:
      descriptions.append(Event("appear", shape, colour, "", "", 0, 1, 0, 0).description)
      descriptions += [
        Event("move", shape, colour, "", d, 0, 1, 0, 0).description for d in _DIRECTIONS
      ]
      descriptions += [
        Event("recolour", shape, colour, c2, "", 0, 1, 0, 0).description
        for c2 in COLOURS
        if c2 != colour
      ]
  texts += descriptions
  texts += [
    f"Which event happens {w} {d}?"
    for w in ("right after", "right before")
    for d in descriptions[::7]
  ]
  texts += [f"{d[0].upper()}{d[1:]} at 12 s is the first event." for d in descriptions[::5]]
  return texts


def _bucket(duration: float, s: SyntheticSettings) -> str:
  third = (s.max_video_seconds - s.min_video_seconds) / 3 or 1.0
  return (
    "short"
    if duration < s.min_video_seconds + third
    else "medium"
    if duration < s.min_video_seconds + 2 * third
    else "long"
  )


def _split(
  out_dir: str, split: str, split_id: int, num_questions: int, s: SyntheticSettings
) -> list[dict[str, Any]]:
  rows = []
  num_videos = math.ceil(num_questions / s.questions_per_video)
  for v in range(num_videos):
    rng = np.random.default_rng([s.seed, split_id, v])
    duration = float(rng.uniform(s.min_video_seconds, s.max_video_seconds))
    events = make_events(rng, duration, s)
    video_id = f"{split}_{v:04d}"
    rel = os.path.join("videos", f"{split}_{s.video_tag()}_{v:04d}.mp4")
    path = os.path.join(out_dir, rel)
    if not os.path.exists(path):
      encode_mp4(path, render_frames(events, duration, s, seed=(s.seed, split_id, v)), s.fps)
    ask = make_colour_questions if s.variant == "colour_order" else make_questions
    for n, q in enumerate(ask(events, rng, s.questions_per_video)):
      if len(rows) == num_questions:
        break
      rows.append(
        {
          "problem_id": f"{video_id}-{n}",
          "problem": q["problem"],
          "data_type": "video",
          "problem_type": "multiple choice",
          "options": [f"{chr(65 + i)}. {o}" for i, o in enumerate(q["options"])],
          "process": f"<think>{q['reasoning']}</think>",
          "solution": f"<answer>{chr(65 + q['answer_index'])}</answer>",
          "path": rel,
          "data_source": "synthetic",
          "video_id": video_id,
          "duration": _bucket(duration, s),
          "task_type": q["task_type"],
          "events": [
            {"description": e.description, "start": round(e.start, 3), "end": round(e.end, 3)}
            for e in events
          ],
        }
      )
  return rows


def write_dataset(
  out_dir: str | os.PathLike, settings: SyntheticSettings | None = None, *, progress: bool = False
) -> dict[str, str]:
  """Writes the synthetic set: videos/, train.json, eval.json, tokenizer/, a manifest.

  Idempotent: when the manifest records equal settings, nothing is redone; an existing
  video file is never re-encoded.

  Args:
    out_dir: destination folder (the preprocess `--video_dir`).
    settings: SyntheticSettings (defaults: 64 train / 32 eval questions).
    progress: print one line per split.

  Returns:
    Paths: {"train": ..., "eval": ..., "tokenizer_dir": ..., "video_dir": ...}.
  """
  s = settings or SyntheticSettings()
  out_dir = os.fspath(out_dir)
  paths = {
    "train": os.path.join(out_dir, "train.json"),
    "eval": os.path.join(out_dir, "eval.json"),
    "tokenizer_dir": os.path.join(out_dir, "tokenizer"),
    "video_dir": out_dir,
  }
  manifest = os.path.join(out_dir, _MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      if json.load(f) == dataclasses.asdict(s) and all(
        os.path.exists(p) for p in (paths["train"], paths["eval"])
      ):
        return paths
  os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
  for split_id, (split, num) in enumerate(
    (("train", s.num_train_questions), ("eval", s.num_eval_questions))
  ):
    rows = _split(out_dir, split, split_id, num, s)
    tmp = paths[split] + ".tmp"
    with open(tmp, "w") as f:
      json.dump(rows, f, indent=1)
    os.replace(tmp, paths[split])
    if progress:
      print(
        f"synthetic {split}: {len(rows)} questions on "
        f"{len({r['video_id'] for r in rows})} videos -> {paths[split]}",
        flush=True,
      )
  tokenizer_lib.build_tiny_tokenizer(
    paths["tokenizer_dir"], vocab_size=s.vocab_size, extra_texts=vocabulary_texts()
  )
  with open(manifest, "w") as f:
    json.dump(dataclasses.asdict(s), f, indent=1)
  return paths
