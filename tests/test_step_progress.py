"""Progress of long non-training steps: log cadence, quiet short steps, bars only on a terminal."""
import io
import logging
import shutil

import pytest

from unified_pipeline import step_progress
from unified_pipeline.hashing import HashCache, dataset_version
from unified_pipeline.step_progress import StepProgress, bars_enabled, track


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(step_progress, "_clock", c)
    return c


def test_logs_every_tenth_with_rate_and_eta_then_a_final_line(clock):
    lines = []
    for _ in track(range(100), "hashing d", log=lines.append, unit="file", quiet_for_s=0, every_s=1e9, bar=False):
        clock.now += 0.5  # 2 files per second
    assert len(lines) == 10, lines
    assert lines[0] == "hashing d: 10/100 files (10%), 2 file/s, elapsed 00:05, ETA 00:45"
    assert lines[8].startswith("hashing d: 90/100 files (90%)")
    assert lines[-1] == "hashing d: finished 100/100 files in 00:50 (2 file/s)"


def test_time_cadence_applies_without_a_total(clock):
    lines = []
    for _ in track(iter(range(10)), "reading", log=lines.append, quiet_for_s=0, every_s=3.0, bar=False):
        clock.now += 1.0
    # Logged at 3, 6 and 9 seconds, then the final line; no percentage or ETA without a total.
    assert [line.split(",")[0] for line in lines[:3]] == ["reading: 3 items", "reading: 6 items", "reading: 9 items"]
    assert "ETA" not in lines[0] and lines[-1].startswith("reading: finished 10 items")


def test_short_steps_log_nothing_and_a_stop_says_where(clock):
    lines = []
    for _ in track(range(50), "quick", log=lines.append, bar=False):
        clock.now += 0.01
    assert lines == []
    with StepProgress(10, "cut", log=lines.append, quiet_for_s=0, every_s=1e9, bar=False) as p:
        clock.now += 5
        p.update(3)
    assert lines[-1].startswith("cut: stopped at 3/10 items")


def test_dagster_style_logger_gets_info_lines(clock):
    class Log:
        def __init__(self):
            self.infos = []

        def info(self, msg):
            self.infos.append(msg)

    log = Log()
    with StepProgress(4, "x", log=log, quiet_for_s=0, every_fraction=0.5, every_s=1e9, bar=False) as p:
        for _ in range(4):
            clock.now += 1
            p.update()
    assert len(log.infos) == 2
    assert log.infos[0].startswith("x: 2/4 items (50%)") and log.infos[1].startswith("x: finished 4/4 items")


def test_bars_only_on_a_terminal_and_can_be_switched_off(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(step_progress.BAR_ENV, raising=False)
    assert bars_enabled(Tty()) and not bars_enabled(io.StringIO())
    monkeypatch.setenv(step_progress.BAR_ENV, "0")
    assert not bars_enabled(Tty())


def test_dataset_hashing_reports_progress_per_file(tmp_path, clock, monkeypatch):
    for i in range(20):
        (tmp_path / "d" / f"{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "d" / f"{i:02d}.txt").write_text(str(i))
    real_sha = __import__("unified_pipeline.hashing", fromlist=["sha256_file"]).sha256_file

    def slow_sha(path):  # each file "takes" one second on the fake clock
        clock.now += 1.0
        return real_sha(path)

    monkeypatch.setattr("unified_pipeline.hashing.sha256_file", slow_sha)
    lines = []
    version, files = dataset_version(tmp_path / "d", HashCache(tmp_path / "c.sqlite"), log=lines.append)
    assert len(files) == 20
    assert lines[0].startswith("hashing d: 2/20 files (10%)") and lines[-1].startswith("hashing d: finished 20/20")
    # Same digest as without progress; a second pass hits the cache and is too quick to log.
    lines.clear()
    assert dataset_version(tmp_path / "d", HashCache(tmp_path / "c.sqlite"), log=lines.append)[0] == version
    assert lines == []


def test_default_log_is_python_logging(clock, caplog):
    with caplog.at_level(logging.INFO, logger=step_progress.DEFAULT_LOGGER):
        with StepProgress(2, "gen", quiet_for_s=0, every_s=1e9, bar=False) as p:
            clock.now += 1
            p.update(2)
    assert any("gen: finished 2/2" in r.getMessage() for r in caplog.records)


def test_sample_data_reports_each_kind(home, clock, tmp_path):
    from unified_pipeline.sample_data import write_sample_data

    lines = []
    written = write_sample_data(tmp_path / "raw2", kinds=["text"], log=lines.append, bar=False)
    assert [p.name for p in written] == ["langid", "number_words"]
    assert lines[0].startswith("  text: langid, number_words in") and lines[-1].startswith("sample data: finished 1/1 kinds")


def test_decoding_loops_report_to_the_step_log(tmp_path, monkeypatch):
    """Vision and audio lanes hand their per-file loops to the progress helper with the step's log."""
    import tiny_data
    from unified_pipeline.assets import data_assets
    from unified_pipeline.datasets import DatasetRef
    from unified_pipeline.datasets import class_folders, class_shards

    seen = []

    def spy(items, desc, **kw):
        seen.append((desc, kw.get("log")))
        return iter(list(items))

    monkeypatch.setattr(class_folders, "track", spy)  # the reading loop both kinds share
    monkeypatch.setattr(class_shards, "track", spy)  # and the decoding loop
    monkeypatch.setenv("UNIFIED_HOME", str(tmp_path / "home"))
    log = object()
    for kind, make in (("vision", tiny_data.vision), ("audio", tiny_data.audio)):
        root = make(tmp_path / "raw")
        ref = DatasetRef(root.name, kind, root)
        version, _, path = data_assets.build_manifest(ref, {}, log=log)
        data_assets.build_tensors(ref, path, version, {}, log=log)
    assert [d.split()[0] for d, _ in seen] == ["reading", "decoding", "reading", "decoding"]
    assert all(lg is log for _, lg in seen)


def test_reading_and_decoding_lines_end_finished_not_one_short(tmp_path, monkeypatch):
    """The loops take every file; the last line must say so (a zip or a loop that stops asking
    once it has what it needs left the tracker one file short: 'stopped at 11/12')."""
    import itertools

    import tiny_data
    from unified_pipeline.assets import data_assets
    from unified_pipeline.datasets import DatasetRef

    ticks = itertools.count(0.0, 1.0)  # every clock reading a second later: long enough to log
    monkeypatch.setattr(step_progress, "_clock", lambda: next(ticks))
    monkeypatch.setenv("UNIFIED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("UNIFIED_DECODE_WORKERS", "1")
    root = tiny_data.vision(tmp_path / "raw")
    ref = DatasetRef(root.name, "vision", root)
    lines = []
    version, _, path = data_assets.build_manifest(ref, {}, log=lines.append)
    shutil.rmtree(tmp_path / "home" / "cache")  # so the tensors step decodes every file itself
    data_assets.build_tensors(ref, path, version, {}, log=lines.append)
    last = [line for line in lines if " finished " in line or " stopped at " in line]
    assert [line.split(":")[0].split()[0] for line in last if not line.startswith("hashing")] == ["reading", "decoding"]
    assert all(" finished " in line for line in last), last
