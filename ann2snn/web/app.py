"""The web app: a Starlette application over a runs directory (pages, a small JSON API, job events).

>>> from ann2snn.web.app import create_app
>>> app = create_app(Path("runs"), data=Path("data"), workers=1)   # then: uvicorn.run(app, port=8000)

Pages: ``/`` runs and jobs, ``/runs/ID`` one run, ``/jobs/ID`` one job with its live output, ``/compare?run=A&run=B``,
``/launch/train``, ``/launch/test``, ``/launch/convert``. API: ``GET /api/runs``, ``GET|POST /api/jobs``,
``GET /api/jobs/ID``, ``POST /api/jobs/ID/cancel``, ``GET /api/jobs/ID/log``; ``GET /jobs/ID/events`` streams a
job's output as server-sent events (``screen``: rows rewritten since the last event; ``state``; ``end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ann2snn.errors import Ann2SnnError
from ann2snn.runs import list_records
from ann2snn.web import forms, views
from ann2snn.web.jobs import ACTIVE, FINISHED, Job, JobQueue, JobStore
from ann2snn.web.terminal import render

__all__ = ["create_app", "TOKEN_COOKIE"]

HERE = Path(__file__).parent
TOKEN_COOKIE = "ann2snn_token"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_MAX_BODY = 64 * 1024


class _Site:
    """The app's state: directories, jobs, templates; its methods are the endpoints."""

    def __init__(self, runs: Path, data: Path | None, workers: int, images: bool | None) -> None:
        self.dirs = forms.Dirs(runs=runs, data=data)
        try:
            (runs / "jobs").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Ann2SnnError(f"cannot use runs directory {runs}: {exc.strerror or exc}; pass a writable --runs DIR")
        self.store = JobStore(runs)
        self.store.load()
        self.queue = JobQueue(self.store, workers=workers)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.StrictUndefined)
        self.env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.2f}%"
        self.env.filters["size"] = _size
        self.env.filters["when"] = lambda iso: str(iso or "")[:19].replace("T", " ") + " UTC" if iso else ""
        self.env.globals["zip"] = zip
        self.images = importlib.util.find_spec("matplotlib") is not None if images is None else images
        self._sections: dict[str, str] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(runs_dir=str(self.dirs.runs), data_dir=self.dirs.data,
                                                  workers=self.queue.workers, **context)
        return HTMLResponse(html, status_code=status)

    def records(self) -> dict[str, dict[str, Any]]:
        return {str(r.get("id")): r for r in list_records(self.dirs.runs)}

    def jobs_of(self) -> dict[str, str]:
        return {rid: j.id for j in self.store.all() for rid in j.records}

    def job_json(self, job: Job) -> dict[str, Any]:
        screen = self.queue.screen(job.id)
        return {**job.to_dict(), "command": job.command, "progress": screen.last_line() if screen else "",
                "url": f"/jobs/{job.id}"}

    def log_lines(self, job_id: str) -> list[str]:
        screen = self.queue.screen(job_id)
        if screen is not None:
            return screen.lines()
        path = self.store.log_path(job_id)
        return render(path.read_bytes()) if path.is_file() else []

    def run_view(self, rec: dict[str, Any]) -> dict[str, Any]:
        """What the run page shows of one record: its report section (cached: records never change), chart,
        downloads."""
        rid = str(rec.get("id"))
        if rid not in self._sections:
            if len(self._sections) > 64:
                self._sections.clear()
            self._sections[rid] = views.record_html(rec, images=self.images)
        outputs = list(rec.get("outputs") or [])
        return {"rec": rec, "section": self._sections[rid], "downloads": views.downloads(outputs, self.dirs.runs),
                # the report's section has the matplotlib figure when matplotlib is there; else the SVG chart
                "chart": views.accuracy_chart([(rid[-6:], rec)]) if rec.get("kind") == "eval" and not self.images
                else "",
                "epochs": views.epoch_chart([(rid[-6:], rec)]),
                "model": next((d[1] for d in views.downloads(outputs[:1], self.dirs.runs)
                               if rec.get("kind") in ("train", "prepare") and d[0].endswith(".pt")), None)}

    def job_or_404(self, request: Request) -> Job:
        job = self.store.get(request.path_params["job_id"])
        if job is None:
            raise _NotFound(f"no job {request.path_params['job_id']!r} in {self.dirs.runs / 'jobs'}")
        return job

    # -- pages -----------------------------------------------------------------------------------------------
    def runs_page(self, request: Request) -> Response:
        q = request.query_params
        records = self.records()
        rows = views.run_rows(list(records.values()), self.jobs_of(), kind=q.get("kind", ""),
                              query=q.get("q", ""), sort=q.get("sort", "newest"))
        jobs = self.store.all()
        jobs = [j for j in jobs if j.state in ACTIVE] + [j for j in jobs if j.state in FINISHED][:12]
        return self.page("runs.html", rows=rows, total=len(records), jobs=[self.job_json(j) for j in jobs],
                         kinds=sorted({str(r.get("kind")) for r in records.values()}), kind=q.get("kind", ""),
                         query=q.get("q", ""), sort=q.get("sort", "newest"), sorts=views.SORTS)

    def run_page(self, request: Request) -> Response:
        rid = request.path_params["run_id"]
        rec = self.records().get(rid)
        if rec is None:
            raise _NotFound(f"no run {rid!r} in {self.dirs.runs}; the runs page lists them")
        job = self.store.get(self.jobs_of().get(rid, ""))
        return self.page("run.html", title=f"{rec.get('kind')} {rid}", job=self.job_json(job) if job else None,
                         log=self.log_lines(job.id) if job else None, views=[self.run_view(rec)], job_files=[])

    def job_page(self, request: Request) -> Response:
        job = self.job_or_404(request)
        records = self.records()
        shown = [self.run_view(records[r]) for r in job.records if r in records]
        listed = {rel for v in shown for _, rel, _ in v["downloads"]}
        files = [d for d in views.downloads([str(p) for p in sorted(self.store.folder(job.id).iterdir())
                                             if p.is_file() and p.name not in ("job.json", "output.log")],
                                            self.dirs.runs) if d[1] not in listed]
        return self.page("run.html", title=job.title, job=self.job_json(job), log=self.log_lines(job.id),
                         views=shown, job_files=files)

    def compare_page(self, request: Request) -> Response:
        records = self.records()
        ids = [i for i in request.query_params.getlist("run") if i in records]
        if not ids:
            return self.page("error.html", 400, message="pick runs to compare on the runs page (their checkboxes)")
        chosen = [records[i] for i in ids]
        labelled = [(f"{i[-6:]} {r.get('kind')}", r) for i, r in zip(ids, chosen)]
        labels, rows = views.compare_table(chosen)
        return self.page("compare.html", ids=ids, chart=views.accuracy_chart(labelled),
                         epochs=views.epoch_chart(labelled), labels=labels, rows=rows,
                         heads=[f"{label} {views.model_name(r)}" for label, r in labelled])

    def launch_page(self, request: Request, *, error: str | None = None, values: dict[str, str] | None = None
                    ) -> Response:
        kind = request.path_params["kind"]
        if kind not in forms.KINDS:
            raise _NotFound(f"no form {kind!r}; use /launch/train, /launch/test or /launch/convert")
        fields = forms.form_fields(kind, self.dirs, list(self.records().values()))
        if values is None:
            values = {f.name: f.default for f in fields}
            source = self.store.get(request.query_params.get("from", ""))
            if source is not None and source.kind == kind:
                values.update(source.fields)
            values.update({k: v for k, v in request.query_params.items() if k in values})
        return self.page("launch.html", 400 if error else 200, kind=kind, title=forms.KINDS[kind][1], fields=fields,
                         values=values, error=error)

    async def launch_post(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in forms.KINDS:
            raise _NotFound(f"no form {kind!r}; use /launch/train, /launch/test or /launch/convert")
        posted = await _posted(request)
        try:
            job = await run_in_threadpool(self.submit, kind, posted)
        except Ann2SnnError as exc:
            return await run_in_threadpool(self.launch_page, request, error=str(exc), values=posted)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    def submit(self, kind: str, posted: dict[str, str]) -> Job:
        launch = forms.build_launch(kind, posted, self.dirs, list(self.records().values()))
        return self.queue.submit(launch.kind, launch.title, launch.args, launch.fields)

    def cancel_post(self, request: Request) -> Response:
        job = self.job_or_404(request)
        self.queue.cancel(job.id)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    def download(self, request: Request) -> Response:
        try:
            path = forms.confine(request.path_params["path"], self.dirs.runs, "file")
        except Ann2SnnError as exc:
            return PlainTextResponse(str(exc), status_code=403)
        if not path.is_file():
            raise _NotFound(f"no file {request.path_params['path']!r} in {self.dirs.runs}")
        return FileResponse(path, filename=path.name)

    # -- JSON API ----------------------------------------------------------------------------------------------
    def api_runs(self, request: Request) -> Response:
        rows = views.run_rows(list(self.records().values()), self.jobs_of(), kind=request.query_params.get("kind", ""),
                              query=request.query_params.get("q", ""), sort=request.query_params.get("sort", "newest"))
        return JSONResponse({"runs": [r.__dict__ for r in rows], "jobs": [self.job_json(j) for j in self.store.all()]})

    def api_jobs(self, request: Request) -> Response:
        return JSONResponse([self.job_json(j) for j in self.store.all()])

    def api_job(self, request: Request) -> Response:
        return JSONResponse(self.job_json(self.job_or_404(request)))

    def api_log(self, request: Request) -> Response:
        job = self.job_or_404(request)
        return JSONResponse({"id": job.id, "state": job.state, "lines": self.log_lines(job.id)})

    async def api_submit(self, request: Request) -> Response:
        posted = await _posted(request)
        kind = posted.pop("kind", "")
        if kind not in forms.KINDS:
            return JSONResponse({"error": f"kind must be one of {', '.join(forms.KINDS)}, got {kind!r}"}, 400)
        try:
            job = await run_in_threadpool(self.submit, kind, posted)
        except Ann2SnnError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(self.job_json(job), 201)

    def api_cancel(self, request: Request) -> Response:
        job = self.job_or_404(request)
        return JSONResponse(self.job_json(self.queue.cancel(job.id)))

    async def events(self, request: Request) -> Response:
        job = self.job_or_404(request)
        return StreamingResponse(self._stream(job.id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(self, job_id: str):
        """``screen`` events with the rows changed since the last one, ``state`` on every change, ``end`` last."""
        version, state, last_sent = -1, None, time.monotonic()
        while True:
            job = self.store.get(job_id)
            screen = self.queue.screen(job_id) if job.state == "running" else None
            if screen is not None:
                v, first, lines = screen.since(version)
                if v != version:
                    version = v
                    yield _sse("screen", {"from": first, "lines": lines})
                    last_sent = time.monotonic()
            if job.state != state:
                state = job.state
                yield _sse("state", self.job_json(job))
                last_sent = time.monotonic()
            if job.state in FINISHED:
                yield _sse("screen", {"from": 0, "lines": await run_in_threadpool(self.log_lines, job_id)})
                yield _sse("end", self.job_json(job))
                return
            if time.monotonic() - last_sent > 15:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(0.25)


class _NotFound(Exception):
    pass


def _size(n: int) -> str:
    for unit, div in (("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _posted(request: Request) -> dict[str, str]:
    """Form fields of a POST (urlencoded or a JSON object) as strings."""
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise Ann2SnnError(f"request body over {_MAX_BODY} bytes")
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise Ann2SnnError("the JSON body must be an object of field names to values")
        return {str(k): "" if v is None else str(v) for k, v in data.items()}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


class _Guard:
    """ASGI middleware: the Host check (no DNS rebinding) when serving localhost only, no cross-site POST, and
    the start-up token when one is set (``?token=`` once, then a cookie; or ``Authorization: Bearer``)."""

    def __init__(self, app, *, token: str | None, local_only: bool) -> None:
        self.app, self.token, self.local_only = app, token, local_only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.local_only and urlsplit(f"//{host}").hostname not in _LOCAL_HOSTS:
            return await PlainTextResponse(f"host {host!r} refused: this server answers on 127.0.0.1 / localhost",
                                           400)(scope, receive, send)
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and origin and urlsplit(origin).netloc != host:
            return await PlainTextResponse("cross-site request refused", 403)(scope, receive, send)
        if self.token is None:
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        cookie = Request(scope).cookies.get(TOKEN_COOKIE, "")
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = next((t for t in (query.get("token"), cookie, bearer) if t), "")
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return await PlainTextResponse("this server needs the token printed when `ann2snn serve` started: open "
                                           "the URL it printed (…/?token=…)", 401)(scope, receive, send)
        if query.get("token"):
            async def send_with_cookie(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), (
                        b"set-cookie", f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode())]}
                await send(message)

            return await self.app(scope, receive, send_with_cookie)
        return await self.app(scope, receive, send)


def create_app(runs: str | Path, *, data: str | Path | None = None, workers: int = 1, token: str | None = None,
               local_only: bool = True, images: bool | None = None) -> Starlette:
    """The web app over ``runs`` (jobs go to ``runs/jobs``) reading datasets under ``data``.

    ``workers`` jobs run at once, the rest wait in one queue. ``local_only`` refuses requests whose Host header is
    not 127.0.0.1 / localhost / ::1 (for a server bound to loopback); ``token``, when given, is required by every
    request (for a server bound beyond localhost). Jobs start with the app's lifespan (``uvicorn`` or a
    ``TestClient`` used as a context manager) and end, marked ``interrupted``, when it stops. ``images``: the run
    pages embed the report's matplotlib plots (default: when matplotlib is installed; else an SVG accuracy chart).
    """
    site = _Site(Path(runs), Path(data) if data is not None else None, workers, images)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        site.queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(site.queue.shutdown)

    async def not_found(request: Request, exc: _NotFound) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, 404)
        return site.page("error.html", 404, message=str(exc))

    async def refused(request: Request, exc: Ann2SnnError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, 400)
        return site.page("error.html", 400, message=str(exc))

    routes = [
        Route("/", site.runs_page),
        Route("/runs/{run_id}", site.run_page),
        Route("/jobs/{job_id}", site.job_page),
        Route("/jobs/{job_id}/events", site.events),
        Route("/jobs/{job_id}/cancel", site.cancel_post, methods=["POST"]),
        Route("/compare", site.compare_page),
        Route("/launch/{kind}", site.launch_page),
        Route("/launch/{kind}", site.launch_post, methods=["POST"]),
        Route("/files/{path:path}", site.download),
        Route("/api/runs", site.api_runs),
        Route("/api/jobs", site.api_jobs),
        Route("/api/jobs", site.api_submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", site.api_job),
        Route("/api/jobs/{job_id}/log", site.api_log),
        Route("/api/jobs/{job_id}/cancel", site.api_cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={_NotFound: not_found,
                                                                          Ann2SnnError: refused})
    app.state.site = site
    app.add_middleware(_Guard, token=token, local_only=local_only)
    return app
