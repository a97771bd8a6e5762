"""The two views KF-GRPO rolls out on: ordered keyframes and hybrid disordered frames.

Host-side NumPy, run per example in the data pipeline. Qwen2.5-VL's vision tower embeds
frames in temporal patches of two consecutive frames and never attends across patches,
so each example stores the UNION of frames both views need, encoded once, and a view is
a list of temporal-patch indices into that union:

  frames  = [k_0, k_1, ..., k_{K-1},  n_0, n_1, ..., n_{2M-1}]      (U = K + 2M)
  patches = [(k_0,k_1), ..., (k_{K-2},k_{K-1}), (n_0,n_1), ..., (n_{2M-2},n_{2M-1})]

The K keyframes are in chronological order, so the ordered view is patches 0..K/2-1. The
non-keyframes are 2M frames TAD did not select, sorted, so each pair is chronological. The
hybrid disordered view takes round(ratio * K/2) non-keyframe patches and the rest
keyframe patches, shuffled with the example's own generator.

`patch_mode="duplicate"` (PAPER.md: exact per-frame encoding at twice the cost) puts every
frame in a temporal patch of its own by repeating it:

  frames  = [k_0, k_0, k_1, k_1, ..., k_{K-1}, k_{K-1},  n_0, n_0, ..., n_{M-1}, n_{M-1}]
  patches = [(k_0,k_0), ..., (k_{K-1},k_{K-1}), (n_0,n_0), ..., (n_{M-1},n_{M-1})]

so a view has K patches (K may be odd), M counts single non-keyframes, U = 2(K + M), and
the disordered view shuffles individual frames rather than pairs.
"""

from __future__ import annotations

import dataclasses

import einops
import numpy as np

PATCH_MODES = ("pair", "duplicate")


@dataclasses.dataclass(frozen=True)
class Views:
  """Frame and patch indices of one example.

  Attributes:
    frame_indices: int32 [U], indices into the video's stored frames, in the layout of
      the module docstring (U = K + 2M pairing, 2(K + M) duplicating).
    frame_valid: bool [U]; False where the video had too few frames (the index then
      repeats a valid frame so gathers stay in range).
    ordered_patches: int32 [E], the ordered view: arange(E), E = K/2 pairing, K
      duplicating.
    disordered_patches: int32 [E], patch indices into the union's E + M patches.
    keyframe_indices: int32 [K], the keyframes in chronological order.
  """

  frame_indices: np.ndarray
  frame_valid: np.ndarray
  ordered_patches: np.ndarray
  disordered_patches: np.ndarray
  keyframe_indices: np.ndarray


def view_patches(num_keyframes: int, patch_mode: str = "pair") -> int:
  """E, temporal patches in a view of K keyframes."""
  _check_mode(patch_mode)
  return num_keyframes // 2 if patch_mode == "pair" else num_keyframes


def union_frames(num_keyframes: int, num_pairs: int, patch_mode: str = "pair") -> int:
  """U, frames stored per example: two per patch of the union's E + M patches."""
  return 2 * (view_patches(num_keyframes, patch_mode) + num_pairs)


def default_num_pairs(num_keyframes: int, disorder_ratio: float, patch_mode: str = "pair") -> int:
  """Non-keyframe patches M the disordered view needs: round(ratio * E)."""
  return int(round(disorder_ratio * view_patches(num_keyframes, patch_mode)))


def _check_mode(patch_mode: str) -> None:
  if patch_mode not in PATCH_MODES:
    raise ValueError(f"patch_mode={patch_mode!r}: must be one of {PATCH_MODES}")


def _check(
  num_keyframes: int, num_pairs: int, disorder_ratio: float, patch_mode: str = "pair"
) -> None:
  _check_mode(patch_mode)
  if patch_mode == "pair" and (num_keyframes < 2 or num_keyframes % 2):
    raise ValueError(
      f"num_keyframes={num_keyframes}: must be even and >= 2, since consecutive "
      "keyframes pair into Qwen2.5-VL temporal patches of two frames (or set "
      "patch_mode='duplicate' to give every keyframe a patch of its own)"
    )
  if num_keyframes < 1:
    raise ValueError(f"num_keyframes={num_keyframes}: must be >= 1")
  if num_pairs < 0:
    raise ValueError(f"num_pairs={num_pairs}: must be >= 0")
  if not 0.0 <= disorder_ratio <= 1.0:
    raise ValueError(f"disorder_ratio={disorder_ratio}: must lie in [0, 1]")


def fill_invalid(indices_k: np.ndarray, valid_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Chronological valid keyframes first, then invalid slots repeating the last valid one.

  Args:
    indices_k: int [K] keyframe indices from a selector.
    valid_k: bool [K], which slots hold a real keyframe.

  Returns:
    (indices int32 [K], valid bool [K]).
  """
  indices_k = np.asarray(indices_k, np.int64)
  valid_k = np.asarray(valid_k, bool)
  kept = np.unique(indices_k[valid_k])  # Sorted; a selector never repeats a frame.
  k = indices_k.shape[0]
  out = np.full(k, kept[-1] if kept.size else 0, np.int32)
  out[: kept.size] = kept
  return out, np.arange(k) < kept.size


def nonkeyframe_indices(
  num_frames: int,
  keyframes_k: np.ndarray,
  keyframe_valid_k: np.ndarray,
  num: int,
  rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
  """Draws `num` distinct frames that are not keyframes, sorted (pairs are chronological).

  Args:
    num_frames: T, frames stored for the video.
    keyframes_k: int [K] keyframe indices.
    keyframe_valid_k: bool [K].
    num: frames wanted (2M pairing, M duplicating).
    rng: the example's generator.

  Returns:
    (indices int32 [num], valid bool [num]); when fewer non-keyframes exist, the
    missing slots repeat the last drawn frame (or frame 0) and are marked invalid.
  """
  is_key_t = np.zeros(num_frames, bool)
  is_key_t[np.asarray(keyframes_k)[np.asarray(keyframe_valid_k, bool)]] = True
  candidates = np.flatnonzero(~is_key_t)
  want = num
  take = min(want, candidates.size)
  chosen = np.sort(rng.choice(candidates, size=take, replace=False)) if take else candidates[:0]
  out = np.full(want, chosen[-1] if take else 0, np.int32)
  out[:take] = chosen
  return out, np.arange(want) < take


def disordered_patches(
  num_keyframes: int,
  num_pairs: int,
  disorder_ratio: float,
  rng: np.random.Generator,
  *,
  keyframe_patch_valid: np.ndarray | None = None,
  nonkey_patch_valid: np.ndarray | None = None,
  patch_mode: str = "pair",
) -> np.ndarray:
  """The hybrid disordered view: a shuffled mix of keyframe and non-keyframe patches.

  Args:
    num_keyframes: K; the view has E patches (`view_patches`).
    num_pairs: M non-keyframe patches available (indices E .. E+M-1).
    disorder_ratio: fraction of the view's patches taken from non-keyframes.
    rng: the example's generator.
    keyframe_patch_valid: optional bool [E]; valid patches are preferred.
    nonkey_patch_valid: optional bool [M]; only valid non-keyframe patches are used.
    patch_mode: "pair" or "duplicate" (module docstring).

  Returns:
    int32 [E] patch indices; never equal to arange(E) when E > 1.
  """
  _check(num_keyframes, num_pairs, disorder_ratio, patch_mode)
  e = view_patches(num_keyframes, patch_mode)
  key_ok = (
    np.ones(e, bool) if keyframe_patch_valid is None else np.asarray(keyframe_patch_valid, bool)
  )
  non_ok = (
    np.ones(num_pairs, bool) if nonkey_patch_valid is None else np.asarray(nonkey_patch_valid, bool)
  )
  non_ids = e + np.flatnonzero(non_ok)
  n_non = min(int(round(disorder_ratio * e)), non_ids.size)
  # Valid keyframe patches first in a random order, invalid ones only to fill up.
  key_ids = np.concatenate(
    [rng.permutation(np.flatnonzero(key_ok)), rng.permutation(np.flatnonzero(~key_ok))]
  )
  mix = np.concatenate([key_ids[: e - n_non], rng.choice(non_ids, size=n_non, replace=False)])
  out = rng.permutation(mix).astype(np.int32)
  if e > 1 and np.array_equal(out, np.arange(e)):
    out = np.roll(out, 1)  # Only reachable with no non-keyframes: keep it disordered.
  return out


def build_views(
  num_frames: int,
  keyframes_k: np.ndarray,
  keyframe_valid_k: np.ndarray,
  *,
  num_pairs: int,
  disorder_ratio: float,
  rng: np.random.Generator,
  patch_mode: str = "pair",
) -> Views:
  """Both views of one example from its keyframes.

  Args:
    num_frames: T, frames stored for the video.
    keyframes_k: int [K] keyframe indices from a selector (K even when pairing).
    keyframe_valid_k: bool [K].
    num_pairs: M non-keyframe patches to add (0 for evaluation without the disordered
      view): pairs of non-keyframes, or single ones when duplicating.
    disorder_ratio: fraction of the disordered view taken from non-keyframes.
    rng: the example's generator (seeded per example for determinism).
    patch_mode: "pair" (consecutive keyframes share a temporal patch) or "duplicate"
      (every frame repeated into a patch of its own).

  Returns:
    Views with U = `union_frames(K, M, patch_mode)` frames.
  """
  keyframes_k = np.asarray(keyframes_k)
  num_keyframes = keyframes_k.shape[0]
  _check(num_keyframes, num_pairs, disorder_ratio, patch_mode)
  if num_frames < 1:
    raise ValueError(f"num_frames={num_frames}: a video needs at least one frame")
  key_idx, key_valid = fill_invalid(keyframes_k, keyframe_valid_k)
  per_patch = 2 if patch_mode == "pair" else 1  # Distinct frames in a patch.
  non_idx, non_valid = nonkeyframe_indices(
    num_frames, key_idx, key_valid, per_patch * num_pairs, rng
  )
  disordered = disordered_patches(
    num_keyframes,
    num_pairs,
    disorder_ratio,
    rng,
    # A patch is valid when its frames are: [frames] -> [patches, frames of a patch].
    keyframe_patch_valid=einops.rearrange(key_valid, "(e f) -> e f", f=per_patch).all(-1),
    nonkey_patch_valid=einops.rearrange(non_valid, "(m f) -> m f", f=per_patch).all(-1),
    patch_mode=patch_mode,
  )
  frames = np.concatenate([key_idx, non_idx]).astype(np.int32)
  valid = np.concatenate([key_valid, non_valid])
  if patch_mode == "duplicate":
    frames, valid = np.repeat(frames, 2), np.repeat(valid, 2)
  return Views(
    frame_indices=frames,
    frame_valid=valid,
    ordered_patches=np.arange(view_patches(num_keyframes, patch_mode), dtype=np.int32),
    disordered_patches=disordered,
    keyframe_indices=key_idx,
  )
