"""The per-patient memory of the worker (issue 15): the de-duplication ring's width, interned context strings,
and the changelog format they must keep (restore of records written before these changes)."""

from __future__ import annotations

import random

import numpy as np

from vigil.records import AdtEvent
from vigil.state import PatientState, SeenIds, event_uid

T0 = 1_767_225_600.0


def _reference_run(s: SeenIds, uids: list[int], window: int) -> dict[int, None]:
    ref: dict[int, None] = {}
    for uid in uids:
        new = uid not in ref
        if new:
            ref[uid] = None
            if len(ref) > window:
                del ref[next(iter(ref))]
        assert s.add_if_new(uid, window) is new
        assert s.keys() == list(ref)
    return ref


def test_one_source_is_4_bytes_per_id_and_a_second_source_widens_the_ring_in_order() -> None:
    a, b = "monitor-1", "lab-system"
    s = SeenIds()
    first = [event_uid(a, q) for q in range(300)]
    ref = _reference_run(s, first, 256)
    assert s.width == 4 and len(s.buf) == 256 * 4 and len(s) == 256  # 1 KB for a full window of one source
    assert event_uid(a, 299) in s and event_uid(a, 43) not in s and event_uid(a, 44) in s
    # a second source: every remembered id keeps its place (oldest first), now 5 bytes each
    more = [event_uid(b, 7), event_uid(a, 100), event_uid(b, 7), event_uid(a, 10)]
    for uid in more:
        new = uid not in ref
        if new:
            ref[uid] = None
            if len(ref) > 256:
                del ref[next(iter(ref))]
        assert s.add_if_new(uid, 256) is new
    assert s.width == 5 and s.keys() == list(ref) and len(s) == 256
    assert event_uid(a, 10) in s and event_uid(a, 45) not in s  # 10 is new again (evicted), 45 evicted now
    # the changelog bytes are the plain uids, oldest first, whatever the width in memory
    assert np.frombuffer(s.to_bytes(), "<u8").tolist() == list(ref)
    back = SeenIds(s.to_bytes())
    assert back.width == 5 and back.keys() == list(ref)


def test_ring_matches_a_bounded_insertion_ordered_set_from_one_to_many_sources() -> None:
    rng = random.Random(15)
    for window in (1, 2, 5, 256, 300):
        for n_sources in (1, 2, 3, 300):
            s = SeenIds(window=window)
            uids = [event_uid(f"src-{rng.randrange(n_sources)}", rng.randrange(rng.choice([8, 600, 2**40])))
                    for _ in range(1500)]  # fmt: skip
            ref = _reference_run(s, uids, window)
            assert SeenIds(s.to_bytes(), window).keys() == list(ref)  # the changelog round trip
            assert all(u in s for u in ref)


def test_a_full_one_byte_source_table_never_overflows() -> None:
    """256 ids from 256 distinct sources, then a 257th source: the oldest id is evicted by that add anyway."""
    s = SeenIds()
    uids = [event_uid(f"s{i}", i) for i in range(256)]
    ref = _reference_run(s, uids, 256)
    assert s.width == 5 and len(s.sources) == 256
    assert s.add_if_new(event_uid("s-new", 1), 256)
    ref[event_uid("s-new", 1)] = None
    del ref[next(iter(ref))]
    assert s.keys() == list(ref) and len(s.sources) == 256


# a changelog record written by the code before this change (5-byte entries in memory; the record format, VS1
# with plain uint64 uids, is unchanged): built by hand here so that the test does not depend on the new code
def _old_record() -> bytes:
    import struct

    import orjson

    from vigil.features import WINDOW
    from vigil.state import V
    from vigil.variables import STATIC_INDEX

    header = {"patient": "pt-old", "admit_time": T0, "row": 3, "first_row": 0, "anchored": True,
              "from_admit": True, "ward": "ICU-MED", "bed": "4", "unit": "MICU",
              "static": [1.0] * len(STATIC_INDEX), "first_event_time": T0, "last_event_time": T0 + 3 * 3600,
              "last_score_time": None, "alerts": {}, "discharged": False, "discharge_time": None,
              "discharge_seen": None, "pending_since": None, "pending": []}  # fmt: skip
    h = orjson.dumps(header)
    window = np.arange(WINDOW * V, dtype=np.float32)
    uids = np.array([event_uid("physionet-replay/x", q) for q in range(1, 301)][-256:], dtype="<u8")
    return b"".join((b"VS1", struct.pack("<I", len(h)), h, window.tobytes(), np.ones(V, np.float32).tobytes(),
                     np.zeros(V, np.int32).tobytes(), uids.tobytes()))  # fmt: skip


def test_old_changelog_record_restores_the_same_state_and_dedupe_window() -> None:
    rec = _old_record()
    st = PatientState.from_bytes(rec)
    tail = 7 + int.from_bytes(rec[3:7], "little")  # arrays and uids after the header: unchanged, byte for byte
    assert st.to_bytes()[-(len(rec) - tail) :] == rec[tail:]
    assert st.seen.width == 4 and len(st.seen) == 256
    assert st.is_duplicate(event_uid("physionet-replay/x", 300), 256)
    assert st.is_duplicate(event_uid("physionet-replay/x", 45), 256)
    assert not st.is_duplicate(event_uid("physionet-replay/x", 44), 256)  # beyond the window: new
    assert st.ward == "ICU-MED" and st.bed == "4" and st.unit == "MICU"


def test_context_strings_are_shared_between_patients() -> None:
    rec = _old_record()
    a, b = PatientState.from_bytes(rec), PatientState.from_bytes(rec)
    assert a.ward is b.ward and a.unit is b.unit and a.bed is b.bed
    c, d = PatientState("p1"), PatientState("p2")
    for st in (c, d):
        st.set_context(AdtEvent(st.patient, "s", 1, T0, "admit", "".join(["W", "1"]), "".join(["1", "2"]), "MICU",
                                T0, 55.0, "M", -1.0))  # fmt: skip
    assert c.ward is d.ward and c.bed is d.bed and c.unit is d.unit


def test_seen_ids_behave_as_a_bounded_insertion_ordered_set() -> None:
    """The compact de-duplication memory against the dict it replaced, with many sources (table pruning)."""
    rng = random.Random(7)
    for window in (1, 3, 256, 300):
        uids = [event_uid(f"src-{rng.randint(0, 400)}", rng.randint(0, rng.choice([10, 5000, 2**40])))
                for _ in range(3000)]  # fmt: skip
        s = SeenIds(window=window)
        ref = _reference_run(s, uids, window)
        assert SeenIds(s.to_bytes(), window).keys() == list(ref)  # the changelog round trip


def test_ascending_feeds_skip_the_search_and_still_match_the_set_across_restores() -> None:
    """Feeds send ascending seqs per source: an id above every seq remembered of its source is new without a search
    of the ring (``tops``). Re-deliveries, out-of-order ids, a second source, a restore from the changelog (tops
    re-derived from the ring) and a narrower window later must all still behave exactly as the bounded set."""
    rng = random.Random(3)
    ref: dict[int, None] = {}
    s = SeenIds()
    seq = {"monitor-1": 0, "lab": 1000}
    for step in range(4000):
        src = "monitor-1" if step < 1500 or rng.random() < 0.7 else "lab"
        r = rng.random()
        if r < 0.1:  # a re-delivery of a recent id (or an evicted one)
            q = seq[src] - rng.randrange(1, 400)
        elif r < 0.15:  # out of order: a gap filled later
            q = seq[src] + rng.randrange(2, 5)
        else:
            seq[src] += 1
            q = seq[src]
        window = 256 if step < 3500 else 100
        uid = event_uid(src, max(q, 0))
        new = uid not in ref
        if new:
            ref[uid] = None
        while len(ref) > window:
            del ref[next(iter(ref))]
        assert s.add_if_new(uid, window) is new, step
        assert len(s.tops) == len(s.sources)
        for h, top in zip(s.sources, s.tops, strict=True):  # every remembered seq of a source is <= its top
            assert all(u & 0xFFFFFFFF <= top for u in s.keys() if u >> 32 == h)
        if step in (700, 2000, 3000):
            s = SeenIds(s.to_bytes(), window)  # a restore: tops from the ring
        assert step % 500 or s.keys() == list(ref)
    assert s.keys() == list(ref)
