"""The micro-batcher: merges concurrent scoring requests for the same model into one model
call, and logs their windows beside it (`app/scoring/log.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.metrics import SCORE_BATCH_SIZE
from app.scoring.log import Record, Scored, ScoreLog, log_scores, spans_array
from app.scoring.process import ScorerProcess
from app.scoring.registry import serving_samples
from models import ScoreBatch, TrainedModel

log = logging.getLogger(__name__)


@dataclass
class _Item:
    windows: np.ndarray
    record: Record | None
    future: asyncio.Future[Scored]


@dataclass
class _Pending:
    model: TrainedModel
    items: list[_Item] = field(default_factory=list)
    windows: int = 0


class MicroBatcher:
    """Merges concurrent scoring requests for the same model into one model call.

    While the model is idle a request runs at once (no added latency at low load); while
    it is busy, arriving requests accumulate and run together as soon as it is free.
    With `max_wait` > 0 an idle batcher also holds a batch open that long to collect more.
    A batch never exceeds `max_batch_size` windows unless one request alone is larger.
    A failed model call fails every request of its batch, each with the same exception.

    A request with a `Record` has its windows logged where the model ran: in the scoring
    child (which keeps a score log of its own), or on the scoring thread in `score_log`.

    A request of more than `max_piece_steps` window steps is scored in pieces of at most
    that many, each queued once the one before it is scored: requests that arrive meanwhile
    run between its pieces instead of waiting for all of it.
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_wait: float,
        n_samples: int,
        scorer: ScorerProcess | None = None,
        score_log: ScoreLog | None = None,
        max_piece_steps: int | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_piece_steps = max_piece_steps
        self.max_wait = max_wait
        self.n_samples = n_samples
        self.scorer = scorer  # None: score on a thread of this process
        self.score_log = score_log  # where that thread logs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-score")
        self._pending: OrderedDict[tuple[tuple[int, int], bool], _Pending] = OrderedDict()
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.model_calls = 0

    async def score(
        self,
        key: tuple[int, int],
        model: TrainedModel,
        windows: np.ndarray,
        record: Record | None = None,
    ) -> Scored:
        """Score `windows` of (series id, model version) `key`; log them if `record` says how
        (else the result has no ids and no alarm flags)."""
        steps = windows.shape[1] if windows.ndim > 1 else 1
        per_piece = len(windows)
        if self.max_piece_steps is not None:
            per_piece = max(1, self.max_piece_steps // max(1, steps))
        if len(windows) <= per_piece:
            return await self._queued(key, model, windows, record)
        pieces = []
        for start in range(0, len(windows), per_piece):
            stop = start + per_piece
            piece_record = record
            if record is not None and record.spans is not None:
                piece_record = Record(record.threshold, record.spans[start:stop])
            pieces.append(await self._queued(key, model, windows[start:stop], piece_record))
        return Scored(
            batch=concat_batches([piece.batch for piece in pieces]),
            ids=[i for piece in pieces for i in piece.ids],
            flagged=[f for piece in pieces for f in piece.flagged],
        )

    async def _queued(
        self,
        key: tuple[int, int],
        model: TrainedModel,
        windows: np.ndarray,
        record: Record | None,
    ) -> Scored:
        loop = asyncio.get_running_loop()
        if self._consumer is None or self._consumer.done():
            self._wakeup, self._full = asyncio.Event(), asyncio.Event()
            self._consumer = loop.create_task(self._consume())
        assert self._wakeup is not None and self._full is not None
        future: asyncio.Future[Scored] = loop.create_future()
        group = (key, record is not None)  # a batch is logged as a whole, or not at all
        pending = self._pending.get(group)
        if pending is None or pending.model is not model:
            pending = self._pending.setdefault(group, _Pending(model))
        pending.items.append(_Item(windows, record, future))
        pending.windows += len(windows)
        if pending.windows >= self.max_batch_size:
            self._full.set()
        self._wakeup.set()
        return await future

    async def _consume(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if self.max_wait > 0 and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait)
            self._wakeup.clear()
            self._full.clear()
            while self._pending:
                (key, _), pending = self._pending.popitem(last=False)
                for chunk in self._chunks(pending.items):
                    await self._run(loop, key, pending.model, chunk)

    def _chunks(self, items: list[_Item]) -> list[list[_Item]]:
        chunks: list[list[_Item]] = [[]]
        size = 0
        for item in items:
            if chunks[-1] and size + len(item.windows) > self.max_batch_size:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += len(item.windows)
        return chunks

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[int, int],
        model: TrainedModel,
        items: list[_Item],
    ) -> None:
        # NOTE: a request cancelled before its batch ran is left out, so it is not logged;
        # one cancelled while the batch runs is logged (it was scored), though nobody hears.
        live = [item for item in items if not item.future.cancelled()]
        if not live:
            return
        windows = live[0].windows if len(live) == 1 else np.concatenate([i.windows for i in live])
        thresholds, spans = _log_arrays(live)
        self.model_calls += 1
        SCORE_BATCH_SIZE.observe(len(windows))
        try:
            if self.scorer is not None:
                batch, ids, flagged = await self.scorer.score(
                    key,
                    model,
                    windows,
                    n_samples=serving_samples(model, self.n_samples),
                    thresholds=thresholds,
                    spans=spans,
                )
            else:
                batch, ids, flagged = await loop.run_in_executor(
                    self._executor, self._call, key, model, windows, thresholds, spans
                )
        except Exception as exc:  # every caller of the batch gets the failure
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        alarms = flagged.tolist() if flagged is not None else None
        for item in live:
            stop = start + len(item.windows)
            if not item.future.done():
                item.future.set_result(
                    Scored(
                        batch=batch if len(live) == 1 else slice_batch(batch, start, stop),
                        ids=ids[start:stop],
                        flagged=alarms[start:stop] if alarms is not None else [],
                    )
                )
            start = stop

    def _call(
        self,
        key: tuple[int, int],
        model: TrainedModel,
        windows: np.ndarray,
        thresholds: np.ndarray | None,
        spans: np.ndarray | None,
    ) -> tuple[ScoreBatch, list[uuid.UUID], np.ndarray | None]:
        batch = model.score(windows, n_samples=serving_samples(model, self.n_samples))
        if thresholds is None:
            return batch, [], None
        if self.score_log is None:
            raise RuntimeError("a request asked for its windows to be logged, but no log is set")
        ids, flagged = log_scores(self.score_log, key, windows, batch, thresholds, spans)
        return batch, ids, flagged

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
        self._executor.shutdown(wait=True, cancel_futures=False)
        if self.scorer is not None:
            await self.scorer.close()


def _log_arrays(items: list[_Item]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per window of a logged batch, its request's threshold and its span; (None, None) for a
    batch that is not logged (the batcher never mixes the two)."""
    records = [(len(item.windows), item.record) for item in items if item.record is not None]
    if not records:
        return None, None
    thresholds = np.concatenate([np.full(count, record.threshold) for count, record in records])
    return thresholds, spans_array(records)


def slice_batch(batch: ScoreBatch, start: int, stop: int) -> ScoreBatch:
    return ScoreBatch(
        raw_score=batch.raw_score[start:stop],
        score=batch.score[start:stop],
        p_false_positive=batch.p_false_positive[start:stop],
        p_false_negative=batch.p_false_negative[start:stop],
        adjusted_score=batch.adjusted_score[start:stop],
        is_anomaly=batch.is_anomaly[start:stop],
        class_probabilities=batch.class_probabilities[start:stop],
        channel_contributions=batch.channel_contributions[start:stop],
        step_contributions=batch.step_contributions[start:stop],
        quality=batch.quality[start:stop],
        threshold=batch.threshold,
    )


def concat_batches(batches: list[ScoreBatch]) -> ScoreBatch:
    """The pieces of one request's batch, scored apart, as one batch (slice_batch's inverse)."""
    if len(batches) == 1:
        return batches[0]

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(batch, name) for batch in batches])

    return ScoreBatch(
        raw_score=joined("raw_score"),
        score=joined("score"),
        p_false_positive=joined("p_false_positive"),
        p_false_negative=joined("p_false_negative"),
        adjusted_score=joined("adjusted_score"),
        is_anomaly=joined("is_anomaly"),
        class_probabilities=joined("class_probabilities"),
        channel_contributions=joined("channel_contributions"),
        step_contributions=joined("step_contributions"),
        quality=joined("quality"),
        threshold=batches[0].threshold,
    )
