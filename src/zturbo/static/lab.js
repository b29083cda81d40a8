"use strict";
// The Lab page: start a sweep from X/Y/Z axes (POST /api/lab/sweeps), watch its grid fill
// over Server-Sent Events (events.js; GET /api/lab/sweeps/{id}/events), cancel it
// (POST /api/lab/sweeps/{id}/cancel), list the run folders (GET /api/lab/runs: thumbnail,
// prompt, axes, date, state, grid) and open any cell in a slider compare against its
// neighbour along X, Y or Z. The grid's layout comes from the server (zturbo/lab/grid.py).
const $ = (id) => document.getElementById(id);
const key = localStorage.getItem("zturbo-key") || "";
const headers = (extra = {}) => (key ? { ...extra, Authorization: `Bearer ${key}` } : extra);
const AXES = ["x", "y", "z"];
const state = { sweep: null, grid: null, base: "", formReady: false, compare: null };

async function api(path, options = {}) {
  let response;
  try { response = await fetch(path, { ...options, headers: headers(options.headers) }); }
  catch (_) {
    serverLost();
    throw new Error("The server is not answering. Is zturbo serve still running?");
  }
  if (!response.ok) throw new Error(inPageWords(await errorText(response)));
  return response;
}

async function errorText(response) {
  try { return (await response.json()).error.message; }
  catch (_) { return `${response.status} ${response.statusText}`; }
}

// The lab's messages are worded for the command line (--vary, --reference); this page has
// axes and a reference frame instead.
function inPageWords(message) {
  return String(message || "")
    .replace(/^--vary:\s*/, "")
    .replace(/^--vary\s+/, "axis ")
    .replace(/^--reference\s+/, "reference frame ")
    .replace("give vary or preset", "choose an axis with values, or a preset")
    .replace(/--vary /g, "axis ");
}

function showError(message) {
  $("lab-error").textContent = message || "";
  $("lab-error").hidden = !message;
}

function setStatus(done, total, text) {
  $("lab-progress").max = Math.max(1, total);
  $("lab-progress").value = done;
  $("lab-status").textContent = text;
}

function reveal(element) {  // scroll element's top into view unless it is on screen already
  const top = element.getBoundingClientRect().top;
  if (top >= 0 && top < innerHeight * 0.5) return;
  const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
  element.scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
}

// ---- the server, the header ------------------------------------------------------------
function serverLost() {
  $("model").textContent = "server not answering";
  $("model").classList.remove("ok");
  $("model").classList.add("bad");
}

async function loadReady() {
  try {
    const ready = await (await fetch("/api/ready", { headers: headers(), cache: "no-store" })).json();
    $("model").textContent = ready.ready ? `model ${ready.model}` : "model loading...";
    $("model").classList.toggle("ok", !!ready.ready);
    $("model").classList.remove("bad");
  } catch (_) { serverLost(); }
}

// ---- the form: X/Y/Z axes, a preset, fixed fields -----------------------------------------
function fillForm(sweepable, presets) {
  if (state.formReady) return;
  state.formReady = true;
  for (const axis of AXES) {
    const select = $(`lab-${axis}-field`);
    select.replaceChildren(new Option("none", ""), ...sweepable.map((f) => new Option(f, f)));
  }
  $("lab-x-field").value = "steps";
  for (const [name, help] of Object.entries(presets)) {
    const option = new Option(`${name}: ${help}`, name);
    $("lab-preset").add(option);
  }
}

function axisTexts() {  // ["steps=2,4", ...]: each axis with a field and values, X first
  const out = [];
  for (const axis of AXES) {
    const field = $(`lab-${axis}-field`).value;
    const values = $(`lab-${axis}-values`).value.trim();
    if (field && values) out.push(`${field}=${values}`);
    else if (field || values) {
      const name = axis.toUpperCase();
      throw new Error(field ? `${name} axis: give its values (e.g. 2,4,8).`
        : `${name} axis: choose the field its values are for.`);
    }
  }
  return out;
}

function fixedFields() {
  const fields = {};
  for (const name of ["width", "height", "seed", "steps"]) {
    const value = $(`lab-${name}`).value.trim();
    if (value !== "") fields[name] = Number(value);
  }
  return fields;
}

// ---- a sweep: start, watch, cancel --------------------------------------------------------
async function startSweep() {
  if (state.sweep) return;
  showError("");
  let body;
  try {
    body = { prompt: $("lab-prompt").value, vary: axisTexts(), fixed: fixedFields() };
    if ($("lab-preset").value) body.preset = $("lab-preset").value;
    if (!body.vary.length && !body.preset) throw new Error("Choose an X axis and its values, or a preset.");
    for (const f of body.vary.map((v) => v.split("=")[0])) delete body.fixed[f];  // swept, not fixed
  } catch (err) {
    showError(err.message);
    setStatus(0, 1, "not started");
    reveal($("lab-stage"));
    return;
  }
  $("lab-run").disabled = true;
  setStatus(0, 1, "starting");
  reveal($("lab-stage"));
  try {
    const sweep = await (await api("/api/lab/sweeps", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    await watch(sweep);
  } catch (err) {
    showError(err.message);
    setStatus(0, 1, "failed");
  } finally {
    state.sweep = null;
    $("lab-run").disabled = false;
    $("lab-cancel").disabled = true;
  }
}

async function watch(sweep) {  // follow a sweep to its end, filling its grid
  state.sweep = sweep.id;
  $("lab-run").disabled = true;
  $("lab-cancel").disabled = false;
  showGrid(sweep.grid, `/api/lab/runs/${sweep.run}/files/`, sweep.prompt, null);
  setStatus(sweep.done, sweep.total, sweep.status === "queued" ? "queued" : `running ${sweep.done}/${sweep.total}`);
  const response = await api(sweep.events);
  let ended = false;
  try { ended = await followEvents(response, (event, data) => onEvent(event, data, sweep)); }
  catch (_) { /* the stream broke off */ }
  if (!ended) {
    serverLost();
    showError("The server stopped answering during the sweep; the frames made so far stay in its run folder.");
    setStatus(+$("lab-progress").value, sweep.total, "interrupted");
  }
  loadRuns().catch(() => {});
}

function onEvent(event, data, sweep) {  // true when the sweep ended
  if (event === "queued") setStatus(0, data.total, "queued: waiting for the sweep before it");
  if (event === "started") setStatus(0, data.total, `running 0/${data.total}`);
  if (event === "frame") {
    fillCell(data.coords, data.url);
    setStatus(data.done, data.total, `running ${data.done}/${data.total}`);
  }
  if (event === "done") {
    const kept = data.skipped ? ` (${data.skipped} already made)` : "";
    setStatus(data.total, data.total, `done: ${data.total} frames${kept}`);
    showLinks(sweep.run, true);
    return true;
  }
  if (event === "cancelled") {
    setStatus(data.done, data.total, `cancelled: ${data.done} of ${data.total} frames made, kept in the run folder`);
    return true;
  }
  if (event === "error" || event === "interrupted") {
    showError(inPageWords(data.message));
    setStatus(data.done, data.total, event === "error" ? "failed" : "interrupted");
    return true;
  }
  return false;
}

async function cancelSweep() {
  if (!state.sweep) return;
  $("lab-cancel").disabled = true;
  $("lab-status").textContent = "cancelling at the next step...";
  try { await api(`/api/lab/sweeps/${state.sweep}/cancel`, { method: "POST" }); }
  catch (err) { showError(err.message); $("lab-cancel").disabled = false; }
}

async function attachToRunning() {  // a sweep already running (another tab, a reload): watch it
  const { sweeps } = await (await api("/api/lab/sweeps")).json();
  const live = sweeps.filter((s) => s.status === "queued" || s.status === "running").pop();
  if (!live || state.sweep) return;
  try { await watch(live); }
  catch (err) { showError(err.message); }
  finally { state.sweep = null; $("lab-run").disabled = false; $("lab-cancel").disabled = true; }
}

// ---- the grid: X across, Y down, one panel per Z value -------------------------------------
const coordsKey = (coords) => JSON.stringify(Object.entries(coords || {}).sort());

function cellUrl(cell) { return cell.url || (cell.file ? state.base + cell.file : null); }

function showGrid(grid, base, prompt, run) {
  state.grid = grid;
  state.base = base;
  $("lab-empty").hidden = true;
  $("lab-title").hidden = !prompt;
  $("lab-title").textContent = prompt ? `“${prompt}”` : "";
  $("lab-links").hidden = true;
  if (run) showLinks(run.name, run.report);
  $("lab-grid").replaceChildren(...grid.panels.map((panel, p) => renderPanel(grid, panel, p)));
}

function showLinks(run, done) {
  $("lab-links").hidden = !done;
  $("lab-report").href = `/api/lab/runs/${run}/files/report.html`;
  $("lab-sheet").href = `/api/lab/runs/${run}/files/contact-sheet.png`;
}

function headerCell(text, scope) {
  const th = document.createElement("th");
  th.scope = scope;
  th.textContent = text;
  return th;
}

function renderPanel(grid, panel, p) {
  const section = document.createElement("section");
  section.className = "xyz-panel";
  if (panel.label) {
    const title = document.createElement("h3");
    title.textContent = panel.label;
    section.append(title);
  }
  const table = document.createElement("table");
  table.className = "xy";
  const caption = document.createElement("caption");
  caption.className = "visually-hidden";
  caption.textContent = [grid.x && `${grid.x.field} across`, grid.y && `${grid.y.field} down`,
    panel.label].filter(Boolean).join(", ");
  const head = document.createElement("tr");
  if (grid.y) head.append(headerCell(`${grid.y.field} ↓ · ${grid.x.field} →`, "col"));
  const columns = grid.x ? grid.x.labels : ["frame"];
  head.append(...columns.map((label) => headerCell(label, "col")));
  const thead = document.createElement("thead");
  thead.append(head);
  const tbody = document.createElement("tbody");
  panel.cells.forEach((row, r) => {
    const tr = document.createElement("tr");
    if (grid.y) tr.append(headerCell(grid.y.labels[r], "row"));
    row.forEach((cell, c) => {
      const td = document.createElement("td");
      td.append(cellButton(cell, p, r, c));
      tr.append(td);
    });
    tbody.append(tr);
  });
  table.append(caption, thead, tbody);
  const scroller = document.createElement("div");
  scroller.className = "xyz-scroll";
  scroller.append(table);
  section.append(scroller);
  return section;
}

function cellButton(cell, p, r, c) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "cell";
  button.dataset.key = coordsKey(cell.coords);
  button.dataset.cell = `${p},${r},${c}`;
  button.addEventListener("click", () => openCompare(p, r, c));
  paintCell(button, cell);
  return button;
}

function paintCell(button, cell) {
  const url = cellUrl(cell);
  button.disabled = !url;
  button.setAttribute("aria-label", url ? `compare ${cell.label} with its neighbour` : `${cell.label}: not made yet`);
  if (!url) {
    const wait = document.createElement("span");
    wait.className = "cell-wait";
    wait.textContent = "…";
    button.replaceChildren(wait);
    return;
  }
  const img = document.createElement("img");
  img.src = url;
  img.alt = "";
  button.replaceChildren(img);
}

function fillCell(coords, url) {
  const wanted = coordsKey(coords);
  for (const panel of state.grid?.panels || []) {
    for (const row of panel.cells) {
      for (const cell of row) {
        if (coordsKey(cell.coords) !== wanted) continue;
        cell.url = url;
        const button = document.querySelector(`#lab-grid .cell[data-key='${CSS.escape(wanted)}']`);
        if (button) paintCell(button, cell);
      }
    }
  }
}

// ---- the slider compare: a cell against its neighbour along X, Y or Z ----------------------
function neighbour([p, r, c], along) {
  const g = state.grid, rows = g.panels[0].cells.length, cols = g.panels[0].cells[0].length;
  const next = (i, n) => (i + 1 < n ? i + 1 : i - 1);
  if (along === "x" && cols > 1) return [p, r, next(c, cols)];
  if (along === "y" && rows > 1) return [p, next(r, rows), c];
  if (along === "z" && g.panels.length > 1) return [next(p, g.panels.length), r, c];
  return null;
}

const cellAt = ([p, r, c]) => state.grid.panels[p].cells[r][c];

function axisField(along) {
  const g = state.grid;
  return along === "z" ? g.z.join(", ") : g[along]?.field;
}

function openCompare(p, r, c, along) {
  const at = [p, r, c];
  const choices = AXES.filter((a) => neighbour(at, a) && cellUrl(cellAt(neighbour(at, a))));
  along = choices.includes(along) ? along : choices[0];
  if (!along) { showError("Nothing to compare this frame with yet: its neighbours are not made."); return; }
  const left = cellAt(at), right = cellAt(neighbour(at, along));
  $("compare-left").src = cellUrl(left);
  $("compare-right").src = cellUrl(right);
  $("compare-left").alt = `left: ${left.label}`;
  $("compare-right").alt = `right: ${right.label}`;
  $("compare-left-label").textContent = left.label;
  $("compare-right-label").textContent = right.label;
  $("compare-title").textContent = `Compare along ${axisField(along)}`;
  $("compare-along").replaceChildren(...choices.map((a) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = `Along ${a.toUpperCase()}: ${axisField(a)}`;
    button.setAttribute("aria-pressed", String(a === along));
    button.addEventListener("click", () => openCompare(p, r, c, a));
    return button;
  }));
  state.compare = { at, along };
  slide();
  if (!$("compare-box").open) $("compare-box").showModal();
}

function slide() {
  const v = Number($("compare-slider").value);
  $("compare-clip").style.clipPath = `inset(0 ${100 - v}% 0 0)`;
  $("compare-divider").style.left = `${v}%`;
}

function zoom() {
  const z = Number($("compare-zoom").value);
  $("compare-stage").style.transform = `scale(${z})`;
  $("compare-divider").style.width = `${2 / z}px`;  // inside the zoomed stage: 2 px on screen
}

function zoomAt(event) {
  const box = $("compare").getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * 100;
  const y = ((event.clientY - box.top) / box.height) * 100;
  $("compare-stage").style.transformOrigin = `${x}% ${y}%`;
  if (Number($("compare-zoom").value) === 1) { $("compare-zoom").value = "3"; zoom(); }
}

// ---- the runs list -------------------------------------------------------------------------
async function loadRuns() {
  const data = await (await api("/api/lab/runs")).json();
  fillForm(data.sweepable, data.presets);
  state.runs = data.runs;
  $("runs-count").textContent = `${data.runs.length} run${data.runs.length === 1 ? "" : "s"}`;
  $("lab-runs").replaceChildren(...data.runs.map(runItem));
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "";
}

function runItem(run) {
  const li = document.createElement("li");
  li.className = "run";
  li.dataset.run = run.name;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "run-open";
  open.setAttribute("aria-label", `show the grid of “${run.prompt}”, ${when(run.created)}`);
  if (run.thumbnail) {
    const img = document.createElement("img");
    img.src = `/api/lab/runs/${run.name}/files/${run.thumbnail}`;
    img.alt = "";
    img.loading = "lazy";
    open.append(img);
  } else {
    const none = document.createElement("span");
    none.className = "cell-wait";
    none.textContent = "…";
    open.append(none);
  }
  open.addEventListener("click", () => {
    showError("");
    showGrid(run.grid, `/api/lab/runs/${run.name}/files/`, run.prompt, run);
    setStatus(run.frames, run.total, `${run.state}: ${run.frames} of ${run.total} frames`);
    reveal($("lab-stage"));
  });
  const text = document.createElement("div");
  text.className = "run-text";
  const prompt = document.createElement("p");
  prompt.className = "run-prompt";
  prompt.textContent = run.prompt || run.name;
  const axes = document.createElement("p");
  axes.className = "hint run-axes";
  axes.textContent = run.axes.map((a) => `${a.field} (${a.values.length})`).join(" × ") || "one frame";
  const date = document.createElement("p");
  date.className = "hint";
  date.textContent = `${when(run.created)} · ${run.frames}/${run.total} frames`;
  text.append(prompt, axes, date);
  const badge = document.createElement("span");
  badge.className = "run-state";
  badge.dataset.state = run.state;
  badge.textContent = run.state;
  li.append(open, text, badge);
  if (run.report) {
    const a = document.createElement("a");
    a.href = run.report;
    a.target = "_blank";
    a.rel = "noopener";
    a.className = "run-report";
    a.textContent = "Report";
    a.setAttribute("aria-label", `report of “${run.prompt}”, ${when(run.created)}`);
    li.append(a);
  }
  return li;
}

// ---- wiring ---------------------------------------------------------------------------------
$("lab-run").addEventListener("click", () => startSweep());
$("lab-cancel").addEventListener("click", () => cancelSweep());
$("lab-refresh").addEventListener("click", () => loadRuns().catch((e) => showError(e.message)));
$("compare-slider").addEventListener("input", slide);
$("compare-zoom").addEventListener("input", zoom);
$("compare").addEventListener("click", zoomAt);
$("compare-close").addEventListener("click", () => $("compare-box").close());
$("compare-right").addEventListener("load", (e) => {  // fit the whole picture in the dialog
  $("compare").style.setProperty("--aspect", e.target.naturalWidth / e.target.naturalHeight);
});
$("compare-box").addEventListener("click", (e) => { if (e.target === $("compare-box")) $("compare-box").close(); });
addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("compare-box").open) {
    e.preventDefault();
    startSweep();
  }
});
loadReady();
loadRuns().then(attachToRunning).catch((e) => showError(e.message));
