"""Checks on a worker thread, one row group behind the decode: nothing is handed on before its own check passed."""

from __future__ import annotations

import threading
import time

import pytest

from chexfusion.feature_store.read_ahead import checked_in_turn


def _verify_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chexfusion-verify")]


def test_each_item_is_handed_on_in_order_only_after_its_check_returned():
    checked: list[int] = []

    def check(item, decoded):
        time.sleep(0.01)  # slower than the decode: the caller must wait for it
        checked.append(item)

    out = []
    for item, decoded in checked_in_turn(range(5), lambda i: i * 10, check):
        assert item in checked
        out.append((item, decoded))
    assert out == [(i, i * 10) for i in range(5)] and checked == list(range(5))


def test_the_next_item_is_decoded_while_the_last_is_checked():
    events: list[str] = []
    release = threading.Event()

    def decode(item):
        events.append(f"decode {item}")
        if item == 1:
            release.set()  # decoding 1 while 0 is still being checked
        return item

    def check(item, decoded):
        if item == 0:
            assert release.wait(5), "the decode of item 1 did not overlap the check of item 0"
        events.append(f"check {item}")

    assert [i for i, _ in checked_in_turn(range(3), decode, check)] == [0, 1, 2]
    assert events.index("decode 1") < events.index("check 0")


def test_a_failed_check_raises_at_its_item_and_hands_nothing_on_from_it():
    def check(item, decoded):
        if item == 2:
            raise ValueError("row group 2: its maps differ from their checksum")

    seen = []
    with pytest.raises(ValueError, match="row group 2"):
        for item, _ in checked_in_turn(range(5), lambda i: i, check):
            seen.append(item)
    assert seen == [0, 1]
    assert not _verify_threads()


def test_an_abandoned_read_stops_its_worker_thread():
    reads = checked_in_turn(range(10), lambda i: i, lambda item, decoded: None)
    next(reads)
    assert len(_verify_threads()) == 1
    reads.close()
    assert not _verify_threads()


def test_an_unverified_read_starts_no_thread():
    reads = checked_in_turn(range(3), lambda i: -i, None)
    assert next(reads) == (0, 0) and not _verify_threads()
    assert list(reads) == [(1, -1), (2, -2)]
