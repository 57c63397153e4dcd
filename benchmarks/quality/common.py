"""What the quality tasks share: a real Vigil driven over HTTP as a client drives it, the peer
detectors run in-process on the very same windows, the metrics, and result rows.

The service runs with its default settings: the harness sets only the database URL, the admin
key, host and port, the log level and the worker's metrics port (0, so that runs beside other
engineers' services do not collide), through `benchmarks.service.common.serve`.

scikit-learn and PyOD are imported inside the peer functions, so that the metric code (and its
test) needs neither.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import numpy as np

from benchmarks.models.common import (
    class_specs,
    epochs_for,
    fpr_at_recall,
    roc_auc,
    step_labels,
    steps_per_epoch,
)
from benchmarks.service.common import log, serve, sqlite_database

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the first point of every series, epoch seconds
POLL_SECONDS = 0.5


# -- metrics (no point-adjust: every window counts once) --------------------------------------
def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """True and false positives at each distinct threshold, highest first (an alarm is
    score >= threshold, so tied windows enter together), and the number of positives."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64), int(y.sum())


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_n - R_{n-1}) * P_n (the step
    function, not the trapezoid; scikit-learn's definition). NaN without positives."""
    tp, fp, n_pos = _curve(scores, positive)
    if n_pos == 0:
        return math.nan
    recall = tp / n_pos
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(scores: np.ndarray, positive: np.ndarray) -> float:
    """The highest F1 over all thresholds (an oracle threshold, no point-adjust)."""
    tp, fp, n_pos = _curve(scores, positive)
    if n_pos == 0:
        return math.nan
    f1 = 2 * tp / (tp + fp + n_pos)  # 2PR/(P+R) = 2TP / (2TP + FP + FN)
    return float(f1.max())


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    """The recall of the lowest threshold whose false-positive rate is at most `fpr`: alarms
    are windows scoring above the (k+1)-th highest normal score, k = floor(fpr * n_normal)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    neg = np.sort(scores[~positive])[::-1]
    if neg.size == 0 or not positive.any():
        return math.nan
    k = math.floor(fpr * neg.size + 1e-9)
    if k >= neg.size:
        return 1.0
    return float((scores[positive] > neg[k]).mean())


def detection_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(scores, positive),
        "pr_auc": average_precision(scores, positive),
        "best_f1": best_f1(scores, positive),
    }


def feedback_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(scores, positive),
        "fpr_at_recall_0.5": fpr_at_recall(scores, positive, 0.5)[0],
        "fpr_at_recall_0.8": fpr_at_recall(scores, positive, 0.8)[0],
        "recall_at_fpr_0.05": recall_at_fpr(scores, positive, 0.05),
    }


# -- result rows ------------------------------------------------------------------------------
@dataclass
class Timer:
    """Wall seconds spent in named phases, summed."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


# -- the service, over HTTP -------------------------------------------------------------------
class ServiceError(RuntimeError):
    pass


@dataclass
class Scored:
    """One POST /v1/score answer (or several, concatenated), as arrays."""

    model_version: int
    threshold: float
    score_id: list[str]
    adjusted_score: np.ndarray  # (N,) what alarms compare with the threshold
    score: np.ndarray  # (N,) calibrated, before feedback adjustment
    is_anomaly: np.ndarray  # (N,) bool
    class_probabilities: list[dict[str, float]]
    start: list[str | None]


class Vigil:
    """A client of a running Vigil: only public endpoints, only documented fields."""

    def __init__(self, base: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300
        )
        self.auto_retrain_races = 0  # jobs a label count queued that started before our last label

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ServiceError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response

    def create_series(
        self,
        name: str,
        channels: Sequence[str],
        *,
        window_size: int,
        stride: int,
        classes: dict[str, str] | None = None,
    ) -> int:
        body: dict[str, Any] = {
            "name": f"{name}-{uuid.uuid4().hex[:6]}",
            "channels": list(channels),
            "window_size": window_size,
            "stride": stride,
        }
        if classes:
            body["classes"] = classes
        series_id: int = self._call("POST", "/v1/series", json=body).json()["id"]
        return series_id

    def ingest(self, series_id: int, values: np.ndarray, *, start: int = 0) -> None:
        """Rows of `values` (P, F), one a second from T0 + start (JSON, epoch seconds)."""
        chunk = 50_000
        for lo in range(0, values.shape[0], chunk):
            part = values[lo : lo + chunk]
            stamps = (T0 + start + lo + np.arange(part.shape[0])).tolist()
            self._call(
                "POST",
                f"/v1/series/{series_id}/points",
                json={"timestamps": stamps, "values": part.astype(np.float64).tolist()},
            )

    def label_range(self, series_id: int, start: int, end: int, label: str) -> None:
        """Label points T0 + start ... T0 + end (inclusive) with `label`."""
        self._call(
            "POST",
            "/v1/labels",
            json={"series_id": series_id, "start": T0 + start, "end": T0 + end, "label": label},
        )

    def label_score(self, score_id: str, label: str) -> None:
        self._call("POST", "/v1/labels", json={"score_id": score_id, "label": label})

    def train(self, series_id: int) -> int:
        """Queue a training job that sees every label sent so far, and return its id.

        POST /train hands back an open job instead of queuing one. A job queued by the label
        count (VIGIL_RETRAIN_AFTER_LABELS) that already started may have missed the last
        labels: wait for it, then ask again."""
        for _ in range(3):
            response = self._call("POST", f"/v1/series/{series_id}/train")
            job = response.json()
            if response.status_code == 202 or job["status"] == "queued":
                return int(job["id"])
            self.auto_retrain_races += 1
            log(f"  series {series_id}: job {job['id']} ({job['reason']}) was running; waiting")
            self.wait_jobs([int(job["id"])])
        raise ServiceError(f"series {series_id}: could not queue a fresh training job")

    def job(self, job_id: int) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}").json()
        return job

    def wait_jobs(self, job_ids: Sequence[int], timeout: float = 1800) -> dict[int, dict[str, Any]]:
        """Poll GET /v1/jobs/{id} until every job has ended (succeeded or failed)."""
        deadline = time.monotonic() + timeout
        done: dict[int, dict[str, Any]] = {}
        while len(done) < len(job_ids):
            for job_id in job_ids:
                if job_id not in done:
                    job = self.job(job_id)
                    if job["status"] in ("succeeded", "failed"):
                        done[job_id] = job
            if len(done) < len(job_ids):
                if time.monotonic() > deadline:
                    raise ServiceError(f"jobs still open after {timeout:.0f} s")
                time.sleep(POLL_SECONDS)
        return done

    def versions(self, series_id: int) -> dict[str, Any]:
        found: dict[str, Any] = self._call("GET", f"/v1/series/{series_id}/models").json()
        return found

    def activate(self, series_id: int, version: int) -> None:
        self._call("POST", f"/v1/series/{series_id}/models/{version}/activate")

    def score(self, series_id: int, windows: np.ndarray, *, min_version: int = 1) -> Scored:
        """Score windows (N, T, F) as binary float32 bodies of at most 1,024 windows.

        Waits (up to 60 s) until the API serves version `min_version` or later: API processes
        pick up a newly active version within VIGIL_MODEL_POLL_SECONDS."""
        parts = []
        for lo in range(0, windows.shape[0], 1024):
            batch = np.ascontiguousarray(windows[lo : lo + 1024], dtype="<f4")
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Vigil-Series-Id": str(series_id),
                "X-Vigil-Shape": ",".join(map(str, batch.shape)),
            }
            deadline = time.monotonic() + 60
            while True:
                response = self.http.post("/v1/score", content=batch.tobytes(), headers=headers)
                fresh = response.status_code == 200 and (
                    response.json()["model_version"] >= min_version or lo > 0
                )
                if fresh:
                    break
                if response.status_code not in (200, 409) or time.monotonic() > deadline:
                    raise ServiceError(
                        f"score series {series_id}: {response.status_code} {response.text[:300]}"
                    )
                time.sleep(POLL_SECONDS)
            parts.append(response.json())
        return _scored(parts)

    def score_version(self, series_id: int, windows: np.ndarray, version: int) -> Scored:
        """Score with exactly `version` (the active one), waiting until the API serves it."""
        scored = self.score(series_id, windows, min_version=version)
        if scored.model_version != version:
            raise ServiceError(
                f"series {series_id} scored with version {scored.model_version}, not {version}"
            )
        return scored


def _scored(parts: list[dict[str, Any]]) -> Scored:
    results = [r for part in parts for r in part["results"]]
    return Scored(
        model_version=int(parts[0]["model_version"]),
        threshold=float(parts[0]["threshold"]),
        score_id=[r["score_id"] for r in results],
        adjusted_score=np.array([r["adjusted_score"] for r in results], dtype=np.float64),
        score=np.array([r["score"] for r in results], dtype=np.float64),
        is_anomaly=np.array([r["is_anomaly"] for r in results], dtype=bool),
        class_probabilities=[r["class_probabilities"] for r in results],
        start=[r.get("start") for r in results],
    )


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    """What a job says about how it trained: the seed (its id), early stopping, activation."""
    metrics = job.get("metrics") or {}
    keep = (
        "activated",
        "note",
        "stopped",
        "steps",
        "step_budget",
        "best_step",
        "batch_size",
        "epochs_run",  # before the step budget (older builds)
        "best_epoch",
        "train_windows",
        "validation_windows",
        "labelled_windows",
        "feedback_windows",
        "train_seconds",
        "val_loss",
        "active_val_loss",
        "threshold",
        "calibration_outliers",
        "marked_alarms",
        "active_marked_alarms",
        "missed_faults",
        "active_missed_faults",
        "val_false_alarms",
        "active_val_false_alarms",
    )
    return {
        "job_id": job["id"],
        "seed": job["id"],  # app/training/worker.py: train_version(seed=claimed.job_id)
        "reason": job["reason"],
        "status": job["status"],
        "error": job["error"],
        "model_version": job["model_version"],
        "job_seconds": _seconds_between(job.get("started_at"), job.get("finished_at")),
        "queued_seconds": _seconds_between(job.get("created_at"), job.get("started_at")),
        **{k: metrics[k] for k in keep if k in metrics},
    }


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(delta.total_seconds(), 3)


@contextlib.contextmanager
def vigil_service() -> Iterator[Vigil]:
    """`vigil migrate` + `vigil serve` (embedded worker) on a temporary SQLite database."""
    with sqlite_database() as url, serve(url) as server:
        client = Vigil(server.base, server.key)
        try:
            yield client
        finally:
            client.close()


def split(values: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Consecutive pieces of `values` of the given sizes (scores of concatenated test sets)."""
    return np.split(values, np.cumsum(sizes)[:-1])


# -- peers, in-process ------------------------------------------------------------------------
def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Per-channel standardisation fitted on the training windows (N, T, F), then each window
    flattened to T*F features. The same Normalisation the model package uses."""
    from models.data import Normalisation

    norm = Normalisation.fit(train)
    return [norm.apply(w).reshape(w.shape[0], -1).astype(np.float64) for w in (train, *others)]


def _isolation_forest(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    model = IsolationForest(random_state=seed).fit(x_train)
    return -model.score_samples(x_test)


def _lof(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.neighbors import LocalOutlierFactor

    neighbours = min(20, x_train.shape[0] - 1)
    model = LocalOutlierFactor(n_neighbors=neighbours, novelty=True).fit(x_train)
    return -model.score_samples(x_test)


def _ecod(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    from pyod.models.ecod import ECOD

    return np.asarray(ECOD().fit(x_train).decision_function(x_test), dtype=np.float64)


def _knn(x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    from pyod.models.knn import KNN

    model = KNN(n_neighbors=min(5, x_train.shape[0] - 1)).fit(x_train)
    return np.asarray(model.decision_function(x_test), dtype=np.float64)


FLAT_PEERS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "IsolationForest": _isolation_forest,
    "LOF": _lof,
    "ECOD": _ecod,
    "KNN": _knn,
}
"""Peers on flattened standardised windows: higher score = more anomalous."""


def eu_scores(
    train: np.ndarray, test: np.ndarray, channels: Sequence[str], seed: int
) -> np.ndarray:
    """Our EU variant (no class head) with the model package's default TrainConfig, 1 thread."""
    import models

    model = models.fit(
        models.TrainingData(train),
        classes=models.BUILTIN_CLASSES,
        channels=list(channels),
        model_config=models.ModelConfig(variant="eu"),
        train_config=models.TrainConfig(seed=seed, threads=1),
    )
    return np.asarray(model.score(test).score, dtype=np.float64)


def run_peers(
    train: np.ndarray,
    tests: Sequence[np.ndarray],
    channels: Sequence[str],
    seed: int,
    *,
    only: Sequence[str] | None = None,
) -> dict[str, tuple[list[np.ndarray], float]]:
    """Every peer fitted on `train` (N, T, F) and scored on each of `tests`:
    name -> (scores per test set, wall seconds for fit + score)."""
    import pyod.models.ecod
    import pyod.models.knn
    import sklearn.ensemble
    import sklearn.neighbors
    from threadpoolctl import threadpool_limits

    del pyod, sklearn  # imported here so that no clock below counts the imports

    out: dict[str, tuple[list[np.ndarray], float]] = {}
    test_all = np.concatenate(tests)
    sizes = [t.shape[0] for t in tests]
    with threadpool_limits(1):
        started = time.perf_counter()
        x_train, x_test = standardise(train, test_all)
        prep = time.perf_counter() - started
        for name, peer in FLAT_PEERS.items():
            if only is not None and name not in only:
                continue
            started = time.perf_counter()
            scores = peer(x_train, x_test, seed)
            seconds = time.perf_counter() - started + prep
            out[name] = (split(scores, sizes), seconds)
        if only is None or "EU" in only:
            started = time.perf_counter()
            scores = eu_scores(train, test_all, channels, seed)
            seconds = time.perf_counter() - started
            out["EU"] = (split(scores, sizes), seconds)
    return out


def es_classifier(
    train: np.ndarray,
    y: np.ndarray,
    labelled: np.ndarray,
    class_names: Sequence[str],
    channels: Sequence[str],
    test: np.ndarray,
    seed: int,
    *,
    steps: int = 800,
    batch_size: int = 16,
) -> tuple[np.ndarray, float]:
    """The ES classifier (encoder + π, cross-entropy only) on the labelled windows, with the
    protocol of benchmarks/models/ss_vs_es.py (a budget of optimiser steps, batch 16, no
    validation split). Returns (test class probabilities (N, K), wall seconds)."""
    import models

    n_lab = int(labelled.sum())
    epochs = epochs_for(steps, steps_per_epoch("es", labelled.size - n_lab, n_lab, batch_size))
    started = time.perf_counter()
    model = models.fit(
        models.TrainingData(train, step_labels(y, labelled, train.shape[1])),
        classes=class_specs(class_names),
        channels=list(channels),
        model_config=models.ModelConfig(variant="es"),
        train_config=models.TrainConfig(
            epochs=epochs, batch_size=batch_size, val_fraction=0.0, seed=seed, threads=1
        ),
    )
    probs = model.predict_proba(test)
    return probs, time.perf_counter() - started
