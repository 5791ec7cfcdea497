// Painting a segmentation: brush, flood fill, eyedropper, erase-to-original, undo/redo.
//
// The painter owns one <canvas> whose pixels are the label map in the palette's colours; the page scales it
// with CSS (image-rendering: pixelated), so a pointer position is mapped back to a label pixel here.

import { drawLabels } from "./labels.js";

const MAX_HISTORY = 50; // undo levels; a 64 px map is 4 KB per level, a 512 px one 256 KB

export const TOOLS = ["brush", "fill", "eyedropper", "erase"];

/** Pixel offsets covered by a brush of `size` pixels, "round" or "square", around the pointer's pixel. */
export function brushOffsets(size, shape) {
  const first = -Math.floor((size - 1) / 2);
  const centre = first + (size - 1) / 2; // the stamp's centre, relative to the pointer's pixel
  const offsets = [];
  for (let dy = first; dy < first + size; dy++) {
    for (let dx = first; dx < first + size; dx++) {
      // Pixel centres within the circle of diameter `size`, less half a pixel: the 3 px stamp is then a
      // plus, not the square it would equal. 1 and 2 px are blocks either way; 4 px and up are unchanged.
      const round = (dx - centre) ** 2 + (dy - centre) ** 2 <= (size / 2) ** 2 - 0.5;
      const inside = shape === "square" || size <= 2 || round;
      if (inside) offsets.push([dx, dy]);
    }
  }
  return offsets;
}

/** Replace the 4-connected region of `labels` holding the class at (x, y) with `cls`; returns pixels changed. */
export function floodFill(labels, x, y, cls) {
  const { width, height, ids } = labels;
  const target = ids[y * width + x];
  if (target === cls) return 0;
  const stack = [y * width + x];
  let changed = 0;
  while (stack.length) {
    const i = stack.pop();
    if (ids[i] !== target) continue;
    ids[i] = cls;
    changed++;
    const px = i % width;
    if (px > 0) stack.push(i - 1);
    if (px < width - 1) stack.push(i + 1);
    if (i >= width) stack.push(i - width);
    if (i < width * (height - 1)) stack.push(i + width);
  }
  return changed;
}

/**
 * Events: "change" after every edit, undo or redo; "pick" (detail: class id) when the eyedropper picks.
 */
export class Painter extends EventTarget {
  constructor(canvas) {
    super();
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.palette = [];
    this.original = null; // the segmentation as the service rendered it
    this.labels = null; // what the user painted
    this.undoStack = [];
    this.redoStack = [];
    this.tool = "brush";
    this.cls = 0;
    this.size = 3;
    this.shape = "round";
    this.last = null; // the previous pixel of the stroke in progress (off the canvas while dragged outside)
    this.setAside = []; // the redo history while an undo step is open
    this.cursor = null; // [x, y]: where the keyboard paints (arrows move it, Space or Enter applies the tool)
    canvas.tabIndex = 0;
    canvas.addEventListener("keydown", (e) => this.#key(e));
    canvas.addEventListener("pointerdown", (e) => this.#down(e));
    canvas.addEventListener("pointermove", (e) => this.#move(e));
    for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, (e) => this.#up(e));
  }

  /** Start over on a new segmentation (history cleared). */
  load(labels, palette) {
    this.palette = palette;
    this.original = labels.clone();
    this.labels = labels.clone();
    this.undoStack = [];
    this.redoStack = [];
    this.cursor = null;
    this.canvas.width = labels.width;
    this.canvas.height = labels.height;
    this.#changed();
  }

  /** No segmentation (another model was chosen). */
  clear() {
    Object.assign(this, { original: null, labels: null, undoStack: [], redoStack: [], cursor: null });
    this.canvas.width = this.canvas.height = 0;
    this.dispatchEvent(new Event("change"));
  }

  get canUndo() {
    return this.undoStack.length > 0;
  }

  get canRedo() {
    return this.redoStack.length > 0;
  }

  /** Pixels whose class differs from the service's segmentation. */
  get changedPixels() {
    if (!this.labels) return 0;
    return this.labels.ids.reduce((n, v, i) => n + (v !== this.original.ids[i] ? 1 : 0), 0);
  }

  undo() {
    if (!this.canUndo) return;
    this.redoStack.push(this.labels.ids);
    this.labels.ids = this.undoStack.pop();
    this.#changed();
  }

  redo() {
    if (!this.canRedo) return;
    this.undoStack.push(this.labels.ids);
    this.labels.ids = this.redoStack.pop();
    this.#changed();
  }

  /** Back to the service's segmentation, as one undoable step. */
  resetToOriginal() {
    if (!this.labels || this.labels.equals(this.original)) return;
    this.#checkpoint();
    this.labels.ids = this.original.ids.slice();
    this.#keep();
    this.#changed();
  }

  redraw() {
    if (this.labels) drawLabels(this.ctx, this.labels, this.palette);
  }

  /** Open an undo step before a change; `#keep` or `#drop` closes it once it is known whether it changed anything. */
  #checkpoint() {
    this.undoStack.push(this.labels.ids.slice());
    this.setAside = this.redoStack; // a step that changes nothing must not cost the redo history
    this.redoStack = [];
  }

  #keep() {
    if (this.undoStack.length > MAX_HISTORY) this.undoStack.shift();
  }

  #drop() {
    this.undoStack.pop();
    this.redoStack = this.setAside;
    this.dispatchEvent(new Event("change")); // the redo button comes back
  }

  #changed() {
    this.redraw();
    this.dispatchEvent(new Event("change"));
  }

  /** The label pixel under the pointer; off the canvas (a captured stroke) it lies outside [0, size). */
  #pixel(event) {
    const rect = this.canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * this.labels.width);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * this.labels.height);
    return [x, y];
  }

  #clamped([x, y]) {
    return [Math.min(Math.max(x, 0), this.labels.width - 1), Math.min(Math.max(y, 0), this.labels.height - 1)];
  }

  #down(event) {
    if (!this.labels || event.button !== 0) return;
    const [x, y] = this.#clamped(this.#pixel(event)); // on the canvas: only its border's rounding to undo
    if (this.#pickOrFill(x, y)) return;
    this.#checkpoint();
    this.canvas.setPointerCapture(event.pointerId);
    this.last = [x, y];
    this.#stamp(x, y);
    this.#changed();
  }

  /** The one-click tools at (x, y); false for the brushes, which paint strokes. */
  #pickOrFill(x, y) {
    if (this.tool === "eyedropper") {
      this.cls = this.labels.at(x, y);
      this.dispatchEvent(new CustomEvent("pick", { detail: this.cls }));
      return true;
    }
    if (this.tool !== "fill") return false;
    this.#checkpoint();
    if (floodFill(this.labels, x, y, this.cls) === 0) this.#drop(); // nothing changed: no undo step
    else this.#keep();
    this.#changed();
    return true;
  }

  /**
   * Painting without a pointer: arrows move the cursor (from the centre), Space or Enter applies the tool
   * there, Shift+arrow moves and paints with the brush (each press one undo step). A "cursor" event tells
   * the page where it is.
   */
  #key(event) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const move = moves[event.key];
    const apply = event.key === " " || event.key === "Enter";
    if (!this.labels || (!move && !apply) || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault(); // no page scrolling
    const [cx, cy] = this.cursor ?? [this.labels.width >> 1, this.labels.height >> 1];
    const [x, y] = move ? this.#clamped([cx + move[0], cy + move[1]]) : [cx, cy];
    this.cursor = [x, y];
    if (apply || (move && event.shiftKey)) {
      if (!this.#pickOrFill(x, y)) {
        this.#checkpoint();
        this.#stamp(x, y);
        const before = this.undoStack[this.undoStack.length - 1];
        if (before.every((v, i) => v === this.labels.ids[i])) this.#drop();
        else this.#keep();
        this.#changed();
      }
    }
    this.dispatchEvent(new CustomEvent("cursor", { detail: { x, y, cls: this.labels.at(x, y) } }));
  }

  #move(event) {
    if (!this.last) return;
    const [x, y] = this.#pixel(event);
    const [x0, y0] = this.last;
    const steps = Math.max(Math.abs(x - x0), Math.abs(y - y0));
    for (let s = 1; s <= steps; s++) {
      this.#stamp(Math.round(x0 + ((x - x0) * s) / steps), Math.round(y0 + ((y - y0) * s) / steps));
    }
    this.last = [x, y];
    if (steps) this.#changed();
  }

  /** Whether a pointer stroke is under way ("change" events then come at every move). */
  get stroking() {
    return this.last !== null;
  }

  #up() {
    if (!this.last) return;
    this.last = null;
    const before = this.undoStack[this.undoStack.length - 1];
    if (before && before.every((v, i) => v === this.labels.ids[i])) this.#drop(); // an empty stroke
    else this.#keep();
    this.dispatchEvent(new Event("change")); // the stroke is over: listeners that wait for it can act
  }

  #stamp(x, y) {
    const { width, height, ids } = this.labels;
    for (const [dx, dy] of brushOffsets(this.size, this.shape)) {
      const px = x + dx;
      const py = y + dy;
      if (px < 0 || py < 0 || px >= width || py >= height) continue;
      const i = py * width + px;
      ids[i] = this.tool === "erase" ? this.original.ids[i] : this.cls;
    }
  }
}
