"""Scoring in a process of its own, so that the model never waits for the event loop's GIL.

An API process is one Python interpreter: its event loop (HTTP, parsing, responses) holds the
GIL whenever it has work, and a scoring thread must take the GIL back at every step that
crosses into Python (waking for a batch, returning from the model, its numpy epilogue). Under
load each of those waits for the event loop to yield, up to the interpreter's 5 ms switch
interval: at concurrency 32 a batch of 16 windows that computes in 2.9 ms took 5.4 ms, plus
1.7 ms before it started, and the two threads between them kept about one of two cores busy.
A model server keeps inference out of the web process for this reason, and so does Vigil:
the API process sends each micro-batch to a child process (`python -m app.scoring.process`) over a
pipe and awaits the reply on its event loop; the child has a GIL of its own.

The parent keeps its loaded `TrainedModel`s (it validates requests and thresholds against
them); the child keeps its own bounded cache, keyed by (series id, model version), and says
"missing" for a model it does not hold, which the parent answers by sending the artifact
(safetensors: loading it runs no code). If the child dies or stops answering, the batch in
flight fails with 503 and the next one starts a new child.

The child also keeps the score log (`app/scoring/log.py`): it holds the windows already, so it
decides each window's id and alarm flag beside the model call, returns them with the scores,
and writes the rows on a thread of its own; on SQLite each row written on a thread of the API
process cost that process's event loop a GIL hand-over (17 % of its throughput at
concurrency 32). At the end of its input the child writes what it holds, then exits. A
child that is killed loses the rows of its last flush interval, as an API process would.

Frames, both ways: a little-endian u32 header length and u64 payload length, an orjson
header, then the payload (float32 windows, then float64 thresholds and int64 spans when the
windows are logged; the artifact; or the result arrays, then the ids and flags). The first
frame the child reads configures its score log and gets no reply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import struct
import sys
import threading
import uuid
from collections import OrderedDict, deque
from typing import Any, BinaryIO

import numpy as np
import orjson

from app.scoring.log import ScoreLog, log_scores
from models import ScoreBatch, TrainedModel

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<IQ")
REPLY_TIMEOUT = 120.0
"""Seconds a batch may take before the child is deemed hung (1,024 windows at L = 64 take ~10 s)."""
EXIT_TIMEOUT = 60.0
"""Seconds a closed child may take to write the scores it holds and exit before it is killed."""

# ScoreBatch's arrays, in the order they travel (its one float, the threshold, in the header).
_FIELDS = tuple(f.name for f in dataclasses.fields(ScoreBatch) if f.name != "threshold")


class ScorerProcess:
    """The parent's side: one child, which answers frames in the order they were sent.

    A reader task hands each reply to the request that waits for it, in order, and fails
    every waiting request with 503 if the child's output ends; the micro-batcher sends one
    batch at a time, while the next one gathers."""

    def __init__(
        self,
        *,
        threads: int,
        cache_size: int,
        database_url: str | None = None,
        flush_seconds: float = 0.5,
        log_level: str = "INFO",
        log_format: str = "text",
    ) -> None:
        """`database_url`: where the child logs scored windows (None: it logs nothing), every
        `flush_seconds`; its own log lines go to stderr at `log_level` in `log_format`."""
        self.threads = threads
        self.cache_size = cache_size
        self._config = {
            "database_url": database_url,
            "flush_seconds": flush_seconds,
            "log_level": log_level,
            "log_format": log_format,
        }
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[tuple[dict[str, Any], bytes]]] = deque()
        self._starting = asyncio.Lock()
        self.started = 0  # children started, for tests and logs

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        """Start the child now rather than on the first batch (it needs ~2 s to import torch)."""
        await self._ensure()

    async def score(
        self,
        key: tuple[int, int],
        model: TrainedModel,
        windows: np.ndarray,
        *,
        n_samples: int,
        thresholds: np.ndarray | None = None,
        spans: np.ndarray | None = None,
    ) -> tuple[ScoreBatch, list[uuid.UUID], np.ndarray | None]:
        """The scores of `windows`; with `thresholds` (one per window) the child logs them too
        and returns their ids and alarm flags (else no ids and None)."""
        windows = np.ascontiguousarray(windows, dtype="<f4")
        header: dict[str, Any] = {
            "op": "score",
            "model": list(key),
            "n_samples": n_samples,
            "shape": windows.shape,
        }
        data: bytes | memoryview = windows.data.cast("B")  # bytes: len() is the byte count
        if thresholds is not None:
            header["log"] = True
            header["spans"] = spans is not None
            parts = [data, np.ascontiguousarray(thresholds, dtype="<f8").tobytes()]
            if spans is not None:
                parts.append(np.ascontiguousarray(spans, dtype="<i8").tobytes())
            data = b"".join(parts)
        reply, payload = await self._call(header, data)
        if reply.get("missing"):
            blob = await asyncio.to_thread(model.to_bytes)
            reply, _ = await self._call({"op": "load", "model": list(key)}, blob)
            if reply.get("ok"):
                reply, payload = await self._call(header, data)
        if not reply.get("ok"):
            raise RuntimeError(
                f"the scoring process failed: {reply.get('error')}: {reply.get('message')}"
            )
        return _unpack(reply, payload)

    async def flush(self) -> int:
        """Have the child write the scores it holds now; the number of rows written."""
        reply, _ = await self._call({"op": "flush"}, b"")
        if not reply.get("ok"):
            from app.errors import ServiceUnavailable

            raise ServiceUnavailable(
                f"the score log could not be written ({reply.get('error')}); retry shortly"
            )
        return int(reply["rows"])

    async def close(self) -> None:
        """Close the child's input: it writes the scores it holds and exits."""
        await self._stop()

    # -- internals --------------------------------------------------------------------------

    async def _ensure(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is not None and process.returncode is None:
            return process  # every batch comes here: no lock while the child lives
        async with self._starting:
            process = self._process
            if process is not None and process.returncode is None:
                return process
            self._process = process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app.scoring.process",
                "--threads",
                str(self.threads),
                "--cache-size",
                str(self.cache_size),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdin is not None
            # The first frame configures the score log (kept off the command line, which
            # every user of the machine can read: the database URL may hold a password).
            process.stdin.write(_frame(self._config))
            self._reader = asyncio.get_running_loop().create_task(self._read(process))
            self.started += 1
            log.info("started the scoring process (pid %d)", process.pid)
            return process

    async def _call(
        self, header: dict[str, Any], payload: bytes | memoryview
    ) -> tuple[dict[str, Any], bytes]:
        process = await self._ensure()
        assert process.stdin is not None
        reply: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        # Both writes happen before any other coroutine runs: frames never interleave.
        process.stdin.write(_frame(header, len(payload)))
        process.stdin.write(payload)
        self._waiting.append(reply)
        try:
            await process.stdin.drain()
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await asyncio.shield(reply)
        except (OSError, TimeoutError) as exc:
            reply.cancel()  # the reader will not deliver it
            what = "stopped answering" if isinstance(exc, TimeoutError) else "exited"
            log.error("the scoring process %s (%s); starting another", what, type(exc).__name__)
            await self._stop()
            raise _unavailable(what) from None

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        """Replies, in order, to the requests waiting for them; at the end, fail the rest."""
        stdout = process.stdout
        assert stdout is not None
        try:
            while True:
                head_size, payload_size = _FRAME.unpack(await stdout.readexactly(_FRAME.size))
                header = orjson.loads(await stdout.readexactly(head_size))
                payload = await stdout.readexactly(payload_size)
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result((header, payload))
        except (asyncio.IncompleteReadError, OSError, IndexError):
            pass
        finally:
            if self._process is process:
                self._process = None
                if process.returncode is None:
                    process.kill()
                log.error("the scoring process exited; the next batch starts another")
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(_unavailable("exited"))

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()  # the child exits at end of input
            try:
                async with asyncio.timeout(EXIT_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader  # it ends at end of output, failing what still waits


def _unavailable(what: str) -> Exception:
    from app.errors import ServiceUnavailable  # here: the child never loads the web stack

    return ServiceUnavailable(f"the scoring process {what}; retry shortly")


def _frame(header: dict[str, Any], payload_size: int = 0) -> bytes:
    """A frame's sizes and header; its payload follows."""
    head = orjson.dumps(header)
    return _FRAME.pack(len(head), payload_size) + head


def _pack(batch: ScoreBatch) -> tuple[dict[str, Any], bytes]:
    arrays = [np.ascontiguousarray(getattr(batch, name)) for name in _FIELDS]
    header = {
        "ok": True,
        "threshold": batch.threshold,
        "arrays": [[a.dtype.str, a.shape] for a in arrays],
    }
    return header, b"".join(a.tobytes() for a in arrays)


def _unpack(
    header: dict[str, Any], payload: bytes
) -> tuple[ScoreBatch, list[uuid.UUID], np.ndarray | None]:
    values: dict[str, Any] = {}
    at = 0
    for name, (dtype, shape) in zip(_FIELDS, header["arrays"], strict=True):
        kind = np.dtype(dtype)
        count = math.prod(shape)
        values[name] = np.frombuffer(payload, kind, count, at).reshape(shape)
        at += count * kind.itemsize
    batch = ScoreBatch(**values, threshold=header["threshold"])
    if not header.get("logged"):
        return batch, [], None
    n = len(batch.raw_score)
    ids = [uuid.UUID(bytes=payload[i : i + 16]) for i in range(at, at + 16 * n, 16)]
    flagged = np.frombuffer(payload, np.bool_, n, at + 16 * n)
    return batch, ids, flagged


# -- the child --------------------------------------------------------------------------------


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    if data is None or len(data) < size:
        return None  # end of input: the parent has gone or closed the pipe
    return data


def _write(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    stream.write(_frame(header, len(payload)))
    stream.write(payload)
    stream.flush()


def _read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    sizes = _read_exactly(stream, _FRAME.size)
    if sizes is None:
        return None
    head_size, payload_size = _FRAME.unpack(sizes)
    head = _read_exactly(stream, head_size)
    payload = _read_exactly(stream, payload_size) if payload_size else b""
    if head is None or payload is None:
        return None
    return orjson.loads(head), payload


def _handle(
    header: dict[str, Any],
    payload: bytes,
    models: OrderedDict[tuple[int, int], TrainedModel],
    score_log: ScoreLog | None,
) -> tuple[dict[str, Any], bytes]:
    if header["op"] == "flush":
        return {"ok": True, "rows": score_log.flush() if score_log is not None else 0}, b""
    key = (int(header["model"][0]), int(header["model"][1]))
    if header["op"] == "load":
        models[key] = TrainedModel.from_bytes(payload)
        return {"ok": True}, b""
    model = models.get(key)
    if model is None:
        return {"ok": False, "missing": True}, b""
    models.move_to_end(key)
    n = int(header["shape"][0])
    windows = np.frombuffer(payload, "<f4", math.prod(header["shape"])).reshape(header["shape"])
    batch = model.score(windows, n_samples=int(header["n_samples"]))
    reply, data = _pack(batch)
    if not header.get("log"):
        return reply, data
    if score_log is None:
        raise RuntimeError("asked to log scores, but this scoring process has no database")
    thresholds = np.frombuffer(payload, "<f8", n, windows.nbytes)
    spans = (
        np.frombuffer(payload, "<i8", 2 * n, windows.nbytes + 8 * n).reshape(n, 2)
        if header["spans"]
        else None
    )
    ids, flagged = log_scores(score_log, key, windows, batch, thresholds, spans)
    reply["logged"] = True
    return reply, b"".join([data, *(i.bytes for i in ids), flagged.tobytes()])


def serve(stdin: BinaryIO, stdout: BinaryIO, *, cache_size: int) -> None:
    """Answer frames until the input ends; then write the scores still held, and return."""
    first = _read_frame(stdin)
    if first is None:
        return
    config, _ = first
    from app.logs import configure

    configure(config["log_level"], config["log_format"])
    score_log = _score_log(config["database_url"]) if config.get("database_url") else None
    stop = threading.Event()
    if score_log is not None:
        flusher = threading.Thread(
            target=score_log.run_until,
            args=(stop, float(config["flush_seconds"])),
            name="vigil-score-log",
            daemon=True,
        )
        flusher.start()
    models: OrderedDict[tuple[int, int], TrainedModel] = OrderedDict()
    try:
        while (frame := _read_frame(stdin)) is not None:
            header, payload = frame
            try:
                reply, data = _handle(header, payload, models, score_log)
            except Exception as exc:  # reported to the parent, which logs it and answers 500
                reply = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
                data = b""
            while len(models) > cache_size:
                models.popitem(last=False)
            _write(stdout, reply, data)
    finally:
        stop.set()
        if score_log is not None:
            flusher.join()
            _last_flush(score_log)


def _score_log(url: str) -> ScoreLog:
    from app.db.session import make_engine, make_sessionmaker

    return ScoreLog(make_sessionmaker(make_engine(url, role="scorer")))


def _last_flush(score_log: ScoreLog) -> None:
    try:
        score_log.flush()
    except Exception as exc:
        log.error(
            "could not write %d scored windows at exit: %s",
            score_log.pending,
            exc.__class__.__name__,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.scoring.process", description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-size", type=int, default=64)
    args = parser.parse_args(argv)
    # Signals sent to the whole group (Ctrl-C, systemd stopping the unit) reach this child
    # too, while the parent still finishes the requests it accepted. The child stops when its
    # input ends instead: the parent closes it at shutdown, or dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    torch.set_num_threads(args.threads)
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames may reach the pipe
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, stdout, cache_size=args.cache_size)


if __name__ == "__main__":
    main()
