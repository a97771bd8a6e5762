"""Tests for chronoforge_jax.rl.rewards: answer extraction, text rewards, saliency bonus.

The saliency bonus is checked against a plain NumPy float64 transcription of the rule in
PAPER.md; extraction against hand-labelled strings and generated ones (hypothesis).
"""

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax.rl import rewards

OPTIONS = ["A. a blue cube", "B. red", "C. red ball", "D. the dog runs away"]


@pytest.mark.parametrize(
  "text, options, expected",
  [
    ("<answer>B</answer>", None, 1),
    ("<think>It is A, no wait.</think><answer>(c)</answer>", None, 2),
    ("<answer> **D** </answer>", None, 3),
    ("<answer>[A].</answer>", None, 0),
    ("<answer>D. the dog runs away</answer>", None, 3),
    ("<answer>b) red</answer>", None, 1),
    ("<answer>The answer is C</answer>", None, 2),
    ("<answer>B or C</answer>", None, None),  # a hedge earns nothing
    ("<answer>E</answer>", None, None),  # out of range for 4 options
    ("<answer>maybe</answer>", None, None),
    ("<answer>B</answer> then <answer>C</answer>", None, 2),  # the last tag counts
    ("<think>x</think><answer>a red ball.", OPTIONS, 2),  # unclosed tag, option text
    ("<answer>Red</answer>", OPTIONS, 1),  # "red" vs "red ball": exact wins
    ("<answer>the dog runs away!</answer>", OPTIONS, 3),
    ("<answer>A red ball</answer>", OPTIONS, 2),  # article "A" is not option A
    ("I think the answer is (B).", None, 1),
    ("the answer is c.", None, 2),
    ("The answer is a dog", None, None),  # "a" is an article, not option a
    ("A man walks in, so C. A dog follows.", None, 2),
    ("Final: D", None, 3),
    ("nothing to see here", None, None),
    ("e.g. it is unclear", None, None),
    ("<answer>F</answer>", OPTIONS + ["E. x", "F. y"], 5),
    # Issue 11: the no-tag fallback once took the last bare letter.
    ("B is correct. A is not.", None, 1),
    ("B, C", None, None),  # two letters: a hedge, not C
    ("(C) is the right answer, not D", None, 2),
    ("A dog runs, so B", None, 1),
  ],
)
def test_extract_choice_labelled(text, options, expected):
  assert rewards.extract_choice(text, options) == expected


_WRAPS = [
  "{}",
  "({})",
  "{}.",
  "[{}]",
  "**{}**",
  " {} ",
  "{})",
  "Answer: {}",
  "option {}",
  "{}: the thing",
]


@settings(max_examples=60, deadline=None)
@given(
  idx=st.integers(0, 7),
  wrap=st.sampled_from(_WRAPS),
  lower=st.booleans(),
  noise=st.text(alphabet="ABCD bxyz,.()", max_size=30),
)
def test_extract_choice_wrapped_letter(idx, wrap, lower, noise):
  letter = "ABCDEFGH"[idx]
  letter = letter.lower() if lower else letter
  # Letters in the reasoning are not the answer.
  text = f"<think>{noise}</think><answer>{wrap.format(letter)}</answer>"
  assert rewards.extract_choice(text, num_options=8) == idx


@settings(max_examples=40, deadline=None)
@given(
  words=st.lists(
    st.text(alphabet="klmnopqrstuvw", min_size=3, max_size=8), min_size=2, max_size=6, unique=True
  ),
  pick=st.integers(0, 5),
  upper=st.booleans(),
  tail=st.sampled_from(["", ".", "!"]),
)
def test_extract_choice_option_text(words, pick, upper, tail):
  pick %= len(words)
  span = words[pick].upper() if upper else words[pick]
  assert rewards.extract_choice(f"<answer>{span}{tail}</answer>", words) == pick


def test_extract_choice_rejects_bad_option_count():
  with pytest.raises(ValueError, match="options"):
    rewards.extract_choice("B", num_options=30)


def test_accuracy_reward_and_unparseable_fraction():
  texts = [
    ["<answer>A</answer>", "<answer>B</answer>", "no idea"],
    ["<answer>the dog runs away</answer>", "<answer>A</answer>", "(D)"],
  ]
  result = rewards.accuracy(texts, ["A", 3], [None, OPTIONS])
  np.testing.assert_array_equal(result.values_bg, [[1, 0, 0], [1, 0, 1]])
  assert result.values_bg.dtype == np.float32
  assert result.metrics["unparseable_frac"] == pytest.approx(1 / 6)


def test_accuracy_reward_rejects_bad_input():
  with pytest.raises(ValueError, match="not one of 4 options"):
    rewards.accuracy([["A"]], ["Z"])
  with pytest.raises(ValueError, match="differ in size"):
    rewards.accuracy([["A"], ["A", "B"]], [0, 0])
  with pytest.raises(ValueError, match="2 groups of completions but 1 answers"):
    rewards.accuracy([["A"], ["B"]], [0])


@pytest.mark.parametrize(
  "text, expected",
  [
    ("<think>because</think><answer>B</answer>", True),
    ("  <think>\nmulti\nline</think>\n<answer>B</answer>\n", True),
    ("<think></think><answer>C</answer>", True),
    ("<answer>B</answer>", False),
    ("<think>x</think>", False),
    ("<think>x</think><answer> </answer>", False),
    ("<think>x</think><answer>B</answer> trailing", False),
    ("<think>x</think><answer>B</answer><answer>C</answer>", False),
    ("<think>x<think>y</think><answer>B</answer>", False),
    ("<answer>B</answer><think>x</think>", False),
  ],
)
def test_format_reward(text, expected):
  assert rewards.has_format(text) is expected
  result = rewards.REWARDS.get("format")([[text, text]])
  np.testing.assert_array_equal(result.values_bg, [[float(expected)] * 2])


def test_score_text_rewards_by_name():
  texts = [["<think>t</think><answer>B</answer>", "B"]]
  values, metrics = rewards.score_text_rewards(["accuracy", "format"], texts, [1])
  np.testing.assert_array_equal(values["accuracy"], [[1, 1]])
  np.testing.assert_array_equal(values["format"], [[1, 0]])
  assert metrics == {"accuracy/unparseable_frac": 0.0, "accuracy/type/multiple_choice": 1.0}
  with pytest.raises(KeyError, match="unknown reward function 'lenght'"):
    rewards.score_text_rewards(["lenght"], texts, [1])


def _np_saliency(ordered, disordered, alpha, mu, rule):
  """PAPER.md's rule in float64: bonus alpha for correct ordered answers when order wins."""
  ordered = ordered.astype(np.float64)
  p = ordered.mean(1)
  p_tilde = disordered.astype(np.float64).mean(1)
  win = (p >= mu * p_tilde) if rule == "ratio" else (p > p_tilde)
  win &= p > 0
  bonus = alpha * win[:, None] * ordered
  return bonus, dict(
    ordered_acc=p.mean(),
    disordered_acc=p_tilde.mean(),
    order_win_frac=win.mean(),
    bonus_mean=bonus.mean(),
  )


_saliency_jit = jax.jit(rewards.saliency_bonus, static_argnames=("rule",))


@settings(max_examples=40, deadline=None)
@given(
  ordered=hnp.arrays(np.bool_, (5, 4)),
  disordered=hnp.arrays(np.bool_, (5, 4)),
  alpha=st.floats(0.0, 1.0),
  # Values whose products with accuracies k/4 are exact in float32 and float64, so
  # ties (p == mu p~, where ">=" and ">" differ) compare the same in both.
  mu=st.sampled_from([0.0, 0.5, 0.75, 0.8, 1.0, 1.25, 2.0]),
  rule=st.sampled_from(["ratio", "strict"]),
)
def test_saliency_bonus_matches_numpy(ordered, disordered, alpha, mu, rule):
  bonus, metrics = _saliency_jit(
    jnp.asarray(ordered, jnp.float32), disordered, alpha=alpha, mu=mu, rule=rule
  )
  want_bonus, want_metrics = _np_saliency(ordered, disordered, alpha, mu, rule)
  np.testing.assert_allclose(bonus, want_bonus, rtol=1e-6, atol=1e-7)
  for k, v in want_metrics.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_saliency_bonus_known_groups():
  ordered = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  disordered = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  bonus, metrics = rewards.saliency_bonus(ordered, disordered, alpha=0.3, mu=0.8)
  # Group 0: 0.5 >= 0.8*0.25; group 1: 0.25 < 0.8*0.75; group 2: nothing correct;
  # group 3: 1 >= 0.8.
  np.testing.assert_allclose(
    bonus, 0.3 * np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]), rtol=1e-6
  )
  assert float(metrics["order_win_frac"]) == pytest.approx(0.5)
  _, strict = rewards.saliency_bonus(ordered, disordered, rule="strict")
  assert float(strict["order_win_frac"]) == pytest.approx(0.25)  # group 3 ties: loses
  _, ratio_one = rewards.saliency_bonus(ordered, disordered, mu=1.0)
  assert float(ratio_one["order_win_frac"]) == pytest.approx(0.5)  # ">=": a tie wins


def test_saliency_bonus_pmap_metrics_are_global():
  rng = np.random.default_rng(0)
  ordered = rng.random((16, 4)) > 0.5
  disordered = rng.random((16, 3)) > 0.6
  bonus, metrics = jax.pmap(
    lambda o, d: rewards.saliency_bonus(o, d, axis_name="dev"), axis_name="dev"
  )(ordered.reshape(8, 2, 4), disordered.reshape(8, 2, 3))
  want_bonus, want_metrics = _np_saliency(ordered, disordered, 0.3, 0.8, "ratio")
  np.testing.assert_allclose(np.asarray(bonus).reshape(16, 4), want_bonus, rtol=1e-6)
  for k, v in want_metrics.items():
    np.testing.assert_allclose(metrics[k], np.full(8, v), rtol=1e-5, err_msg=k)


def test_saliency_bonus_rejects_mismatched_batches():
  with pytest.raises(ValueError, match=r"\[B, G\] ordered"):
    rewards.saliency_bonus(np.zeros((2, 4)), np.zeros((3, 4)))


def test_combine_rewards_weights_and_logs_components():
  acc = np.array([[1.0, 0.0], [1.0, 1.0]])
  fmt = np.array([[1.0, 1.0], [0.0, 1.0]])
  sal = np.array([[0.3, 0.0], [0.0, 0.0]])
  total, metrics = rewards.combine_rewards(
    {"accuracy": acc, "format": fmt, "saliency": sal},
    {"accuracy": 1.0, "format": 0.5, "saliency": 2.0, "unused": 9.0},
  )
  np.testing.assert_allclose(total, acc + 0.5 * fmt + 2.0 * sal, rtol=1e-6)
  assert float(metrics["reward/format"]) == pytest.approx(0.75)
  assert float(metrics["reward/saliency"]) == pytest.approx(0.075)
  assert float(metrics["reward/total"]) == pytest.approx(np.mean(acc + 0.5 * fmt + 2 * sal))
  with pytest.raises(KeyError, match="no weight for reward component.*'format'"):
    rewards.combine_rewards({"format": fmt}, {"accuracy": 1.0})


def test_kf_grpo_rewards_composes_text_rewards_and_bonus():
  rng = np.random.default_rng(1)
  acc = (rng.random((6, 4)) > 0.4).astype(np.float32)
  fmt = (rng.random((6, 4)) > 0.2).astype(np.float32)
  disordered = rng.random((6, 3)) > 0.5
  weights = {"accuracy": 1.0, "format": 0.5, "saliency": 2.0}
  total, bonus, metrics = jax.jit(
    functools.partial(rewards.kf_grpo_rewards, weights=weights, alpha=0.3, mu=0.8)
  )({"accuracy": acc, "format": fmt}, disordered)
  want_bonus, want_sal = _np_saliency(acc, disordered, 0.3, 0.8, "ratio")
  np.testing.assert_allclose(bonus, 2.0 * want_bonus, rtol=1e-6)
  np.testing.assert_allclose(total, acc + 0.5 * fmt + 2.0 * want_bonus, rtol=1e-6)
  np.testing.assert_allclose(metrics["saliency/order_win_frac"], want_sal["order_win_frac"])
  np.testing.assert_allclose(metrics["reward/saliency"], want_bonus.mean(), rtol=1e-6)
  off_total, off_bonus, off_metrics = rewards.kf_grpo_rewards(
    {"accuracy": acc, "format": fmt}, None, weights=weights, saliency=False
  )
  np.testing.assert_allclose(off_total, acc + 0.5 * fmt, rtol=1e-6)
  assert not np.asarray(off_bonus).any() and "reward/saliency" not in off_metrics
  with pytest.raises(ValueError, match="saliency.enabled"):
    rewards.kf_grpo_rewards({"format": fmt}, disordered, weights=weights)


def _np_length_bonus(correct, lengths, bonus, lo, hi, min_correct):
  """Video-R1's length-control loop, group by group, in plain Python."""
  out = np.zeros(correct.shape, np.float64)
  for b in range(correct.shape[0]):
    selected = [i for i in range(correct.shape[1]) if correct[b, i] > 0.1]
    if len(selected) >= min_correct:
      for i in selected:
        if lo <= lengths[b, i] <= hi:
          out[b, i] += bonus
  return out


@settings(max_examples=40, deadline=None)
@given(
  correct=hnp.arrays(np.bool_, (6, 4)),
  lengths=hnp.arrays(np.int32, (6, 4), elements=st.integers(0, 40)),
  lo=st.integers(0, 20),
  span=st.integers(0, 20),
  min_correct=st.integers(1, 3),
)
def test_length_bonus_matches_video_r1_loop(correct, lengths, lo, span, min_correct):
  got = jax.jit(
    functools.partial(
      rewards.length_bonus, bonus=0.2, min_tokens=lo, max_tokens=lo + span, min_correct=min_correct
    )
  )(correct.astype(np.float32), lengths)
  want = _np_length_bonus(correct, lengths, 0.2, lo, lo + span, min_correct)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_length_bonus_known_groups_and_in_the_total():
  correct = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], np.float32)
  lengths = np.array([[400, 100, 400, 512], [400, 400, 400, 400]])
  bonus = rewards.length_bonus(correct, lengths)  # Video-R1: +0.2, 320-512, >= 2 correct.
  # Row 0: 400 and 512 in range and correct; 100 too short; the wrong 400 gets nothing.
  # Row 1: a lone correct answer gets no length bonus.
  np.testing.assert_allclose(bonus, [[0.2, 0, 0, 0.2], [0, 0, 0, 0]], rtol=1e-6)
  total, _, metrics = rewards.kf_grpo_rewards(
    {"accuracy": correct, "format": np.ones_like(correct), "length": bonus},
    None,
    weights={"accuracy": 1.0, "format": 1.0, "length": 1.0},
    saliency=False,
  )
  np.testing.assert_allclose(total, correct + 1.0 + bonus, rtol=1e-6)
  assert float(metrics["reward/length"]) == pytest.approx(0.4 / 8)


# ----------------------------------------------------------------------------------------
# Video-R1's five problem types, against a plain transcription of its reward.
# ----------------------------------------------------------------------------------------
# TRANSCRIBED from Video-R1 src/r1-v/src/open_r1/grpo.py @
# 59d65c347e44efa71be27abf9d89b4a2bb7d1c05 (`accuracy_reward`), one item at a time, with
# the debug logging dropped. Kept as written there, quirks included.
import re as _re  # noqa: E402

from rouge_score import rouge_scorer as _rouge_scorer  # noqa: E402


def _videor1_accuracy(content, sol, question_type):
  def extract_answer(text):
    pattern = r"<answer>\s*(.*?)\s*</answer>"
    match = _re.search(pattern, text, _re.DOTALL)
    if match:
      return match.group(1).strip()
    return ""

  def normalize_number(num_str):
    try:
      num_str = num_str.replace(",", "")
      return float(num_str)
    except Exception:
      return None

  def wer(reference, hypothesis):
    ref_words = reference.split()
    hyp_words = hypothesis.split()
    m = len(ref_words)
    n = len(hyp_words)
    d = [[0] * (n + 1) for _ in range(m + 1)]
    for i in range(m + 1):
      d[i][0] = i
    for j in range(n + 1):
      d[0][j] = j
    for i in range(1, m + 1):
      for j in range(1, n + 1):
        if ref_words[i - 1] == hyp_words[j - 1]:
          d[i][j] = d[i - 1][j - 1]
        else:
          d[i][j] = 1 + min(d[i - 1][j], d[i][j - 1], d[i - 1][j - 1])
    return d[m][n] / max(1, m)

  def compute_rouge_score(reference, hypothesis, use_stemmer=True):
    scorer = _rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)
    scores = scorer.score(reference, hypothesis)
    return (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3

  try:
    output_ans = extract_answer(content)
    gt_ans = extract_answer(sol)
    if question_type == "multiple choice":
      reward = 1.0 if output_ans.strip() == gt_ans.strip() else 0.0
    elif question_type == "numerical":
      gt_has_decimal = ("." in gt_ans) or ("," in gt_ans)
      out_has_decimal = ("." in output_ans) or ("," in output_ans)
      if gt_has_decimal != out_has_decimal:
        reward = 0.0
      else:
        gt_number = normalize_number(gt_ans)
        out_number = normalize_number(output_ans)
        if gt_number is None or out_number is None:
          reward = 0.0
        else:
          reward = 1.0 if round(gt_number, 2) == round(out_number, 2) else 0.0
    elif question_type == "OCR":
      error_rate = wer(gt_ans, output_ans)
      reward = 1 - error_rate
      reward = max(0.0, min(1.0, reward))
    elif question_type == "free-form":
      score = compute_rouge_score(gt_ans, output_ans)
      reward = max(0.0, min(1.0, score))
    elif question_type == "regression":
      gt_number = normalize_number(gt_ans)
      out_number = normalize_number(output_ans)
      if gt_number is None or out_number is None:
        reward = 0.0
      rel_diff = (abs(out_number - gt_number) + 1e-9) / (abs(gt_number) + 1e-9)
      rel_diff = min(1.0, max(0.0, rel_diff))
      reward = 1 - rel_diff
    else:
      reward = 0.0
  except Exception:
    reward = 0.0
  return reward


# ---------------------------------------------------------------- end of transcription


def _a(x):
  return f"<think>reasoning</think><answer>{x}</answer>"


# (problem type, completion, solution, port's reward when it deliberately deviates from
# Video-R1 (see rewards.py), else None: the port must equal the transcription).
_TABLE = [
  ("multiple choice", _a("B"), "<answer>B</answer>", None),
  ("multiple choice", _a(" B "), "<answer>B</answer>", None),
  ("multiple choice", _a("b"), "<answer>B</answer>", None),
  ("multiple choice", _a("(B)"), "<answer>B</answer>", None),
  ("multiple choice", _a("B. red"), "<answer>B</answer>", None),
  ("multiple choice", "B", "<answer>B</answer>", None),
  ("multiple choice", _a("C") + "<answer>B</answer>", "<answer>B</answer>", None),
  ("multiple choice", "<answer>\nB\n</answer>", "<answer>B</answer>", None),
  ("numerical", _a("42"), "<answer>42</answer>", None),
  ("numerical", _a("42.001"), "<answer>42.00</answer>", None),
  ("numerical", _a("3.14159"), "<answer>3.14</answer>", None),
  ("numerical", _a("3.15"), "<answer>3.14</answer>", None),
  ("numerical", _a("forty-two"), "<answer>42</answer>", None),
  ("numerical", _a("42 apples"), "<answer>42</answer>", None),
  ("numerical", _a("-7"), "<answer>-7</answer>", None),
  ("numerical", "42", "<answer>42</answer>", None),
  ("numerical", _a("3.0"), "<answer>3</answer>", 1.0),  # "." on one side only
  ("numerical", _a("1,000"), "<answer>1000</answer>", 1.0),  # thousands comma
  ("numerical", _a("1,5"), "<answer>1.5</answer>", None),  # comma drops: 15 != 1.5
  ("OCR", _a("the quick brown fox"), "<answer>the quick brown fox</answer>", None),
  ("OCR", _a("the quick brown"), "<answer>the quick brown fox</answer>", None),
  ("OCR", _a("the quick red fox"), "<answer>the quick brown fox</answer>", None),
  ("OCR", _a("a b c d e f g h"), "<answer>the fox</answer>", None),
  ("OCR", _a(""), "<answer>STOP</answer>", None),
  ("OCR", "STOP", "<answer>STOP</answer>", None),
  ("OCR", _a("Stop"), "<answer>STOP</answer>", None),
  ("free-form", _a("The man opens the door."), "<answer>The man opens the door.</answer>", None),
  ("free-form", _a("a man opened doors"), "<answer>The man opens the door.</answer>", None),
  ("free-form", _a("cats running quickly"), "<answer>A dog sleeps.</answer>", None),
  ("free-form", "no tags here", "<answer>A dog sleeps.</answer>", None),
  ("regression", _a("10"), "<answer>10</answer>", None),
  ("regression", _a("12"), "<answer>10</answer>", None),
  ("regression", _a("7.5"), "<answer>10</answer>", None),
  ("regression", _a("35"), "<answer>10</answer>", None),
  ("regression", _a("-3"), "<answer>-4</answer>", None),
  ("regression", _a("ten"), "<answer>10</answer>", None),
  ("regression", "10", "<answer>10</answer>", None),
  ("regression", _a("nan"), "<answer>10</answer>", 0.0),  # Video-R1: 1.0
  ("regression", _a("0"), "<answer>0</answer>", 1.0),  # Video-R1: 0 for every answer
  ("regression", _a("0.5"), "<answer>0</answer>", None),
]


@pytest.mark.parametrize("ptype, completion, solution, deviation", _TABLE)
def test_videor1_rules_match_transcription(ptype, completion, solution, deviation):
  port = rewards.ANSWER_RULES.get(ptype)(completion, solution)
  reference = _videor1_accuracy(completion, solution, ptype)
  if deviation is None:
    assert port == pytest.approx(reference, abs=1e-6)
  else:
    assert port == pytest.approx(deviation, abs=1e-6)
    assert port != pytest.approx(reference, abs=1e-6)  # A real, documented deviation.


def test_videor1_rules_cover_the_five_types():
  assert sorted(rewards.ANSWER_RULES.names()) == sorted(rewards.PROBLEM_TYPES)
  assert {t for t, *_ in _TABLE} == set(rewards.PROBLEM_TYPES)
  # Partial credit exists where Video-R1 gives it (and the table exercises it).
  ocr = rewards.ANSWER_RULES.get("OCR")(
    _a("the quick brown"), "<answer>the quick brown fox</answer>"
  )
  assert ocr == pytest.approx(0.75)


def test_solution_without_tags_is_an_error():
  # Video-R1 reads "" and gives 1.0 to any completion without tags.
  assert _videor1_accuracy("no tags", "B", "multiple choice") == 1.0
  with pytest.raises(ValueError, match="no <answer>"):
    rewards.ANSWER_RULES.get("multiple choice")("no tags", "B")


def test_accuracy_reward_by_problem_type_and_metrics():
  texts = [
    [_a("B"), _a("C")],
    [_a("3"), _a("4")],
    [_a("the quick brown"), "x"],
    [_a("12"), _a("10")],
  ]
  answers = [1, "<answer>3</answer>", "the quick brown fox", "<answer>10</answer>"]
  types = ["multiple choice", "numerical", "OCR", "regression"]
  result = rewards.REWARDS.get("accuracy")(texts, answers, problem_types_b=types)
  expected = [
    [
      _videor1_accuracy(
        t,
        s if "<answer>" in str(s) else f"<answer>{'ABCD'[s] if isinstance(s, int) else s}</answer>",
        p,
      )
      for t in g
    ]
    for g, s, p in zip(texts, answers, types)
  ]
  np.testing.assert_allclose(result.values_bg, expected, atol=1e-6)
  assert result.metrics["type/multiple_choice"] == pytest.approx(0.5)
  assert result.metrics["type/numerical"] == pytest.approx(0.5)
  assert result.metrics["type/OCR"] == pytest.approx(0.375)
  assert result.metrics["type/regression"] == pytest.approx(np.mean(expected[3]))
  with pytest.raises(ValueError, match="unknown problem_type 'counting'"):
    rewards.REWARDS.get("accuracy")(texts[:1], [1], problem_types_b=["counting"])


@pytest.mark.parametrize(
  "text, lenient, videor1",
  [(_a("B"), 1.0, 1.0), (_a("(B)"), 1.0, 0.0), (_a("B. red"), 1.0, 0.0), ("B", 1.0, 0.0)],
)
def test_accuracy_multiple_choice_rules(text, lenient, videor1):
  for rule, want in (("lenient", lenient), ("videor1", videor1)):
    got = rewards.REWARDS.get("accuracy")([[text]], [1], mc_rule=rule).values_bg
    assert float(got[0, 0]) == want, rule


def test_saliency_bonus_skips_ineligible_prompts():
  # Image items (a still has no frame order) never earn the bonus, as in Video-R1.
  ordered = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
  disordered = jnp.zeros((2, 3))
  full, _ = rewards.saliency_bonus(ordered, disordered, alpha=0.3)
  bonus, metrics = rewards.saliency_bonus(
    ordered, disordered, alpha=0.3, eligible_b=jnp.array([True, False])
  )
  np.testing.assert_allclose(full, [[0.3, 0.3, 0], [0.3, 0.3, 0]])
  np.testing.assert_allclose(bonus, [[0.3, 0.3, 0], [0, 0, 0]])
  assert float(metrics["order_win_frac"]) == 0.5
