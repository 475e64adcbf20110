"""Jobs: ``ann2snn`` CLI commands run as subprocesses from one queue, their state kept in the runs directory.

Each job has a folder ``<runs>/jobs/<id>/`` holding ``job.json`` (what was asked, the state, the records it
produced), ``output.log`` (the bytes the command wrote, terminal sequences included) and the files the command
wrote: the job runs there, with ``$ANN2SNN_RUNS`` pointing at its ``records/`` folder. When the command ends its
run records move into the runs directory, so they appear in ``ann2snn runs`` and on the runs page only once
complete. A server that starts finds jobs left queued or running by an earlier one and marks them ``interrupted``
(moving in any record such a job had finished writing), so a restart loses no finished record.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ann2snn.web.terminal import Screen

__all__ = ["Job", "JobStore", "JobQueue", "ACTIVE", "FINISHED"]

ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted")
#: environment of a job: rich draws its progress bars as on a terminal (no colours), 100 columns, unbuffered
_JOB_ENV = {"FORCE_COLOR": "1", "NO_COLOR": "1", "COLUMNS": "100", "LINES": "50", "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8", "TERM": "xterm"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Job:
    """One launched command. ``args`` follow ``ann2snn``; ``fields`` are the form values it came from."""

    id: str
    kind: str
    title: str
    args: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)
    state: str = "queued"
    created: str = ""
    started: str | None = None
    ended: str | None = None
    returncode: int | None = None
    error: str | None = None
    records: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"], d["records"] = list(self.args), list(self.records)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        return cls(**{**d, "args": tuple(d.get("args", ())), "records": tuple(d.get("records", ()))})

    @property
    def command(self) -> str:
        """The equivalent terminal command (paths relative to the job's folder)."""
        import shlex

        return "ann2snn " + " ".join(shlex.quote(a) for a in self.args)


class JobStore:
    """Jobs on disk under ``<runs>/jobs``; every change is written atomically before it is visible."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.root = runs / "jobs"
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def log_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "output.log"

    def create(self, kind: str, title: str, args: tuple[str, ...], fields: dict[str, str]) -> Job:
        now = _dt.datetime.now(_dt.timezone.utc)
        job = Job(id=f"{now:%Y%m%d-%H%M%S}-{kind}-{uuid.uuid4().hex[:6]}", kind=kind, title=title, args=args,
                  fields=dict(fields), created=now.isoformat(timespec="seconds"))
        (self.folder(job.id) / "records").mkdir(parents=True)
        self._save(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        """Every job, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)

    def update(self, job_id: str, **changes: Any) -> Job:
        with self._lock:
            job = dataclasses.replace(self._jobs[job_id], **changes)
        self._save(job)
        return job

    def _save(self, job: Job) -> None:
        path = self.folder(job.id) / "job.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(job.to_dict(), indent=2))
        os.replace(tmp, path)
        with self._lock:
            self._jobs[job.id] = job

    def harvest(self, job_id: str) -> tuple[str, ...]:
        """Move the run records a job wrote into the runs directory; their ids."""
        ids = []
        for p in sorted((self.folder(job_id) / "records").glob("*.json")):
            os.replace(p, self.runs / p.name)
            ids.append(p.stem)
        return tuple(ids)

    def load(self) -> list[Job]:
        """Read every job; those an earlier server left queued or running become ``interrupted``."""
        interrupted = []
        for path in sorted(self.root.glob("*/job.json")) if self.root.is_dir() else []:
            try:
                job = Job.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue  # a folder that is not a job, or a job.json cut short by a crash: not ours to guess
            with self._lock:
                self._jobs[job.id] = job
            if job.state in ACTIVE:
                was = job.state
                job = self.update(job.id, state="interrupted", ended=_now(),
                                  records=job.records + self.harvest(job.id),
                                  error=f"the server stopped while this job was {was}; launch it again")
                interrupted.append(job)
        return interrupted


class JobQueue:
    """One FIFO of jobs served by ``workers`` threads; each runs ``python -m ann2snn ARGS`` in the job's folder."""

    def __init__(self, store: JobStore, *, workers: int = 1) -> None:
        self.store = store
        self.workers = workers
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._procs: dict[str, subprocess.Popen] = {}
        self._screens: dict[str, Screen] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        """Start the worker threads (again after :meth:`shutdown`); jobs submitted before wait in the queue."""
        if any(t.is_alive() for t in self._threads):
            return
        self._stopping = False
        self._threads = [threading.Thread(target=self._worker, name=f"ann2snn-job-{i}", daemon=True)
                         for i in range(self.workers)]
        for t in self._threads:
            t.start()

    def submit(self, kind: str, title: str, args: tuple[str, ...], fields: dict[str, str]) -> Job:
        job = self.store.create(kind, title, args, fields)
        self._queue.put(job.id)
        return job

    def screen(self, job_id: str) -> Screen | None:
        """The live screen of a running job (None once it has ended: read its log file then)."""
        with self._lock:
            return self._screens.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a queued one never starts, a running one gets SIGTERM (SIGKILL after 5 s)."""
        job = self.store.get(job_id)
        if job is None or job.state not in ACTIVE:
            return job
        with self._lock:
            self._cancelled.add(job_id)
            proc = self._procs.get(job_id)
            if proc is None and job.state == "queued":
                job = self.store.update(job_id, state="cancelled", ended=_now())
        if proc is not None:  # the worker sees the process end and records the job as cancelled
            threading.Thread(target=_terminate, args=(proc,), daemon=True).start()
        return job

    def shutdown(self) -> None:
        """Stop the workers; running and queued jobs end as ``interrupted`` (the server is going away)."""
        self._stopping = True
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            _terminate(p)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._queue = queue.Queue()  # what was waiting ends as interrupted below
        for job in self.store.all():
            if job.state in ACTIVE:
                self.store.update(job.id, state="interrupted", ended=_now(),
                                  error=f"the server stopped while this job was {job.state}; launch it again")

    # -- worker side ---------------------------------------------------------------------------------------
    def _worker(self) -> None:
        while (job_id := self._queue.get()) is not None:
            job = self.store.get(job_id)
            if job is None or job.state != "queued" or self._stopping:
                continue
            try:
                self._run(job)
            except Exception as exc:  # a job must never take its worker down with it
                self.store.update(job_id, state="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        screen = Screen()
        env = {**os.environ, **_JOB_ENV, "ANN2SNN_RUNS": str(folder / "records")}
        with self._lock:
            if job.id in self._cancelled:
                return
            proc = subprocess.Popen([sys.executable, "-m", "ann2snn", *job.args], cwd=folder, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self._procs[job.id], self._screens[job.id] = proc, screen
        self.store.update(job.id, state="running", started=_now())
        with open(self.store.log_path(job.id), "ab") as log:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                screen.feed(chunk)
        rc = proc.wait()
        proc.stdout.close()
        records = self.store.harvest(job.id)
        lines = screen.lines()
        if job.id in self._cancelled:
            state, error = "cancelled", None
        elif self._stopping:
            state, error = "interrupted", "the server stopped while this job was running; launch it again"
        elif rc == 0:
            state, error = "done", None
        else:
            errors = [ln.strip() for ln in lines if ln.startswith("error:")]
            state, error = "failed", errors[-1] if errors else (lines[-1].strip() if lines else f"exit code {rc}")
        self.store.update(job.id, state=state, ended=_now(), returncode=rc, error=error, records=records)
        with self._lock:
            self._procs.pop(job.id, None)
            self._screens.pop(job.id, None)


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM to the job's process group, SIGKILL if it is still there after 5 s."""
    def kill(sig):
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)
            else:  # Windows: no process groups from start_new_session
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass

    kill(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        kill(signal.SIGKILL)
