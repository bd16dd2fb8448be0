"""tests/support/data.py: the shared data first, then the checked samples of
scripts/fetch_sample_data.py, else a skip naming both (a failure under
EVENGINE_REQUIRE_DATA=1). Fake folders under tmp_path; nothing is downloaded."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.support import data

ORDERS = ("bitstamp", "orders.csv.gz")
TRADES = ("bitstamp", "trades.csv")


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """``(shared, samples)``: a shared folder that does not exist and a samples
    folder holding two fake Bitstamp files that the table says are right."""
    shared, samples = tmp_path / "shared" / "data", tmp_path / "repo" / "data" / "samples"
    files = {ORDERS: b"orders sample", TRADES: b"trades sample"}
    for parts, content in files.items():
        samples.joinpath(*parts).parent.mkdir(parents=True, exist_ok=True)
        samples.joinpath(*parts).write_bytes(content)
    monkeypatch.setattr(data, "SAMPLES", {parts: sha(content) for parts, content in files.items()})
    monkeypatch.setenv("EVENGINE_SHARED_DATA", str(shared))
    monkeypatch.setenv("EVENGINE_SAMPLES_DIR", str(samples))
    monkeypatch.delenv("EVENGINE_REQUIRE_DATA", raising=False)
    return shared, samples


def test_without_shared_data_the_checked_samples_stand_in(roots):
    shared, samples = roots
    assert data.data_path(*ORDERS) == samples / "bitstamp" / "orders.csv.gz"
    assert data.data_path(*TRADES) == samples / "bitstamp" / "trades.csv"
    assert data.data_path("bitstamp") == samples / "bitstamp"     # every sample file of the folder checks out


def test_the_shared_data_wins_where_it_has_the_file(roots):
    shared, samples = roots
    (shared / "bitstamp").mkdir(parents=True)
    (shared / "bitstamp" / "orders.csv.gz").write_bytes(b"the shared capture")
    assert data.data_path(*ORDERS) == shared / "bitstamp" / "orders.csv.gz"
    assert data.data_path("bitstamp") == shared / "bitstamp"
    # per file: what the shared folder lacks still comes from the samples
    assert data.data_path(*TRADES) == samples / "bitstamp" / "trades.csv"


def test_a_sample_with_another_sha256_is_not_used(roots, monkeypatch):
    shared, samples = roots
    (samples / "bitstamp" / "orders.csv.gz").write_bytes(b"cut short by an interrupted fetch")
    with pytest.raises(pytest.skip.Exception, match=r"has SHA-256 .*\(run it again\)"):
        data.data_path(*ORDERS)
    with pytest.raises(pytest.skip.Exception, match="SHA-256"):
        data.data_path("bitstamp")                     # the folder needs all of its files
    assert data.data_path(*TRADES) == samples / "bitstamp" / "trades.csv"
    monkeypatch.setenv("EVENGINE_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="EVENGINE_REQUIRE_DATA=1 forbids skipping"):
        data.data_path(*ORDERS)


def test_a_missing_sample_skips_saying_how_to_fetch_it(roots):
    shared, samples = roots
    (samples / "bitstamp" / "trades.csv").unlink()
    with pytest.raises(pytest.skip.Exception) as info:
        data.data_path(*TRADES)
    reason = str(info.value)
    assert str(shared / "bitstamp" / "trades.csv") in reason and str(samples / "bitstamp" / "trades.csv") in reason
    assert "scripts/fetch_sample_data.py" in reason


def test_what_no_sample_provides_skips_or_fails_naming_both_places(roots, monkeypatch):
    shared, samples = roots
    lobster = ("lobster", "GOOG_2012-06-21_34200000_57600000_message_10.csv")
    samples.joinpath(*lobster).parent.mkdir(parents=True)
    samples.joinpath(*lobster).write_bytes(b"not a sample the fetch script records")
    for parts in (lobster, ("lobster",), ("bitstamp", "other.csv")):
        path, reason = data.locate(*parts)
        assert path is None
        assert str(shared.joinpath(*parts)) in reason and "holds no sample" in reason
        with pytest.raises(pytest.skip.Exception, match="real order flow not found"):
            data.data_path(*parts)
    monkeypatch.setenv("EVENGINE_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="forbids skipping"):
        data.data_path("lobster")


def test_relative_samples_dir_is_under_the_repository_root(monkeypatch):
    monkeypatch.setenv("EVENGINE_SAMPLES_DIR", "some/where")
    assert data.samples_root() == data.ROOT / "some" / "where"
    monkeypatch.delenv("EVENGINE_SAMPLES_DIR")
    monkeypatch.delenv("EVENGINE_SHARED_DATA", raising=False)
    assert data.samples_root() == data.ROOT / "data" / "samples"
    assert data.shared_root() == data.ROOT.parent / "shared" / "data"


def test_the_sample_table_is_the_fetch_scripts(tmp_path):
    """SHA-256s and names come from scripts/fetch_sample_data.py's FILES, the
    files it puts in data/samples/bitstamp (read, never run)."""
    script = data.FETCH_SCRIPT.read_text(encoding="utf-8")
    assert 'default="data/samples/bitstamp"' in script
    assert {name for _, name in data.SAMPLES} == {"orders.csv.gz", "trades.csv", "meta.json"}
    assert all(vendor == "bitstamp" and len(digest) == 64 for (vendor, _), digest in data.SAMPLES.items())
    fake = tmp_path / "fetch.py"
    fake.write_text('FILES = {"a.csv": "00"}\nraise SystemExit("never run")\n')
    assert data._fetched_files(fake) == {"a.csv": "00"}
    assert data._fetched_files(tmp_path / "gone.py") == {}


def test_the_real_capture_checks_out_as_a_sample(tmp_path, monkeypatch):
    """The shared Bitstamp files are the ones the fetch script fetches: copied
    into a samples folder (no download), they pass its SHA-256 check."""
    monkeypatch.delenv("EVENGINE_SHARED_DATA", raising=False)
    sources = {name: data.data_path("bitstamp", name) for _, name in sorted(data.SAMPLES)}
    samples = tmp_path / "samples"
    (samples / "bitstamp").mkdir(parents=True)
    for name, path in sources.items():
        shutil.copyfile(path, samples / "bitstamp" / name)
    monkeypatch.setenv("EVENGINE_SHARED_DATA", str(tmp_path / "absent"))
    monkeypatch.setenv("EVENGINE_SAMPLES_DIR", str(samples))
    for name in sources:
        assert data.data_path("bitstamp", name) == samples / "bitstamp" / name
    assert data.data_path("bitstamp") == samples / "bitstamp"
