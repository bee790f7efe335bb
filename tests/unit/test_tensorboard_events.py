"""TensorBoard's event records: the C checksum is TensorBoard's own, and the paced writer keeps a
logging step's events from waking a thread, yet writes them all, in order, on its pace."""

from __future__ import annotations

import errno
import io
import random
import threading
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards
from tensorboard.summary.writer.record_writer import RecordWriter

from helpers import scalars
from pipeline.errors import ResourceError
from pipeline.loggers import TENSORBOARD_FLUSH_S, PacedTensorBoardLogger
from pipeline.tensorboard_events import PacedRecordWriter, masked_crc32c, use_fast_crc


class Sink(io.BytesIO):
    """A file that counts its flushes and keeps its bytes after close."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed_bytes = self.getvalue()


def records_of(*payloads: bytes) -> bytes:
    """What TensorBoard's RecordWriter frames these payloads as, in order."""
    out = Sink()
    writer = RecordWriter(out)
    for p in payloads:
        writer.write(p)
    return out.getvalue()


def test_the_c_checksum_is_tensorboards_own() -> None:
    rng = random.Random(0)
    for size in (0, 1, 3, 8, 9, 255, 4097, 20_000):
        data = rng.randbytes(size)
        assert masked_crc32c(data) == tensorboards(data), size


def test_the_runs_event_files_carry_it_and_tensorboards_reader_checks_it(tmp_path: Path) -> None:
    """The pipeline's logger writes with the C checksum; TensorBoard's reader reads every event,
    and drops one whose bytes were changed (so it does check)."""
    logger = PacedTensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    assert use_fast_crc()  # google-crc32c is a dependency: its C implementation is here
    from tensorboard.summary.writer import record_writer

    assert record_writer.masked_crc32c is masked_crc32c
    for step in range(5):
        logger.log_metrics({"train/loss": float(step)}, step=step)
    logger.finalize("success")
    assert scalars(tmp_path / "tb")["train/loss"] == [(s, float(s)) for s in range(5)]
    [events] = (tmp_path / "tb").glob("events.out.tfevents.*")
    assert len(list(EventFileLoader(str(events)).Load())) == 6  # the header and five scalars
    damaged = bytearray(events.read_bytes())
    damaged[-8] ^= 1  # inside the last event's bytes
    events.write_bytes(bytes(damaged))
    assert len(list(EventFileLoader(str(events)).Load())) == 5


def test_events_wait_for_the_pace_or_a_flush_and_reach_the_file_in_order() -> None:
    sink = Sink()
    writer = PacedRecordWriter(RecordWriter(sink), flush_secs=3600.0, wake_at=100, logdir="tb")
    for i in range(3):
        writer.write(b"event %d" % i)
    time.sleep(0.2)
    assert sink.getvalue() == b""  # no thread woke for them
    writer.flush()
    assert sink.getvalue() == records_of(b"event 0", b"event 1", b"event 2")
    writer.write(b"event 3")
    writer.close()  # writes the rest
    assert sink.closed_bytes == records_of(*(b"event %d" % i for i in range(4)))
    with pytest.raises(OSError, match="closed"):
        writer.write(b"late")


def test_the_thread_writes_on_its_pace_and_early_for_a_burst() -> None:
    paced = Sink()
    writer = PacedRecordWriter(RecordWriter(paced), flush_secs=0.2, wake_at=100, logdir="tb")
    writer.write(b"alone")
    deadline = time.monotonic() + 30
    while paced.getvalue() != records_of(b"alone") or not paced.flushes:
        assert time.monotonic() < deadline, "the paced thread never wrote"
        time.sleep(0.05)
    writer.close()

    burst = Sink()
    writer = PacedRecordWriter(RecordWriter(burst), flush_secs=3600.0, wake_at=3, logdir="tb")
    for i in range(3):
        writer.write(b"%d" % i)
    deadline = time.monotonic() + 30
    while burst.getvalue() != records_of(b"0", b"1", b"2"):
        assert time.monotonic() < deadline, "a burst of wake_at events did not wake the thread"
        time.sleep(0.05)
    writer.close()


class FullDisk(Sink):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_met_by_the_thread_is_one_error_raised_by_the_next_write() -> None:
    """Raised once, naming the folder and what to do (the run ends with exit 6); then events
    are dropped, and the run's cleanup (flush, close) does not raise it a second time."""
    writer = PacedRecordWriter(
        RecordWriter(FullDisk()), flush_secs=3600.0, wake_at=1, logdir="runs/tb"
    )
    writer.write(b"x")  # wakes the thread, which fails
    writer._thread.join(timeout=30)
    assert not writer._thread.is_alive()
    with pytest.raises(
        ResourceError,
        match=r"cannot write TensorBoard's event file in runs/tb \(No space left on device\); "
        r"free space on that disk or make it writable, or set hydra.run.dir=",
    ):
        writer.write(b"y")
    writer.write(b"z")
    writer.flush()
    writer.close()


def test_a_full_disk_met_by_a_flush_is_raised_there_once() -> None:
    writer = PacedRecordWriter(
        RecordWriter(FullDisk()), flush_secs=3600.0, wake_at=100, logdir="tb"
    )
    writer.write(b"x")
    with pytest.raises(ResourceError, match="No space left on device"):
        writer.flush()
    writer.write(b"y")
    writer.flush()
    writer.close()


def test_a_write_never_waits_for_the_file() -> None:
    """While the thread is held up writing (a slow disk), the training loop's writes go on."""
    gate = threading.Event()

    class Slow(Sink):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            gate.wait()
            return super().write(data)

    writer = PacedRecordWriter(RecordWriter(Slow()), flush_secs=3600.0, wake_at=1, logdir="tb")
    writer.write(b"first")  # the thread takes it and waits in the file's write
    time.sleep(0.2)
    done = threading.Event()
    threading.Thread(target=lambda: (writer.write(b"second"), done.set()), daemon=True).start()
    try:
        assert done.wait(timeout=30), "a write waited for the file"
    finally:
        gate.set()
    writer.close()


def test_the_pipelines_logger_paces_its_writer(tmp_path: Path) -> None:
    logger = PacedTensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    paced = logger.experiment._get_file_writer().event_writer._async_writer
    assert isinstance(paced, PacedRecordWriter)
    assert paced.flush_secs == TENSORBOARD_FLUSH_S
    logger.finalize("success")


def test_a_full_disk_met_by_lightnings_log_metrics_stays_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's log_metrics wraps a failed add_scalar in a ValueError ("you tried to log 0.36
    which is currently not supported"): when the thread's failure met val/loss there, the run
    ended in a traceback with exit 1 (this suite's full-disk run, once in CI)."""
    logger = PacedTensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    writer = logger.experiment._get_file_writer().event_writer._async_writer

    def full_disk(self: RecordWriter, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write", full_disk)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    writer._wake.set()  # the thread writes, and fails
    writer._thread.join(timeout=30)
    with pytest.raises(ResourceError, match="No space left on device"):
        logger.log_metrics({"val/loss": 0.36}, step=1)
    logger.finalize("failed")
