"""The LoRaWAN progress store: snapshot plus journal, torn writes, compaction, small writes."""

from __future__ import annotations

from pathlib import Path

from gateway.adapters.lorawan.state import DeviceStateStore

EUI = "0102030405060708"


def reopen(path: Path) -> DeviceStateStore:
    store = DeviceStateStore(path)
    store.load()
    return store


async def test_progress_is_read_back_from_the_journal(tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json")
    store.load()
    store.set_info(EUI, {"name": "silo"})
    for i in range(5):
        store.record(EUI, cursor=f"1700000000000-{i}", dedup_id=f"d{i}", f_cnt=i)
        await store.save()
    store.close()
    again = reopen(tmp_path / "s.json")
    d = again.devices[EUI]
    assert (d.cursor, d.f_cnt, list(d.dedup), d.info) == ("1700000000000-4", 4,
                                                          [f"d{i}" for i in range(5)],
                                                          {"name": "silo"})
    assert again.already_seen(EUI, "1700000000000-4")
    assert not again.already_seen(EUI, "1700000000001-0")
    assert again.is_duplicate(EUI, "d3") and not again.is_duplicate(EUI, "d9")


async def test_torn_last_journal_line_is_ignored(tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json")
    store.load()
    store.record(EUI, cursor="1700000000000-1")
    await store.save()
    store.close()
    torn = store.journal_path.read_text() + '{"d":"' + EUI + '","c":"17000000'
    store.journal_path.write_text(torn)  # killed mid-append
    assert reopen(tmp_path / "s.json").devices[EUI].cursor == "1700000000000-1"


async def test_compaction_folds_the_journal_into_the_snapshot(tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json", compact_after=10)
    store.load()
    for i in range(25):
        store.record(EUI, cursor=f"1700000000000-{i}", dedup_id=f"d{i}")
        await store.save()
    store.close()
    assert store.path.exists()
    assert len(store.journal_path.read_text().splitlines()) < 10
    assert reopen(tmp_path / "s.json").devices[EUI].cursor == "1700000000000-24"


async def test_crash_between_snapshot_and_journal_truncation_loses_nothing(
        tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json")
    store.load()
    store.record(EUI, cursor="1700000000000-1", f_cnt=1)
    store.record(EUI, cursor="1700000000000-2", f_cnt=2)
    await store.save()
    journal = store.journal_path.read_text()
    await store.save(compact=True)
    store.close()
    store.journal_path.write_text(journal)  # as if truncation never happened
    d = reopen(tmp_path / "s.json").devices[EUI]
    assert (d.cursor, d.f_cnt) == ("1700000000000-2", 2)


async def test_an_accepted_event_costs_about_a_hundred_bytes_of_writes(tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json")
    store.load()
    for n in range(50):  # many devices: a rewrite per event would grow with all of them
        store.set_info(f"{n:016x}", {"name": f"sensor {n}", "profile": "LHT65"})
    await store.save(compact=True)
    before = store.journal_path.stat().st_size
    for i in range(100):
        store.record(EUI, cursor=f"1700000000{i:03d}-0",
                     dedup_id="9f1e4b2c-6a3d-4e8f-b0c1-2d3e4f5a6b7c", f_cnt=i)
        await store.save()
    store.close()
    per_event = (store.journal_path.stat().st_size - before) / 100
    assert per_event < 150, per_event


async def test_unreadable_snapshot_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{garbage")
    store = reopen(tmp_path / "s.json")
    assert store.devices == {}
    assert (tmp_path / "s.json.bad").exists()


async def test_snapshot_of_many_devices_is_not_rewritten_more_often_than_it_pays(
        tmp_path: Path) -> None:
    store = DeviceStateStore(tmp_path / "s.json", compact_after=10)
    store.load()
    for n in range(200):
        store.set_info(f"{n:016x}", {"name": f"sensor {n}", "profile": "LHT65"})
    await store.save(compact=True)
    snapshot = store.path.stat().st_size
    writes = 0
    for i in range(300):
        store.record(EUI, cursor=f"1700000000{i:03d}-0", dedup_id=f"{i:036d}", f_cnt=i)
        before = store.path.stat().st_mtime_ns, store.path.stat().st_size
        await store.save()
        if (store.path.stat().st_mtime_ns, store.path.stat().st_size) != before:
            writes += 1
    store.close()
    journal_bytes = 300 * 100
    # a rewrite happens only after the journal outgrew the snapshot
    assert writes <= journal_bytes // snapshot + 1, (writes, snapshot)
    assert reopen(tmp_path / "s.json").devices[EUI].cursor == "1700000000299-0"
