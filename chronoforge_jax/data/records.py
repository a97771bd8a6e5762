"""ArrayRecord shards of pre-decoded videos: writer (atomic, resumable) and random-access reader.

A preprocessed data set is one folder:

  settings.json                  the preprocess settings (a rerun must match them)
  shards/shard-00007.frames.array_record   one record per frame: raw uint8 [H, W, 3]
  shards/shard-00007.videos.array_record   one record per video: timestamps, TAD features
  shards/shard-00007.qa.array_record       one record per question (JSON), naming its video
  shards/shard-00007.json        commit marker: counts, ids, rejected items of the shard
  index.json                     counts, shapes, settings, the committed shards in order
  rejected.jsonl                 every rejected item with the reason

Frames are separate records so the pipeline reads only the K + 2M frames an example
needs, not the whole video; a video shared by several questions is stored once. A shard's
files are written under temporary names and renamed, then the marker is written last
(atomically), so a killed run leaves no shard that a reader or a rerun would take as done.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from chronoforge_jax import fileio
from chronoforge_jax import settings as settings_lib
from chronoforge_jax.data import benchmarks, decode
from chronoforge_jax.models.config import VisionConfig
from chronoforge_jax.tad import features

INDEX = "index.json"
SETTINGS = "settings.json"
REJECTED = "rejected.jsonl"
SHARD_DIR = "shards"
_MAGIC = b"CFR1"
_KINDS = ("frames", "videos", "qa")
# Pixels per video token side: Qwen2.5-VL's vision patch_size * spatial_merge_size.
VIDEO_UNIT = VisionConfig.patch_size * VisionConfig.spatial_merge_size


# ---------------------------------------------------------------- record encoding


def encode_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
  """Serialises named arrays plus JSON metadata into one record (decoded without copies).

  Args:
    arrays: name -> numeric NumPy array.
    meta: JSON-serialisable metadata.

  Returns:
    bytes: magic, header length, JSON header (dtypes, shapes, offsets, meta), raw data.
  """
  layout, chunks, offset = {}, [], 0
  for name, value in arrays.items():
    value = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d arrays 1-d.)
    if value.dtype.hasobject:
      raise TypeError(f"array {name!r} has dtype object; store text in `meta`")
    layout[name] = [value.dtype.str, list(value.shape), offset]
    chunks.append(value.tobytes())
    offset += value.nbytes
  header = json.dumps({"arrays": layout, "meta": dict(meta or {})}).encode()
  return b"".join([_MAGIC, struct.pack("<I", len(header)), header, *chunks])


def decode_arrays(record: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Inverse of `encode_arrays`; arrays are read-only views of `record`."""
  if record[:4] != _MAGIC:
    raise ValueError(
      "not a chronoforge record (bad magic); was the file written by launch/preprocess?"
    )
  (size,) = struct.unpack("<I", record[4:8])
  header = json.loads(record[8 : 8 + size])
  base = 8 + size
  arrays = {}
  for name, (dtype, shape, offset) in header["arrays"].items():
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    arrays[name] = np.frombuffer(record, dtype, count, base + offset).reshape(tuple(shape))
  return arrays, header["meta"]


def shard_name(shard_id: int) -> str:
  return f"shard-{shard_id:05d}"


def shard_path(out_dir: str, shard_id: int, kind: str) -> str:
  ext = "json" if kind == "marker" else f"{kind}.array_record"
  return os.path.join(out_dir, SHARD_DIR, f"{shard_name(shard_id)}.{ext}")


# ---------------------------------------------------------------- writer


class ShardWriter:
  """Writes one shard: frames, video records and questions, committed atomically.

  Use as a context manager; `commit()` publishes the shard. Leaving the block without
  commit (an exception, a kill) deletes the temporary files, so nothing half-written is
  ever read.
  """

  def __init__(
    self, out_dir: str | os.PathLike, shard_id: int, *, options: str = "group_size:1,uncompressed"
  ):
    from array_record.python import array_record_module  # Heavy; loaded late.

    self.out_dir = os.fspath(out_dir)
    self.shard_id = shard_id
    os.makedirs(os.path.join(self.out_dir, SHARD_DIR), exist_ok=True)
    self._tmp = {k: f"{shard_path(self.out_dir, shard_id, k)}.tmp{os.getpid()}" for k in _KINDS}
    self._writers = {
      k: array_record_module.ArrayRecordWriter(p, options) for k, p in self._tmp.items()
    }
    self.num_frames = 0
    self.video_ids: list[str] = []
    self.question_ids: list[str] = []
    self.rejected: list[dict[str, Any]] = []
    self.shape: list[int] | None = None
    self.max_video_frames = 0
    self.feature_dim = 0
    self._closed = False

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, *exc) -> None:
    if not self._closed:
      self._close()
      for path in self._tmp.values():
        if os.path.exists(path):
          os.remove(path)

  def _close(self) -> None:
    for w in self._writers.values():
      w.close()
    self._closed = True

  def add_video(
    self,
    video_id: str,
    frames_thwc: np.ndarray,
    timestamps_t: np.ndarray,
    features_td: np.ndarray,
    meta: Mapping[str, Any],
  ) -> int:
    """Appends a decoded video; returns its position within the shard.

    Args:
      video_id: the video's id (unique within the data set).
      frames_thwc: uint8 [T, H, W, 3].
      timestamps_t: seconds [T].
      features_td: TAD features [T, D].
      meta: JSON metadata (source path, native fps, duration, ...).
    """
    frames_thwc = np.asarray(frames_thwc)
    if frames_thwc.dtype != np.uint8 or frames_thwc.ndim != 4 or frames_thwc.shape[0] < 1:
      raise ValueError(
        f"video {video_id!r}: frames must be uint8 [T>0, H, W, 3], got "
        f"{frames_thwc.dtype} {frames_thwc.shape}"
      )
    t = frames_thwc.shape[0]
    if np.shape(timestamps_t) != (t,) or np.shape(features_td)[0] != t:
      raise ValueError(
        f"video {video_id!r}: {t} frames but timestamps "
        f"{np.shape(timestamps_t)} and features {np.shape(features_td)}"
      )
    self.shape = self.shape or list(frames_thwc.shape[1:])
    self.max_video_frames = max(self.max_video_frames, t)
    self.feature_dim = int(np.shape(features_td)[1])
    for frame_hwc in frames_thwc:
      self._writers["frames"].write(frame_hwc.tobytes())
    record = encode_arrays(
      {
        "timestamps": np.asarray(timestamps_t, np.float64),
        "features": np.asarray(features_td, np.float32),
      },
      {
        **meta,
        "video_id": video_id,
        "num_frames": t,
        "frame_start": self.num_frames,
        "shard": self.shard_id,
        "height": int(frames_thwc.shape[1]),
        "width": int(frames_thwc.shape[2]),
      },
    )
    self._writers["videos"].write(record)
    self.num_frames += t
    self.video_ids.append(video_id)
    return len(self.video_ids) - 1

  def add_question(self, question: Mapping[str, Any], video_position: int) -> None:
    """Appends a question record (JSON) pointing at the shard's video `video_position`."""
    record = {**question, "video_pos": int(video_position), "shard": self.shard_id}
    self._writers["qa"].write(json.dumps(record).encode())
    self.question_ids.append(str(question["question_id"]))

  def add_reject(self, item: Mapping[str, Any], reason: str) -> None:
    """Records an item that could not be written (it goes to rejected.jsonl)."""
    self.rejected.append({"item": dict(item), "reason": reason, "shard": self.shard_id})

  def commit(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Closes the files, renames them into place, then writes the marker last.

    Returns:
      The marker dictionary.
    """
    self._close()
    for kind, tmp in self._tmp.items():
      os.replace(tmp, shard_path(self.out_dir, self.shard_id, kind))
    marker = {
      "shard_id": self.shard_id,
      "num_videos": len(self.video_ids),
      "num_frames": self.num_frames,
      "num_questions": len(self.question_ids),
      "video_ids": self.video_ids,
      "question_ids": self.question_ids,
      "frame_shape": self.shape,
      "max_video_frames": self.max_video_frames,
      "feature_dim": self.feature_dim,
      "rejected": self.rejected,
      **(extra or {}),
    }
    fileio.write_json_atomic(shard_path(self.out_dir, self.shard_id, "marker"), marker)
    return marker


def finished_shards(out_dir: str | os.PathLike) -> dict[int, dict[str, Any]]:
  """Markers of the committed shards (all three files present), keyed by shard id."""
  out_dir = os.fspath(out_dir)
  shard_dir = os.path.join(out_dir, SHARD_DIR)
  result = {}
  if not os.path.isdir(shard_dir):
    return result
  for name in sorted(os.listdir(shard_dir)):
    if not (name.startswith("shard-") and name.endswith(".json")):
      continue
    shard_id = int(name[len("shard-") : -len(".json")])
    if not all(os.path.exists(shard_path(out_dir, shard_id, k)) for k in _KINDS):
      continue
    with open(os.path.join(shard_dir, name)) as f:
      result[shard_id] = json.load(f)
  return result


def write_index(
  out_dir: str | os.PathLike,
  settings: Mapping[str, Any],
  extra_rejected: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
  """Writes index.json and rejected.jsonl from every committed shard (old runs included).

  Args:
    out_dir: the data set folder.
    settings: the preprocess settings, stored in the index.
    extra_rejected: rejects outside any shard (e.g. malformed annotations).

  Returns:
    The index dictionary.
  """
  out_dir = os.fspath(out_dir)
  markers = finished_shards(out_dir)
  shards = [
    {
      "shard_id": i,
      "num_videos": m["num_videos"],
      "num_frames": m["num_frames"],
      "num_questions": m["num_questions"],
    }
    for i, m in sorted(markers.items())
  ]
  shapes = {tuple(m["frame_shape"]) for m in markers.values() if m.get("frame_shape")}
  if len(shapes) > 1:
    raise ValueError(
      f"{out_dir}: shards hold frames of different shapes {sorted(shapes)}; "
      "preprocess into a fresh --out folder"
    )
  rejected = [*extra_rejected, *(r for m in markers.values() for r in m["rejected"])]
  index = {
    "version": 1,
    "settings": dict(settings),
    "frame_shape": list(shapes.pop()) if shapes else None,
    "num_videos": sum(s["num_videos"] for s in shards),
    "num_frames": sum(s["num_frames"] for s in shards),
    "num_questions": sum(s["num_questions"] for s in shards),
    "num_rejected": len(rejected),
    "max_frames_per_video": max(
      (m.get("max_video_frames", 0) for m in markers.values()), default=0
    ),
    "feature_dim": max((m.get("feature_dim", 0) for m in markers.values()), default=0),
    "shards": shards,
  }
  tmp = os.path.join(out_dir, f"{REJECTED}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    for r in rejected:
      f.write(json.dumps(r, default=str) + "\n")
  os.replace(tmp, os.path.join(out_dir, REJECTED))
  fileio.write_json_atomic(os.path.join(out_dir, INDEX), index)
  return index


# ---------------------------------------------------------------- reader


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One stored video (without its frames, which are read on demand).

  Attributes:
    key: global video index.
    video_id: the video's id.
    timestamps: float64 [T] seconds.
    features: float32 [T, D] TAD features.
    frame_start: global key of its first frame record.
    num_frames: T.
    height, width: frame size.
    meta: the rest of the stored metadata.
  """

  key: int
  video_id: str
  timestamps: np.ndarray
  features: np.ndarray
  frame_start: int
  num_frames: int
  height: int
  width: int
  meta: dict[str, Any]


def load_index(data_dir: str | os.PathLike) -> dict[str, Any]:
  """Reads index.json, with an error that says how to make one."""
  path = os.path.join(os.fspath(data_dir), INDEX)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"no {INDEX} in {os.fspath(data_dir)!r}: run `python -m "
      "launch.preprocess --out DIR ...` first and point at DIR"
    )
  with open(path) as f:
    return json.load(f)


class PreprocessedData:
  """Random access to a preprocessed folder: questions, video records and frames.

  Picklable (Grain sends it to worker processes); files open lazily in each process.
  """

  def __init__(self, data_dir: str | os.PathLike):
    from grain import sources  # Heavy; loaded late.

    self.data_dir = os.fspath(data_dir)
    self.index = load_index(self.data_dir)
    shards = [s for s in self.index["shards"] if s["num_videos"] > 0]
    if not shards or self.index["num_questions"] == 0:
      raise ValueError(
        f"{self.data_dir}: the data set holds no questions (every item was "
        f"rejected? see {REJECTED})"
      )
    ids = [s["shard_id"] for s in shards]

    def source(kind, keep):
      return sources.ArrayRecordDataSource(
        [shard_path(self.data_dir, i, kind) for i, s in zip(ids, shards) if keep(s)]
      )

    self._qa = source("qa", lambda s: s["num_questions"] > 0)
    self._videos = source("videos", lambda s: True)
    self._frames = source("frames", lambda s: True)
    self._video_offset = dict(zip(ids, np.cumsum([0] + [s["num_videos"] for s in shards])))
    self._frame_offset = dict(zip(ids, np.cumsum([0] + [s["num_frames"] for s in shards])))
    self.frame_shape = tuple(self.index["frame_shape"])

  def __len__(self) -> int:
    return int(self.index["num_questions"])

  def question(self, i: int) -> dict[str, Any]:
    """Question record `i` with `video_key`, the global index of its video."""
    q = json.loads(self._qa[i])
    q["video_key"] = int(self._video_offset[q["shard"]] + q["video_pos"])
    return q

  @property
  def num_videos(self) -> int:
    return int(self.index["num_videos"])

  def video(self, key: int) -> VideoRecord:
    """Video record by global index (timestamps, features, where its frames are)."""
    arrays, meta = decode_arrays(self._videos[key])
    start = int(self._frame_offset[meta.pop("shard")] + meta.pop("frame_start"))
    return VideoRecord(
      key=key,
      video_id=meta.pop("video_id"),
      timestamps=arrays["timestamps"],
      features=arrays["features"],
      frame_start=start,
      num_frames=int(meta.pop("num_frames")),
      height=int(meta.pop("height")),
      width=int(meta.pop("width")),
      meta=meta,
    )

  def frames(self, video: VideoRecord, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 frames [N, H, W, 3] of `video` at `indices` (reads only those records)."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= video.num_frames):
      raise IndexError(
        f"video {video.video_id!r} has {video.num_frames} frames; asked for {indices.tolist()}"
      )
    records = self._frames.__getitems__([int(video.frame_start + i) for i in indices])
    out = np.empty((len(indices), video.height, video.width, 3), np.uint8)
    for n, r in enumerate(records):
      out[n] = np.frombuffer(r, np.uint8).reshape(video.height, video.width, 3)
    return out


# ---------------------------------------------------------------- preprocess driver


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreprocessSettings:
  """How videos become records: the `preprocess` config section (with `features`).

  Stored in settings.json and index.json; a rerun resumes only with equal settings.

  Attributes:
    fps: frames per second to resample to (> 0; None keeps native frames).
    max_frames: cap per video (>= 1); longer videos keep this many evenly spread frames.
    size: frame side (square output), a multiple of the Qwen2.5-VL vision unit
      VIDEO_UNIT (patch_size * spatial_merge_size = 28 pixels): one video token per
      28 x 28 block.
    resize: "pad" (letterbox) or "crop" (centre crop), both keeping the aspect ratio.
    videos_per_shard: videos per shard (>= 1; the unit of parallel work and of resuming).
    feature_grid, feature_color: TAD features (`features.FeatureSettings` grid, color).
    compression: ArrayRecord compression of the records: "zstd:N" (zstd:1 read faster
      than uncompressed records in data_bench on synthetic frames, at 1/10 the disk) or
      "uncompressed".
  """

  fps: float | None = 1.0
  max_frames: int = 256
  size: int = 448
  resize: str = "pad"
  videos_per_shard: int = 8
  feature_grid: int = 8
  feature_color: str = "rgb"
  compression: str = "zstd:1"

  def __post_init__(self):
    req, is_int = settings_lib.require, settings_lib.is_int
    owner = type(self).__name__
    req(is_int(self.max_frames, 1), self, "max_frames", self.max_frames, "need an int >= 1")
    with settings_lib.renamed(owner):
      decode.DecodeSettings(
        fps=self.fps, max_frames=self.max_frames, size=self.size, resize=self.resize
      )
    req(
      self.size % VIDEO_UNIT == 0,
      self,
      "size",
      self.size,
      f"need a multiple of the vision patch_size * spatial_merge_size = {VIDEO_UNIT} "
      "(one video token per block)",
    )
    req(
      is_int(self.videos_per_shard, 1),
      self,
      "videos_per_shard",
      self.videos_per_shard,
      "need an int >= 1",
    )
    with settings_lib.renamed({"grid": f"{owner}.feature_grid", "color": f"{owner}.feature_color"}):
      feats = features.FeatureSettings(grid=self.feature_grid, color=self.feature_color)
    with settings_lib.renamed(owner):
      feats.check_frame_size(self.size, f"{owner}.size")
    req(
      self.compression == "uncompressed"
      or (isinstance(self.compression, str) and self.compression.startswith("zstd:")),
      self,
      "compression",
      self.compression,
      "need 'uncompressed' or 'zstd:LEVEL'",
    )

  @classmethod
  def from_config(cls, config: Any) -> PreprocessSettings:
    """From a config's `preprocess` section and its `features` section (grid, color).

    Bad fields are reported as `config.preprocess.<field>` / `config.features.<field>`.
    The section's `format` and `workers` (which annotations to read and how many
    processes write: arguments of `preprocess`, not settings of the records) are
    checked here too. Without a `features` section, FeatureSettings' defaults.
    """
    p = config.preprocess
    settings_lib.choice("config.preprocess", "format", p.format, benchmarks.FORMATS)
    settings_lib.require(
      settings_lib.is_int(p.workers, 0),
      "config.preprocess",
      "workers",
      p.workers,
      "need an int >= 0 (0: in this process)",
    )
    feats = (
      features.FeatureSettings.from_config(config.features)
      if "features" in config
      else features.FeatureSettings()
    )
    names = {f.name: f"config.preprocess.{f.name}" for f in dataclasses.fields(cls)}
    names.update(feature_grid="config.features.grid", feature_color="config.features.color")
    with settings_lib.renamed(names):
      return cls(
        **settings_lib.section_kwargs(cls, p, skip=("feature_grid", "feature_color")),
        feature_grid=feats.grid,
        feature_color=feats.color,
      )


@dataclasses.dataclass(frozen=True)
class ShardTask:
  """One unit of preprocessing: a shard id and its videos with their questions."""

  shard_id: int
  videos: tuple[tuple[str, str, tuple[dict[str, Any], ...]], ...]  # (id, path, questions)


def plan_shards(items: Sequence[Any], videos_per_shard: int) -> list[ShardTask]:
  """Groups questions by video (first-appearance order) and videos into shards.

  Deterministic for the same annotation list, so a rerun maps videos to the same shards.
  """
  by_video: dict[str, list[dict[str, Any]]] = {}
  paths: dict[str, str] = {}
  for item in items:
    d = item.to_dict() if hasattr(item, "to_dict") else dict(item)
    by_video.setdefault(d["video_id"], []).append(d)
    paths.setdefault(d["video_id"], d["video_path"])
  ids = list(by_video)
  return [
    ShardTask(
      shard_id=n // videos_per_shard,
      videos=tuple((v, paths[v], tuple(by_video[v])) for v in ids[n : n + videos_per_shard]),
    )
    for n in range(0, len(ids), videos_per_shard)
  ]


def _process_shard(out_dir: str, settings: PreprocessSettings, task: ShardTask) -> dict[str, Any]:
  """Decodes, featurises and writes one shard; a bad video only rejects its questions."""
  options = f"group_size:1,{settings.compression}"
  with ShardWriter(out_dir, task.shard_id, options=options) as writer:
    for video_id, path, questions in task.videos:
      try:
        video = decode.decode_video(
          path,
          fps=settings.fps,
          max_frames=settings.max_frames,
          size=settings.size,
          resize=settings.resize,
        )
        feats_td = features.video_features(
          video.frames,
          chunk=min(settings.max_frames, 256),
          grid=settings.feature_grid,
          color=settings.feature_color,
        )
      except decode.VideoDecodeError as e:
        reason = str(e)
      except Exception as e:
        # One unreadable file must not stop the run; the reason keeps the evidence.
        reason = f"video {path!r}: {type(e).__name__}: {e}"
      else:
        pos = writer.add_video(
          video_id,
          video.frames,
          video.timestamps,
          feats_td,
          {"path": path, "native_fps": video.native_fps, "duration": video.duration},
        )
        for q in questions:
          bucket = q.get("duration_bucket") or benchmarks.duration_bucket(video.duration)
          writer.add_question({**q, "duration_bucket": bucket}, pos)
        continue
      for q in questions:
        writer.add_reject(q, reason)
    return writer.commit()


def _process_shard_star(args):
  return _process_shard(*args)


def _advance(bar, marker: Mapping[str, Any]) -> None:
  if bar is not None:
    bar.update(marker["num_videos"] + len({r["item"]["video_id"] for r in marker["rejected"]}))


def _settings_record(
  settings: PreprocessSettings, tasks: Sequence[ShardTask], meta: Mapping[str, Any]
) -> dict[str, Any]:
  import hashlib

  plan = json.dumps(
    [[t.shard_id, [(v, p, [q["question_id"] for q in qs]) for v, p, qs in t.videos]] for t in tasks]
  )
  return {
    **dataclasses.asdict(settings),
    **meta,
    "plan_sha1": hashlib.sha1(plan.encode()).hexdigest(),
  }


def preprocess(
  items: Sequence[Any],
  out_dir: str | os.PathLike,
  settings: PreprocessSettings,
  *,
  workers: int = 0,
  annotation_rejects: Sequence[Mapping[str, Any]] = (),
  meta: Mapping[str, Any] | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """Writes (or resumes writing) a preprocessed data set.

  Shards already committed by an earlier run with the same settings and plan are
  skipped; temporary files of a killed run are removed and redone.

  Args:
    items: QAItems (or their dicts) to write.
    out_dir: destination folder.
    settings: PreprocessSettings.
    workers: worker processes (0 runs in this process).
    annotation_rejects: rejects from loading the annotations (go to rejected.jsonl).
    meta: extra information for settings.json (format, annotation file, video dir).
    progress: show a progress bar.

  Returns:
    The index dictionary plus "skipped_shards" and "written_shards" of this run.

  Raises:
    ValueError: when out_dir holds a run with other settings or other annotations.
  """
  out_dir = os.fspath(out_dir)
  tasks = plan_shards(items, settings.videos_per_shard)
  record = _settings_record(settings, tasks, meta or {})
  os.makedirs(os.path.join(out_dir, SHARD_DIR), exist_ok=True)
  settings_path = os.path.join(out_dir, SETTINGS)
  if os.path.exists(settings_path):
    with open(settings_path) as f:
      old = json.load(f)
    changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
    if changed:
      raise ValueError(
        f"{out_dir} already holds a preprocess run with different {changed}; "
        "rerun with the same settings and annotations to resume, or use a "
        "fresh --out folder"
      )
  else:
    fileio.write_json_atomic(settings_path, record)
  shard_dir = os.path.join(out_dir, SHARD_DIR)
  for name in os.listdir(shard_dir):
    if ".tmp" in name:  # Left by a killed run: never committed, never read.
      os.remove(os.path.join(shard_dir, name))
  done = finished_shards(out_dir)
  pending = [t for t in tasks if t.shard_id not in done]
  bar = None
  if progress and pending:
    import tqdm

    bar = tqdm.tqdm(
      total=sum(len(t.videos) for t in pending), unit="video", desc="preprocess", dynamic_ncols=True
    )
  args = [(out_dir, settings, t) for t in pending]
  if workers > 0 and len(pending) > 1:
    import multiprocessing

    # spawn: the parent may hold JAX/XLA threads, which fork would copy in a bad state.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(pending))) as pool:
      results = pool.imap_unordered(_process_shard_star, args)
      for marker in results:
        _advance(bar, marker)
  else:
    for a in args:
      _advance(bar, _process_shard(*a))
  if bar:
    bar.close()
  index = write_index(out_dir, record, annotation_rejects)
  return {**index, "skipped_shards": len(tasks) - len(pending), "written_shards": len(pending)}
