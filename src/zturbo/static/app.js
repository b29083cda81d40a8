// zturbo studio: plain JS, no build step. Talks to the same API as every other client:
// POST /api/jobs (+ /edit), GET /api/jobs/{id}/events (SSE, read with fetch so an API key
// can be sent), GET /api/jobs (the queue), POST /api/jobs/{id}/cancel, GET /api/history,
// GET /api/images/{id}[?size=], GET /api/loras, GET /api/templates, POST /api/metadata,
// GET /api/ready and /api/health (is the server there?).
"use strict";

const $ = (id) => document.getElementById(id);
const THUMB = 256;
const state = {
  key: localStorage.getItem("zturbo-key") || "", job: null, lastSeed: null, shown: null,
  results: [], options: null, templates: {}, loras: [], offset: 0, pageSize: 24,
  gallery: [], galleryRun: 0, boxIndex: -1, boxItem: null, model: null, cancelRequested: false, delivered: false,
};
const HEARTBEAT_MS = 15000;  // while idle, ask /api/ready this often: the header stays true

class ServerDown extends Error {  // fetch itself failed: no answer at all from the server
  constructor() { super("the server is not answering"); }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function api(path, options = {}) {
  let response;
  try { response = await fetch(path, { ...options, headers: headers(options.headers) }); }
  catch (_) { serverLost(); throw new ServerDown(); }
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

const json = async (path, options) => (await api(path, options)).json();

function showError(message) {  // in a box fixed to the viewport: seen wherever one scrolled
  $("error").textContent = message || "";
  $("error-box").hidden = !message;
}

// ---- a lost server: say so in words, keep asking, and come back when it answers ------------
let reconnecting = null;

function serverLost() {
  if (reconnecting) return reconnecting;
  $("model").textContent = "server not answering";
  $("model").classList.remove("ok");
  $("model").classList.add("bad");
  $("notice").textContent = "The server is not answering; retrying...";
  reconnecting = (async () => {
    for (let delay = 1000; ; delay = Math.min(delay * 1.5, 5000)) {
      await sleep(delay);
      try { if ((await fetch("/api/health", { cache: "no-store" })).ok) break; } catch (_) { /* still down */ }
    }
    $("notice").textContent = "";
    $("model").classList.remove("bad");
    reconnecting = null;
    if (state.options) await loadReady().catch(() => {});
    else await start();  // the first load never finished: do it now
  })();
  return reconnecting;
}

async function serverBack() {  // true once the server answers again; false if cancelled first
  const back = serverLost();
  let answered = false;
  back.then(() => { answered = true; });
  while (!answered && !state.cancelRequested) await sleep(200);
  return answered;
}

async function loadReady() {  // the header says what the server has, or that it is not there
  let ready = null;
  try { ready = await (await fetch("/api/ready", { headers: headers(), cache: "no-store" })).json(); }
  catch (_) { serverLost(); return; }
  state.model = ready?.ready ? ready.model : null;
  $("model").textContent = ready?.ready ? `model ${ready.model}` : "model loading...";
  $("model").classList.toggle("ok", !!ready?.ready);
}

const blobs = new Map();  // image URL -> object URL (ids never change: fetch each once)
async function imageUrl(path) {  // images need the key too: fetch them as blobs
  if (!blobs.has(path)) {
    blobs.set(path, api(path).then((r) => r.blob()).then((b) => URL.createObjectURL(b)));
  }
  try { return await blobs.get(path); } catch (err) { blobs.delete(path); throw err; }
}

function seconds(s) { return s === null || s === undefined ? "?" : `${(+s).toFixed(2)} s`; }
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }); }

// ---- options: sizes, templates, LoRAs, knob defaults ------------------------------------
async function loadOptions() {
  const options = await json("/api/options");
  state.options = options;
  const d = options.defaults;
  showModels(options.models || []);
  $("aspect").replaceChildren(new Option("custom", "custom"),
    ...options.aspects.map((a) => new Option(a, a)));
  $("bucket").replaceChildren(...Object.keys(options.buckets).map((b) => new Option(b, b)));
  $("long-prompt").replaceChildren(...options.choices.long_prompt.map((m) => new Option(m, m)));
  $("dype").replaceChildren(...options.choices.dype.map((m) => new Option(m, m)));
  $("control-type").replaceChildren(...options.control.types.map((t) => new Option(t.name, t.name)));
  $("control-type").value = "canny";
  setControlScale(options.control.scale);
  $("control-scale").max = options.control.max_scale;
  describeControl();
  setKnobs({ width: d.width, height: d.height, steps: d.steps, guidance: d.guidance,
             shift: d.shift, hidden_layer: d.hidden_layer, long_prompt: d.long_prompt,
             dype: d.dype, slg_scale: d.slg_scale, slg_layers: d.slg_layers,
             slg_start: d.slg_start, slg_stop: d.slg_stop });
  $("steps").max = options.limits.max_steps;
  $("num-images").max = options.limits.max_images;
  $("prompt").maxLength = options.limits.max_prompt_chars;
  matchAspect();
  await Promise.all([loadTemplates(), loadLoras()]);
  await loadReady();
}

// ---- models: a picker when the server holds several; its defaults follow the model ---------
function showModels(models) {
  state.models = Object.fromEntries(models.map((m) => [m.name, m]));
  $("model-row").hidden = models.length < 2;
  const current = $("model-pick").value;
  $("model-pick").replaceChildren(...models.map((m) => {
    const option = new Option(`${m.name} (${m.state})`, m.name);
    option.title = m.error ? `${m.source}: ${m.error}` : m.source;
    return option;
  }));
  if (current && state.models[current]) $("model-pick").value = current;
  showModelState();
}

async function refreshModels() {  // states change as models load and are evicted
  if ($("model-row").hidden) return;
  try { showModels((await json("/api/options")).models || []); } catch (_) { /* next time */ }
}

function showModelState() {
  const m = state.models?.[$("model-pick").value];
  $("model-state").textContent = !m ? "" : m.state === "failed" ? `failed to load: ${m.error}`
    : `${m.source}, ${m.state}`;
}

function pickModel() {  // another model: its own defaults (steps, guidance...) in the form
  const m = state.models?.[$("model-pick").value];
  if (m?.defaults) setKnobs(m.defaults);
  matchAspect();
  showModelState();
}

async function loadTemplates() {
  const { templates } = await json("/api/templates");
  state.templates = Object.fromEntries(templates.map((t) => [t.name, t]));
  $("template-row").hidden = !templates.length;
  $("template").replaceChildren(new Option("none", ""));
  for (const t of templates) {
    const option = new Option(t.name, t.name);
    option.title = t.description;
    $("template").add(option);
  }
}

function previewTemplate() {  // the prompt as the text encoder will read it
  const t = state.templates[$("template").value];
  $("template-preview").hidden = !t;
  if (!t) return;
  const [before, after] = t.body.split("{prompt}");
  const mark = document.createElement("mark");
  mark.textContent = $("prompt").value || "{prompt}";
  $("template-preview").replaceChildren(before, mark, after ?? "");
  $("template-preview").title = t.description;
}

async function loadLoras() {
  const { configured, loras } = await json("/api/loras");
  state.loras = loras.map((l) => l.name);
  state.loraInfo = Object.fromEntries(loras.map((l) => [l.name, loraSummary(l)]));
  $("lora-none").hidden = configured && loras.length > 0;
  if (configured && !loras.length) $("lora-none").textContent = "The LoRA folders hold no .safetensors files.";
  $("lora-add-row").hidden = !loras.length;
  $("lora-pick").replaceChildren(...state.loras.map((n) => new Option(n, n)));
  showLoraInfo();
}

// one line from a LoRA's report: layout, rank, modules applied, keys skipped (or its error)
function loraSummary(lora) {
  if (lora.error) return `unusable: ${lora.error}`;
  const r = lora.report;
  const skipped = r.not_applied.length ? `, ${r.not_applied.length} keys not applied` : "";
  return `${r.layout}, rank ${r.ranks.join("/")}, ${r.applied.length} modules${skipped}`;
}

// the picked LoRA's report under the picker
function showLoraInfo() {
  const name = $("lora-pick").value;
  $("lora-info").textContent = name ? `${name}: ${state.loraInfo[name]}` : "";
}

function addLora(name, scale = 1) {
  if (!name || $("lora-list").children.length >= 8) return;
  const item = document.createElement("li");
  item.dataset.lora = name;
  const id = `lora-scale-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = name;
  const input = Object.assign(document.createElement("input"),
    { id, type: "number", min: -10, max: 10, step: 0.05, value: scale, className: "lora-scale" });
  const remove = Object.assign(document.createElement("button"),
    { type: "button", textContent: "Remove", className: "small" });
  remove.setAttribute("aria-label", `remove LoRA ${name}`);
  remove.addEventListener("click", () => item.remove());
  item.append(label, input, remove);
  $("lora-list").append(item);
}

function pickedLoras() {
  return [...$("lora-list").children].map((li) => (
    { name: li.dataset.lora, scale: +li.querySelector("input").value }));
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

// ---- the form <-> a Request -------------------------------------------------------------
const KNOB_INPUTS = {  // Request field -> input id (numbers unless listed in TEXT_KNOBS)
  width: "width", height: "height", steps: "steps", guidance: "guidance", shift: "shift",
  hidden_layer: "hidden-layer", long_prompt: "long-prompt", dype: "dype",
  dype_scale: "dype-scale", dype_exponent: "dype-exponent", slg_scale: "slg-scale",
  slg_start: "slg-start", slg_stop: "slg-stop", negative_prompt: "negative",
};
const TEXT_KNOBS = new Set(["long_prompt", "dype", "negative_prompt"]);

function setKnobs(values) {
  for (const [name, id] of Object.entries(KNOB_INPUTS)) {
    if (values[name] !== undefined && values[name] !== null) $(id).value = values[name];
  }
  if (values.slg_layers) $("slg-layers").value = values.slg_layers.join(",");
}

function seedMode() { return document.querySelector("input[name=seedmode]:checked").value; }

function fields() {
  const body = { prompt: $("prompt").value, num_images: +$("num-images").value || 1 };
  for (const [name, id] of Object.entries(KNOB_INPUTS)) {
    const raw = $(id).value;
    if (raw === "") continue;
    body[name] = TEXT_KNOBS.has(name) ? raw : +raw;
  }
  if (body.dype === "off") { delete body.dype_scale; delete body.dype_exponent; }
  if (body.slg_scale) {
    body.slg_layers = $("slg-layers").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  } else { delete body.slg_start; delete body.slg_stop; }
  const mode = seedMode();
  if (mode === "fixed" && $("seed").value !== "") body.seed = +$("seed").value;
  if (mode === "last" && state.lastSeed !== null) body.seed = state.lastSeed;
  if ($("template").value) body.template = $("template").value;
  const loras = pickedLoras();
  if (loras.length) body.loras = loras;
  if (!$("teleport").checked) body.teleport = false;
  if ($("enhance").checked) body.enhance = true;
  if (!$("model-row").hidden && $("model-pick").value) body.model = $("model-pick").value;
  return body;
}

function showEnhanced(text) {  // the enhancer's text, ready to be edited and re-run
  $("enhanced").textContent = text;
  $("enhanced-row").hidden = !text;
}

function useEnhanced() {  // the enhanced text becomes the prompt; enhancing it again is off
  $("prompt").value = $("enhanced").textContent;
  $("enhance").checked = false;
  $("enhanced-row").hidden = true;
  $("prompt").focus();
}

function restore(request) {  // put a stored request back into the form
  if (!request) return;
  if (request.prompt !== undefined) $("prompt").value = request.prompt;
  setKnobs(request);
  if (request.seed !== undefined && request.seed !== null) {
    $("seed").value = request.seed;
    document.querySelector("input[name=seedmode][value=fixed]").checked = true;
  }
  $("num-images").value = 1;  // a stored request is one image's
  const known = [...$("template").options].some((o) => o.value === request.template);
  $("template").value = request.template && known ? request.template : "";
  $("lora-list").replaceChildren();
  for (const lora of request.loras || []) addLora(lora.name, lora.scale);
  $("teleport").checked = request.teleport !== false;
  if (request.control_image) {  // the control image itself stays as chosen on this page
    $("control-type").value = request.control_type;
    setControlScale(request.control_scale);
    previewControl();
  }
  $("enhance").checked = false;  // a stored prompt is the text that was encoded
  showEnhanced(request.original_prompt ? request.prompt : "");
  const advanced = (request.loras || []).length || request.negative_prompt || request.guidance
    || request.slg_scale || (request.dype && request.dype !== "off");
  if (advanced) $("advanced").open = true;
  matchAspect();
  previewTemplate();
}

// ---- generate, follow, the queue, cancel ------------------------------------------------
async function generate() {
  if (state.job || $("generate").disabled) return;
  showError("");
  state.cancelRequested = false;
  state.delivered = false;
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("empty").hidden = true;  // the work takes the empty card's place, in view
  $("pending").hidden = !$("result").hidden;
  reveal($("stage"));
  try {
    await submitAndFollow();
  } catch (err) {
    failed(err.message);
  } finally {
    state.job = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
    if (!state.delivered) $("preview").hidden = true;  // else it stays until the image is in
    $("pending").hidden = true;
    $("empty").hidden = !!state.shown;
    refreshQueue();
  }
}

async function submitAndFollow() {  // submit, then follow to the end; a lost server is waited for
  for (;;) {
    try {
      if (!state.job) {
        const job = await (await submitJob()).json();
        state.job = job.id;
        setProgress(0, 1, `queued (position ${job.queue_position ?? 1})`);
        watchQueue();
        if (state.cancelRequested) await cancel();
      }
      if (await follow(state.job, onEvent)) { refreshModels(); return; }
      serverLost();  // the stream ended before the job did: the server went away
    } catch (err) {
      if (!(err instanceof ServerDown)) throw err;
    }
    setProgress(0, 1, "waiting for the server");
    if (!await serverBack()) { setProgress(0, 1, "cancelled"); return; }
    if (state.cancelRequested && state.job) await cancel();
  }
}

function failed(message) {  // the newest request failed: say so, and mark the old result stale
  showError(message);
  setProgress(0, 1, "failed");
  $("stage").classList.toggle("stale", !$("result").hidden);
  $("stale-note").hidden = $("result").hidden;
}

function reveal(element) {  // scroll element's top into view unless it is already on screen
  const box = element.getBoundingClientRect();
  const top = parseFloat(getComputedStyle(element).scrollMarginTop) || 0;
  if (box.top >= top && box.top < innerHeight * 0.5) return;
  const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
  element.scrollIntoView({ block: "start", behavior: smooth ? "smooth" : "auto" });
}

function submitJob() {  // JSON for a prompt; multipart with the init or control image
  const init = $("init").files[0];
  const control = $("control").files[0];
  if (control) {  // a ControlNet generation (with the init image: controlled inpaint)
    const form = new FormData();
    form.append("control_image", control);
    if (init) form.append("image", init);
    form.append("fields", JSON.stringify({ ...fields(), control_type: $("control-type").value,
      control_scale: +$("control-scale").value }));
    return api("/api/jobs/control", { method: "POST", body: form });
  }
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
  sizeFrom(file);
}

// ---- ControlNet: the control image, its map (previewed by the server), the strength -------
function describeControl() {
  const entry = (state.options?.control?.types || []).find((t) => t.name === $("control-type").value);
  $("control-doc").textContent = entry ? `${entry.doc} Feeds: ${entry.feeds}.` : "";
}

function setControlScale(value) {
  $("control-scale").value = value;
  $("control-scale-value").textContent = (+value).toFixed(2);
}

let controlAsked = 0;  // the newest preview asked for: an older answer is dropped

async function previewControl() {
  describeControl();
  const file = $("control").files[0];
  $("clear-control").hidden = !file;
  $("control-figure").hidden = !file;
  if (!file) return;
  const asked = ++controlAsked;
  const kind = $("control-type").value;
  const form = new FormData();
  form.append("image", file);
  form.append("control_type", kind);
  $("control-caption").textContent = "making the map...";
  try {
    const blob = await (await api("/api/control/preview", { method: "POST", body: form })).blob();
    if (asked !== controlAsked) return;
    if (state.controlUrl) URL.revokeObjectURL(state.controlUrl);
    state.controlUrl = URL.createObjectURL(blob);
    $("control-preview").src = state.controlUrl;
    $("control-caption").textContent = `The ${kind} map the ControlNet will see.`;
  } catch (err) {
    if (asked !== controlAsked) return;
    $("control-caption").textContent = "";
    if (!(err instanceof ServerDown)) showError(err.message);
  }
}

function onControlChosen() {  // the output size follows the control image, as on the CLI
  if (!$("init").files[0]) sizeFrom($("control").files[0]);
  previewControl();
}

function sizeFrom(file) {  // width and height from an image file, down to multiples of 16
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

async function follow(jobId, handle) {  // Server-Sent Events (events.js): true when it ended
  const response = await api(`/api/jobs/${jobId}/events`);
  try { return await followEvents(response, handle); }
  catch (_) { serverLost(); throw new ServerDown(); }  // the stream broke off
}

function setProgress(done, total, text) {
  $("progress").max = total;
  $("progress").value = done;
  $("status").textContent = text;
}

function onEvent(event, data) {  // returns true when the job ended
  if (event === "queued") setProgress(0, 1, `queued (position ${data.position})`);
  if (event === "started") setProgress(0, data.total, "started");
  if (event === "enhanced") showEnhanced(data.prompt);
  if (event === "step") {
    setProgress(data.step, data.total, `step ${data.step}/${data.total}`);
    if (data.preview) {
      $("preview").src = data.preview;
      $("preview").hidden = false;
      $("pending").hidden = true;
    }
  }
  if (event === "done") {
    setProgress(1, 1, "done");
    state.delivered = true;
    state.lastSeed = data.seeds[0];
    showResults(data.images).then(() => { reveal($("stage")); return loadGallery(true); })
      .catch((e) => showError(e.message));
    return true;
  }
  if (event === "cancelled") { setProgress(0, 1, "cancelled"); return true; }
  if (event === "error") { failed(data.message); return true; }
  return false;
}

let queueTimer = null;
function watchQueue() {  // the queue while our job waits or runs (a poll: no stream for it)
  clearInterval(queueTimer);
  refreshQueue();
  queueTimer = setInterval(() => { if (state.job) refreshQueue(); else clearInterval(queueTimer); }, 1000);
}

async function refreshQueue() {
  let jobs = [];
  try { jobs = (await json("/api/jobs")).jobs; } catch (_) { return; }
  const waiting = jobs.filter((j) => j.status === "queued").length;
  $("queue-chip").hidden = !jobs.length;
  $("queue-chip").textContent = `${jobs.length - waiting} running, ${waiting} waiting`;
  $("queue-box").hidden = jobs.length < 2 && !jobs.some((j) => j.id !== state.job);
  $("queue").replaceChildren(...jobs.map((j) => {
    const li = document.createElement("li");
    const mine = j.id === state.job;
    li.className = mine ? "mine" : "";
    const where = j.status === "running" ? `running ${j.step}/${j.total}` : `#${j.queue_position} waiting`;
    li.textContent = `${mine ? "you: " : ""}${where} - ${j.request.prompt.slice(0, 60)}`;
    return li;
  }));
}

async function cancel() {  // also while waiting for a lost server: the wait stops
  state.cancelRequested = true;
  if (!state.job) return;
  try { await api(`/api/jobs/${state.job}/cancel`, { method: "POST" }); }
  catch (err) { if (!(err instanceof ServerDown)) showError(err.message); }
}

// ---- the result: large image, its strip, badge, parameters --------------------------------
async function showResults(images) {
  state.results = images;
  $("strip").hidden = images.length < 2;
  $("strip").replaceChildren(...images.map((item, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "strip-item";
    button.setAttribute("aria-label", `show image ${i + 1} (seed ${item.seed})`);
    const img = document.createElement("img");
    img.alt = "";
    imageUrl(`${item.url}?size=${THUMB}`).then((u) => { img.src = u; }).catch(() => {});
    button.append(img);
    button.addEventListener("click", () => showResult(item));
    return button;
  }));
  await showResult(images[0]);
}

async function showResult(item) {  // a history item, or an image of a "done" event
  state.shown = item;
  const url = await imageUrl(item.url);
  const img = $("result-image");
  img.src = url;
  img.alt = item.request.prompt;
  img.dataset.imageId = item.id;
  img.hidden = false;
  $("empty").hidden = true;
  $("pending").hidden = true;
  $("preview").hidden = true;
  $("stage").classList.remove("stale");
  $("stale-note").hidden = true;
  for (const b of $("strip").children) b.classList.toggle("active", b.getAttribute("aria-label").includes(`seed ${item.seed})`));
  $("download").href = url;
  $("download").download = `zturbo-${item.seed}.png`;
  $("params").textContent = JSON.stringify(item.request, null, 2);
  fillParams($("param-list"), item.request);
  fillBadge($("badge"), item);
  $("command-box").hidden = true;
  $("result").hidden = false;
}

function badgeText(item) {  // what teleport did for this image, in words and seconds
  const t = item.teleport || {};
  const took = seconds(item.seconds);
  if (t.hit) {
    const how = {image: "served from the stored image (no DiT pass, no decode)",
                 final_latent: "decoded from the stored final latent"}[t.served] ||
      `replayed from step ${t.resumed_at_step}`;
    const full = item.full_run
      ? `full run ${seconds(item.full_run.seconds)} (first made at ${clock(item.full_run.created)})`
      : "no full run of these settings in this history";
    return { kind: "hit", text: `⚡ ${how} in ${took} · ${full}` };
  }
  if (t.bypass) return { kind: "off", text: `full run in ${took} · teleport off: ${t.bypass}` };
  const stored = (t.stored || []).length ? ` · stored resume point(s) at step ${t.stored.join(", ")}` : "";
  return { kind: "full", text: `full run in ${took}${stored}` };
}

function fillBadge(element, item) {
  const { kind, text } = badgeText(item);
  element.textContent = text;
  element.dataset.kind = kind;
}

function fillParams(list, request) {  // the parameters that matter, as a definition list
  const rows = [["Prompt", request.prompt], ["Seed", request.seed],
    ["Size", `${request.width}×${request.height}`], ["Steps", request.steps]];
  const d = state.options?.request_defaults || {};
  if (request.template && request.template !== "none") rows.push(["Template", request.template]);
  if (request.negative_prompt) rows.push(["Negative", request.negative_prompt]);
  for (const [name, label] of [["guidance", "Guidance"], ["shift", "Shift"], ["hidden_layer", "Hidden layer"],
    ["long_prompt", "Long prompts"], ["dype", "DyPE"], ["slg_scale", "SLG scale"], ["strength", "Strength"],
    ["control_type", "Control map"], ["control_scale", "Control strength"]]) {
    if (request[name] !== undefined && request[name] !== null && request[name] !== d[name]) rows.push([label, request[name]]);
  }
  if (request.slg_scale) rows.push(["SLG layers", request.slg_layers.join(",")]);
  for (const lora of request.loras || []) rows.push(["LoRA", `${lora.name} × ${lora.scale}`]);
  list.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
}

async function copyText(text, box, what) {
  box.value = text;
  box.hidden = false;
  if (box.parentElement.id === "command-box") box.parentElement.hidden = false;
  try { await navigator.clipboard.writeText(text); $("status").textContent = `${what} copied`; }
  catch (_) {  // no clipboard permission: the text is selected in the box instead
    box.focus();
    box.select();
    $("status").textContent = `${what} selected: press Ctrl+C`;
  }
}

function commandFor(item, kind) {
  const defaults = state.options?.request_defaults || {};
  return kind === "cli" ? ZCommands.cli(item.request, defaults, item.model || state.model)
    : ZCommands.curl(item.request, defaults, location.origin, !!state.key);
}

// ---- gallery and lightbox ---------------------------------------------------------------------
async function loadGallery(reset) {
  const run = reset ? ++state.galleryRun : state.galleryRun;  // a newer reset wins
  const q = encodeURIComponent($("search").value);
  const page = await json(`/api/history?limit=${state.pageSize}&offset=${reset ? 0 : state.offset}&q=${q}`);
  if (run !== state.galleryRun) return;
  if (reset) { state.offset = 0; state.gallery = []; $("gallery").replaceChildren(); }
  state.offset += page.items.length;
  $("more").hidden = state.offset >= page.total;
  $("gallery-count").textContent = `${page.total} image${page.total === 1 ? "" : "s"}`;
  for (const item of page.items) {
    const index = state.gallery.push(item) - 1;
    const figure = document.createElement("figure");
    figure.dataset.imageId = item.id;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.setAttribute("aria-label", `open ${item.prompt} (seed ${item.seed})`);
    const img = document.createElement("img");
    img.alt = "";
    img.loading = "lazy";
    button.append(img);
    const caption = document.createElement("figcaption");
    caption.textContent = item.prompt;
    figure.append(button, caption);
    if (item.teleport?.hit) {  // outside the button: its name is the image's
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "⚡ replay";
      figure.append(tag);
    }
    button.addEventListener("click", () => openBox(index));
    $("gallery").append(figure);
    imageUrl(`${item.url}?size=${THUMB}`).then((url) => { img.src = url; }).catch(() => {});
  }
}

async function openBox(index) {
  const item = state.gallery[index];
  if (!item) return;
  state.boxIndex = index;
  state.boxItem = item;  // what the lightbox shows, even if the history reloads meanwhile
  const url = await imageUrl(item.url);
  $("lightbox-image").src = url;
  $("lightbox-image").alt = item.prompt;
  $("lightbox-image").dataset.imageId = item.id;
  $("lightbox-title").textContent = `Seed ${item.seed} · ${item.width}×${item.height}`;
  $("lightbox-download").href = url;
  $("lightbox-download").download = `zturbo-${item.seed}.png`;
  fillBadge($("lightbox-badge"), item);
  fillParams($("lightbox-params"), item.request);
  $("lightbox-command").hidden = true;
  $("lightbox-prev").disabled = index === 0;
  $("lightbox-next").disabled = index >= state.gallery.length - 1;
  if (!$("lightbox").open) $("lightbox").showModal();
}

function reuse(item) {
  if (item.model && state.models?.[item.model]) {
    $("model-pick").value = item.model;
    showModelState();
  }
  restore(item.request);
  $("status").textContent = `settings of seed ${item.seed} restored`;
  $("prompt").focus();
}

// ---- drop a PNG: restore its parameters ------------------------------------------------------
async function dropped(file) {
  showError("");
  const form = new FormData();
  form.append("image", file);
  try {
    const data = await json("/api/metadata", { method: "POST", body: form });
    restore(data.request);
    $("status").textContent = `parameters restored from ${file.name}`;
  } catch (err) { showError(err.message); }
}

function wireLightbox() {
  const box = $("lightbox");
  const current = () => state.boxItem;
  $("lightbox-close").addEventListener("click", () => box.close());
  $("lightbox-prev").addEventListener("click", () => openBox(state.boxIndex - 1));
  $("lightbox-next").addEventListener("click", () => openBox(state.boxIndex + 1));
  $("lightbox-reuse").addEventListener("click", () => { reuse(current()); box.close(); });
  $("lightbox-cli").addEventListener("click", () => copyText(commandFor(current(), "cli"), $("lightbox-command"), "CLI command"));
  $("lightbox-curl").addEventListener("click", () => copyText(commandFor(current(), "curl"), $("lightbox-command"), "curl command"));
  box.addEventListener("click", (e) => { if (e.target === box) box.close(); });  // the backdrop
  box.addEventListener("keydown", (e) => {
    if (e.target.tagName === "TEXTAREA") return;
    if (e.key === "ArrowLeft" && state.boxIndex > 0) openBox(state.boxIndex - 1);
    if (e.key === "ArrowRight") openBox(state.boxIndex + 1);
  });
}

function wire() {
  $("generate").addEventListener("click", generate);
  $("use-enhanced").addEventListener("click", useEnhanced);
  $("cancel").addEventListener("click", cancel);
  $("init").addEventListener("change", onInitChosen);
  $("clear-init").addEventListener("click", () => { $("init").value = ""; onInitChosen(); });
  $("control").addEventListener("change", onControlChosen);
  $("control-type").addEventListener("change", previewControl);
  $("control-scale").addEventListener("input", () => setControlScale($("control-scale").value));
  $("clear-control").addEventListener("click", () => { $("control").value = ""; previewControl(); });
  $("aspect").addEventListener("change", applyAspect);
  $("model-pick").addEventListener("change", pickModel);
  $("bucket").addEventListener("change", applyAspect);
  for (const id of ["width", "height"]) $(id).addEventListener("change", matchAspect);
  $("template").addEventListener("change", previewTemplate);
  $("prompt").addEventListener("input", previewTemplate);
  $("lora-add").addEventListener("click", () => addLora($("lora-pick").value));
  $("lora-pick").addEventListener("change", showLoraInfo);
  $("copy").addEventListener("click", () => copyText($("params").textContent, $("command"), "parameters"));
  $("copy-cli").addEventListener("click", () => copyText(commandFor(state.shown, "cli"), $("command"), "CLI command"));
  $("copy-curl").addEventListener("click", () => copyText(commandFor(state.shown, "curl"), $("command"), "curl command"));
  $("reuse").addEventListener("click", () => reuse(state.shown));
  $("more").addEventListener("click", () => loadGallery(false));
  let timer;
  $("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => loadGallery(true).catch((e) => showError(e.message)), 250);
  });
  addEventListener("keydown", (e) => {  // Ctrl/Cmd+Enter generates from anywhere on the page
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("lightbox").open) {
      e.preventDefault();
      generate();
    }
  });
  if (/Mac|iPhone|iPad/.test(navigator.platform)) {
    for (const kbd of document.querySelectorAll("kbd")) if (kbd.textContent === "Ctrl") kbd.textContent = "⌘";
  }
  $("error-close").addEventListener("click", () => showError(""));
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
  wireLightbox();
}

async function start() {
  try {
    await loadOptions();
    await loadGallery(true);
    if (!state.shown && state.gallery.length) await showResult(state.gallery[0]);  // a reload
    refreshQueue();
  } catch (err) { if (!(err instanceof ServerDown)) showError(err.message); }
}

function heartbeat() {  // idle: is the server (still) there? The header follows the answer
  setInterval(() => {
    if (!state.job && !reconnecting && document.visibilityState === "visible") loadReady();
  }, HEARTBEAT_MS);
}

wire();
start();
heartbeat();
