// The HTTP API, as the editor uses it: JSON in and out, every failure an ApiError carrying `{code, message}`.

/** An error answer of the service (`{code, message}`), or a request that got no usable answer. */
export class ApiError extends Error {
  constructor(status, code, message, requestId = null) {
    super(message);
    this.status = status; // HTTP status; 0 when nothing answered
    this.code = code;
    this.requestId = requestId; // the answer's X-Request-ID: the service's log lines for it end with it
  }

  toString() {
    return `${this.code}: ${this.message}`;
  }
}

const TERMINAL = new Set(["finished", "failed", "stopped", "canceled"]);

// The API key (when the service has keys on) lives in sessionStorage: it survives a reload, not the tab.
const KEY_ITEM = "editgan.apiKey";
export const getApiKey = () => sessionStorage.getItem(KEY_ITEM) || "";
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

async function errorOf(response) {
  const text = await response.text();
  const requestId = response.headers.get("X-Request-ID");
  try {
    const body = JSON.parse(text);
    if (body && body.code && body.message) return new ApiError(response.status, body.code, body.message, requestId);
  } catch {
    // not JSON: a proxy's page, for instance
  }
  const message = text.slice(0, 200) || response.statusText;
  return new ApiError(response.status, `http_${response.status}`, message, requestId);
}

/**
 * One request. `json` is sent as a JSON body, `form` (a FormData) as multipart; answers are parsed as JSON
 * unless `raw` is set. Throws ApiError for any non-2xx answer and for network failures.
 */
export async function request(method, path, { json, form, raw = false } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (getApiKey()) init.headers.Authorization = `Bearer ${getApiKey()}`;
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network_error", `the service did not answer (${err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

export const listModels = () => request("GET", "/models");
export const listVectors = (model) => request("GET", `/vectors?model=${encodeURIComponent(model)}`);

/**
 * With a key, result images are readable only with it, and an <img> cannot send headers: fetch each one
 * with the key and hand the page a blob: URL instead. Without a key the URLs are used as they are.
 */
async function withReadableImages(result) {
  if (!getApiKey() || !result?.images) return result;
  const entries = Object.entries(result.images).filter(([, url]) => url && !url.startsWith("data:"));
  await Promise.all(
    entries.map(async ([name, url]) => {
      const response = await request("GET", url, { raw: true });
      result.images[name] = URL.createObjectURL(await response.blob());
    }),
  );
  return result;
}

export const sampleLatent = (model, choice) =>
  request("POST", "/latents/sample", { json: { model, ...choice } }).then(withReadableImages);
export const cancelJob = (location) => request("DELETE", location);
export const editWithVectors = (body) => request("POST", "/edit/vector", { json: body }).then(withReadableImages);
export const saveEditVector = (editId, name, description) =>
  request("POST", "/vectors/from-edit", { json: { edit_id: editId, name, description } });

function formOf(fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) form.append(key, value[0], value[1]); // [blob, filename]
    else form.append(key, value);
  }
  return form;
}

/** `POST /invert`: a job (202) whose result holds the latent and its images. */
export const invert = (model, file, { fit, steps } = {}) =>
  request("POST", "/invert", { form: formOf({ model, image: [file, file.name || "image.png"], fit, steps }) });

/** `POST /edit/optimize`: a job (202) that optimises the latent towards the painted mask. */
export const optimizeEdit = (latentId, maskBlob, { steps, region } = {}) => {
  const form = formOf({ latent_id: latentId, mask: [maskBlob, "mask.png"], steps, region });
  return request("POST", "/edit/optimize", { form });
};

/** `GET /readyz`, or null when the service is not ready (503) or does not answer. */
export const readiness = () => request("GET", "/readyz").catch(() => null);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follow `GET /jobs/{id}` until the job is terminal; `onProgress(info)` sees every answer (`onProgress(null,
 * error)` each read that got none). Reads after the first are long polls (`?wait=`): the service answers as
 * the job changes, so progress and the end show at once; an unchanged answer that came back early (a
 * service without long polls) is paced by `intervalMs`. Resolves with the finished job's result; rejects
 * with an ApiError for a failed, stopped or cancelled job, or when the service stays unreachable for
 * `patienceMs`.
 */
export async function waitForJob(location, onProgress, { intervalMs = 250, patienceMs = 60_000, holdS = 25 } = {}) {
  let failingSince = null;
  let last = null;
  for (let first = true; ; first = false) {
    let info;
    const asked = Date.now();
    try {
      info = await request("GET", first ? location : `${location}?wait=${holdS}`);
      failingSince = null;
    } catch (err) {
      // The job runs on whatever the page's connection does: a dropped network or a 503 while Redis
      // restarts (Retry-After) is waited out, with growing pauses, for up to `patienceMs`.
      const passing = err.status === 0 || err.status === 429 || err.status >= 500;
      failingSince ??= Date.now();
      if (!passing || Date.now() - failingSince > patienceMs) throw err;
      onProgress(null, err);
      await sleep(Math.min(5000, intervalMs * 2 ** Math.min(5, Math.floor((Date.now() - failingSince) / 1000))));
      continue;
    }
    onProgress(info);
    if (TERMINAL.has(info.status)) {
      if (info.status === "finished") return withReadableImages(info.result);
      if (info.error) throw new ApiError(200, info.error.code, info.error.message);
      throw new ApiError(200, "cancelled", `the job was ${info.status}`);
    }
    const seen = JSON.stringify([info.status, info.progress.stage, info.progress.step, info.progress.total]);
    if (seen === last && Date.now() - asked < holdS * 500) await sleep(intervalMs);
    last = seen;
  }
}
