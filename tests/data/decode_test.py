"""Tests for chronoforge_jax.data.decode on real H.264 files written with PyAV."""

from __future__ import annotations

import math

import av
import cv2
import numpy as np
import pytest

from chronoforge_jax import testing
from chronoforge_jax.data import decode

NUM_FRAMES, FPS, CUTS = 60, 10, (13, 29, 44)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
  """(path, raw frames) of a 60-frame 10 fps 48x64 H.264 video with three cuts."""
  path = tmp_path_factory.mktemp("decode") / "cuts.mp4"
  testing.write_cut_video(path, NUM_FRAMES, CUTS, size=(48, 64), fps=FPS, seed=3)
  return str(path), testing.cut_video_frames(NUM_FRAMES, CUTS, (48, 64), seed=3)


def nearest_raw(frames_thwc, raw_thwc):
  """Index of the raw frame each decoded frame looks most like (mean abs error)."""
  err = np.abs(frames_thwc[:, None].astype(np.int16) - raw_thwc[None].astype(np.int16))
  return err.mean(axis=(2, 3, 4)).argmin(axis=1)


def test_native_rate_decodes_every_frame_in_order(video):
  path, raw = video
  got = decode.decode_video(path)
  assert got.frames.shape == raw.shape and got.frames.dtype == np.uint8
  assert got.native_fps == FPS and got.path == path
  assert got.duration == pytest.approx(NUM_FRAMES / FPS)
  np.testing.assert_allclose(got.timestamps, np.arange(NUM_FRAMES) / FPS, atol=1e-6)
  assert np.abs(got.frames.astype(int) - raw).mean() < 6  # Lossy codec, close.
  np.testing.assert_array_equal(nearest_raw(got.frames, raw), np.arange(NUM_FRAMES))
  info = decode.probe_video(path)
  assert (info.num_frames, info.height, info.width) == (NUM_FRAMES, 48, 64)


@pytest.mark.parametrize("fps", [4.0, 3.0, 25.0])
def test_resampling_holds_the_latest_frame(video, fps):
  path, raw = video
  got = decode.decode_video(path, fps=fps)
  n = math.ceil(NUM_FRAMES / FPS * fps - 1e-9)
  # Target j / fps shows native frame floor(j * FPS / fps) (with a little slack for
  # rounding of exact multiples).
  want = np.floor(np.arange(n) * FPS / fps + 1e-9).astype(int)
  assert got.num_frames == n
  np.testing.assert_array_equal(nearest_raw(got.frames, raw), want)
  np.testing.assert_allclose(got.timestamps, want / FPS, atol=1e-6)


@pytest.mark.parametrize("fps,max_frames", [(None, 7), (3.0, 5), (None, 100)])
def test_max_frames_subsamples_evenly(video, fps, max_frames):
  path, raw = video
  full = decode.decode_video(path, fps=fps)
  got = decode.decode_video(path, fps=fps, max_frames=max_frames)
  keep = np.round(np.linspace(0, full.num_frames - 1, min(max_frames, full.num_frames)))
  keep = keep.astype(int)
  np.testing.assert_array_equal(got.frames, full.frames[keep])
  np.testing.assert_array_equal(got.timestamps, full.timestamps[keep])


def test_decoding_is_streaming(video, monkeypatch):
  # Only kept frames are converted to RGB: at 1 fps that is 6 of 60 native frames.
  path, _ = video
  calls = []
  real = decode._to_rgb
  monkeypatch.setattr(decode, "_to_rgb", lambda *a: calls.append(1) or real(*a))
  assert decode.decode_video(path, fps=1.0).num_frames == 6
  assert len(calls) == 6
  calls.clear()
  got = list(decode.iter_frames(path, indices=[3, 17]))
  assert [i for i, _, _ in got] == [3, 17] and len(calls) == 2


def _reference_resize(frame_hwc, out_h, out_w, mode):
  h, w = frame_hwc.shape[:2]
  scale = (min if mode == "pad" else max)(out_h / h, out_w / w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  small = cv2.resize(frame_hwc, (nw, nh), interpolation=cv2.INTER_AREA)
  if mode == "crop":
    top, left = (nh - out_h) // 2, (nw - out_w) // 2
    return small[top : top + out_h, left : left + out_w]
  canvas = np.zeros((out_h, out_w, 3), np.uint8)
  top, left = (out_h - nh) // 2, (out_w - nw) // 2
  canvas[top : top + nh, left : left + nw] = small
  return canvas


@pytest.mark.parametrize(
  "size,resize", [(32, "pad"), (32, "crop"), ((24, 40), "crop"), ((40, 24), "pad")]
)
def test_resize_keeps_aspect_with_pad_or_crop(video, size, resize):
  path, _ = video
  native = decode.decode_video(path, max_frames=4)
  got = decode.decode_video(path, max_frames=4, size=size, resize=resize)
  out_h, out_w = (size, size) if isinstance(size, int) else size
  assert got.frames.shape == (4, out_h, out_w, 3)
  for frame, src in zip(got.frames, native.frames):
    want = _reference_resize(src, out_h, out_w, resize)
    # swscale resamples chroma before RGB conversion, cv2 after: a few levels apart.
    assert np.abs(frame.astype(int) - want).mean() < 10
    if resize == "pad":  # Letterbox bars are exactly black.
      np.testing.assert_array_equal(frame[want.sum(-1) == 0], 0)


def _write_audio_only(path):
  with av.open(str(path), "w") as container:
    stream = container.add_stream("mp2", rate=16000)
    for i in range(4):
      frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
      frame.sample_rate, frame.pts = 16000, i * 1152
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def test_bad_files_raise_video_decode_error_naming_the_file(video, tmp_path):
  path, _ = video
  data = open(path, "rb").read()
  cases = {
    "missing.mp4": ("file not found", None),
    "empty.mp4": ("empty", b""),
    "notes.mp4": ("not a readable video container", b"just some text\n" * 50),
    "truncated.mp4": ("not a readable video container", data[: len(data) // 3]),
  }
  for name, (reason, content) in cases.items():
    p = tmp_path / name
    if content is not None:
      p.write_bytes(content)
    with pytest.raises(decode.VideoDecodeError, match=reason) as info:
      decode.decode_video(p)
    assert str(p) in str(info.value) and info.value.path == str(p)
    assert isinstance(info.value, ValueError)
  _write_audio_only(tmp_path / "audio.mka")
  with pytest.raises(decode.VideoDecodeError, match="no video stream"):
    decode.decode_video(tmp_path / "audio.mka")
  with pytest.raises(decode.VideoDecodeError, match="directory"):
    decode.decode_video(tmp_path)


@pytest.mark.parametrize("seed", range(4))
def test_garbled_streams_fail_cleanly(tmp_path, seed):
  # Damage in the middle of a streamable (mkv) file: the decoder may conceal it or give
  # up, but the only error that may escape is VideoDecodeError.
  path = tmp_path / "clip.mkv"
  testing.write_cut_video(path, 30, [10, 20], size=32, fps=10, seed=seed)
  data = bytearray(path.read_bytes())
  rng = np.random.default_rng(seed)
  start = int(len(data) * rng.uniform(0.2, 0.7))
  data[start : start + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
  path.write_bytes(bytes(data))
  try:
    got = decode.decode_video(path, fps=5.0, size=16)
    assert got.frames.shape[1:] == (16, 16, 3) and got.num_frames >= 1
  except decode.VideoDecodeError as e:
    assert str(path) in str(e)


def test_bad_arguments(video):
  path, _ = video
  for kwargs, match in [
    ({"fps": 0.0}, "fps=0.0"),
    ({"max_frames": 0}, "max_frames=0"),
    ({"resize": "stretch"}, "resize='stretch'"),
    ({"size": (1, 2, 3)}, "size="),
  ]:
    with pytest.raises(ValueError, match=match):
      decode.decode_video(path, **kwargs)
