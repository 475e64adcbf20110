// ann2snn web app: a job's output streamed into its page (server-sent events), and the runs page's job rows kept
// current. Plain JavaScript, no build step.
"use strict";

function followJob(log) {
  const badge = document.getElementById("job-state");
  const lines = log.textContent.split("\n");
  const wasActive = log.dataset.active === "1";
  const events = new EventSource(log.dataset.events);
  const draw = () => {
    const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    while (lines.length && !lines[lines.length - 1].trim()) lines.pop();
    log.textContent = lines.join("\n");
    if (stick) log.scrollTop = log.scrollHeight;
  };
  events.addEventListener("screen", (e) => {
    const d = JSON.parse(e.data);
    lines.length = Math.min(lines.length, d.from);
    while (lines.length < d.from) lines.push("");
    lines.push(...d.lines);
    draw();
  });
  events.addEventListener("state", (e) => {
    const job = JSON.parse(e.data);
    if (badge) { badge.textContent = job.state; badge.className = "badge " + job.state; }
  });
  events.addEventListener("end", () => {
    events.close();
    if (wasActive) window.location.reload();  // now with the run's records, files and error
  });
}

function watchJobs(table) {
  const rows = () => Array.from(table.querySelectorAll("tr[data-job]"));
  const active = (s) => s === "queued" || s === "running";
  const tick = async () => {
    if (!rows().some((r) => active(r.dataset.state))) return;
    let jobs;
    try { jobs = await (await fetch("/api/jobs")).json(); } catch (err) { setTimeout(tick, 3000); return; }
    const byId = new Map(jobs.map((j) => [j.id, j]));
    for (const row of rows()) {
      const job = byId.get(row.dataset.job);
      if (!job || !active(row.dataset.state)) continue;  // finished rows keep their records / error
      if (active(row.dataset.state) && !active(job.state)) { window.location.reload(); return; }
      row.dataset.state = job.state;
      const badge = row.querySelector("[data-field=state]");
      badge.textContent = job.state; badge.className = "badge " + job.state;
      row.querySelector("[data-field=progress]").textContent = job.progress || "";
    }
    setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const log = document.getElementById("log");
  if (log && log.dataset.active === "1") followJob(log);
  const jobs = document.getElementById("jobs");
  if (jobs) watchJobs(jobs);
});
