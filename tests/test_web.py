"""``ann2snn serve``: jobs launched through the API run the CLI and leave their records, bad form input is refused
with the CLI's own message, jobs cancel, a restart marks interrupted jobs and keeps finished records; one test
drives the pages in a real headless Chromium."""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # newer Starlette prefers httpx2 but works with httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from ann2snn.web.app import create_app  # noqa: E402
from ann2snn.web.jobs import FINISHED  # noqa: E402

BASE = "http://127.0.0.1:8000"
#: long enough (a few seconds) that epoch 1's line is on the screen while epochs 2–3 still run, on a fast machine too
TINY_TRAIN = {"kind": "train", "arch": "digits-cnn", "epochs": "3", "batch_size": "16", "name": "web-"}


def client(runs: Path, **kw) -> TestClient:
    """The app without matplotlib figures (the report's own tests draw those; the SVG chart is drawn instead)."""
    return TestClient(create_app(runs, images=False, **kw), base_url=BASE)


def events(c: TestClient, job_id: str) -> list[tuple[str, dict]]:
    """Every server-sent event of a job until its ``end`` event (the stream closes when the job has ended)."""
    out, name = [], None
    with c.stream("GET", f"/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def wait_for(c: TestClient, job_id: str, states=FINISHED, timeout: float = 180) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = c.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A runs directory with one digits QANN trained by a web job, and that job's events as the page saw them."""
    runs = tmp_path_factory.mktemp("web-runs")
    with client(runs) as c:
        r = c.post("/api/jobs", data=TINY_TRAIN)
        assert r.status_code == 201, r.text
        seen = events(c, r.json()["id"])
        job = c.get(f"/api/jobs/{r.json()['id']}").json()
    return runs, job, seen


def test_train_job_streams_progress_and_lists_its_record(trained):
    runs, job, seen = trained
    assert job["state"] == "done", job
    assert job["args"][:3] == ["train", "--arch", "digits-cnn"] and "--epochs" in job["args"]
    states = [d["state"] for e, d in seen if e == "state"]
    assert states[-1] == "done" and "running" in states, states
    running = seen[:next(i for i, (e, d) in enumerate(seen) if e == "state" and d["state"] == "done")]
    live = [line for e, d in running if e == "screen" for line in d["lines"]]
    assert any(line.startswith("epoch 1 loss") for line in live), "the progress bar was not streamed while running"
    assert seen[-1][0] == "end"

    (rid,) = job["records"]
    record = json.loads((runs / f"{rid}.json").read_text())  # moved out of the job's folder into the runs
    assert record["kind"] == "train" and 0 < record["metrics"]["test_accuracy"] <= 1
    model = Path(record["outputs"][0])
    assert model.parent == runs / "jobs" / job["id"] and model.name == "web-digits-cnn-digits.pt"
    with client(runs) as c:  # a new server over the same directory: the record and the job are still there
        listed = c.get("/api/runs").json()
        assert [r["id"] for r in listed["runs"]] == [rid] and listed["runs"][0]["job"] == job["id"]
        assert c.get("/api/jobs").json()[0]["state"] == "done"
        page = c.get("/").text
        assert rid in page and "test_accuracy=" in page
        run = c.get(f"/runs/{rid}").text
        assert "best_test_accuracy" in run and "epoch   1 (stage 1)" in run  # the report's metrics and the log
        got = c.get(f"/files/{model.relative_to(runs).as_posix()}")
        assert got.status_code == 200 and got.content == model.read_bytes()
        assert c.get("/launch/test").text.count(model.relative_to(runs).as_posix()) >= 1


def test_snn_test_job_and_compare(trained):
    runs, job, _ = trained
    with client(runs) as c:
        model = c.get("/api/runs").json()["runs"][0]
        bad = c.post("/api/jobs", data={"kind": "test", "Ts": "1,x"})
        assert bad.status_code == 400 and bad.json()["error"].startswith("T list must be comma-separated positive")
        r = c.post("/api/jobs", data={"kind": "test", "Ts": "1,2,4", "mode": "rate,exact", "limit": "48",
                                      "batch_size": "48"})
        assert r.status_code == 201, r.text
        assert r.json()["args"][0] == "eval" and r.json()["args"][1].endswith("web-digits-cnn-digits.pt")
        test = wait_for(c, r.json()["id"])
        assert test["state"] == "done", c.get(f"/api/jobs/{test['id']}/log").json()["lines"][-5:]
        (eid,) = test["records"]
        page = c.get(f"/compare?run={model['id']}&run={eid}")
        assert page.status_code == 200
        # SNN rate, SNN exact, QANN of the test; QANN of the training, and its test accuracy over the 3 epochs
        assert page.text.count("<polyline") == 5
        for label in ("SNN T=4 (rate)", "SNN T=4 (exact)", "QANN accuracy", "test accuracy"):
            assert label in page.text
        run = c.get(f"/jobs/{test['id']}").text
        assert "Accuracy at every T, rate mode" in run and "Accuracy at every T, exact mode" in run
        assert run.count("<polyline") == 3  # the run's own accuracy chart: rate, exact, QANN


@pytest.mark.parametrize("fields, message", [
    ({"levels": "four"}, "'four' is not a valid integer"),
    ({"levels": "0"}, "--levels must be a positive integer"),
    ({"two_stage": "3"}, "--two-stage takes two epoch counts"),
    ({"arch": "os.system"}, "architecture must be one of"),
    ({"data": "mnist:../../etc"}, "is not digits or a dataset folder"),
    ({"data": ""}, "dataset '' is not digits or a dataset folder"),
    ({"name": "../x"}, "name prefix '../x' may hold only"),
    ({"kind": "test", "model": "../../etc/passwd"}, "no model to pick"),
])
def test_bad_input_is_refused_with_one_message(tmp_path, fields, message):
    with client(tmp_path) as c:
        r = c.post("/api/jobs", data={**TINY_TRAIN, **fields})
        assert r.status_code == 400 and message in r.json()["error"] and "\n" not in r.json()["error"]
        kind = fields.get("kind", "train")
        page = c.post(f"/launch/{kind}", data={k: v for k, v in {**TINY_TRAIN, **fields}.items() if k != "kind"})
        assert page.status_code == 400 and 'id="form-error"' in page.text
        assert c.get("/api/jobs").json() == []  # nothing was launched
    assert not any((tmp_path / "jobs").iterdir())


def test_model_paths_are_confined_to_the_runs(trained, tmp_path):
    runs, job, _ = trained
    with client(runs) as c:
        r = c.post("/api/jobs", data={"kind": "convert", "model": "../../../etc/passwd"})
        assert r.status_code == 400 and "is not a model of the runs directory" in r.json()["error"]
        assert c.get("/files/../../etc/passwd").status_code in (403, 404)
        assert c.get(f"/files/{tmp_path}/x").status_code in (403, 404)
        assert c.get("/runs/pyproject.toml").status_code == 404


def test_cancel_queued_and_running_jobs_and_shutdown_interrupts(tmp_path):
    long = {**TINY_TRAIN, "epochs": "500"}
    with client(tmp_path, workers=1) as c:
        first = c.post("/api/jobs", data=long).json()
        second = c.post("/api/jobs", data=long).json()
        wait_for(c, first["id"], states=("running",))
        assert c.get(f"/api/jobs/{second['id']}").json()["state"] == "queued"  # one worker: it waits
        assert c.post(f"/api/jobs/{second['id']}/cancel").json()["state"] == "cancelled"
        c.post(f"/jobs/{first['id']}/cancel")  # the page's button
        done = wait_for(c, first["id"], timeout=30)
        assert done["state"] == "cancelled" and done["records"] == []
        third = c.post("/api/jobs", data=long).json()
        wait_for(c, third["id"], states=("running",))
    # leaving the block stops the server: the running job ends as interrupted, on disk too
    saved = json.loads((tmp_path / "jobs" / third["id"] / "job.json").read_text())
    assert saved["state"] == "interrupted" and "server stopped" in saved["error"]
    assert json.loads((tmp_path / "jobs" / second["id"] / "job.json").read_text())["started"] is None


def test_restart_marks_interrupted_jobs_and_keeps_finished_records(trained, tmp_path):
    runs, job, _ = trained
    shutil.copytree(runs, tmp_path / "runs")
    runs = tmp_path / "runs"
    # a server that died while a job was running, after the job had written its record
    dead = dict(job, id="20260101-000000-train-dead00", state="running", ended=None, returncode=None, records=[])
    folder = runs / "jobs" / dead["id"]
    (folder / "records").mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({k: dead[k] for k in dead if k not in ("command", "progress", "url")}))
    rec = json.loads((runs / f"{job['records'][0]}.json").read_text())
    (folder / "records" / "20260101-000001-train-abc123.json").write_text(json.dumps({**rec, "id": "20260101-000001-"
                                                                                      "train-abc123"}))
    with client(runs) as c:
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
        assert jobs[dead["id"]]["state"] == "interrupted" and "launch it again" in jobs[dead["id"]]["error"]
        assert jobs[dead["id"]]["records"] == ["20260101-000001-train-abc123"]
        assert jobs[job["id"]]["state"] == "done" and jobs[job["id"]]["records"] == job["records"]
        assert {r["id"] for r in c.get("/api/runs").json()["runs"]} >= {job["records"][0],
                                                                        "20260101-000001-train-abc123"}
        again = c.get(f"/launch/train?from={dead['id']}").text  # the form comes back filled in
        assert 'name="name" value="web-"' in again


def test_host_origin_and_token_checks(tmp_path):
    with client(tmp_path) as c:
        assert c.get("/", headers={"host": "evil.example:8000"}).status_code == 400  # DNS rebinding
        r = c.post("/api/jobs", data=TINY_TRAIN, headers={"origin": "http://evil.example"})
        assert r.status_code == 403 and c.get("/api/jobs").json() == []
    app = create_app(tmp_path, token="s3cret", local_only=False)
    with TestClient(app, base_url="http://192.0.2.1:8000") as c:
        assert c.get("/").status_code == 401
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/api/runs", headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/?token=s3cret").status_code == 200
        assert c.get("/").status_code == 200  # the cookie set by the first visit


def test_serve_without_the_extra_prints_the_install_hint(monkeypatch, capsys):
    from ann2snn.cli.main import main

    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--runs", "x"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 1 and len(err.splitlines()) == 1 and "pip install 'ann2snn[ui]'" in err


def test_only_the_web_package_imports_the_web_stack():
    """`import ann2snn` (and every CLI command but serve) must work without Starlette, uvicorn and Jinja2."""
    root = Path(__file__).resolve().parents[1] / "ann2snn"
    heavy = ("starlette", "uvicorn", "jinja2", "ann2snn.web")
    for path in root.rglob("*.py"):
        if path.parent.name == "web" or path.name == "serve.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(heavy)], f"{path} imports {names}"


# -- one browser test --------------------------------------------------------------------------------------------
def _browser():
    """A headless Chromium driven by Selenium through Debian's chromium-driver, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


@pytest.fixture
def server(trained):
    """The app on a free port of 127.0.0.1, served by uvicorn in a thread."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(trained[0], images=False)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=30)


def test_browser_launches_an_snn_test_and_sees_progress_and_accuracy(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = _browser()
    try:
        browser.get(server + "/")
        assert browser.find_elements(By.CSS_SELECTOR, "#runs tr td a")  # the trained run is listed
        browser.find_element(By.LINK_TEXT, "Test SNN").click()
        Select(browser.find_element(By.NAME, "mode")).select_by_value("rate")
        for name, value in (("Ts", "1,2,4,8"), ("limit", "64")):
            box = browser.find_element(By.NAME, name)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "launch").click()
        seen, end = set(), time.monotonic() + 180
        while time.monotonic() < end:  # the job page: state badge and log update live, then it reloads
            try:
                seen.add(browser.find_element(By.ID, "job-state").text)
                if browser.find_element(By.ID, "log").text.strip():
                    seen.add("output")
                if "Accuracy at every T" in browser.find_element(By.TAG_NAME, "main").text:
                    break
            except Exception:  # the page is reloading
                pass
            time.sleep(0.1)
        assert "running" in seen and "output" in seen, seen
        assert browser.find_element(By.ID, "job-state").text == "done"
        tables = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".report table")
                  if t.text.startswith("model T accuracy")]
        assert tables and all(f"SNN{' (T = L)' if t == 4 else ''} {t} " in tables[0] for t in (1, 2, 4, 8)), tables
        if os.environ.get("ANN2SNN_WEB_SHOTS"):
            browser.save_screenshot(os.path.join(os.environ["ANN2SNN_WEB_SHOTS"], "browser-test.png"))
    finally:
        browser.quit()


def test_screen_replays_progress_redraws_split_anywhere():
    """Rich's live progress (carriage return, erase line, cursor up) as a terminal shows it, whatever the chunking."""
    from ann2snn.web.terminal import Screen, render

    out = ("stage 1\n\x1b[?25l\r\x1b[2Kepoch 1 ━━ 1/3\r\x1b[2Kepoch 1 ━━━━ 2/3\r\x1b[2K\x1b[1A\x1b[2Kstage 1\n"
           "\x1b[1mepoch 1\x1b[0m done \x1b]8;id=1;file:///x\x1b\\link\x1b]8;;\x1b\\\n\x1b[?25h").encode()
    assert render(out) == ["stage 1", "epoch 1 done link"]
    screen = Screen()
    for i in range(len(out)):  # one byte at a time: split escapes and split UTF-8 characters
        screen.feed(out[i:i + 1])
        if out[:i + 1].endswith(b"2/3"):
            assert screen.last_line() == "epoch 1 ━━━━ 2/3"
            seen = screen.version
    assert screen.lines() == render(out)
    version, first, rows = screen.since(seen)
    assert version > seen and first == 0 and rows[:2] == ["stage 1", "epoch 1 done link"]
    assert screen.since(version)[1:] == (len(screen._lines), [])
