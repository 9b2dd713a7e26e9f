"""Protection markers and long-text splitting: what goes out, and that it comes back exactly."""

import random

import pytest

from vichat.translate.errors import ProtectionError
from vichat.translate.protect import check_markers, protect
from vichat.translate.split import join_parts, split_text


@pytest.mark.parametrize(
    "span",
    [
        "```python\nfor x in xs:\n    print(x)\nelse:\n    pass\n```",
        "`print(x)`",
        "``a `tick` b``",
        "https://en.wikipedia.org/wiki/Python_(programming_language)",
        "www.example.com/path?q=1",
        "someone.else+tag@example.co.uk",
        "3.14",
        "1,000,000",
        "12:30",
        "{name}",
        "{0}",
        "{{ user }}",
        "%s",
        "%(count)d",
        "%.2f",
        "${HOME}",
        "$PATH",
        "<noinput>",
        '<a href="x">',
    ],
)
def test_span_is_protected_and_restored(span):
    text = f"Look at {span} for details."
    p = protect(text)
    assert span not in p.text or span.isdigit()
    assert p.spans == (span,)
    assert p.restore(p.text) == text


def test_url_keeps_sentence_punctuation_outside():
    p = protect("See https://example.com/a. Then (https://example.com/b), ok?")
    assert p.spans == ("https://example.com/a", "https://example.com/b")


def test_words_with_digits_are_not_numbers():
    p = protect("Drink H2O, play mp3 files in 3D for COVID-19.")
    assert p.spans == ("19",)


def test_unfenced_python_is_protected_whole():
    code = "def f(xs):\n    for x in xs:\n        print(x)\n    else:\n        print('empty')\n\n    return len(xs)"
    p = protect("Here is the function:\n" + code + "\nIt prints every item.")
    assert code in p.spans
    assert "print(" not in p.text and "else" not in p.text
    assert p.text.startswith("Here is the function:\n") and p.text.endswith("\nIt prints every item.")


@pytest.mark.parametrize(
    "prose",
    [
        "For example, in the morning:",
        "Return to the store before noon.",
        "y = mx + b, where m is the slope and b is the intercept.",
        "Give three tips for staying healthy.",
        "1. Eat a balanced diet and make sure to include plenty of fruits.",
    ],
)
def test_prose_is_not_mistaken_for_code(prose):
    p = protect(prose)
    assert p.translatable
    assert all(len(s) < 4 for s in p.spans), p.spans  # at most a number


def test_code_only_text_is_not_translatable():
    assert not protect("```\nx = 1\n```").translatable
    assert not protect("42").translatable
    assert not protect("https://example.com").translatable
    assert protect("Hello").translatable


def test_touching_spans_share_one_marker():
    p = protect("Call `f`123 now")
    assert p.spans == ("`f`123",)


def test_source_brackets_are_protected_too():
    text = "A \u27e6weird\u27e7 text with \u27e60\u27e7 in it"
    p = protect(text)
    assert p.restore(p.text) == text


@pytest.mark.parametrize(
    "received, problem",
    [
        ("Gọi \u27e60\u27e7 lúc", "missing \u27e61\u27e7"),
        ("Gọi \u27e60\u27e7 \u27e61\u27e7 \u27e61\u27e7", "repeated \u27e61\u27e7"),
        ("Gọi \u27e60\u27e7 \u27e61\u27e7 \u27e67\u27e7", "unexpected"),
        ("Gọi \u27e60\u27e7 \u27e61 lúc", "damaged"),
        ("Gọi 0 lúc 1", "missing"),
    ],
)
def test_damaged_markers_fail_never_corrupt(received, problem):
    p = protect("Call 555 at 12:30")
    assert p.text == "Call \u27e60\u27e7 at \u27e61\u27e7"
    assert problem in check_markers(p.text, received)
    with pytest.raises(ProtectionError):
        p.restore(received)


def test_spaces_inside_markers_are_tolerated():
    p = protect("Call 555 at 12:30")
    assert p.restore("Gọi \u27e6 0 \u27e7 lúc \u27e61 \u27e7") == "Gọi 555 lúc 12:30"


def test_markers_may_move():
    p = protect("Use {a} and {b}")
    assert p.restore("Dùng \u27e61\u27e7 sau \u27e60\u27e7") == "Dùng {b} sau {a}"


def test_split_prefers_paragraphs_then_sentences():
    text = "First paragraph here.\n\nSecond one. It has two sentences.\n\nThird."
    parts, seps = split_text(text, 36)
    assert parts == ["First paragraph here.", "Second one. It has two sentences.", "Third."]
    assert seps == ["\n\n", "\n\n"]
    parts, seps = split_text(text, 20)
    assert all(len(p) <= 20 for p in parts)
    assert join_parts(parts, seps) == text
    assert "Second one." in parts


def test_split_never_cuts_a_marker():
    text = "x" * 10 + "\u27e6123\u27e7" + "y" * 10
    parts, seps = split_text(text, 12)
    assert join_parts(parts, seps) == text
    assert any("\u27e6123\u27e7" in p for p in parts)


def test_split_round_trips_random_text():
    rng = random.Random(7)
    words = ["alpha", "beta.", "gamma?", "\u27e61\u27e7", "\n", "\n\n", "x" * 40, "  "]
    for _ in range(500):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))).strip()
        if not text:
            continue
        limit = rng.randint(8, 100)
        parts, seps = split_text(text, limit)
        assert join_parts(parts, seps) == text
        assert all(0 < len(p) <= limit for p in parts)


@pytest.mark.parametrize("brk", ["\n", "\r\n", "\r", "\u2028"])
def test_code_lines_are_found_whatever_ends_the_lines(brk):
    # The fast scan over a whole text only stands in for the line-by-line test when lines end
    # in "\n"; other breaks take the line-by-line path. Both must find the same code.
    p = protect(f"Run this:{brk}x = compute(1){brk}Then stop.")
    assert p.spans == ("x = compute(1)",)
    assert p.text == f"Run this:{brk}\u27e60\u27e7{brk}Then stop."


def test_prose_without_candidate_characters_is_sent_as_is():
    text = "Plain prose, nothing else here; the end"
    p = protect(text)
    assert (p.text, p.spans) == (text, ())
    assert check_markers(p.text, "Văn xuôi") is None
    assert p.restore("Văn xuôi") == "Văn xuôi"
    assert "damaged" in check_markers(p.text, "Văn \u27e7 xuôi")
