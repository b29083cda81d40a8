// zturbo web page: plain JS, no build step. Talks to the same API as every other client:
// POST /api/jobs, GET /api/jobs/{id}/events (SSE, read with fetch so an API key can be sent),
// POST /api/jobs/{id}/cancel, GET /api/history, GET /api/images/{id}, POST /api/metadata.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("zturbo-key") || "", job: null, lastSeed: null,
                shown: null, options: null, offset: 0, pageSize: 24 };

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("keybar").hidden = false;
    throw new Error("this server needs an API key");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function imageUrl(path) {  // images need the key too: fetch them as blobs
  const blob = await (await api(path)).blob();
  return URL.createObjectURL(blob);
}

// ---- options: aspects, buckets, templates, defaults ---------------------------------
async function loadOptions() {
  const options = await (await api("/api/options")).json();
  state.options = options;
  $("aspect").replaceChildren(new Option("custom", "custom"),
    ...options.aspects.map((a) => new Option(a, a)));
  $("bucket").replaceChildren(...Object.keys(options.buckets).map((b) => new Option(b, b)));
  $("width").value = options.defaults.width;
  $("height").value = options.defaults.height;
  $("steps").value = options.defaults.steps;
  $("steps").max = options.limits.max_steps;
  $("prompt").maxLength = options.limits.max_prompt_chars;
  matchAspect();
  if (options.templates.length) {
    $("template-row").hidden = false;
    for (const t of options.templates) {
      const option = new Option(t.name, t.name);
      option.title = t.description;
      $("template").add(option);
    }
  }
  const ready = await (await api("/api/ready").catch(() => null))?.json?.();
  $("model").textContent = ready?.ready ? `model ${ready.model}` : "model loading...";
}

function applyAspect() {
  const aspect = $("aspect").value;
  if (aspect === "custom") return;
  const [w, h] = state.options.buckets[$("bucket").value][aspect];
  $("width").value = w;
  $("height").value = h;
}

function matchAspect() {  // show the bucket a size belongs to, or "custom"
  const w = +$("width").value, h = +$("height").value;
  for (const [bucket, sizes] of Object.entries(state.options.buckets)) {
    for (const [aspect, [bw, bh]] of Object.entries(sizes)) {
      if (bw === w && bh === h) { $("bucket").value = bucket; $("aspect").value = aspect; return; }
    }
  }
  $("aspect").value = "custom";
}

// ---- the request ------------------------------------------------------------------------
function seedMode() { return document.querySelector("input[name=seedmode]:checked").value; }

function fields() {
  const body = { prompt: $("prompt").value, width: +$("width").value, height: +$("height").value,
                 steps: +$("steps").value };
  const mode = seedMode();
  if (mode === "fixed" && $("seed").value !== "") body.seed = +$("seed").value;
  if (mode === "last" && state.lastSeed !== null) body.seed = state.lastSeed;
  if ($("template").value) body.template = $("template").value;
  return body;
}

function restore(request) {  // put a stored request back into the form
  if (!request) return;
  if (request.prompt !== undefined) $("prompt").value = request.prompt;
  if (request.width) $("width").value = request.width;
  if (request.height) $("height").value = request.height;
  if (request.steps) $("steps").value = request.steps;
  if (request.seed !== undefined && request.seed !== null) {
    $("seed").value = request.seed;
    document.querySelector("input[name=seedmode][value=fixed]").checked = true;
  }
  const known = [...$("template").options].some((o) => o.value === request.template);
  $("template").value = request.template && known ? request.template : "";
  matchAspect();
}

// ---- generate, follow, cancel -------------------------------------------------------------
async function generate() {
  showError("");
  $("generate").disabled = true;
  try {
    const job = await (await submitJob()).json();
    state.job = job.id;
    $("cancel").disabled = false;
    setProgress(0, 1, `queued (position ${job.queue_position ?? 1})`);
    await follow(job.id, onEvent);
  } catch (err) {
    showError(err.message);
    setProgress(0, 1, "failed");
  } finally {
    state.job = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

function submitJob() {  // JSON for a prompt; multipart with the init image for img2img
  const init = $("init").files[0];
  if (!init) {
    return api("/api/jobs", { method: "POST", body: JSON.stringify(fields()),
      headers: { "Content-Type": "application/json" } });
  }
  const form = new FormData();
  form.append("image", init);
  form.append("fields", JSON.stringify({ ...fields(), strength: +$("strength").value }));
  return api("/api/jobs/edit", { method: "POST", body: form });
}

function onInitChosen() {  // img2img: the output size follows the source image
  const file = $("init").files[0];
  $("clear-init").hidden = !file;
  if (!file) return;
  const probe = new Image();
  probe.onload = () => {
    $("width").value = Math.max(16, Math.floor(probe.naturalWidth / 16) * 16);
    $("height").value = Math.max(16, Math.floor(probe.naturalHeight / 16) * 16);
    matchAspect();
    URL.revokeObjectURL(probe.src);
  };
  probe.src = URL.createObjectURL(file);
}

async function follow(jobId, handle) {  // Server-Sent Events over fetch
  const response = await api(`/api/jobs/${jobId}/events`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data && handle(event, JSON.parse(data))) { reader.cancel(); return; }
    }
  }
}

function setProgress(done, total, text) {
  $("progress").max = total;
  $("progress").value = done;
  $("status").textContent = text;
}

function onEvent(event, data) {  // returns true when the job ended
  if (event === "queued") setProgress(0, 1, `queued (position ${data.position})`);
  if (event === "started") setProgress(0, data.total, "started");
  if (event === "step") {
    setProgress(data.step, data.total, `step ${data.step}/${data.total}`);
    if (data.preview) { $("preview").src = data.preview; $("preview").hidden = false; }
  }
  if (event === "done") {
    setProgress(1, 1, "done");
    state.lastSeed = data.seeds[0];
    showResult(data.images[0]).then(() => loadGallery(true));
    return true;
  }
  if (event === "cancelled") { setProgress(0, 1, "cancelled"); return true; }
  if (event === "error") { showError(data.message); setProgress(0, 1, "error"); return true; }
  return false;
}

async function cancel() {
  if (!state.job) return;
  try { await api(`/api/jobs/${state.job}/cancel`, { method: "POST" }); }
  catch (err) { showError(err.message); }
}

// ---- result -------------------------------------------------------------------------------
async function showResult(item) {  // a history item, or an image of a "done" event
  state.shown = item;
  const url = await imageUrl(item.url);
  $("result-image").src = url;
  $("result-image").dataset.imageId = item.id;
  $("download").href = url;
  $("download").download = `zturbo-${item.seed}.png`;
  $("params").textContent = JSON.stringify(item.request, null, 2);
  $("result").hidden = false;
}

async function copyParams() {
  const text = $("params").textContent;
  try { await navigator.clipboard.writeText(text); $("status").textContent = "parameters copied"; }
  catch (_) {  // no clipboard permission (plain http): select the text instead
    getSelection().selectAllChildren($("params"));
    $("status").textContent = "parameters selected: press Ctrl+C";
  }
}

// ---- gallery --------------------------------------------------------------------------------
async function loadGallery(reset) {
  if (reset) { state.offset = 0; $("gallery").replaceChildren(); }
  const q = encodeURIComponent($("search").value);
  const page = await (await api(`/api/history?limit=${state.pageSize}&offset=${state.offset}&q=${q}`)).json();
  state.offset += page.items.length;
  $("more").hidden = state.offset >= page.total;
  for (const item of page.items) {
    const figure = document.createElement("figure");
    figure.dataset.imageId = item.id;
    const img = document.createElement("img");
    img.alt = item.prompt;
    img.title = `${item.prompt}\nseed ${item.seed}, ${item.width}x${item.height}`;
    const caption = document.createElement("figcaption");
    caption.textContent = item.prompt;
    figure.append(img, caption);
    figure.addEventListener("click", () => { restore(item.request); showResult(item); });
    $("gallery").append(figure);
    imageUrl(item.url).then((url) => { img.src = url; }).catch(() => {});
  }
}

// ---- drop a PNG: restore its parameters ------------------------------------------------------
async function dropped(file) {
  showError("");
  const form = new FormData();
  form.append("image", file);
  try {
    const data = await (await api("/api/metadata", { method: "POST", body: form })).json();
    restore(data.request);
    $("status").textContent = `parameters restored from ${file.name}`;
  } catch (err) { showError(err.message); }
}

function wire() {
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", cancel);
  $("init").addEventListener("change", onInitChosen);
  $("clear-init").addEventListener("click", () => { $("init").value = ""; onInitChosen(); });
  $("aspect").addEventListener("change", applyAspect);
  $("bucket").addEventListener("change", applyAspect);
  for (const id of ["width", "height"]) $(id).addEventListener("change", matchAspect);
  $("copy").addEventListener("click", copyParams);
  $("reuse").addEventListener("click", () => restore(state.shown?.request));
  $("more").addEventListener("click", () => loadGallery(false));
  let timer;
  $("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => loadGallery(true).catch((e) => showError(e.message)), 250);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
  });
  $("keybar").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("apikey").value.trim();
    localStorage.setItem("zturbo-key", state.key);
    $("keybar").hidden = true;
    start();
  });
  addEventListener("dragover", (e) => { e.preventDefault(); $("dropzone").hidden = false; });
  addEventListener("dragleave", (e) => { if (!e.relatedTarget) $("dropzone").hidden = true; });
  addEventListener("drop", (e) => {
    e.preventDefault();
    $("dropzone").hidden = true;
    const file = e.dataTransfer.files[0];
    if (file) dropped(file);
  });
}

async function start() {
  try {
    await loadOptions();
    await loadGallery(true);
  } catch (err) { showError(err.message); }
}

wire();
start();
