"""What TensorBoard's event writer costs the training loop, and how the pipeline's logger cuts it.

TensorBoard's writer (torch's SummaryWriter → tensorboard's EventFileWriter) hands every event to
a thread through a queue, and that thread frames it as a record: a masked CRC32C of its bytes,
in pure Python where TensorFlow is not installed (~0.12 µs a byte, holding the GIL). Each event
wakes the thread, which takes the GIL from the training loop (torch gives it up around every
operation). On the zero-cost model's loop here, logging every 4 steps, the two cost ~160 µs a
step between them, a third of what the pipeline added to bare Lightning (docs/benchmarks.md).

- `use_fast_crc()`: the record writer takes google-crc32c's C implementation of the same
  checksum (~0.5 µs a record; the bytes on disk are identical, and TensorBoard's reader, which
  checks every record's CRC, reads them as before).
- `pace_writes(writer)`: a SummaryWriter's events go to a `PacedRecordWriter`, which keeps them
  in a list until its thread wakes: every `flush_secs`, or early once `wake_at` are waiting (a
  histogram step's burst is below it). A live TensorBoard sees a value up to `flush_secs`
  later than it did (TensorBoard's thread wrote each event as it came: ~0.1 s here).
"""

from __future__ import annotations

import threading
from typing import Any

from tensorboard.summary.writer import record_writer
from tensorboard.summary.writer.record_writer import RecordWriter

from pipeline.errors import ResourceError

try:
    import google_crc32c
except ImportError:  # a machine without it (a bare GPU box): TensorBoard's own, slower
    google_crc32c = None  # type: ignore[assignment]

_MASK_DELTA = 0xA282EAD8  # TFRecord's mask: the CRC rotated right by 15 bits, plus this


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`: the value TensorBoard writes and its reader checks."""
    assert google_crc32c is not None
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def use_fast_crc() -> bool:
    """TensorBoard's record writer (every event file this process writes) takes `masked_crc32c`;
    whether it does: not where google-crc32c is missing, or is its own pure-Python fallback."""
    if google_crc32c is None or google_crc32c.implementation != "c":
        return False
    record_writer.masked_crc32c = masked_crc32c  # the module global RecordWriter.write calls
    return True


def cannot_write_events(logdir: str, error: OSError) -> ResourceError:
    """The run's error for an event file that cannot be created or written (exit 6)."""
    return ResourceError(
        f"cannot write TensorBoard's event file in {logdir.rstrip('/')} "
        f"({error.strerror or error}); free space on that disk or make it writable, or set "
        "hydra.run.dir=/another/disk/run"
    )


class PacedRecordWriter:
    """In place of TensorBoard's queue and thread (its `_AsyncWriter`: write, flush, close):
    `write` appends an event's bytes to a list, which wakes nothing; a thread writes the list to
    the event file every `flush_secs`, or as soon as `wake_at` events wait, and flushes the file.
    `flush` writes and flushes on the caller's thread; `close` writes the rest and closes.

    A file that cannot be written (a full or read-only disk) is a ResourceError naming the folder
    (`logdir`), raised once, by the write or flush that meets it or, when the thread met it, by the
    training loop's next write or flush; from then on events are dropped and the close only
    closes (the run is ending on that error: a second one in its cleanup would bury it)."""

    def __init__(
        self, records: RecordWriter, *, flush_secs: float, wake_at: int, logdir: str
    ) -> None:
        self.flush_secs = flush_secs
        self.wake_at = wake_at
        self.logdir = logdir
        self._records = records
        self._pending: list[bytes] = []
        self._pending_lock = threading.Lock()  # the list, held only to append or swap it
        self._file_lock = threading.Lock()  # the file, held while writing it
        self._wake = threading.Event()
        self._closed = False
        self._error: BaseException | None = None  # the first failure to write, raised once
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="tensorboard-events", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        if self._failed():
            return
        with self._pending_lock:
            if self._closed:
                raise OSError("Writer is closed")
            self._pending.append(data)
            full = len(self._pending) >= self.wake_at
        if full:
            self._wake.set()

    def flush(self) -> None:
        if self._failed():
            return
        try:
            self._write_pending()
        except Exception as error:
            self._error, self._reported = error, True
            raise

    def close(self) -> None:
        with self._pending_lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._thread.join()
        try:
            if self._error is None:
                self._write_pending()
        finally:
            try:
                self._records.close()
            except OSError as error:
                if self._error is None:
                    raise cannot_write_events(self.logdir, error) from None

    def _write_pending(self) -> None:
        with self._file_lock:
            with self._pending_lock:
                pending, self._pending = self._pending, []
            if not pending:  # an idle pace: nothing since the last flush
                return
            try:
                for data in pending:
                    self._records.write(data)
                self._records.flush()
            except OSError as error:
                raise cannot_write_events(self.logdir, error) from None

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_secs)
            self._wake.clear()
            try:
                self._write_pending()
            except Exception as error:  # raised on the training loop's next write
                self._error = error
                return

    def _failed(self) -> bool:
        """Whether writing has failed: the first time it is asked after a failure of the
        thread's, it raises that failure instead."""
        if self._error is None:
            return False
        if not self._reported:
            self._reported = True
            raise self._error
        return True


def pace_writes(writer: Any, *, flush_secs: float, wake_at: int) -> bool:
    """Give torch's SummaryWriter `writer` a PacedRecordWriter in place of TensorBoard's queue
    and thread, which is stopped first, its queue written (the file's header); whether it did:
    not where this TensorBoard's writer is built otherwise (it is then left as it is)."""
    event_writer = getattr(writer._get_file_writer(), "event_writer", None)
    queued = getattr(event_writer, "_async_writer", None)
    if isinstance(queued, PacedRecordWriter):
        return True
    records, worker = getattr(queued, "_writer", None), getattr(queued, "_worker", None)
    if event_writer is None or queued is None or not isinstance(records, RecordWriter):
        return False
    if not callable(getattr(worker, "stop", None)):
        return False
    queued.flush()
    worker.stop()  # type: ignore[union-attr]  # its thread ends; the file stays open, now ours
    event_writer._async_writer = PacedRecordWriter(
        records,
        flush_secs=flush_secs,
        wake_at=wake_at,
        logdir=event_writer.get_logdir(),
    )
    return True
