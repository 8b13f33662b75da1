"""The on-disk spool: ordered, bounded, durable across restarts, robust against a crash mid-write."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr_daemon.sinks.spool import MAX_REJECTED, Spool


def opened(path: Path, **bounds: int) -> Spool:
    spool = Spool(path, **bounds)
    spool.open()
    return spool


def drain(spool: Spool) -> list[dict[str, object]]:
    out = []
    while (head := spool.peek()) is not None:
        seq, record = head
        out.append(record)
        spool.remove(seq)
    return out


def test_records_come_back_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = opened(tmp_path / "spool")
    for i in range(5):
        spool.append({"n": i, "text": f"文 {i}"})
    assert len(spool) == 5
    head = spool.peek()
    assert head is not None
    spool.remove(head[0])
    again = opened(tmp_path / "spool")  # a new process
    assert len(again) == 4
    again.append({"n": 5})
    assert [r["n"] for r in drain(again)] == [1, 2, 3, 4, 5]
    assert list((tmp_path / "spool").iterdir()) == []


def test_full_spool_drops_the_oldest(tmp_path: Path) -> None:
    spool = opened(tmp_path, max_items=3)
    for i in range(5):
        spool.append({"n": i})
    assert spool.dropped == 2
    assert [r["n"] for r in drain(spool)] == [2, 3, 4]


def test_byte_bound(tmp_path: Path) -> None:
    spool = opened(tmp_path, max_bytes=100)
    for i in range(10):
        spool.append({"n": i, "pad": "x" * 20})
    assert spool.size_bytes <= 100
    assert [r["n"] for r in drain(spool)][-1] == 9
    with pytest.raises(ValueError):
        spool.append({"pad": "x" * 200})


def test_a_torn_write_and_a_corrupt_record_are_skipped(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append({"n": 1})
    spool.append({"n": 2})
    (tmp_path / "000000000003.json.tmp").write_text('{"n": 3')  # the crash happened before the rename
    (tmp_path / "000000000001.json").write_text("{not json")
    again = opened(tmp_path)
    assert [r["n"] for r in drain(again)] == [2]
    assert again.dropped == 1
    # The corrupt file is kept aside for inspection, out of the queue.
    assert [p.name for p in tmp_path.iterdir()] == ["rejected"]
    assert (tmp_path / "rejected" / "000000000001.json").read_text() == "{not json"


def test_a_record_its_consumer_cannot_use_is_set_aside_and_the_next_comes_up(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    for n in range(MAX_REJECTED + 3):
        spool.append({"n": n})
    for _ in range(MAX_REJECTED + 2):
        head = spool.peek()
        assert head is not None
        spool.set_aside(head[0], "not what the consumer expects")
    assert [r["n"] for r in drain(spool)] == [MAX_REJECTED + 2]
    # Set-aside records are bounded: the newest are kept.
    kept = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert len(kept) == MAX_REJECTED and kept[-1] == f"{MAX_REJECTED + 2:012d}.json"
    assert len(opened(tmp_path)) == 0  # a restart does not bring them back
