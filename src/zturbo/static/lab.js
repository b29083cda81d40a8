"use strict";
// The Lab view: list run folders, start a sweep (POST /api/lab/sweeps), watch its frames
// arrive over Server-Sent Events (read with fetch so an API key can be sent), open its report.
const $ = (id) => document.getElementById(id);
const key = localStorage.getItem("zturbo-key") || "";
const headers = (extra = {}) => (key ? { ...extra, Authorization: `Bearer ${key}` } : extra);
const api = (path, options = {}) => fetch(path, { ...options, headers: headers(options.headers) });

async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.statusText; }
}

async function loadRuns() {
  const response = await api("/api/lab/runs");
  if (!response.ok) return;
  const list = $("lab-runs");
  list.replaceChildren();
  for (const run of (await response.json()).runs) {
    const li = document.createElement("li");
    const text = document.createElement("span");
    text.textContent = `${run.name} (${run.frames} frames) `;
    li.append(text);
    if (run.report) {
      const a = document.createElement("a");
      a.href = run.report; a.target = "_blank"; a.textContent = "report"; a.className = "run-report";
      li.append(a);
    }
    list.append(li);
  }
}

function fixedFields() {
  const fields = {};
  for (const name of ["width", "height", "seed"]) {
    const value = $(`lab-${name}`).value.trim();
    if (value !== "") fields[name] = Number(value);
  }
  return fields;
}

async function startSweep() {
  $("lab-error").hidden = true;
  $("lab-report").hidden = true;
  $("lab-frames").replaceChildren();
  const body = {
    prompt: $("lab-prompt").value,
    vary: $("lab-vary").value.split("\n").map((s) => s.trim()).filter(Boolean),
    fixed: fixedFields(),
  };
  if ($("lab-preset").value) body.preset = $("lab-preset").value;
  const response = await api("/api/lab/sweeps", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) {
    $("lab-error").textContent = await errorText(response);
    $("lab-error").hidden = false;
    return;
  }
  const sweep = await response.json();
  $("lab-status").textContent = "queued";
  $("lab-progress").max = sweep.total;
  $("lab-progress").value = 0;
  await follow(sweep.events, (event, data) => onEvent(event, data));
}

function onEvent(event, data) {  // true when the sweep ended
  if (event === "started") $("lab-status").textContent = `running 0/${data.total}`;
  if (event === "frame") {
    $("lab-progress").value = data.done;
    $("lab-status").textContent = `running ${data.done}/${data.total}`;
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = data.url; img.alt = data.frame;
    const cap = document.createElement("figcaption");
    cap.textContent = data.frame + (data.skipped ? " (already done)" : "");
    fig.append(img, cap);
    $("lab-frames").append(fig);
  }
  if (event === "done") {
    $("lab-status").textContent = "done";
    $("lab-report").href = data.report;
    $("lab-report").hidden = false;
    loadRuns();
    return true;
  }
  if (event === "error" || event === "cancelled") {
    $("lab-status").textContent = event;
    $("lab-error").textContent = data.message || data.reason || event;
    $("lab-error").hidden = false;
    return true;
  }
  return false;
}

async function follow(url, handle) {  // Server-Sent Events (events.js)
  return followEvents(await api(url), handle);
}

for (const name of ["steps", "guidance", "seeds", "aspect", "scale"]) {
  $("lab-preset").add(new Option(name, name));
}
$("lab-run").addEventListener("click", () => startSweep());
$("lab-refresh").addEventListener("click", () => loadRuns());
loadRuns();
