"""The text pools the generator picks from: deterministic from the seed."""

from __future__ import annotations

from caseapp.text import SENTENCE_POOL_SIZE, TITLE_POOL_SIZE, text_pools


def test_equal_seeds_give_equal_pools_and_other_seeds_other_text() -> None:
    assert text_pools(7) == text_pools(7)
    assert text_pools(7).titles != text_pools(8).titles
    assert text_pools(7).sentences != text_pools(8).sentences


def test_pools_hold_readable_text_of_the_promised_sizes() -> None:
    pools = text_pools(0)
    assert len(pools.titles) == TITLE_POOL_SIZE
    assert len(pools.sentences) == SENTENCE_POOL_SIZE
    assert all(title[0].isupper() and len(title.split()) >= 4 for title in pools.titles)
    assert all(sentence.endswith(".") for sentence in pools.sentences)
    assert len(set(pools.sentences)) > SENTENCE_POOL_SIZE // 2
