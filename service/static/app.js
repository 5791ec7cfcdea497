// The editor page: wires the API (api.js) and the painter (canvas/) to the controls of index.html.

import * as api from "./api.js";
import { labelsFromPng, labelsToPngBlob } from "./canvas/labels.js";
import { Painter } from "./canvas/painter.js";

const $ = (id) => document.getElementById(id);
const VECTOR_DEBOUNCE_MS = 150; // the full edit once a slider is released (or a key pressed) and left there
const SCALE_STEPS = 20; // vector sliders move in steps of 1/20

const state = {
  models: [],
  model: null, // ModelInfo of the model in use
  source: null, // {latentId, images}: the starting point (inversion, sample or example)
  result: null, // {kind: "edit" | "vectors", latentId, images, editId}
  savedVector: null, // VectorInfo of the last vector saved from an edit
  job: null, // the running job's JobAccepted
  unserved: [], // models no live worker serves (GET /readyz), read when a job starts
  vectorRequest: 0, // sequence number: answers to older real-time requests are dropped
  vectorTimer: null,
};
const painter = new Painter($("mask-canvas"));

// ---------------------------------------------------------------- messages

function showError(err) {
  const p = document.createElement("p");
  p.className = "error";
  if (err instanceof api.ApiError) {
    // the request's id, for a report: the service's log lines for it end with it
    p.textContent = `${err.code}: ${err.message}` + (err.requestId ? ` (request ${err.requestId})` : "");
  } else {
    p.textContent = `error: ${err.message || err}`;
  }
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.textContent = "Dismiss";
  dismiss.addEventListener("click", () => p.remove());
  p.append(dismiss);
  $("messages").append(p);
  console.error(err);
}

function clearErrors() {
  $("messages").replaceChildren();
}

/** Run an event handler; any failure becomes a message on the page, never a silent one. */
function guarded(handler) {
  return async (event) => {
    event?.preventDefault?.();
    try {
      await handler(event);
    } catch (err) {
      if (err.code !== "cancelled") showError(err); // a cancelled job is reported by the progress line
    } finally {
      refreshControls();
    }
  };
}

// ---------------------------------------------------------------- controls

function refreshControls() {
  const busy = state.job !== null;
  const ready = state.model !== null;
  const hasSource = state.source !== null;
  for (const id of ["invert-button", "sample-button"]) $(id).disabled = busy || !ready;
  $("example-button").disabled = busy || !ready || state.model.examples === 0;
  $("edit-button").disabled = busy || !hasSource;
  $("cancel-job").disabled = !busy;
  $("undo").disabled = !painter.canUndo;
  $("redo").disabled = !painter.canRedo;
  $("save-button").disabled = busy || state.result?.kind !== "edit";
  $("apply-button").disabled = busy || !hasSource || Number($("refine-steps").value) <= 0 || !terms().length;
  $("download-mask").disabled = !hasSource;
  $("model").disabled = busy; // a job's result belongs to the model it ran on
  for (const slider of document.querySelectorAll("#vector-list input")) slider.disabled = busy || !hasSource;
  setLink($("download-image"), state.result?.images.image);
  const v = state.savedVector;
  setLink($("download-vector"), v && `/vectors/${v.model}/${v.name}/npy?version=${v.version}`);
  if (v) $("download-vector").download = `${v.name}@${v.version}.npy`;
}

function setLink(anchor, href) {
  if (href) anchor.href = href;
  else anchor.removeAttribute("href");
  anchor.setAttribute("aria-disabled", String(!href));
}

function setZoom() {
  document.documentElement.style.setProperty("--zoom", $("zoom").value);
  $("zoom-value").textContent = `${$("zoom").value}x`;
}

// ---------------------------------------------------------------- jobs

function showProgress(label, info, err) {
  if (!info) {
    $("job-label").textContent = `${label}: waiting for the service (${err.code}), retrying...`;
    return;
  }
  const { stage, step, total } = info.progress;
  const percent = info.status === "finished" ? 100 : total ? Math.floor((100 * step) / total) : 0;
  $("job-progress").value = percent;
  const where = info.status === "queued" ? `queued (position ${info.queue_position ?? "?"})` : stage;
  // With no worker for the model (a fleet scaled to zero, or none started), say why the job does not start.
  const idle = info.status === "queued" && state.unserved.includes(info.model);
  const hint = idle ? " - no worker serves this model yet: the job starts when one does" : "";
  $("job-label").textContent = `${label}: ${where}, step ${step}/${total} (${percent} %)${hint}`;
}

/**
 * "job details": with a key, GET /jobs/{id} needs it too and a plain link sends none (401). Fetch the job with
 * the key and open its JSON in the new tab as a blob: URL. Without a key the link is followed as it is.
 */
async function openJobDetails(event) {
  const href = $("job-link").getAttribute("href");
  if (!href || !api.getApiKey()) return;
  event.preventDefault();
  const tab = window.open("", "_blank"); // opened now: after the await, the click no longer allows a new tab
  try {
    const info = await api.request("GET", href);
    const url = URL.createObjectURL(new Blob([JSON.stringify(info, null, 2)], { type: "application/json" }));
    if (tab) tab.location.href = url;
    else window.open(url, "_blank");
  } catch (err) {
    tab?.close();
    showError(err);
  }
}

/** Follow a job (202 answer) to its end with the progress bar, then `show` its result. */
async function runJob(accepted, label, show) {
  state.job = accepted;
  setLink($("job-link"), accepted.location);
  $("job-progress").value = 0;
  $("job-label").textContent = `${label}: queued`;
  refreshControls();
  state.unserved = (await api.readiness())?.unserved_models ?? [];
  try {
    const result = await api.waitForJob(accepted.location, (info, err) => showProgress(label, info, err));
    await show(result);
    $("job-label").textContent += " - done.";
  } catch (err) {
    $("job-label").textContent = `${label}: ${err.code === "cancelled" ? "cancelled" : "failed"}.`;
    throw err;
  } finally {
    state.job = null;
  }
}

async function cancelJob() {
  if (state.job) await api.cancelJob(state.job.location); // the poller then sees the job stop
}

// ---------------------------------------------------------------- models, palette, vectors

async function loadModels() {
  const { models } = await api.listModels();
  state.models = models;
  $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.resolution} px)`, m.name)));
  if (!models.length) throw new api.ApiError(0, "no_model", "the service serves no model");
  await selectModel(models[0].name);
}

async function selectModel(name) {
  const model = state.models.find((m) => m.name === name);
  Object.assign(state, { model, source: null, result: null, savedVector: null });
  state.vectorRequest++; // a real-time answer still on its way belongs to the previous model
  const box = model.content_box;
  $("model-info").textContent = `${model.classes.length} classes, ${box.width}x${box.height} px`;
  document.documentElement.style.setProperty("--size", String(box.width));
  document.documentElement.style.setProperty("--aspect", String(box.width / box.height));
  $("invert-steps").value = model.default_steps.invert;
  $("edit-steps").value = model.default_steps.edit;
  for (const id of ["invert-steps", "edit-steps", "refine-steps"]) $(id).max = String(model.max_steps);
  const examples = Array.from({ length: model.examples }, (_, i) => new Option(`Example ${i + 1}`, String(i)));
  $("example").replaceChildren(...examples);
  const regions = Object.keys(model.regions).map((r) => new Option(r, r));
  $("region").replaceChildren(new Option("the pixels painted", ""), ...regions);
  buildPalette(model.classes);
  for (const id of ["source-image", "uncertainty-image", "before-image", "after-image"]) $(id).removeAttribute("src");
  painter.clear();
  $("key-cursor").hidden = true;
  $("latent-id").textContent = "none yet";
  await loadVectors();
}

function buildPalette(classes) {
  const items = classes.map((c) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "class", value: c.id });
    const chip = Object.assign(document.createElement("span"), { className: "chip" });
    chip.style.background = c.color;
    label.append(input, chip, ` ${c.name}`);
    label.dataset.classId = c.id;
    input.addEventListener("change", () => (painter.cls = c.id));
    return label;
  });
  $("palette").replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Class" }), ...items);
  const first = classes.find((c) => c.id !== 0) || classes[0];
  selectClass(first.id);
}

function selectClass(id) {
  painter.cls = id;
  const input = $("palette").querySelector(`input[value="${id}"]`);
  if (input) input.checked = true;
}

async function loadVectors() {
  const { vectors } = await api.listVectors(state.model.name);
  const rows = vectors.map((v) => {
    const row = Object.assign(document.createElement("div"), { className: "vector" });
    const id = `vector-${v.name}`;
    const label = Object.assign(document.createElement("label"), { htmlFor: id, textContent: v.name });
    label.title = v.description || v.name;
    // A range input's grid starts at its min: widen the range to whole steps, so that 0 (no edit) is on the
    // grid whatever the vector's scale_range (a calibrated one can be +-2.67; 0 would snap to -0.0167).
    const min = Math.floor(v.scale_range[0] * SCALE_STEPS) / SCALE_STEPS;
    const max = Math.ceil(v.scale_range[1] * SCALE_STEPS) / SCALE_STEPS;
    const slider = Object.assign(document.createElement("input"), { type: "range", id, min, max, step: 1 / SCALE_STEPS });
    slider.value = 0;
    slider.dataset.vector = v.name;
    slider.setAttribute("aria-description", v.description || `${v.source} vector`);
    const value = Object.assign(document.createElement("output"), { textContent: "0.00" });
    value.htmlFor = id;
    slider.addEventListener("input", () => {
      value.textContent = Number(slider.value).toFixed(2);
      scheduleVectorEdit({ preview: true }); // while it moves: the fast segmentation
    });
    slider.addEventListener("change", () => scheduleVectorEdit({ preview: false })); // released: the full one
    const npy = Object.assign(document.createElement("a"), { textContent: ".npy", download: `${v.name}.npy` });
    npy.href = `/vectors/${v.model}/${v.name}/npy`;
    npy.addEventListener("click", guarded(followDownload));
    npy.setAttribute("aria-label", `Download ${v.name} as .npy`);
    row.append(label, slider, value, npy);
    return row;
  });
  $("vector-list").replaceChildren(...rows);
}

function terms() {
  const sliders = document.querySelectorAll("#vector-list input");
  return [...sliders]
    .filter((s) => Number(s.value) !== 0)
    .map((s) => ({ vector: s.dataset.vector, scale: Number(s.value) }));
}

// ---------------------------------------------------------------- the starting latent

async function showSource(result) {
  const { images } = result;
  const labels = await labelsFromPng(images.segmentation);
  state.source = { latentId: result.latent_id, images };
  state.result = null;
  state.vectorRequest++; // a real-time answer still on its way belongs to the previous latent
  painter.load(labels, state.model.classes);
  $("key-cursor").hidden = true;
  $("source-image").src = images.image;
  $("uncertainty-image").src = images.uncertainty;
  $("before-image").src = images.image;
  $("after-image").removeAttribute("src");
  $("after-caption").textContent = "After";
  $("latent-id").textContent = result.latent_id;
  for (const slider of document.querySelectorAll("#vector-list input")) slider.value = 0;
  for (const out of document.querySelectorAll("#vector-list output")) out.textContent = "0.00";
}

async function embedUpload() {
  const file = $("image-file").files[0];
  if (!file) throw new api.ApiError(0, "no_file", "choose an image file first");
  clearErrors();
  const options = { fit: $("fit").value, steps: $("invert-steps").value };
  const accepted = await api.invert(state.model.name, file, options);
  await runJob(accepted, "Embedding", showSource);
}

async function loadSample(choice) {
  clearErrors();
  const result = await api.sampleLatent(state.model.name, choice);
  await showSource(result);
  $("job-label").textContent = result.seed !== null ? `Random sample, seed ${result.seed}.` : "Example loaded.";
}

// ---------------------------------------------------------------- editing

function showResult(kind, result, caption) {
  state.result = { kind, latentId: result.latent_id, images: result.images, editId: result.vector?.edit_id };
  $("after-image").src = result.images.image;
  $("after-caption").textContent = caption;
}

async function runEdit() {
  if (!painter.changedPixels) {
    throw new api.ApiError(0, "nothing_painted", "paint the segmentation first: the mask equals the model's");
  }
  clearErrors();
  const mask = await labelsToPngBlob(painter.labels, state.model.classes);
  const options = { steps: $("edit-steps").value, region: $("region").value };
  const accepted = await api.optimizeEdit(state.source.latentId, mask, options);
  const show = (result) => showResult("edit", result, `After (edit, ${result.metrics.steps} steps)`);
  await runJob(accepted, "Editing", show);
}

async function saveVector() {
  const name = $("vector-name").value.trim();
  const info = await api.saveEditVector(state.result.editId, name, $("vector-description").value);
  state.savedVector = info;
  $("job-label").textContent = `Saved vector ${info.name} (version ${info.version}).`;
  const scales = new Map(terms().map((t) => [t.vector, t.scale]));
  await loadVectors();
  for (const slider of document.querySelectorAll("#vector-list input")) {
    slider.value = scales.get(slider.dataset.vector) ?? 0;
    slider.nextElementSibling.textContent = Number(slider.value).toFixed(2);
  }
}

function scheduleVectorEdit({ preview = false } = {}) {
  refreshControls();
  if (Number($("refine-steps").value) > 0 || !state.source) return; // refinement waits for the button
  clearTimeout(state.vectorTimer);
  if (preview) {
    requestPreview();
    return;
  }
  previewing.again = false; // the full edit follows: no preview after it
  state.vectorTimer = setTimeout(guarded(() => applyVectors({ preview: false })), VECTOR_DEBOUNCE_MS);
}

/**
 * While a slider moves: one preview request at a time, the next one as soon as it is answered, with the
 * sliders as they are then. A drag shows edits at the pace the service answers, without waiting for a pause.
 */
const previewing = { busy: false, again: false };

function requestPreview() {
  if (previewing.busy) {
    previewing.again = true;
    return;
  }
  previewing.busy = true;
  guarded(() => applyVectors({ preview: true }))().finally(() => {
    previewing.busy = false;
    if (previewing.again) {
      previewing.again = false;
      requestPreview();
    }
  });
}

async function applyVectors({ preview = false } = {}) {
  const chosen = terms();
  const seq = ++state.vectorRequest;
  if (!chosen.length) {
    if (state.result?.kind === "vectors") {
      // every slider back at 0: no vector edit to show (an optimisation edit's result stays)
      state.result = null;
      $("after-image").removeAttribute("src");
      $("after-caption").textContent = "After";
    }
    return;
  }
  const refineSteps = Number($("refine-steps").value);
  const body = { latent_id: state.source.latentId, vectors: chosen, refine_steps: refineSteps };
  const caption = `After (${chosen.map((t) => `${t.vector} ${t.scale}`).join(", ")})`;
  if (refineSteps > 0) {
    const accepted = await api.editWithVectors(body);
    await runJob(accepted, "Refining", (result) => showResult("vectors", result, `${caption}, refined`));
    return;
  }
  // A preview's images come back in the answer (data: URLs): no second and third request per slider step,
  // and nothing stored for them. The full edit on release gets result URLs, as downloads expect.
  const outputs = ["image", "segmentation"];
  const result = await api.editWithVectors({ ...body, outputs, preview, inline: preview });
  if (seq === state.vectorRequest) showResult("vectors", result, caption); // a newer request supersedes it
}

/**
 * A download link followed by the page itself: with a key the request needs its header (a plain link sends
 * none: 401), and an expired or missing file becomes a message instead of a silently failed download.
 */
async function followDownload(event) {
  const anchor = event.currentTarget; // `guarded` has prevented the browser's own navigation
  const href = anchor.getAttribute("href");
  const filename = anchor.download || href?.split("/").pop() || "download";
  if (!href) return;
  if (href.startsWith("blob:") || href.startsWith("data:")) clickLink(href, filename); // already in the page
  else saveBlob(await (await api.request("GET", href, { raw: true })).blob(), filename);
}

function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  clickLink(url, filename);
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function clickLink(href, filename) {
  const anchor = Object.assign(document.createElement("a"), { href, download: filename });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
}

async function downloadMask() {
  saveBlob(await labelsToPngBlob(painter.labels, state.model.classes), "mask.png");
}

/** The keyboard cursor: one label pixel outlined over the mask, and where it is, in words. */
function showCursor({ x, y }) {
  const { width, height } = painter.labels;
  const box = $("key-cursor");
  Object.assign(box.style, {
    left: `${(100 * x) / width}%`,
    top: `${(100 * y) / height}%`,
    width: `${100 / width}%`,
    height: `${100 / height}%`,
  });
  box.hidden = false;
  const cls = state.model.classes.find((c) => c.id === painter.labels.at(x, y));
  $("cursor-info").textContent = `Cursor at ${x}, ${y}: ${cls ? cls.name : "?"}.`;
}

// ---------------------------------------------------------------- wiring

const TOOL_KEYS = { b: "brush", f: "fill", i: "eyedropper", e: "erase" };

function onKey(event) {
  const typing = 'input[type="text"], input[type="password"], input[type="number"], input:not([type]), textarea, select';
  if (event.target.matches(typing) || event.altKey) return; // a select's type-ahead, the browser's Alt keys
  const key = event.key.toLowerCase();
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (key === "y" || (key === "z" && event.shiftKey))) painter.redo();
  else if (ctrl && key === "z") painter.undo();
  else if (!ctrl && TOOL_KEYS[key]) document.querySelector(`input[name="tool"][value="${TOOL_KEYS[key]}"]`).click();
  else return;
  event.preventDefault();
}

function wire() {
  $("api-key").value = api.getApiKey();
  $("api-key").addEventListener(
    "change",
    guarded(async () => {
      api.setApiKey($("api-key").value.trim());
      if (!state.model) await loadModels(); // with private reads, the catalogue could not load without it
    }),
  );
  $("job-link").addEventListener("click", openJobDetails);
  $("model").addEventListener("change", guarded(() => selectModel($("model").value)));
  $("upload-form").addEventListener("submit", guarded(embedUpload));
  $("sample-button").addEventListener("click", guarded(() => loadSample({})));
  $("example-button").addEventListener("click", guarded(() => loadSample({ example: Number($("example").value) })));
  $("cancel-job").addEventListener("click", guarded(cancelJob));
  $("edit-form").addEventListener("submit", guarded(runEdit));
  $("save-form").addEventListener("submit", guarded(saveVector));
  $("apply-button").addEventListener("click", guarded(() => applyVectors()));
  $("reset-scales").addEventListener("click", () => {
    for (const slider of document.querySelectorAll("#vector-list input")) slider.value = 0;
    for (const out of document.querySelectorAll("#vector-list output")) out.textContent = "0.00";
    scheduleVectorEdit();
  });
  $("refine-steps").addEventListener("input", refreshControls);
  $("download-mask").addEventListener("click", guarded(downloadMask));
  for (const id of ["download-image", "download-vector"]) $(id).addEventListener("click", guarded(followDownload));
  $("undo").addEventListener("click", () => painter.undo());
  $("redo").addEventListener("click", () => painter.redo());
  $("reset-mask").addEventListener("click", () => painter.resetToOriginal());
  for (const radio of document.querySelectorAll('input[name="tool"]')) {
    radio.addEventListener("change", () => (painter.tool = radio.value));
  }
  $("brush-size").addEventListener("input", () => {
    painter.size = Number($("brush-size").value);
    $("brush-size-value").textContent = $("brush-size").value;
  });
  $("brush-shape").addEventListener("change", () => (painter.shape = $("brush-shape").value));
  $("opacity").addEventListener("input", () => ($("mask-canvas").style.opacity = $("opacity").value));
  $("zoom").addEventListener("input", setZoom);
  painter.addEventListener("change", () => {
    // A live region: announced once a stroke ends, not at every pointer move of it.
    if (!painter.stroking) $("painted").textContent = `${painter.changedPixels} pixels painted.`;
    refreshControls();
  });
  painter.addEventListener("cursor", (e) => showCursor(e.detail));
  $("mask-canvas").addEventListener("blur", () => ($("key-cursor").hidden = true));
  $("mask-canvas").addEventListener("focus", () => {
    if (painter.cursor) showCursor({ x: painter.cursor[0], y: painter.cursor[1] });
  });
  painter.addEventListener("pick", (e) => {
    selectClass(e.detail);
    document.querySelector('input[name="tool"][value="brush"]').click(); // back to painting with it
  });
  document.addEventListener("keydown", onKey);
}

wire();
setZoom();
guarded(loadModels)().then(() => document.body.setAttribute("data-ready", "true")); // tests wait for it
