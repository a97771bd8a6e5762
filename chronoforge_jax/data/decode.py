"""Video file -> uint8 frames with PyAV: streaming, resampled, resized, robust to bad files.

`decode_video` decodes one file into a `DecodedVideo` (frames [T, H, W, 3], timestamps).
It streams: when resampling a long video to a low rate, or capping it to `max_frames`,
only the kept frames are converted to RGB and held in memory. Every failure (missing,
empty, corrupt, non-video file) raises `VideoDecodeError` naming the file and the reason,
so batch jobs can log and skip one bad file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from chronoforge_jax import settings as settings_lib

RESIZES = ("pad", "crop")

# Timestamps within this many seconds count as equal: it absorbs time-base rounding
# (e.g. 1/30 s stored as 512/15360) without ever merging two distinct frames.
_TIME_EPS = 1e-6


class VideoDecodeError(ValueError):
  """A video file cannot be decoded; `path` and `reason` say which and why."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"cannot decode video {self.path!r}: {reason}")


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  """Frames decoded from one video file.

  Attributes:
    frames: uint8 RGB frames [T, H, W, 3].
    timestamps: float64 [T], presentation time of each frame in seconds from the start
      of the stream (for resampled videos, the time of the source frame shown).
    native_fps: the stream's own average frame rate.
    duration: length of the stream in seconds.
    path: the source file.
  """

  frames: np.ndarray
  timestamps: np.ndarray
  native_fps: float
  duration: float
  path: str

  @property
  def num_frames(self) -> int:
    return int(self.frames.shape[0])


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Stream metadata from a demux-only pass (no decoding); see `probe_video`."""

  num_frames: int
  native_fps: float
  duration: float
  height: int
  width: int
  path: str


def _why(error: Exception) -> str:
  """FFmpeg's reason without the path PyAV appends (the caller names the file once)."""
  return getattr(error, "strerror", None) or str(error)


def _open(path: str):
  """Opens `path` with PyAV and returns (container, video stream), or raises."""
  import av  # Optional dependency (extra `video`), imported late.

  if not os.path.exists(path):
    raise VideoDecodeError(path, "file not found")
  if os.path.isdir(path):
    raise VideoDecodeError(path, "is a directory, not a video file")
  if os.path.getsize(path) == 0:
    raise VideoDecodeError(path, "file is empty (0 bytes)")
  try:
    container = av.open(path, mode="r")
  except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
    raise VideoDecodeError(path, f"not a readable video container ({_why(e)})") from None
  if not container.streams.video:
    container.close()
    raise VideoDecodeError(path, "the file has no video stream")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"
  return container, stream


def _stream_fps(path: str, stream) -> float:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  if not rate or float(rate) <= 0:
    raise VideoDecodeError(path, "the video stream has no frame rate")
  return float(rate)


def _start_seconds(stream) -> float:
  if stream.start_time is None or stream.time_base is None:
    return 0.0
  return float(stream.start_time * stream.time_base)


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Reads stream metadata and counts frames by demuxing packets, without decoding.

  Args:
    path: the video file.

  Returns:
    VideoInfo with the exact number of frames, native fps and duration in seconds.

  Raises:
    VideoDecodeError: for a missing, empty, corrupt or non-video file.
  """
  import av

  path = os.fspath(path)
  container, stream = _open(path)
  with container:
    fps = _stream_fps(path, stream)
    start = _start_seconds(stream)
    count, last = 0, -math.inf
    try:
      for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
          continue  # Flush packets carry no frame.
        count += 1
        last = max(last, float(packet.pts * packet.time_base) - start)
    except av.FFmpegError as e:
      raise VideoDecodeError(path, f"corrupt stream after {count} packets ({_why(e)})") from None
    if count == 0:
      raise VideoDecodeError(path, "the video stream holds no frames")
    return VideoInfo(
      num_frames=count,
      native_fps=fps,
      duration=last + 1.0 / fps,
      height=stream.height,
      width=stream.width,
      path=path,
    )


def _target_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
  if size is None:
    return None
  if isinstance(size, (int, np.integer)):
    hw = (int(size), int(size))
  else:
    hw = tuple(int(s) for s in size)
  if len(hw) != 2 or min(hw) < 1:
    raise ValueError(f"size={size!r}: expected a positive side or a (height, width) pair")
  return hw


def _to_rgb(frame, hw: tuple[int, int] | None, resize: str) -> np.ndarray:
  """Converts one PyAV frame to uint8 [H, W, 3], scaling in swscale and padding/cropping."""
  if hw is None:
    return frame.to_ndarray(format="rgb24")
  out_h, out_w = hw
  scale = (min if resize == "pad" else max)(out_h / frame.height, out_w / frame.width)
  new_h = max(1, round(frame.height * scale))
  new_w = max(1, round(frame.width * scale))
  rgb_hwc = frame.reformat(
    width=new_w, height=new_h, format="rgb24", interpolation="AREA"
  ).to_ndarray()
  if resize == "crop":
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return np.ascontiguousarray(rgb_hwc[top : top + out_h, left : left + out_w])
  canvas_hwc = np.zeros((out_h, out_w, 3), np.uint8)
  top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
  canvas_hwc[top : top + new_h, left : left + new_w] = rgb_hwc
  return canvas_hwc


def _decoded_frames(path: str, container, stream) -> Iterator[tuple[float, object]]:
  """Yields (seconds from stream start, frame) in presentation order."""
  import av

  start = _start_seconds(stream)
  count = 0
  try:
    for frame in container.decode(stream):
      if frame.time is None:
        raise VideoDecodeError(path, f"frame {count} has no timestamp")
      yield float(frame.time) - start, frame
      count += 1
  except av.FFmpegError as e:
    raise VideoDecodeError(path, f"corrupt data after {count} frames ({_why(e)})") from None


def _resample(
  frames: Iterator[tuple[float, object]], fps: float, native_fps: float
) -> Iterator[tuple[float, object]]:
  """Sample-and-hold at `fps`: target time j/fps shows the last frame at or before it.

  Targets run over [0, end) with end = last frame time + one native frame period, the
  same span `probe_video` reports as the duration. Holds at most one source frame, so
  memory does not grow with the video length.
  """
  j, prev = 0, None
  for t, frame in frames:
    while prev is not None and j / fps < t - _TIME_EPS:
      yield prev
      j += 1
    prev = (t, frame)
  if prev is None:
    return
  end = prev[0] + 1.0 / native_fps
  while j / fps < end - _TIME_EPS:
    yield prev
    j += 1


def _check_args(fps, max_frames, resize):
  if fps is not None and not fps > 0:
    raise ValueError(f"fps={fps!r}: expected a positive frame rate or None")
  if max_frames is not None and max_frames < 1:
    raise ValueError(f"max_frames={max_frames!r}: expected a positive count or None")
  if resize not in ("pad", "crop"):
    raise ValueError(f"resize={resize!r}: choose 'pad' or 'crop'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeSettings:
  """How a video is decoded into frames (`iter_frames` / `decode_video` arguments).

  Attributes:
    fps: output frame rate (> 0), or None for the video's native rate.
    max_frames: cap on frames (>= 1; longer videos are evenly subsampled), or None.
    size: square frame side in pixels (>= 1).
    resize: one of RESIZES: "pad" (letterbox) or "crop" (centre crop), both keeping
      the aspect ratio.
  """

  fps: float | None = None
  max_frames: int | None = None
  size: int = 448
  resize: str = "pad"

  def __post_init__(self):
    req = settings_lib.require
    req(
      self.fps is None or settings_lib.is_number(self.fps) and self.fps > 0,
      self,
      "fps",
      self.fps,
      "need a positive rate, or None for the native rate",
    )
    req(
      self.max_frames is None or settings_lib.is_int(self.max_frames, 1),
      self,
      "max_frames",
      self.max_frames,
      "need a positive cap, or None",
    )
    req(settings_lib.is_int(self.size, 1), self, "size", self.size, "need a positive side")
    settings_lib.choice(self, "resize", self.resize, RESIZES)

  @classmethod
  def from_config(cls, section: Any, name: str = "input") -> DecodeSettings:
    """From a config section holding fps, max_frames, size, resize (configs/tad.py's
    `input`); a bad field is reported as `config.<name>.<field>`."""
    return settings_lib.from_section(cls, section, name)


def iter_frames(
  path: str | os.PathLike,
  *,
  fps: float | None = None,
  size: int | Sequence[int] | None = None,
  resize: Literal["pad", "crop"] = "pad",
  indices: Iterable[int] | None = None,
) -> Iterator[tuple[int, float, np.ndarray]]:
  """Streams frames of a video one at a time: the building block of `decode_video`.

  Args:
    path: the video file.
    fps: output frame rate (sample-and-hold, see `decode_video`); None is native.
    size, resize: output size and aspect handling, see `decode_video`.
    indices: if given, only these positions of the (resampled) sequence are converted
      to RGB and yielded; decoding stops after the last one.

  Yields:
    (index in the output sequence, seconds from stream start, uint8 [H, W, 3]).

  Raises:
    VideoDecodeError: for a missing, empty, corrupt or non-video file (possibly after
      some frames were yielded, for a file corrupt midway).
  """
  path = os.fspath(path)
  _check_args(fps, None, resize)
  hw = _target_hw(size)
  wanted = None if indices is None else set(int(i) for i in indices)
  last_wanted = None if wanted is None else max(wanted, default=-1)
  container, stream = _open(path)
  with container:
    source = _decoded_frames(path, container, stream)
    if fps is not None:
      source = _resample(source, fps, _stream_fps(path, stream))
    for i, (t, frame) in enumerate(source):
      if wanted is not None and i > last_wanted:
        break
      if wanted is None or i in wanted:
        yield i, t, _to_rgb(frame, hw, resize)


def decode_video(
  path: str | os.PathLike,
  *,
  fps: float | None = None,
  max_frames: int | None = None,
  size: int | Sequence[int] | None = None,
  resize: Literal["pad", "crop"] = "pad",
) -> DecodedVideo:
  """Decodes a video file to uint8 RGB frames, streaming.

  Args:
    path: the video file.
    fps: output frame rate; None keeps every native frame. Otherwise frame j shows the
      source at time j / fps (sample-and-hold) for j / fps in [0, duration).
    max_frames: if the (resampled) sequence is longer, keep this many frames evenly
      spread over it (first and last included).
    size: None keeps the native size; an int gives square frames of that side; a
      (height, width) pair gives that size. Aspect ratio is kept by `resize`.
    resize: "pad" fits the frame inside the target and pads with black; "crop" covers
      the target and centre-crops.

  Returns:
    DecodedVideo with frames [T, H, W, 3] uint8 and timestamps [T] float64 seconds;
    `duration` is the last native frame's time plus one native frame period.

  Raises:
    VideoDecodeError: for a missing, empty, corrupt or non-video file.
    ValueError: for bad arguments.
  """
  path = os.fspath(path)
  _check_args(fps, max_frames, resize)
  _target_hw(size)
  # Even subsampling needs the sequence length first; demuxing is far cheaper than
  # decoding, and it keeps the decode pass streaming.
  info = probe_video(path)
  indices = capped_indices(output_length(info, fps), max_frames)
  frames, times = [], []
  for _, t, frame_hwc in iter_frames(path, fps=fps, size=size, resize=resize, indices=indices):
    frames.append(frame_hwc)
    times.append(t)
  if not frames:
    raise VideoDecodeError(path, "no decodable frames")
  return DecodedVideo(
    frames=np.stack(frames),
    timestamps=np.asarray(times, np.float64),
    native_fps=info.native_fps,
    duration=info.duration,
    path=path,
  )


def output_length(info: VideoInfo, fps: float | None) -> int:
  """Number of frames `decode_video` yields at `fps` (None: native) before any cap."""
  if fps is None:
    return info.num_frames
  # Targets j / fps inside [0, duration), at least one.
  return max(1, math.ceil(info.duration * fps - _TIME_EPS * fps))


def capped_indices(total: int, max_frames: int | None) -> np.ndarray | None:
  """Evenly spread positions (first and last included) when `total` > `max_frames`.

  Returns:
    int [min(total, max_frames)] ascending unique positions, or None when no cap applies.
  """
  if max_frames is None or total <= max_frames:
    return None
  return np.unique(np.round(np.linspace(0, total - 1, max_frames)).astype(int))
