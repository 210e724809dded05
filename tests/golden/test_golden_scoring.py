"""Golden-set scoring: normalisation, CER/WER and agreement against hand-computed cases, the
set's file format and the load-time ceiling rule (pure functions, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_server import golden


@pytest.mark.parametrize("raw, expected", [
    ("Hello,  World!", "hello world"),
    ("二零二五年，我们。", "二零二五年 我们"),          # CJK comma/full stop removed
    ("《你好》、“世界”！？", "你好 世界"),               # CJK brackets, quotes, enumeration comma
    ("ＡＢＣ１２３", "abc123"),                          # NFKC: full-width to ASCII
    ("  Straße\tSTRASSE \n", "strasse strasse"),        # casefold, not lower(): ß -> ss
    ("it's e-mail", "it s e mail"),                      # punctuation inside words splits them
    ("...", ""),
])
def test_normalise(raw: str, expected: str) -> None:
    assert golden.normalise(raw) == expected


def test_cer_on_chinese_counts_edits_over_reference_characters() -> None:
    # reference 二零二五年 (5 chars) -> hypothesis 二零二四年: one substitution -> 1/5
    s = golden.score(["二零二五年"], ["二零二四年"])
    assert (s.char_edits, s.char_total) == (1, 5)
    assert s.cer == pytest.approx(0.2)
    assert s.wer is None  # Chinese is not space-delimited: no WER


def test_broken_itn_is_a_cer_change_and_punctuation_is_not() -> None:
    # "2025年" vs "二零二五年": 5 characters each; 二零二五 -> 2025 are 4 substitutions,
    # 年 matches: 4 edits / 5 reference characters = 0.8
    assert golden.score(["二零二五年"], ["2025年"]).cer == pytest.approx(0.8)
    # punctuation and spacing only: no error at all
    assert golden.score(["今天，天气很好。"], ["今天 天气 很好"]).cer == 0.0


def test_cer_deletion_insertion_and_micro_average() -> None:
    # item 1: 你好世界 -> 你好界: one deletion (1 of 4); item 2: 早上好 -> 早上好啊: one insertion (1 of 3)
    s = golden.score(["你好世界", "早上好"], ["你好界", "早上好啊"])
    assert (s.char_edits, s.char_total) == (2, 7)
    assert s.cer == pytest.approx(2 / 7)   # micro: not the mean of 1/4 and 1/3


def test_wer_for_space_delimited_text_only() -> None:
    # "the cat sat" -> "the bat sat down": 1 substitution + 1 insertion over 3 words
    s = golden.score(["The cat sat.", "你好"], ["the bat sat down", "你好"])
    assert (s.word_edits, s.word_total) == (2, 3)
    assert s.wer == pytest.approx(2 / 3)
    # CER spans both items: c->b (1) + "down" (4 inserted) over 9 + 2 characters
    assert (s.char_edits, s.char_total) == (5, 11)


def test_cer_can_exceed_one_and_empty_references_have_no_cer() -> None:
    assert golden.score(["好"], ["你好吗"]).cer == pytest.approx(2.0)
    assert golden.score(["，。"], ["x"]).cer is None
    with pytest.raises(ValueError, match="1 references but 2 hypotheses"):
        golden.score(["a"], ["a", "b"])


def test_space_delimited_detection() -> None:
    assert golden.is_space_delimited("the quick fox")
    assert not golden.is_space_delimited("你好 world")
    assert not golden.is_space_delimited("こんにちは")
    assert not golden.is_space_delimited("。")


def test_agreement_rate() -> None:
    assert golden.agreement_rate(["你好世界"], ["你好，世界！"]) == 1.0
    # 4 vs 3 chars, 1 edit over the longer 4 -> 0.75; with an identical second item (2 chars):
    assert golden.agreement_rate(["你好世界"], ["你好界"]) == pytest.approx(0.75)
    assert golden.agreement_rate(["你好世界", "早上"], ["你好界", "早上"]) == pytest.approx(1 - 1 / 6)
    assert golden.agreement_rate(["abc"], ["xyz"]) == 0.0
    assert golden.agreement_rate(["ab"], ["b"]) == golden.agreement_rate(["b"], ["ab"])  # symmetric
    assert golden.agreement_rate([], []) == 1.0
    with pytest.raises(ValueError, match="same golden audio"):
        golden.agreement_rate(["a"], [])


def test_manifest_roundtrip_and_errors() -> None:
    items = (golden.GoldenItem("a.wav", "二零二五年"), golden.GoldenItem("sub/b.wav", "hello"))
    text = golden.render_golden_manifest(items)
    assert "二零二五年" in text  # kept readable, not \u-escaped
    assert golden.parse_golden_manifest(text) == items
    bad = {
        "not json": "is not JSON",
        '["a.wav"]': "must be a JSON object",
        '{"audio": "../x.wav", "text": "a"}': "must be a relative path inside golden/",
        '{"audio": "/etc/x.wav", "text": "a"}': "must be a relative path inside golden/",
        '{"audio": "a.wav", "txt": "a"}': "unknown keys ['txt']",
        '{"audio": "a.wav", "text": 3}': "'text' must be a string",
        '{"audio": "a.wav"}\n{"audio": "a.wav"}': "listed twice",
        '{"audio": "a.wav", "text": "x"}\n{"audio": "b.wav"}': "either every item has a 'text'",
        "": "lists no audio",
    }
    for body, message in bad.items():
        with pytest.raises(golden.GoldenSetError, match=message.replace("[", r"\[").replace("]", r"\]")):
            golden.parse_golden_manifest(body)


def test_load_golden_set(tmp_path: Path) -> None:
    assert golden.load_golden_set(tmp_path) is None  # no golden/: the version ships none
    root = tmp_path / "golden"
    root.mkdir()
    with pytest.raises(golden.GoldenSetError, match="has no manifest.jsonl"):
        golden.load_golden_set(tmp_path)
    (root / "manifest.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "x"}) + "\n")
    with pytest.raises(golden.GoldenSetError, match="not there: a.wav"):
        golden.load_golden_set(tmp_path)
    (root / "a.wav").write_bytes(b"RIFF")
    gset = golden.load_golden_set(tmp_path)
    assert gset is not None and gset.has_references and gset.audio_path(gset.items[0]) == root / "a.wav"


def test_ceiling_option_and_rule() -> None:
    assert golden.parse_ceiling({}) is None
    assert golden.parse_ceiling({"golden_cer_max": 0.1}) == 0.1
    for bad in (-0.1, 1.5, "0.1", True):
        with pytest.raises(golden.GoldenSetError, match="golden_cer_max must be a number from 0 to 1"):
            golden.parse_ceiling({"golden_cer_max": bad})
    assert golden.ceiling_breach(0.5, None, True) is None
    assert golden.ceiling_breach(0.1, 0.1, True) is None          # at the ceiling is allowed
    breach = golden.ceiling_breach(0.1234, 0.1, True)
    assert breach is not None and "0.1234" in breach and "golden_cer_max 0.1" in breach
    assert "no references" in (golden.ceiling_breach(None, 0.1, False) or "")
