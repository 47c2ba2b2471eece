"""A claim's epochs: which region wrote which seqs of an entity that moved (no NATS needed)."""

from __future__ import annotations

from runtime.serve.service.regions.primary import (
    claim_key,
    decode_claim,
    encode_claim,
    handed_over,
    key_entity,
    writer_at,
)


def test_a_first_write_claim_is_the_region_alone_and_a_move_records_where_the_new_one_starts() -> None:
    assert decode_claim(b"us") == ("us", ())  # written by one region from seq 1: no epochs to tell apart
    moved = handed_over((("eu", 1),), "us", 6)
    assert encode_claim(moved) == b"eu@1,us@6"
    assert decode_claim(b"eu@1,us@6") == ("us", (("eu", 1), ("us", 6)))
    assert [writer_at(moved, seq) for seq in (1, 5, 6, 9)] == ["eu", "eu", "us", "us"]


def test_a_move_drops_the_epochs_that_wrote_nothing_before_it() -> None:
    back = handed_over((("eu", 1), ("us", 6)), "eu", 6)  # moved back before us wrote anything
    assert back == (("eu", 1),) and encode_claim(back) == b"eu"
    assert handed_over((("eu", 1), ("us", 6)), "eu", 9) == (("eu", 1), ("us", 6), ("eu", 9))


def test_a_claim_key_gives_its_entity_back() -> None:
    for entity_id in ("A-1", "", "a b/ü", "x" * 40):
        assert key_entity(claim_key("account", entity_id)) == ("account", entity_id)
