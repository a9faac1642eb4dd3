import random

from localsynth.generation.prompts import (
    derive_seed,
    sample_examples,
    sample_style,
    system_message,
    user_turn,
)
from localsynth.tasks import load_task


def test_seed_is_stable_and_distinct():
    a = derive_seed(0, "sms_spam", "spam", 3, 1)
    assert a == derive_seed(0, "sms_spam", "spam", 3, 1)
    others = {derive_seed(0, "sms_spam", "spam", c, t) for c in range(50) for t in range(5)}
    assert len(others) == 250
    assert derive_seed(1, "sms_spam", "spam", 3, 1) != a
    assert 0 <= a < 2**31


def test_zero_shot_turns_carry_diversity_prompt_every_n():
    task = load_task("sms_spam")
    style = sample_style(task, 0, "ham")
    assert style == sample_style(task, 0, "ham") and set(style) == set(task.styles)
    drawn = {tuple(sample_style(task, seed, "ham").values()) for seed in range(500)}
    assert len(drawn) == len(task.styles["sender"]["ham"]) * len(task.styles["tone"])  # every combination occurs
    # per-label attributes draw from the label's own values only
    assert {sample_style(task, seed, "spam")["sender"] for seed in range(500)} == set(task.styles["sender"]["spam"])
    every = task.conversation.diversity_every
    diversity = task.prompts.diversity.strip()[:30]
    for turn in range(6):
        content = user_turn(task, "spam", style, turn)["content"]
        assert (diversity in content) == (turn > 0 and turn % every == 0)
        assert "claims the reader has won a prize" in content  # the label description reaches the prompt
        assert str(task.max_words) in content


def test_system_message_sets_the_role():
    task = load_task("ag_news")
    msg = system_message(task, "Sports", {})
    assert msg["role"] == "system" and "journalist" in msg["content"].lower()


def test_few_shot_examples_resampled_per_seed_and_labelled_when_mixed():
    task = load_task("sms_spam")
    pool = {"ham": [f"ham text {i}" for i in range(20)], "spam": [f"spam text {i}" for i in range(20)]}
    a = sample_examples(pool, "spam", 3, True, random.Random(1))
    b = sample_examples(pool, "spam", 3, True, random.Random(2))
    assert len(a) == 3 and all(e.label == "spam" for e in a)
    assert [e.text for e in a] != [e.text for e in b]
    assert a == sample_examples(pool, "spam", 3, True, random.Random(1))
    content = user_turn(task, "spam", {"sender": "a bank", "tone": "urgent"}, 0, a)["content"]
    for ex in a:
        assert ex.text in content
    assert "do not copy" in content.lower()
    mixed = sample_examples(pool, "spam", 30, False, random.Random(3))
    assert len(mixed) == 30 and {e.label for e in mixed} == {"ham", "spam"}
    labelled = user_turn(task, "spam", {"sender": "x", "tone": "y"}, 0, mixed[:2], with_labels=True)["content"]
    assert f"({mixed[0].label})" in labelled
