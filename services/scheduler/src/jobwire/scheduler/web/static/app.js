// jobwire Jobs Management: a static page over the scheduler's admin API (/api/v1).
// No framework, no build step. Data is only ever put into the page as text
// (textContent), never as HTML. The token lives in sessionStorage (this tab).
"use strict";

(() => {
  const TOKEN_KEY = "jobwire.token";
  const POLL_MS = 2000;
  const HISTORY = 20;
  const ACTIVE_JOB_STATUSES = new Set(["Running", "Queued", "RecyclePending", "Unknown"]);
  const ACTIVE_RUN_STATUSES = ["queued", "dispatched", "running"];
  const VERDICTS = {
    fired: "Fired",
    missed: "Missed",
    coalesced: "Coalesced into a catch-up run",
    overlap: "Skipped: overlap",
    queue_full: "Skipped: queue full",
    disabled: "Job disabled",
    paused: "Job paused",
    group_disabled: "Group disabled",
    expired: "Expired",
    not_yet_due: "Not yet due",
    not_a_slot: "Not a scheduled time",
    before_start: "Before the job's start",
    unknown: "Unknown",
  };

  const $ = (id) => document.getElementById(id);
  const rows = new Map(); // job name -> row parts
  const busy = new Set(); // "name:action" in flight
  let generation = 0; // bumped on sign-in/out: late answers of an old session are dropped
  let pollTimer = null;
  let polling = false;
  // Bumped when an action's answer is shown: a table read that started before
  // it is older than what the row shows now, and is not rendered.
  let actionEpoch = 0;
  let pollAgain = false;
  let selected = null; // the job shown in the detail panel
  let runsSignature = "";

  // -- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, title, detail) {
      super(detail ? `${title}: ${detail}` : title);
      this.status = status;
      this.title = title;
      this.detail = detail;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  const enc = encodeURIComponent;

  async function api(path, method = "GET") {
    const session = generation;
    const headers = { Accept: "application/json" };
    const secret = token();
    if (secret) headers.Authorization = `Bearer ${secret}`;
    let response;
    try {
      response = await fetch(new URL(path, document.baseURI), {
        method,
        headers,
        cache: "no-store",
        credentials: "omit",
      });
    } catch {
      throw new ApiError(0, "Cannot reach the scheduler", "check the connection; retrying");
    }
    let body = null;
    if ((response.headers.get("content-type") || "").includes("json")) {
      body = await response.json().catch(() => null);
    }
    if (!response.ok) {
      const error = new ApiError(
        response.status,
        (body && body.title) || response.statusText || "Error",
        (body && body.detail) || "",
      );
      if (response.status === 401 && session === generation) signOut(error);
      throw error;
    }
    return body;
  }

  // -- formatting ------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");

  function localText(d) {
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    );
  }

  function utcText(d) {
    return d.toISOString().replace("T", " ").replace(".000Z", "Z").replace("Z", " UTC");
  }

  // <time> in local time, UTC in its title (shown on hover); "—" for none.
  function timeNode(iso) {
    if (!iso) return document.createTextNode("—");
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return document.createTextNode(iso);
    const node = document.createElement("time");
    node.dateTime = d.toISOString();
    node.title = utcText(d);
    node.textContent = localText(d);
    return node;
  }

  function setTime(cell, iso) {
    const key = iso || "";
    if (cell.dataset.iso === key && cell.firstChild) return;
    cell.dataset.iso = key;
    cell.replaceChildren(timeNode(iso));
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  const slug = (value) => String(value || "none").toLowerCase().replace(/[^a-z0-9]+/g, "-");

  function setBadge(node, text, kind) {
    setText(node, text || "—");
    const className = text ? `badge ${kind}-${slug(text)}` : "";
    if (node.className !== className) node.className = className;
  }

  function element(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function describeSchedule(schedule) {
    if (!schedule) return "none (runs when started or chained)";
    if (schedule.kind === "cron") {
      // A Quartz expression's day-of-week numbers mean other days: say which dialect.
      const dialect = schedule.dialect === "quartz" ? "quartz " : "";
      return `${dialect}cron ${schedule.expression} (${schedule.timezone || "UTC"})`;
    }
    if (schedule.kind === "interval") return `every ${schedule.every}`;
    if (schedule.kind === "once") return `once, at ${localText(new Date(schedule.at))}`;
    return JSON.stringify(schedule);
  }

  // -- messages --------------------------------------------------------------------------

  function notice(text) {
    setText($("notice"), text);
  }

  function problem(text) {
    $("problem-text").textContent = text;
    $("problem").hidden = !text;
  }

  function refusal(what, error) {
    const code = error.status ? ` (${error.status} ${error.title})` : ` (${error.title})`;
    return `${what} refused${code}${error.detail ? `: ${error.detail}` : ""}.`;
  }

  function setLive(ok, text) {
    $("live").classList.toggle("stale", !ok);
    setText($("live-text"), text);
  }

  // -- signing in and out --------------------------------------------------------------

  function showLogin(message) {
    $("session").hidden = true;
    $("jobs").hidden = true;
    $("detail").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-error").hidden = !message;
    $("token").focus();
  }

  function signOut(error) {
    generation += 1;
    clearTimeout(pollTimer);
    sessionStorage.removeItem(TOKEN_KEY);
    closeDetail();
    for (const row of rows.values()) row.tr.remove();
    rows.clear();
    busy.clear();
    notice("");
    problem("");
    showLogin(
      error
        ? `The scheduler refused the token${error.detail ? `: ${error.detail}` : ""}. Sign in with a valid token.`
        : "",
    );
  }

  async function signIn(secret) {
    generation += 1;
    sessionStorage.setItem(TOKEN_KEY, secret);
    const session = generation;
    $("login").hidden = true;
    $("session").hidden = false;
    $("jobs").hidden = false;
    setLive(true, "Connecting…");
    await poll(session);
    if (session === generation && token()) $("filter").focus();
  }

  // -- the jobs table ---------------------------------------------------------------------

  function makeRow(name) {
    const tr = element("tr", { dataset: { job: name } });
    const head = element("th", { scope: "row", dataset: { col: "name" } });
    const open = element("button", { type: "button", class: "link", "aria-label": `Details of ${name}` }, name);
    open.dataset.action = "details";
    head.append(open);
    tr.append(head);
    const cell = (col) => {
      const td = element("td", { dataset: { col } });
      tr.append(td);
      return td;
    };
    const row = {
      tr,
      description: cell("description"),
      type: cell("type"),
      status: element("span"),
      result: element("span"),
    };
    cell("status").append(row.status);
    cell("last-result").append(row.result);
    row.lastRun = cell("last-run");
    row.nextRun = cell("next-run");
    row.hosts = cell("hosts");
    const actions = cell("actions");
    actions.classList.add("actions");
    row.toggle = element("button", { type: "button" });
    row.start = element("button", { type: "button", "aria-label": `Start ${name} now` }, "Start");
    row.start.dataset.action = "start";
    row.stop = element("button", { type: "button", "aria-label": `Stop the active run of ${name}` }, "Stop");
    row.stop.dataset.action = "stop";
    actions.append(row.toggle, row.start, row.stop);
    return row;
  }

  function updateRow(row, job) {
    row.job = job;
    const name = job.name;
    setText(row.description, job.description || "—");
    setText(row.type, job.type);
    setBadge(row.status, job.status, "status");
    setBadge(row.result, job.last_result, "result");
    setTime(row.lastRun, job.last_run_at);
    setTime(row.nextRun, job.next_run_at);
    setText(row.hosts, job.active_hosts.length ? job.active_hosts.join(", ") : "—");
    const action = job.enabled ? "disable" : "enable";
    const label = job.enabled ? "Disable" : "Enable";
    if (row.toggle.dataset.action !== action) {
      row.toggle.dataset.action = action;
      row.toggle.textContent = label;
      row.toggle.setAttribute("aria-label", `${label} ${name}`);
      row.toggle.className = job.enabled ? "" : "primary";
    }
    row.toggle.disabled = busy.has(`${name}:toggle`);
    row.start.disabled = job.status === "Disabled" || busy.has(`${name}:start`);
    row.stop.disabled = !ACTIVE_JOB_STATUSES.has(job.status) || busy.has(`${name}:stop`);
    row.tr.classList.toggle("selected", name === selected);
  }

  function renderJobs(page) {
    const body = $("jobs-body");
    const seen = new Set();
    let previous = null;
    for (const job of page.items) {
      seen.add(job.name);
      let row = rows.get(job.name);
      if (!row) {
        row = makeRow(job.name);
        rows.set(job.name, row);
      }
      updateRow(row, job);
      const wanted = previous ? previous.nextSibling : body.firstChild;
      if (wanted !== row.tr) body.insertBefore(row.tr, wanted);
      previous = row.tr;
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    $("empty").hidden = page.items.length > 0;
    const shown = page.items.length;
    setText($("count"), shown < page.total ? `${shown} of ${page.total} jobs` : `${page.total} job${page.total === 1 ? "" : "s"}`);
  }

  async function refreshJobs(session) {
    const params = new URLSearchParams({ limit: "500", sort: "name" });
    const text = $("filter").value.trim();
    if (text) params.set("q", text);
    const epoch = actionEpoch;
    const page = await api(`api/v1/jobs?${params}`);
    if (session !== generation) return;
    if (epoch === actionEpoch) renderJobs(page);
    else pollAgain = true;
  }

  // One refresh at a time: a refresh asked for meanwhile (after an action) runs
  // right after the current one instead of beside it.
  async function poll(session) {
    if (session !== generation || !token()) return;
    if (polling) {
      pollAgain = true;
      return;
    }
    clearTimeout(pollTimer);
    polling = true;
    try {
      await Promise.all([refreshJobs(session), selected ? refreshDetail(session) : null]);
      if (session === generation) setLive(true, `Live · updated ${localText(new Date()).slice(11)}`);
    } catch (error) {
      if (error.status !== 401 && session === generation) {
        setLive(false, `Not updated: ${error.title}${error.detail ? ` (${error.detail})` : ""}`);
      }
    } finally {
      polling = false;
    }
    if (token()) {
      const delay = pollAgain ? 0 : POLL_MS;
      pollAgain = false;
      clearTimeout(pollTimer);
      pollTimer = setTimeout(() => poll(generation), delay);
    }
  }

  // -- actions ---------------------------------------------------------------------------

  async function act(name, key, work) {
    const flag = `${name}:${key}`;
    if (busy.has(flag)) return;
    const session = generation;
    busy.add(flag);
    const row = rows.get(name);
    if (row && row.job) updateRow(row, row.job);
    try {
      await work(session);
    } finally {
      busy.delete(flag);
      const current = rows.get(name);
      if (current && current.job) updateRow(current, current.job);
    }
  }

  async function toggle(name, action) {
    const verb = action === "disable" ? "Disable" : "Enable";
    await act(name, "toggle", async (session) => {
      try {
        const job = await api(`api/v1/jobs/${enc(name)}/${action}`, "POST");
        if (session !== generation) return;
        problem("");
        actionEpoch += 1;
        const row = rows.get(name);
        if (row) updateRow(row, job);
        notice(`${action === "disable" ? "Disabled" : "Enabled"} ${name}.`);
      } catch (error) {
        if (error.status !== 401 && session === generation) problem(refusal(`${verb} ${name}`, error));
      }
    });
    poll(generation);
  }

  async function start(name) {
    await act(name, "start", async (session) => {
      try {
        const run = await api(`api/v1/jobs/${enc(name)}/trigger`, "POST");
        if (session !== generation) return;
        problem("");
        const outcome = run.status === "skipped" ? `skipped (${run.reason})` : run.status;
        notice(`Started ${name}: run ${run.id.slice(0, 8)} is ${outcome}.`);
      } catch (error) {
        if (error.status !== 401 && session === generation) problem(refusal(`Start ${name}`, error));
      }
    });
    poll(generation);
  }

  async function cancelRuns(name, ids) {
    let asked = 0;
    for (const id of ids) {
      try {
        await api(`api/v1/runs/${enc(id)}/cancel`, "POST");
        asked += 1;
      } catch (error) {
        if (error.status !== 409) throw error; // 409: the run ended meanwhile
      }
    }
    return asked;
  }

  async function stop(name) {
    await act(name, "stop", async (session) => {
      try {
        const statuses = ACTIVE_RUN_STATUSES.map((s) => `status=${s}`).join("&");
        const page = await api(`api/v1/jobs/${enc(name)}/runs?${statuses}&limit=500`);
        const asked = await cancelRuns(name, page.items.map((run) => run.id));
        if (session !== generation) return;
        problem("");
        notice(
          asked
            ? `Asked ${asked} run${asked === 1 ? "" : "s"} of ${name} to stop.`
            : `${name} has no active run to stop.`,
        );
      } catch (error) {
        if (error.status !== 401 && session === generation) problem(refusal(`Stop ${name}`, error));
      }
    });
    poll(generation);
  }

  // -- the detail panel --------------------------------------------------------------

  function closeDetail() {
    selected = null;
    runsSignature = "";
    $("detail").hidden = true;
    $("explain-result").replaceChildren();
    $("detail-problem").hidden = true;
    for (const row of rows.values()) row.tr.classList.remove("selected");
  }

  function openDetail(name) {
    const changed = selected !== name;
    selected = name;
    for (const [job, row] of rows) row.tr.classList.toggle("selected", job === name);
    $("detail-title").textContent = name;
    $("detail").hidden = false;
    if (changed) {
      runsSignature = "";
      $("detail-facts").replaceChildren();
      $("runs-body").replaceChildren();
      $("explain-result").replaceChildren();
      $("detail-problem").hidden = true;
      if (!$("explain-at").value) $("explain-at").value = localText(new Date()).replace(" ", "T");
    }
    $("detail").scrollIntoView({ block: "nearest" });
    $("detail-title").focus();
    refreshDetail(generation).catch((error) => detailProblem(error));
  }

  function detailProblem(error, what) {
    if (error.status === 401) return;
    const node = $("detail-problem");
    node.textContent = what ? refusal(what, error) : `Not updated: ${error.message}`;
    node.hidden = false;
  }

  function renderFacts(job) {
    const facts = [
      ["Status", job.status],
      ["Type", job.type],
      ["Schedule", describeSchedule(job.definition.schedule)],
      ["Group", job.group || "—"],
      ["Tags", job.tags.length ? job.tags.join(", ") : "—"],
      ["Priority", String(job.priority)],
      ["Version", String(job.version)],
    ];
    const list = [];
    for (const [term, value] of facts) list.push(element("dt", {}, term), element("dd", {}, value));
    if (job.description) list.push(element("dt", {}, "Description"), element("dd", {}, job.description));
    // Faulted: what the scheduler could not do; saving the definition again clears it.
    if (job.fault) list.push(element("dt", {}, "Fault"), element("dd", { class: "fault" }, job.fault));
    $("detail-facts").replaceChildren(...list);
  }

  function renderRuns(page) {
    const signature = JSON.stringify(page.items);
    if (signature === runsSignature) return;
    runsSignature = signature;
    const active = document.activeElement;
    const focusedRun = active && active.dataset ? active.dataset.run : null;
    const trs = page.items.map((run) => {
      const tr = element("tr", { dataset: { runId: run.id } });
      const slot = element("td");
      slot.append(timeNode(run.scheduled_for));
      const status = element("td");
      const badge = element("span");
      setBadge(badge, run.status, "result");
      status.append(badge);
      const started = element("td");
      started.append(timeNode(run.started_at));
      const finished = element("td");
      finished.append(timeNode(run.finished_at));
      const actions = element("td");
      if (ACTIVE_RUN_STATUSES.includes(run.status)) {
        const button = element(
          "button",
          { type: "button", "aria-label": `Cancel run ${run.id}`, dataset: { run: run.id } },
          "Cancel",
        );
        actions.append(button);
      }
      tr.append(
        slot,
        element("td", {}, run.trigger),
        status,
        element("td", {}, run.reason || "—"),
        started,
        finished,
        element("td", {}, run.host || "—"),
        actions,
      );
      return tr;
    });
    $("runs-body").replaceChildren(...trs);
    $("runs-empty").hidden = trs.length > 0;
    if (focusedRun) {
      const again = $("runs-body").querySelector(`button[data-run="${CSS.escape(focusedRun)}"]`);
      if (again) again.focus();
    }
  }

  async function refreshDetail(session) {
    const name = selected;
    if (!name) return;
    let job;
    let runs;
    try {
      [job, runs] = await Promise.all([
        api(`api/v1/jobs/${enc(name)}`),
        api(`api/v1/jobs/${enc(name)}/runs?limit=${HISTORY}`),
      ]);
    } catch (error) {
      if (error.status === 404 && session === generation && selected === name) {
        closeDetail();
        notice(`${name} no longer exists.`);
        return;
      }
      throw error;
    }
    if (session !== generation || selected !== name) return;
    renderFacts(job);
    renderRuns(runs);
  }

  async function explain() {
    const name = selected;
    const out = $("explain-result");
    const value = $("explain-at").value;
    const at = value ? new Date(value) : null; // datetime-local: the browser's local time
    if (!name) return;
    if (!at || Number.isNaN(at.getTime())) {
      out.replaceChildren(element("p", { class: "problem" }, "Enter a date and time to explain."));
      return;
    }
    const session = generation;
    try {
      const answer = await api(`api/v1/jobs/${enc(name)}/explain?at=${enc(at.toISOString())}`);
      if (session !== generation || selected !== name) return;
      const parts = [];
      const head = element("p", { class: "verdict" });
      const badge = element("span");
      setBadge(badge, answer.verdict, "verdict");
      badge.textContent = VERDICTS[answer.verdict] || answer.verdict;
      head.append(badge, document.createTextNode(" at "), timeNode(answer.at));
      parts.push(head, element("p", {}, answer.detail));
      if (answer.run) {
        const run = answer.run;
        parts.push(
          element("p", { class: "muted" }, `Run ${run.id} · ${run.status} · trigger ${run.trigger}${run.host ? ` · host ${run.host}` : ""}`),
        );
      }
      if (answer.slot_before || answer.slot_after) {
        const nearest = element("p", { class: "muted" }, "Nearest scheduled times: ");
        nearest.append(timeNode(answer.slot_before), document.createTextNode(" before, "));
        nearest.append(timeNode(answer.slot_after), document.createTextNode(" after."));
        parts.push(nearest);
      }
      out.replaceChildren(...parts);
    } catch (error) {
      if (error.status !== 401 && session === generation) {
        out.replaceChildren(element("p", { class: "problem" }, refusal("Explain", error)));
      }
    }
  }

  async function cancelFromHistory(button) {
    const id = button.dataset.run;
    const name = selected;
    const session = generation;
    button.disabled = true;
    try {
      await api(`api/v1/runs/${enc(id)}/cancel`, "POST");
      if (session === generation) notice(`Asked run ${id.slice(0, 8)} of ${name} to stop.`);
    } catch (error) {
      if (session === generation) detailProblem(error, `Cancel run ${id.slice(0, 8)}`);
    } finally {
      button.disabled = false;
    }
    poll(generation);
  }

  // -- wiring ------------------------------------------------------------------------------

  function wire() {
    $("zone").textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";

    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const secret = $("token").value.trim();
      $("token").value = ""; // not left in the page
      if (!secret) {
        showLogin("Enter an API token.");
        return;
      }
      $("login-error").hidden = true;
      signIn(secret);
    });

    $("sign-out").addEventListener("click", () => signOut(null));
    $("problem-close").addEventListener("click", () => problem(""));
    $("detail-close").addEventListener("click", () => {
      const name = selected;
      closeDetail();
      const row = rows.get(name);
      if (row) row.tr.querySelector("button[data-action=details]").focus();
    });

    $("jobs-body").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button || button.disabled) return;
      const name = button.closest("tr").dataset.job;
      const action = button.dataset.action;
      if (action === "details") openDetail(name);
      else if (action === "enable" || action === "disable") toggle(name, action);
      else if (action === "start") start(name);
      else if (action === "stop") stop(name);
    });

    $("runs-body").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-run]");
      if (button && !button.disabled) cancelFromHistory(button);
    });

    $("explain-form").addEventListener("submit", (event) => {
      event.preventDefault();
      explain();
    });

    let filterTimer = null;
    $("filter").addEventListener("input", () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => poll(generation), 250);
    });

    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && token()) poll(generation);
    });

    if (token()) signIn(token());
    else showLogin("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
  else wire();
})();
