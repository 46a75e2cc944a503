// xal annotate: the page. Plain JS, no build step. Every text that comes from data is set with
// textContent (never innerHTML), and the server's Content-Security-Policy forbids inline scripts.
"use strict";

const $ = (id) => document.getElementById(id);
const DISPLAY = 512; // the larger side of the image on screen, CSS pixels

const state = {
  batch: null,          // GET /api/batch
  index: -1,            // position of the current item in batch.items
  views: { pool: null, source: null }, // {pixels: Float32Array row major, height, width, range: [min, max]}
  view: "pool",         // which of the two is shown: the pool's image, or the source file's own resolution
  pixels: null,         // the shown view's pixels
  frame: [0, 0],        // [H, W] of the ROI frame (the pool's): drawing happens in these pixels
  range: [0, 1],        // min, max of the shown view
  window: 1, level: 0.5,
  drawing: null,        // {boxes: [[x0,y0,x1,y1]], mask: Uint8Array|null, noFinding: bool, undo: []}
  drag: null,           // {x0, y0, x1, y1} in image pixels while dragging
  tool: "box",          // "box" | "brush"
  busy: false,
  loadedItem: null,
};

// ------------------------------------------------------------------ talking to the server
async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    location.href = "/login";
    throw new Error("signed out");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || response.statusText;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !text;
}

// ------------------------------------------------------------------ the batch
async function loadBatch() {
  const response = await api("/api/batch");
  if (!response.ok) {
    say(await errorText(response));
    return;
  }
  const batch = await response.json();
  const before = state.batch;
  const currentId = currentItem() ? currentItem().item_id : null;
  state.batch = batch;
  if (!$("annotator").value) $("annotator").value = localStorage.getItem("xal-annotator") || batch.annotator;
  state.frame = batch.frame;
  buildClassButtons(batch);
  $("tool").hidden = batch.roi_format !== "mask";
  renderList();
  renderProgress();
  const sameItems = before && before.items.map((i) => i.item_id).join() === batch.items.map((i) => i.item_id).join();
  if (!sameItems) {
    const keep = batch.items.findIndex((i) => i.item_id === currentId);
    const firstOpen = batch.items.findIndex((i) => !i.answer);
    await show(keep >= 0 ? keep : Math.max(firstOpen, 0));
  } else if (currentItem() && currentItem().answer && !(before.items[state.index] || {}).answer) {
    renderItem(); // answered elsewhere (another tab) since we looked
  }
}

function currentItem() {
  return state.batch && state.index >= 0 ? state.batch.items[state.index] : null;
}

function buildClassButtons(batch) {
  const holder = $("classes");
  if (holder.dataset.built === batch.classes.join("\u0000")) return;
  holder.replaceChildren();
  batch.classes.forEach((name, label) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "class";
    button.dataset.label = String(label);
    if (label < 9) {
      const key = document.createElement("kbd");
      key.textContent = String(label + 1);
      button.append(key);
    }
    button.append(document.createTextNode(name));
    button.addEventListener("click", () => submit(label));
    holder.append(button);
  });
  holder.dataset.built = batch.classes.join("\u0000");
}

function renderProgress() {
  const batch = state.batch;
  $("progress").textContent = batch.total
    ? `${batch.done} of ${batch.total} done`
    : "nothing to label: every acquired item has an answer (the page picks up the next batch by itself)";
}

function renderList() {
  const list = $("item-list");
  list.replaceChildren();
  state.batch.items.forEach((item, index) => {
    const row = document.createElement("li");
    row.dataset.item = String(item.item_id);
    row.className = (item.answer ? "done" : "pending") + (index === state.index ? " current" : "");
    const name = document.createElement("span");
    name.textContent = `#${item.item_id} ${item.source_id}`;
    const badge = document.createElement("span");
    badge.className = "state";
    badge.textContent = item.answer ? item.answer.label_name : `r${item.round}`;
    row.append(name, badge);
    row.addEventListener("click", () => show(index));
    list.append(row);
  });
}

// ------------------------------------------------------------------ one item
async function show(index) {
  const batch = state.batch;
  if (!batch || !batch.items.length) {
    state.index = -1;
    renderItem();
    return;
  }
  state.index = Math.min(Math.max(index, 0), batch.items.length - 1);
  const item = currentItem();
  state.drawing = { boxes: [], mask: null, noFinding: false, undo: [] };
  renderList();
  renderItem();
  if (state.loadedItem !== item.item_id) await loadImage(item);
}

async function fetchView(path) {
  const response = await api(path);
  if (!response.ok) return await errorText(response);
  const height = Number(response.headers.get("X-Height"));
  const width = Number(response.headers.get("X-Width"));
  const pixels = new Float32Array(await response.arrayBuffer());
  let low = Infinity, high = -Infinity;
  for (const v of pixels) { if (v < low) low = v; if (v > high) high = v; }
  return { pixels, height, width, range: [low, high > low ? high : low + 1] };
}

function setView(name) {
  const view = state.views[name];
  if (!view) return;
  state.view = name;
  state.pixels = view.pixels;
  state.range = view.range;
  const image = $("image");
  image.width = view.width;
  image.height = view.height;
  const other = name === "pool" ? state.views.source : state.views.pool;
  const button = $("resolution");
  button.hidden = !state.views.source;
  if (other) button.textContent = `show ${name === "pool" ? "original" : "pool"} ${other.width}×${other.height} (O)`;
  $("shown").textContent = `${name === "pool" ? "pool image" : "original"} ${view.width}×${view.height}`;
  autoWindow();
}

async function loadImage(item) {
  state.loadedItem = item.item_id;
  state.views = { pool: null, source: null };
  state.pixels = null;
  const pool = await fetchView(`/api/items/${item.item_id}/pixels`);
  if (typeof pool === "string") {
    say(pool);
    return;
  }
  if (state.loadedItem !== item.item_id) return;
  state.views.pool = pool;
  layout();
  setView("pool");
  $("source-note").textContent = "";
  fetchView(`/api/items/${item.item_id}/source`).then((source) => {
    if (state.loadedItem !== item.item_id) return;
    if (typeof source === "string") {
      $("source-note").textContent = source;
      return;
    }
    state.views.source = source;
    setView("source"); // the original resolution where the dataset can be read back
  });
  const cam = $("cam");
  cam.hidden = true;
  $("cam-note").textContent = "";
  const tile = await api(`/api/items/${item.item_id}/cam.png`);
  if (state.loadedItem !== item.item_id) return;
  if (tile.ok) {
    if (cam.src) URL.revokeObjectURL(cam.src);
    cam.src = URL.createObjectURL(await tile.blob());
    applyCam();
  } else {
    $("cam-note").textContent = await errorText(tile);
  }
}

function layout() {
  const [height, width] = state.frame;
  const scale = DISPLAY / Math.max(height, width);
  const css = [Math.round(width * scale), Math.round(height * scale)];
  const stage = $("stage");
  stage.style.width = `${css[0]}px`;
  stage.style.height = `${css[1]}px`;
  for (const layer of [$("image"), $("cam"), $("draw")]) {
    layer.style.width = `${css[0]}px`;
    layer.style.height = `${css[1]}px`;
  }
  const draw = $("draw");
  draw.width = css[0];
  draw.height = css[1];
  paintImage();
  paintDrawing();
}

function paintImage() {
  if (!state.pixels) return;
  const view = state.views[state.view];
  const [height, width] = [view.height, view.width];
  const context = $("image").getContext("2d");
  const picture = context.createImageData(width, height);
  const low = state.level - state.window / 2;
  const span = state.window || 1e-12;
  for (let i = 0; i < state.pixels.length; i++) {
    const v = Math.max(0, Math.min(255, ((state.pixels[i] - low) / span) * 255));
    picture.data[4 * i] = picture.data[4 * i + 1] = picture.data[4 * i + 2] = v;
    picture.data[4 * i + 3] = 255;
  }
  context.putImageData(picture, 0, 0);
}

function autoWindow() {
  const [low, high] = state.range;
  state.window = high - low;
  state.level = (high + low) / 2;
  $("window").value = "500";
  $("level").value = "500";
  paintImage();
}

function windowFromSliders() {
  const [low, high] = state.range;
  const span = high - low;
  state.window = Math.max(span * 1e-4, (Number($("window").value) / 500) * span);
  state.level = low + (Number($("level").value) / 1000) * span;
  paintImage();
}

function applyCam() {
  const cam = $("cam");
  cam.hidden = !$("cam-toggle").checked || !cam.src;
  cam.style.opacity = String(Number($("cam-opacity").value) / 100);
}

function number(value, digits = 3) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function fill(list, pairs) {
  list.replaceChildren();
  for (const [name, value] of pairs) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value;
    list.append(term, detail);
  }
}

function renderItem() {
  const item = currentItem();
  const classes = state.batch ? state.batch.classes : [];
  if (!item) {
    $("current-title").textContent = "—";
    fill($("facts"), []);
    fill($("reason"), []);
    $("probabilities").tBodies[0].replaceChildren();
    $("answer-state").textContent = "";
    setAnswerable(false);
    return;
  }
  $("current-title").textContent = `#${item.item_id} · ${item.source_id}`;
  fill($("facts"), [["arm", `${item.strategy}, seed ${item.seed}`], ["round", String(item.round)],
                    ["rank", String(item.rank + 1)], ["model", item.model_version]]);
  fill($("reason"), item.initial
    ? [["picked", "at random (the initial labels, before any model)"]]
    : [["rank", `${item.rank + 1} of its round`], [`${item.strategy} score`, number(item.score)],
       ["uncertainty", number(item.uncertainty)], ["Dice", number(item.dice)],
       ["soft Dice", number(item.soft_dice)]]);
  const body = $("probabilities").tBodies[0];
  body.replaceChildren();
  (item.probabilities || []).forEach((p, label) => {
    const row = document.createElement("tr");
    if (label === item.predicted_class) row.className = "predicted";
    const name = document.createElement("td");
    name.textContent = classes[label];
    const value = document.createElement("td");
    value.textContent = number(p);
    const bar = document.createElement("td");
    bar.className = "bar";
    const fillBar = document.createElement("span");
    fillBar.style.width = `${Math.round(100 * (p || 0))}%`;
    bar.append(fillBar);
    row.append(name, value, bar);
    body.append(row);
  });
  const answer = item.answer;
  const stateLine = $("answer-state");
  if (answer) {
    const roi = answer.roi.kind === "boxes" ? `${answer.roi.boxes.length} box(es)`
      : answer.roi.kind === "mask" ? `a mask of ${answer.roi.pixels} pixels`
      : answer.roi.kind === "no finding" ? "no finding" : "no ROI drawn";
    stateLine.textContent = `answered: ${answer.label_name}, ${roi} (by ${answer.annotator})`;
    stateLine.className = "done";
  } else {
    stateLine.textContent = "pending: draw the ROI (or mark no finding), then press the class";
    stateLine.className = "";
  }
  setAnswerable(!answer);
  $("no-finding").setAttribute("aria-pressed", String(Boolean(state.drawing && state.drawing.noFinding)));
  paintDrawing();
}

function setAnswerable(open) {
  for (const button of document.querySelectorAll("#classes button, #no-finding, #undo")) button.disabled = !open;
}

// ------------------------------------------------------------------ drawing
function toImage(event) {
  const rect = $("draw").getBoundingClientRect();
  const [height, width] = state.frame;
  return [((event.clientX - rect.left) / rect.width) * width, ((event.clientY - rect.top) / rect.height) * height];
}

function wholePixels(x0, y0, x1, y1) {
  // a drag covers every pixel it touches, from the first to the last: integer pixel edges
  const [height, width] = state.frame;
  const clamp = (v, top) => Math.max(0, Math.min(top, v));
  return [clamp(Math.floor(Math.min(x0, x1)), width), clamp(Math.floor(Math.min(y0, y1)), height),
          clamp(Math.floor(Math.max(x0, x1)) + 1, width), clamp(Math.floor(Math.max(y0, y1)) + 1, height)];
}

function paintDrawing() {
  const canvas = $("draw");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const item = currentItem();
  if (!item || !state.frame[0]) return;
  const [height, width] = state.frame;
  const sx = canvas.width / width, sy = canvas.height / height;
  const drawing = state.drawing || { boxes: [] };
  const boxes = item.answer && item.answer.roi.kind === "boxes" ? item.answer.roi.boxes : drawing.boxes;
  if (drawing.mask && !item.answer) {
    context.fillStyle = "rgba(92, 207, 122, 0.45)";
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (drawing.mask[y * width + x]) context.fillRect(x * sx, y * sy, Math.ceil(sx), Math.ceil(sy));
      }
    }
  }
  context.lineWidth = 2;
  context.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--box") || "#ffd84d";
  for (const [x0, y0, x1, y1] of boxes) context.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  if (state.drag) {
    const [x0, y0, x1, y1] = wholePixels(state.drag.x0, state.drag.y0, state.drag.x1, state.drag.y1);
    context.setLineDash([4, 3]);
    context.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
    context.setLineDash([]);
  }
}

function brushAt(x, y) {
  const [height, width] = state.frame;
  const drawing = state.drawing;
  if (!drawing.mask) drawing.mask = new Uint8Array(width * height);
  const radius = Number($("brush-size").value) / 2;
  for (let row = Math.floor(y - radius); row <= Math.ceil(y + radius); row++) {
    for (let column = Math.floor(x - radius); column <= Math.ceil(x + radius); column++) {
      if (row < 0 || column < 0 || row >= height || column >= width) continue;
      const dx = column + 0.5 - x, dy = row + 0.5 - y;
      if (dx * dx + dy * dy <= radius * radius + 0.25) drawing.mask[row * width + column] = 1;
    }
  }
}

function startDrawing(event) {
  const item = currentItem();
  if (!item || item.answer || event.button !== 0) return;
  event.preventDefault();
  $("draw").setPointerCapture(event.pointerId);
  const [x, y] = toImage(event);
  const drawing = state.drawing;
  if (drawing.noFinding) {
    drawing.noFinding = false;
    $("no-finding").setAttribute("aria-pressed", "false");
  }
  if (state.tool === "brush") {
    drawing.undo.push({ kind: "mask", before: drawing.mask ? drawing.mask.slice() : null });
    brushAt(x, y);
    state.drag = { brush: true };
  } else {
    state.drag = { x0: x, y0: y, x1: x, y1: y };
  }
  paintDrawing();
}

function moveDrawing(event) {
  if (!state.drag) return;
  const [x, y] = toImage(event);
  if (state.drag.brush) brushAt(x, y);
  else Object.assign(state.drag, { x1: x, y1: y });
  paintDrawing();
}

function endDrawing() {
  const drag = state.drag;
  state.drag = null;
  if (drag && !drag.brush) {
    const box = wholePixels(drag.x0, drag.y0, drag.x1, drag.y1);
    if (box[2] > box[0] && box[3] > box[1]) {
      state.drawing.boxes.push(box);
      state.drawing.undo.push({ kind: "box" });
    }
  }
  paintDrawing();
}

function undo() {
  const drawing = state.drawing;
  if (!drawing || !drawing.undo.length) return;
  const step = drawing.undo.pop();
  if (step.kind === "box") drawing.boxes.pop();
  else if (step.kind === "mask") drawing.mask = step.before;
  else if (step.kind === "no-finding") drawing.noFinding = !drawing.noFinding;
  renderItem();
}

function toggleNoFinding() {
  const item = currentItem();
  if (!item || item.answer) return;
  const drawing = state.drawing;
  if (!drawing.noFinding && (drawing.boxes.length || drawing.mask)) {
    say("clear the drawn ROI (undo) before marking no finding");
    return;
  }
  drawing.noFinding = !drawing.noFinding;
  drawing.undo.push({ kind: "no-finding" });
  renderItem();
}

function packedMask() {
  // NumPy packbits order: row by row, the leftmost pixel in the highest bit, rows padded to bytes
  const [height, width] = state.frame;
  const rowBytes = Math.ceil(width / 8);
  const bytes = new Uint8Array(height * rowBytes);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (state.drawing.mask[y * width + x]) bytes[y * rowBytes + (x >> 3)] |= 0x80 >> (x & 7);
    }
  }
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

// ------------------------------------------------------------------ answering
async function submit(label) {
  const item = currentItem();
  if (!item || item.answer || state.busy) return;
  const drawing = state.drawing;
  const annotator = $("annotator").value.trim();
  localStorage.setItem("xal-annotator", annotator);
  const body = {
    label,
    boxes: drawing.boxes.length ? drawing.boxes : null,
    mask: drawing.mask && drawing.mask.some((v) => v) ? packedMask() : null,
    no_finding: drawing.noFinding,
    annotator: annotator || null,
  };
  state.busy = true;
  try {
    const response = await api(`/api/items/${item.item_id}/answer`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      say(await errorText(response));
      if (response.status === 409) await loadBatch();
      return;
    }
    say("");
    await loadBatch();
    nextOpen(1);
  } finally {
    state.busy = false;
  }
}

function nextOpen(step) {
  const items = state.batch.items;
  for (let k = 1; k <= items.length; k++) {
    const index = (state.index + step * k + items.length * k) % items.length;
    if (!items[index].answer) {
      show(index);
      return;
    }
  }
  renderItem();
}

// ------------------------------------------------------------------ wiring
function onKey(event) {
  if (event.target instanceof HTMLInputElement && event.target.type !== "range" && event.target.type !== "checkbox") return;
  if (!state.batch) return;
  const key = event.key;
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") { undo(); event.preventDefault(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (/^[1-9]$/.test(key) && Number(key) <= state.batch.classes.length) { submit(Number(key) - 1); }
  else if (key === "n" || key === "N") toggleNoFinding();
  else if (key === "u" || key === "U") undo();
  else if (key === "s" || key === "S") nextOpen(1);
  else if (key === "ArrowRight") show(state.index + 1);
  else if (key === "ArrowLeft") show(state.index - 1);
  else if (key === "c" || key === "C") { $("cam-toggle").checked = !$("cam-toggle").checked; applyCam(); }
  else if (key === "a" || key === "A") autoWindow();
  else if ((key === "o" || key === "O") && state.views.source) setView(state.view === "pool" ? "source" : "pool");
  else if ((key === "b" || key === "B") && state.batch.roi_format === "mask") toggleTool();
  else return;
  event.preventDefault();
}

function toggleTool() {
  state.tool = state.tool === "box" ? "brush" : "box";
  $("tool").textContent = `tool: ${state.tool} (B)`;
  $("brush-size-label").hidden = state.tool !== "brush";
}

function wire() {
  const draw = $("draw");
  draw.addEventListener("pointerdown", startDrawing);
  draw.addEventListener("pointermove", moveDrawing);
  draw.addEventListener("pointerup", endDrawing);
  draw.addEventListener("pointercancel", endDrawing);
  document.addEventListener("keydown", onKey);
  $("no-finding").addEventListener("click", toggleNoFinding);
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", () => nextOpen(1));
  $("next").addEventListener("click", () => show(state.index + 1));
  $("previous").addEventListener("click", () => show(state.index - 1));
  $("tool").addEventListener("click", toggleTool);
  $("auto-window").addEventListener("click", autoWindow);
  $("resolution").addEventListener("click", () => setView(state.view === "pool" ? "source" : "pool"));
  $("window").addEventListener("input", windowFromSliders);
  $("level").addEventListener("input", windowFromSliders);
  $("cam-toggle").addEventListener("change", applyCam);
  $("cam-opacity").addEventListener("input", applyCam);
  $("annotator").addEventListener("change", () => localStorage.setItem("xal-annotator", $("annotator").value.trim()));
}

wire();
loadBatch().catch((error) => say(String(error)));
setInterval(() => { if (!state.busy && !state.drag) loadBatch().catch(() => {}); }, 3000);
