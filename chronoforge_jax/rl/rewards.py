"""KF-GRPO rewards: accuracy, format, the saliency-enhanced keyframe bonus, length control.

Two kinds of reward live here:

* Text rewards (`accuracy`, `format`) score decoded completions on the host in plain
  Python. They are registered by name in `REWARDS`, take `[B][G]` nested lists of strings
  (B prompts, G rollouts each) and return a `RewardResult` with a `[B, G]` float32 array.
  `accuracy` follows each prompt's Video-R1 problem type: multiple choice here, the other
  four by their rule in `answer_rules.ANSWER_RULES` (Video-R1's grpo.py, ported).
* The saliency-enhanced keyframe reward (PAPER.md, KF-GRPO) is a pure `jnp` function of
  the `[B, G]` correctness of the ordered-keyframe rollouts and the `[B, G']` correctness
  of the hybrid-disordered rollouts, so it runs inside jitted code and under pmap.
* `length_bonus` (Video-R1's optional length control, off by default) is pure jnp too: a
  function of the ordered rollouts' correctness and completion lengths.

`combine_rewards` applies the config's weights and keeps every component for logging;
`kf_grpo_rewards` puts text rewards and bonus together into the ordered rollouts' total.
"""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax.registry import Registry

# Video-R1's problem types and their answer rules (jax-free, so data loaders can use them).
from chronoforge_jax.rl.answer_rules import (  # noqa: F401
  ANSWER_RULES,
  PROBLEM_TYPES,
  check_problem_type,
  multiple_choice_rule,
  solution_answer,
  type_metric_name,
  videor1_answer,
)

Options = Sequence[str] | None


@dataclasses.dataclass(frozen=True)
class RewardResult:
  """A text reward for a batch of groups.

  Attributes:
    values_bg: float32 [B, G] reward per rollout.
    metrics: host-side scalars to log (e.g. the unparseable fraction).
  """

  values_bg: np.ndarray
  metrics: dict[str, float]


RewardFn = Callable[..., RewardResult]
REWARDS: Registry[RewardFn] = Registry("reward function")

# ----------------------------------------------------------------------------------------
# Answer extraction.
# ----------------------------------------------------------------------------------------

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN_ANSWER = re.compile(r"<answer>", re.IGNORECASE)
_DECOR = r"[\s*\"'`]*"  # markdown bold, quotes: "**B**", "'B'"
# The whole span is one letter, however wrapped: "B", "(b)", "[C].", "**D**".
_LONE_LETTER = re.compile(_DECOR + r"[(\[{]?\s*([A-Za-z])\s*[)\]}]?[\s.:;,!*\"'`]*")
# A span that starts with a marked letter: "B. the dog", "(c) red", "A: two".
_LEADING_LETTER = re.compile(_DECOR + r"(?:[(\[]\s*([A-Za-z])\s*[)\]]|([A-Za-z])\s*[.:)])(?=\s|$)")
# "the answer is (B)", "Answer: c", "option D", "choice: b".
# A lowercase bare letter must end the clause: "answer is a dog" is not option A.
_PHRASE_LETTER = re.compile(
  r"\b(?i:answer|option|choice)\s*(?i:is|:|=)?\s*"
  r"(?:[(\[]\s*([A-Za-z])\s*[)\]]|([A-Z])(?![A-Za-z0-9])"
  r"|([a-z])(?=\s*(?:[.,;!)]|$)))"
)
# Marked letters in free text: uppercase "B." / "B)" / "B:", or any case in brackets.
_MARKED_LETTER = re.compile(r"(?<![A-Za-z0-9])(?:([A-Z])[.:)](?=\s|$)|[(\[]\s*([A-Za-z])\s*[)\]])")
# "B is correct", "(C) is the right answer": a letter the text declares right.
_VERDICT_LETTER = re.compile(
  r"(?<![A-Za-z0-9'])[(\[]?([A-Z])[)\]]?\s+(?:is|seems|looks)\s+(?:the\s+)?"
  r"(?:correct|right|best|answer)\b"
)
# Standalone uppercase letters: lowercase singles are too often English ("a"), and so is
# a capital "A" before a lowercase word that is not a verdict ("A dog runs", "A is not").
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9'])(?!A\s+[a-z])([A-Z])(?![A-Za-z0-9'])")
_OPTION_PREFIX = re.compile(r"^\s*[(\[]?\s*[A-Za-z]\s*[)\].:]\s+")
_NON_WORD = re.compile(r"[^\w\s]")


def _letter_index(letter: str, num_options: int) -> int | None:
  idx = ord(letter.upper()) - ord("A")
  return idx if 0 <= idx < num_options else None


def _normalise(text: str) -> str:
  return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _match_option_text(span: str, options: Sequence[str]) -> int | None:
  """Index of the option whose text the span states, or None if none or ambiguous."""
  span_n = f" {_normalise(span)} "
  texts = [_normalise(_OPTION_PREFIX.sub("", o)) for o in options]
  hits = [i for i, t in enumerate(texts) if t and f" {t} " in span_n]
  # "red ball" also contains option "red": keep only maximal matches (so an exact
  # answer "red" still picks "red", which "red ball" does not fit in).
  hits = [i for i in hits if not any(j != i and f" {texts[i]} " in f" {texts[j]} " for j in hits)]
  return hits[0] if len(hits) == 1 else None


def _last_letter(pattern: re.Pattern, text: str, num_options: int) -> tuple[int, int] | None:
  """(position, index) of the last in-range letter `pattern` finds, or None."""
  best = None
  for m in pattern.finditer(text):
    letter = next(g for g in m.groups() if g)
    idx = _letter_index(letter, num_options)
    if idx is not None:
      best = (m.start(), idx)
  return best


def _parse_answer_span(span: str, options: Options, num_options: int) -> int | None:
  for pattern in (_LONE_LETTER, _LEADING_LETTER):
    m = pattern.fullmatch(span) if pattern is _LONE_LETTER else pattern.match(span)
    if m:
      idx = _letter_index(next(g for g in m.groups() if g), num_options)
      if idx is not None:
        return idx
  if options:
    idx = _match_option_text(span, options)
    if idx is not None:
      return idx
  hit = _last_letter(_PHRASE_LETTER, span, num_options)
  if hit:
    return hit[1]
  # Several distinct letters in the answer ("B or C") is a hedge: no credit.
  found = {_letter_index(c, num_options) for c in _BARE_LETTER.findall(span)} - {None}
  return found.pop() if len(found) == 1 else None


def extract_choice(text: str, options: Options = None, num_options: int = 4) -> int | None:
  """Extracts the chosen option index from a model's answer.

  The letter inside the last `<answer>...</answer>` wins (an unclosed final `<answer>`,
  as left by a length cut, counts too); it may be wrapped or punctuated ("(B)", "b.",
  "**C**"), lead the option text ("D. the dog"), or be replaced by the option text
  itself. A span that names several letters is a hedge and gives None. Without an answer
  tag, the last "answer is X" phrase, else the last letter declared right ("B is
  correct"), else the last marked letter ("B." or "(b)"), else the one standalone
  uppercase option letter; several distinct ones ("B, C") are a hedge and give None, and
  a capital "A" before a lowercase word ("A dog", "A is not") is read as the article.

  Args:
    text: a decoded completion.
    options: the option texts, with or without "A." prefixes; enables text matching and
      sets the number of options.
    num_options: number of options when `options` is None.

  Returns:
    The 0-based option index, or None when no answer can be read.
  """
  n = len(options) if options is not None else num_options
  if not 1 <= n <= 26:
    raise ValueError(f"extract_choice: {n} options; need 1..26 (letters A..Z)")
  spans = _ANSWER_SPAN.findall(text)
  if spans:
    return _parse_answer_span(spans[-1], options, n)
  opened = list(_OPEN_ANSWER.finditer(text))
  if opened:
    return _parse_answer_span(text[opened[-1].end() :], options, n)
  for pattern in (_PHRASE_LETTER, _VERDICT_LETTER, _MARKED_LETTER):
    hit = _last_letter(pattern, text, n)
    if hit:
      return hit[1]
  # Bare letters: one distinct letter is the answer; several ("B, C") are a hedge.
  found = {_letter_index(c, n) for c in _BARE_LETTER.findall(text)} - {None}
  return found.pop() if len(found) == 1 else None


def answer_index(answer: int | str, num_options: int) -> int:
  """The 0-based index of a reference answer given as an index or a letter."""
  if isinstance(answer, str):
    idx = _letter_index(answer.strip()[:1] or "?", num_options)
  else:
    idx = int(answer) if 0 <= int(answer) < num_options else None
  if idx is None:
    raise ValueError(
      f"reference answer {answer!r} is not one of {num_options} options "
      f"({string.ascii_uppercase[:num_options]} or 0..{num_options - 1})"
    )
  return idx


# ----------------------------------------------------------------------------------------
# Text rewards (host side), registered by name.
# ----------------------------------------------------------------------------------------


def _check_groups(texts_bg: Sequence[Sequence[str]], num_prompts: int | None) -> int:
  if num_prompts is not None and len(texts_bg) != num_prompts:
    raise ValueError(f"{len(texts_bg)} groups of completions but {num_prompts} answers")
  sizes = {len(g) for g in texts_bg}
  if len(sizes) > 1:
    raise ValueError(
      f"groups of completions differ in size {sorted(sizes)}; every "
      "prompt needs the same number of rollouts"
    )
  return sizes.pop() if sizes else 0


MC_RULES = ("lenient", "videor1")


@REWARDS.register("accuracy")
def accuracy(
  texts_bg: Sequence[Sequence[str]],
  answers_b: Sequence[int | str],
  options_b: Sequence[Options] | None = None,
  num_options: int = 4,
  *,
  problem_types_b: Sequence[str] | None = None,
  mc_rule: str = "lenient",
) -> RewardResult:
  """Accuracy per rollout, by each prompt's Video-R1 problem type.

  Multiple choice (the default type): 1 where the answer read equals the reference, else
  0; `mc_rule` "lenient" reads it with `extract_choice` (wrapped letters, option text),
  "videor1" requires the first answer span to be exactly the letter (Video-R1's rule).
  The other types score with their rule in `ANSWER_RULES` (numerical 0/1, OCR, free-form
  and regression in [0, 1]), against the reference given as a Video-R1 solution
  "<answer>X</answer>" (or the bare answer).

  Args:
    texts_bg: B groups of G decoded completions.
    answers_b: the reference of each prompt: an option index or letter (multiple
      choice), else the solution text.
    options_b: option texts per prompt (or None), see `extract_choice`.
    num_options: number of options where a prompt's options are not given.
    problem_types_b: each prompt's problem type (None: all multiple choice).
    mc_rule: "lenient" or "videor1", see above.

  Returns:
    Rewards [B, G] and metrics `unparseable_frac` (multiple-choice answers that could not
    be read) and `type/<type_metric_name(problem type)>`: the mean reward of that type's
    rollouts (e.g. "type/free_form").
  """
  if mc_rule not in MC_RULES:
    raise ValueError(f"mc_rule={mc_rule!r}; choose one of {MC_RULES}")
  g = _check_groups(texts_bg, len(answers_b))
  options_b = options_b if options_b is not None else [None] * len(answers_b)
  types_b = (
    list(problem_types_b) if problem_types_b is not None else ["multiple choice"] * len(answers_b)
  )
  if len(types_b) != len(answers_b):
    raise ValueError(f"{len(types_b)} problem types for {len(answers_b)} answers")
  values = np.zeros((len(texts_bg), g), np.float32)
  unparsed, num_mc = 0, 0
  for b, (group, answer, options, ptype) in enumerate(zip(texts_bg, answers_b, options_b, types_b)):
    ptype = check_problem_type(str(ptype or "multiple choice"))
    if ptype != "multiple choice":
      solution = answer if "<answer>" in str(answer) else f"<answer>{answer}</answer>"
      values[b] = [ANSWER_RULES.get(ptype)(text, solution) for text in group]
      continue
    n = len(options) if options is not None else num_options
    target = answer_index(answer, n)
    num_mc += len(group)
    for i, text in enumerate(group):
      if mc_rule == "videor1":
        values[b, i] = multiple_choice_rule(
          text, f"<answer>{string.ascii_uppercase[target]}</answer>"
        )
        unparsed += videor1_answer(text) is None
      else:
        choice = extract_choice(text, options, n)
        unparsed += choice is None
        values[b, i] = float(choice == target)
  metrics = {"unparseable_frac": unparsed / max(num_mc, 1)}
  names_b = [type_metric_name(t or "multiple choice") for t in types_b]
  for name in sorted(set(names_b)):
    metrics[f"type/{name}"] = float(values[[n == name for n in names_b]].mean())
  return RewardResult(values, metrics)


def has_format(text: str) -> bool:
  """True for `<think>...</think><answer>...</answer>` (whitespace around allowed)."""
  m = re.fullmatch(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", text, re.DOTALL)
  if not m:
    return False
  # Non-greedy groups can swallow extra tags ("...</answer><answer>..."); reject those.
  tags = re.compile(r"</?(?:think|answer)>", re.IGNORECASE)
  return not any(tags.search(part) for part in m.groups()) and bool(m.group(2).strip())


@REWARDS.register("format")
def format_reward(
  texts_bg: Sequence[Sequence[str]],
  answers_b: Sequence[int | str] = (),
  options_b: Sequence[Options] | None = None,
  num_options: int = 4,
  *,
  problem_types_b: Sequence[str] | None = None,
  mc_rule: str = "lenient",
) -> RewardResult:
  """1 where a completion has the think/answer structure (see `has_format`), else 0.

  The same for every problem type (Video-R1's format reward is one rule too).

  Args:
    texts_bg: B groups of G decoded completions.
    answers_b, options_b, num_options, problem_types_b, mc_rule: unused; the shared
      reward signature.

  Returns:
    Rewards [B, G]; no metrics.
  """
  del answers_b, options_b, num_options, problem_types_b, mc_rule
  g = _check_groups(texts_bg, None)
  values = np.array(
    [[float(has_format(t)) for t in group] for group in texts_bg], np.float32
  ).reshape(len(texts_bg), g)
  return RewardResult(values, {})


def score_text_rewards(
  names: Sequence[str],
  texts_bg: Sequence[Sequence[str]],
  answers_b: Sequence[int | str],
  options_b: Sequence[Options] | None = None,
  num_options: int = 4,
  *,
  problem_types_b: Sequence[str] | None = None,
  mc_rule: str = "lenient",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Runs the registered text rewards `names` over one batch of groups.

  Returns:
    ({name: rewards [B, G]}, {"<name>/<metric>": value}, e.g. "accuracy/type/OCR").
  """
  values, metrics = {}, {}
  for name in names:
    result = REWARDS.get(name)(
      texts_bg, answers_b, options_b, num_options, problem_types_b=problem_types_b, mc_rule=mc_rule
    )
    values[name] = result.values_bg
    metrics.update({f"{name}/{k}": v for k, v in result.metrics.items()})
  return values, metrics


# ----------------------------------------------------------------------------------------
# Saliency-enhanced keyframe reward (pure jnp).
# ----------------------------------------------------------------------------------------

SALIENCY_RULES: Registry[Callable[[jax.Array, jax.Array, float], jax.Array]] = Registry(
  "saliency rule"
)


@SALIENCY_RULES.register("ratio")
def _ratio_rule(p_b: jax.Array, p_tilde_b: jax.Array, mu: float) -> jax.Array:
  # Video-R1's T-GRPO test: ordered accuracy at least mu times the shuffled accuracy.
  return p_b >= mu * p_tilde_b


@SALIENCY_RULES.register("strict")
def _strict_rule(p_b: jax.Array, p_tilde_b: jax.Array, mu: float) -> jax.Array:
  del mu
  return p_b > p_tilde_b


def saliency_bonus(
  correct_ordered_bg: jax.Array,
  correct_disordered_bh: jax.Array,
  *,
  alpha: float = 0.3,
  mu: float = 0.8,
  rule: str = "ratio",
  axis_name: str | None = None,
  eligible_b: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The KF-GRPO saliency-enhanced reward for the ordered-keyframe rollouts.

  Per prompt, p is the accuracy of its G ordered rollouts and p~ that of its G'
  disordered rollouts. Where the ordered view wins (`rule`: "ratio" p >= mu p~ as in
  T-GRPO, or "strict" p > p~), each correct ordered rollout gets `alpha`. A group with
  no correct ordered rollout cannot earn a bonus and is not counted as a win.

  Args:
    correct_ordered_bg: [B, G] correctness (bool, or reward values; > 0.5 is correct).
    correct_disordered_bh: [B, G'] correctness of the disordered rollouts.
    alpha: the bonus.
    mu: the ratio rule's factor.
    rule: a name in `SALIENCY_RULES`.
    axis_name: if set, metrics are averaged over this mapped axis too.
    eligible_b: optional bool [B]; False rows never get the bonus (image items: a still
      has no frame order, so Video-R1 gives them no temporal reward either).

  Returns:
    (bonus [B, G] float32, metrics: ordered_acc (mean p), disordered_acc (mean p~),
    order_win_frac (fraction of groups given the bonus), bonus_mean).
  """
  if (
    correct_ordered_bg.ndim != 2
    or correct_disordered_bh.ndim != 2
    or (correct_ordered_bg.shape[0] != correct_disordered_bh.shape[0])
  ):
    raise ValueError(
      f"saliency_bonus: need [B, G] ordered and [B, G'] disordered correctness, got "
      f"{correct_ordered_bg.shape} and {correct_disordered_bh.shape}"
    )
  ordered_bg = (jnp.asarray(correct_ordered_bg) > 0.5).astype(jnp.float32)
  disordered_bh = (jnp.asarray(correct_disordered_bh) > 0.5).astype(jnp.float32)
  p_b = ordered_bg.mean(axis=1)
  p_tilde_b = disordered_bh.mean(axis=1)
  win_b = SALIENCY_RULES.get(rule)(p_b, p_tilde_b, mu) & (p_b > 0)
  if eligible_b is not None:
    win_b = win_b & jnp.asarray(eligible_b, bool)
  bonus_bg = alpha * win_b[:, None].astype(jnp.float32) * ordered_bg
  metrics = {
    "ordered_acc": p_b.mean(),
    "disordered_acc": p_tilde_b.mean(),
    "order_win_frac": win_b.astype(jnp.float32).mean(),
    "bonus_mean": bonus_bg.mean(),
  }
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  return bonus_bg, metrics


def length_bonus(
  correct_bg: jax.Array,
  lengths_bg: jax.Array,
  *,
  bonus: float = 0.2,
  min_tokens: int = 320,
  max_tokens: int = 512,
  min_correct: int = 2,
) -> jax.Array:
  """Video-R1's length-control reward: a bonus for correct answers of a moderate length.

  A correct rollout whose completion has between `min_tokens` and `max_tokens` tokens
  (inclusive) gets `bonus`, but only in groups with at least `min_correct` correct
  rollouts (Video-R1 applies it where more than one answer is correct, so a lone correct
  answer is not pushed towards a length). Pure jnp.

  Args:
    correct_bg: [B, G] accuracy (0/1) of the rollouts.
    lengths_bg: [B, G] completion lengths in tokens.
    bonus, min_tokens, max_tokens, min_correct: the rule above (Video-R1: 0.2, 320,
      512, 2).

  Returns:
    [B, G] float32 bonus.
  """
  correct_bg = jnp.asarray(correct_bg, jnp.float32) > 0.5
  lengths_bg = jnp.asarray(lengths_bg)
  in_range = (lengths_bg >= min_tokens) & (lengths_bg <= max_tokens)
  enough = correct_bg.sum(-1, keepdims=True) >= min_correct
  return jnp.where(correct_bg & in_range & enough, jnp.float32(bonus), jnp.float32(0.0))


def combine_rewards(
  components: Mapping[str, jax.Array], weights: Mapping[str, float], axis_name: str | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of reward components, keeping each one for logging.

  Args:
    components: {name: [B, G] rewards}, e.g. accuracy, format, saliency.
    weights: {name: weight}; every component needs one (weights of absent components
      are ignored, so a config can keep a weight for a disabled reward).
    axis_name: if set, the logged means are averaged over this mapped axis too.

  Returns:
    (total [B, G], {"reward/<name>": unweighted mean, "reward/total": mean total}).
  """
  if not components:
    raise ValueError("combine_rewards: no reward components")
  missing = sorted(set(components) - set(weights))
  if missing:
    raise KeyError(
      f"no weight for reward component(s) {missing}; set "
      f"config.rl.reward_weights.<name> (known: {sorted(weights)})"
    )
  total = sum(weights[k] * jnp.asarray(v, jnp.float32) for k, v in components.items())
  metrics = {f"reward/{k}": jnp.asarray(v, jnp.float32).mean() for k, v in components.items()}
  metrics["reward/total"] = total.mean()
  if axis_name is not None:
    metrics = jax.lax.pmean(metrics, axis_name)
  return total, metrics


def kf_grpo_rewards(
  components_bg: Mapping[str, jax.Array],
  correct_disordered_bh: jax.Array | None,
  *,
  weights: Mapping[str, float],
  saliency: bool = True,
  alpha: float = 0.3,
  mu: float = 0.8,
  rule: str = "ratio",
  axis_name: str | None = None,
  eligible_b: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Total reward of the ordered rollouts: weighted text rewards + saliency bonus.

  Args:
    components_bg: text rewards of the ordered rollouts, {name: [B, G]}; with
      `saliency`, "accuracy" must be among them (the bonus goes to correct answers).
    correct_disordered_bh: accuracy of the disordered rollouts [B, G'] (None when
      `saliency` is off).
    weights: {name: weight} for every component, "saliency" included when on.
    saliency: add the KF-GRPO bonus (config.rl.saliency.enabled).
    alpha, mu, rule: the bonus settings, see `saliency_bonus`.
    axis_name: mapped axis the batch is split over, for the logged means.
    eligible_b: optional bool [B], prompts that may earn the bonus (see `saliency_bonus`).

  Returns:
    (total [B, G], weighted bonus [B, G] inside the total (zeros when off; feed it to
    `grpo.bonus_advantage_shift`), metrics "reward/<name>", "reward/total" and, with
    saliency, "saliency/<metric>").
  """
  components = dict(components_bg)
  metrics = {}
  if saliency:
    if "accuracy" not in components or correct_disordered_bh is None:
      raise ValueError(
        "the saliency bonus needs the ordered 'accuracy' reward and the "
        "disordered rollouts' accuracy; or set config.rl.saliency.enabled"
        "=false"
      )
    bonus_bg, sal_metrics = saliency_bonus(
      components["accuracy"],
      correct_disordered_bh,
      alpha=alpha,
      mu=mu,
      rule=rule,
      axis_name=axis_name,
      eligible_b=eligible_b,
    )
    components["saliency"] = bonus_bg
    metrics.update({f"saliency/{k}": v for k, v in sal_metrics.items()})
  total_bg, reward_metrics = combine_rewards(components, weights, axis_name)
  metrics.update(reward_metrics)
  weighted_bonus_bg = (
    weights["saliency"] * components["saliency"] if saliency else jnp.zeros_like(total_bg)
  )
  return total_bg, weighted_bonus_bg, metrics
