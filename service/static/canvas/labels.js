// Label maps (one class id per pixel, row-major Uint8Array) to and from the service's PNGs.

import { ApiError, request } from "../api.js";

/** A LabelMap: width, height and class ids. */
export class LabelMap {
  constructor(width, height, ids = new Uint8Array(width * height)) {
    this.width = width;
    this.height = height;
    this.ids = ids;
  }

  clone() {
    return new LabelMap(this.width, this.height, this.ids.slice());
  }

  at(x, y) {
    return this.ids[y * this.width + x];
  }

  equals(other) {
    return this.ids.length === other.ids.length && this.ids.every((v, i) => v === other.ids[i]);
  }
}

/** "#rrggbb" -> [r, g, b] */
export function rgbOf(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch {
    await request("GET", url, { raw: true }); // throws the service's own error (e.g. an expired image)
    throw new ApiError(0, "bad_image", `${url} is not an image the browser can decode`);
  }
  return img;
}

/** The service's grey segmentation PNG (pixel value = class id) -> LabelMap. */
export async function labelsFromPng(url) {
  const img = await loadImage(url);
  const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  const rgba = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const ids = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < ids.length; i++) ids[i] = rgba[4 * i];
  return new LabelMap(canvas.width, canvas.height, ids);
}

/** Paint `labels` into `ctx` in the palette's colours (opaque: opacity is the canvas' CSS). */
export function drawLabels(ctx, labels, palette) {
  const colours = [];
  for (const c of palette) colours[c.id] = rgbOf(c.color);
  const image = ctx.createImageData(labels.width, labels.height);
  labels.ids.forEach((id, i) => {
    const [r, g, b] = colours[id] || [255, 0, 255];
    image.data.set([r, g, b, 255], 4 * i);
  });
  ctx.putImageData(image, 0, 0);
}

/** LabelMap -> PNG Blob in the model's colours (what `POST /edit/optimize` accepts as a mask). */
export async function labelsToPngBlob(labels, palette) {
  const canvas = new OffscreenCanvas(labels.width, labels.height);
  drawLabels(canvas.getContext("2d"), labels, palette);
  return canvas.convertToBlob({ type: "image/png" });
}
