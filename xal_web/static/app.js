// xal annotate: the page. Plain JS, no build step. Every text that comes from data is set with
// textContent (never innerHTML), and the server's Content-Security-Policy forbids inline scripts.
//
// Coordinates: "image" pixels are those of the view shown (the source file's, or the pool's);
// the ROI is recorded in the pool's frame (frame = [H, W]), the same field of view, as floats:
// boxes snap to the shown image's pixel edges, brush strokes are polylines with a radius, both
// drawn at the shown resolution and turned into the frame's mask by the pixel-centre rule only
// when the answer is sent. The screen shows image pixel (u, v) at zoom.x + u * zoom.scale (CSS px).
"use strict";

const $ = (id) => document.getElementById(id);
const CACHE_ITEMS = 6;        // items whose pixels the page keeps (the current one, neighbours, the preloaded next)
const REQUEST_SECONDS = 30;   // an answer or the batch not back by then: the server is taken as unreachable
const IMAGE_SECONDS = 120;
const CT_PRESETS = [["lung", 1500, -600], ["mediastinum", 350, 50], ["bone", 1800, 400]];

const state = {
  batch: null,          // GET /api/batch
  index: -1,            // position of the current item in batch.items
  loadedItem: null,     // the item whose image is shown
  cache: new Map(),     // item_id -> {pool: Promise, source: Promise, cam: Promise}, oldest first
  views: { pool: null, source: null }, // {pixels: Float32Array, width, height, range, info}
  view: "pool",
  pixels: null,         // the shown view's pixels (Float32Array, row major)
  frame: [0, 0],        // [H, W] of the ROI frame (the pool's)
  wl: { width: 1, level: 0.5 }, invert: false,
  zoom: { scale: 1, x: 0, y: 0, fitted: true },
  drawing: null,        // {boxes, strokes, base, noFinding, undo}
  recorded: null,       // {item, bits: Uint8Array [H*W]} the recorded mask of the shown answer
  drag: null,           // the pointer gesture in progress
  spaceHeld: false,
  tool: "box",          // "box" | "brush"
  revising: false,      // the shown answered item is being corrected
  camShown: false,
  busy: false,
  offlineSince: null,
};

// ------------------------------------------------------------------ talking to the server
class Unreachable extends Error {}

async function api(path, options = {}, seconds = REQUEST_SECONDS) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), seconds * 1000);
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", signal: abort.signal, ...options });
  } catch (error) {
    const why = error.name === "AbortError" ? `no answer within ${seconds} s` : "no connection";
    markOffline(why);
    throw new Unreachable(`the server did not answer (${why})`);
  } finally {
    clearTimeout(timer);
  }
  markOnline();
  if (response.status === 401) {
    location.href = "/login";
    throw new Error("signed out");
  }
  return response;
}

function markOffline(why) {
  if (state.offlineSince === null) state.offlineSince = new Date();
  const box = $("connection");
  box.textContent = `server unreachable since ${state.offlineSince.toLocaleTimeString()} (${why}): retrying`;
  box.hidden = false;
}

function markOnline() {
  if (state.offlineSince === null) return;
  state.offlineSince = null;
  $("connection").hidden = true;
  if ($("message").dataset.kind === "connection") say("");
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || `${response.status} ${response.statusText}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.dataset.kind = kind;
  box.hidden = !text;
}

// ------------------------------------------------------------------ the batch
async function loadBatch() {
  const response = await api("/api/batch");
  if (!response.ok) {
    say(`the batch could not be read: ${await errorText(response)}`);
    return;
  }
  const batch = await response.json();
  const before = state.batch;
  const currentId = currentItem() ? currentItem().item_id : null;
  state.batch = batch;
  if (!$("annotator").value) $("annotator").value = localStorage.getItem("xal-annotator") || batch.annotator;
  $("sign-out").hidden = !batch.signed_in;
  state.frame = batch.frame;
  buildClassButtons(batch);
  $("tool").hidden = batch.roi_format !== "mask";
  $("cam-bar").style.background = `linear-gradient(to right, ${batch.cam_legend.join(", ")})`;
  renderProgress();
  showFinished(batch);
  const ids = (b) => b.items.map((i) => i.item_id).join();
  if (!before || ids(before) !== ids(batch)) {
    const keep = batch.items.findIndex((i) => i.item_id === currentId);
    const firstOpen = batch.items.findIndex((i) => !i.answer);
    renderList();
    await show(keep >= 0 ? keep : Math.max(firstOpen, 0));
    return;
  }
  renderList();
  const was = before.items[state.index], now = currentItem();
  if (now && JSON.stringify(was && was.answer) !== JSON.stringify(now.answer) && !state.revising) {
    renderItem(); // answered or revised elsewhere (another tab) since we looked
    loadRecorded(now);
  }
  if (now && state.loadedItem === null) loadImage(now); // its image failed to load before: try again
}

function currentItem() {
  return state.batch && state.index >= 0 ? state.batch.items[state.index] || null : null;
}

function showFinished(batch) {
  const finished = !batch.items.length;
  $("done").hidden = !finished;
  $("reading").hidden = finished;
  $("panel").hidden = finished;
  if (finished) {
    const info = batch.finished || { title: "Nothing to label", message: "" };
    $("done-title").textContent = info.title;
    $("done-message").textContent = info.message;
    $("current-title").textContent = info.title;
    document.title = `xal annotate — ${info.title}`;
  } else {
    document.title = "xal annotate";
  }
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
  $("progress").textContent = batch.total ? `${batch.done} of ${batch.total} done`
    : (batch.finished ? batch.finished.title : "nothing to label");
}

function renderList() {
  // rows are made again only when the batch's items change; otherwise updated in place
  const list = $("item-list");
  const items = state.batch.items;
  const ids = items.map((i) => i.item_id).join();
  if (list.dataset.ids !== ids) {
    list.replaceChildren();
    items.forEach((item, index) => {
      const row = document.createElement("li");
      row.dataset.item = String(item.item_id);
      const name = document.createElement("span");
      name.textContent = `#${item.item_id} ${item.source_id}`;
      const badge = document.createElement("span");
      badge.className = "state";
      row.append(name, badge);
      row.addEventListener("click", () => show(index));
      list.append(row);
    });
    list.dataset.ids = ids;
  }
  items.forEach((item, index) => {
    const row = list.children[index];
    const className = (item.answer ? "done" : "pending") + (index === state.index ? " current" : "");
    if (row.className !== className) row.className = className;
    const badge = item.answer ? item.answer.label_name + (item.answer.revision ? " (revised)" : "") : `r${item.round}`;
    if (row.lastChild.textContent !== badge) row.lastChild.textContent = badge;
  });
}

// ------------------------------------------------------------------ images: fetched, cached, preloaded
async function fetchView(path) {
  const response = await api(path, {}, IMAGE_SECONDS);
  if (!response.ok) return await errorText(response);
  const height = Number(response.headers.get("X-Height"));
  const width = Number(response.headers.get("X-Width"));
  const offset = Number(response.headers.get("X-Offset"));
  const scale = Number(response.headers.get("X-Scale"));
  let info = {};
  try { info = JSON.parse(response.headers.get("X-Image-Info") || "{}"); } catch (_) { info = {}; }
  const codes = new Uint16Array(await response.arrayBuffer());
  const pixels = new Float32Array(codes.length);
  let low = Infinity, high = -Infinity;
  for (let i = 0; i < codes.length; i++) {
    const v = offset + scale * codes[i];
    pixels[i] = v;
    if (v < low) low = v;
    if (v > high) high = v;
  }
  return { pixels, height, width, info, range: [low, high > low ? high : low + 1] };
}

function cached(item) {
  const id = item.item_id;
  if (state.cache.has(id)) {
    const entry = state.cache.get(id);
    state.cache.delete(id);
    state.cache.set(id, entry); // most recent last
    return entry;
  }
  const keep = (promise) => promise.catch((error) => { state.cache.delete(id); throw error; });
  const entry = {
    pool: keep(fetchView(`/api/items/${id}/pixels`)),
    source: keep(fetchView(`/api/items/${id}/source`)),
    cam: null, // fetched when first shown (camTile): it is off by default
  };
  state.cache.set(id, entry);
  while (state.cache.size > CACHE_ITEMS) state.cache.delete(state.cache.keys().next().value);
  return entry;
}

function camTile(item) {
  const entry = cached(item);
  if (!entry.cam) {
    entry.cam = item.initial
      ? Promise.resolve("picked at random before any model was trained (round 0): no Grad-CAM")
      : api(`/api/items/${item.item_id}/cam.png`, {}, IMAGE_SECONDS)
        .then(async (r) => (r.ok ? r.blob() : errorText(r)))
        .catch((error) => { entry.cam = null; return `the Grad-CAM could not be loaded: ${error.message}`; });
  }
  return entry.cam;
}

function loadCam(item) {
  const cam = $("cam");
  if (cam.dataset.item === String(item.item_id)) return;
  camTile(item).then((tile) => {
    if (state.loadedItem !== item.item_id) return;
    if (typeof tile === "string") {
      $("cam-note").textContent = tile;
      return;
    }
    $("cam-note").textContent = "";
    if (cam.src) URL.revokeObjectURL(cam.src);
    cam.dataset.item = String(item.item_id);
    cam.onload = () => render();
    cam.src = URL.createObjectURL(tile);
  });
}

function preloadNext() {
  const items = state.batch ? state.batch.items : [];
  for (let k = 1; k <= items.length; k++) {
    const next = items[(state.index + k) % items.length];
    if (next && !next.answer && next.item_id !== state.loadedItem) {
      cached(next).pool.catch(() => {});
      return;
    }
  }
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
  state.revising = false;
  state.drawing = freshDrawing();
  renderList();
  renderItem();
  loadRecorded(item);
  if (state.loadedItem !== item.item_id) await loadImage(item);
}

function freshDrawing() {
  return { boxes: [], strokes: [], base: null, noFinding: false, undo: [] };
}

async function loadImage(item) {
  state.loadedItem = item.item_id;
  state.views = { pool: null, source: null };
  state.pixels = null;
  const cam = $("cam");
  if (cam.src) URL.revokeObjectURL(cam.src);
  cam.removeAttribute("src");
  delete cam.dataset.item;
  $("cam-note").textContent = "";
  $("source-note").textContent = "";
  render();
  const entry = cached(item);
  let pool;
  try {
    pool = await entry.pool;
  } catch (error) {
    if (state.loadedItem === item.item_id) say(`the image could not be loaded: ${error.message}`);
    state.loadedItem = null;
    return;
  }
  if (state.loadedItem !== item.item_id) return;
  if (typeof pool === "string") {
    say(pool);
    return;
  }
  state.views.pool = pool;
  setView("pool", true);
  preloadNext();
  entry.source.then((source) => {
    if (state.loadedItem !== item.item_id) return;
    if (typeof source === "string") {
      $("source-note").textContent = source;
      return;
    }
    state.views.source = source;
    setView("source", true); // the original resolution where the dataset can be read back
  }).catch(() => {});
  if (state.camShown) loadCam(item);
}

function setView(name, fresh = false) {
  const view = state.views[name];
  if (!view) return;
  const before = state.views[state.view];
  const centre = before && !fresh ? screenToImage(stageSize()[0] / 2, stageSize()[1] / 2) : null;
  state.view = name;
  state.pixels = view.pixels;
  const image = $("image");
  image.width = view.width;
  image.height = view.height;
  const other = name === "pool" ? state.views.source : state.views.pool;
  const button = $("resolution");
  button.hidden = !state.views.source;
  if (other) button.textContent = `show ${name === "pool" ? "original" : "pool"} ${other.width}×${other.height} (O)`;
  $("shown").textContent = `${name === "pool" ? "pool image" : "original"} ${view.width}×${view.height}`;
  $("units").textContent = view.info.units ? `values: ${view.info.units}` : "";
  buildPresets(view);
  state.invert = Boolean(view.info.invert);
  $("invert").checked = state.invert;
  const windows = view.info.windows || [];
  if (windows.length) setWindow(windows[0].width, windows[0].center); else autoWindow();
  if (centre && before && state.zoom.fitted === false) {
    // keep the same spot of the body in the middle, at the same physical magnification
    const ratio = view.width / before.width;
    state.zoom.scale /= ratio;
    const [w, h] = stageSize();
    state.zoom.x = w / 2 - centre[0] * ratio * state.zoom.scale;
    state.zoom.y = h / 2 - centre[1] * (view.height / before.height) * state.zoom.scale;
    render();
  } else {
    fit();
  }
}

// ------------------------------------------------------------------ window / level
function buildPresets(view) {
  const select = $("preset");
  select.replaceChildren();
  const add = (label, width, level, enabled = true, title = "") => {
    const option = document.createElement("option");
    option.textContent = label;
    option.value = width === null ? "auto" : `${width}/${level}`;
    option.disabled = !enabled;
    if (title) option.title = title;
    select.append(option);
  };
  add("auto (min–max)", null, null);
  for (const w of view.info.windows || []) add(`DICOM: ${w.name} (W ${w.width} L ${w.center})`, w.width, w.center);
  const hounsfield = view.info.units === "HU";
  for (const [name, width, level] of CT_PRESETS) {
    add(`${name} (W ${width} L ${level})`, width, level, hounsfield,
      hounsfield ? "" : "body-part presets are for CT in Hounsfield units; this image's values are not HU");
  }
}

function setWindow(width, level) {
  state.wl.width = Math.max(Math.abs(Number(width)) || 1e-6, 1e-9);
  state.wl.level = Number(level) || 0;
  $("window-width").value = round(state.wl.width);
  $("window-level").value = round(state.wl.level);
  const match = `${state.wl.width}/${state.wl.level}`;
  const select = $("preset");
  select.value = [...select.options].some((o) => o.value === match) ? match : "auto";
  schedulePaint();
}

function round(value) {
  return Number(Number(value).toPrecision(5));
}

function autoWindow() {
  const view = state.views[state.view];
  if (!view) return;
  const [low, high] = view.range;
  setWindow(high - low, (high + low) / 2);
  $("preset").value = "auto";
}

let paintPending = false;
function schedulePaint() {
  if (paintPending) return;
  paintPending = true;
  requestAnimationFrame(() => {
    paintPending = false;
    paintImage();
    render();
  });
}

function paintImage() {
  if (!state.pixels) return;
  const view = state.views[state.view];
  const context = $("image").getContext("2d");
  const picture = context.createImageData(view.width, view.height);
  const low = state.wl.level - state.wl.width / 2;
  const gain = 255 / state.wl.width;
  const data = picture.data, pixels = state.pixels, invert = state.invert;
  for (let i = 0; i < pixels.length; i++) {
    let v = (pixels[i] - low) * gain;
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    if (invert) v = 255 - v;
    data[4 * i] = data[4 * i + 1] = data[4 * i + 2] = v;
    data[4 * i + 3] = 255;
  }
  context.putImageData(picture, 0, 0);
}

// ------------------------------------------------------------------ zoom, pan and the screen
function stageSize() {
  const canvas = $("view");
  return [canvas.clientWidth || 1, canvas.clientHeight || 1];
}

function fit() {
  const view = state.views[state.view];
  if (!view) return;
  const [w, h] = stageSize();
  const scale = Math.min(w / view.width, h / view.height);
  state.zoom = { scale, x: (w - view.width * scale) / 2, y: (h - view.height * scale) / 2, fitted: true };
  render();
}

function oneToOne() {
  const view = state.views[state.view];
  if (!view) return;
  const [w, h] = stageSize();
  zoomAbout(w / 2, h / 2, 1 / (window.devicePixelRatio || 1));
}

function zoomAbout(sx, sy, scale) {
  const view = state.views[state.view];
  if (!view) return;
  const [w, h] = stageSize();
  const fitScale = Math.min(w / view.width, h / view.height);
  scale = Math.min(Math.max(scale, Math.min(fitScale / 4, 0.5 / (window.devicePixelRatio || 1))), 64);
  const [u, v] = screenToImage(sx, sy);
  state.zoom = { scale, x: sx - u * scale, y: sy - v * scale, fitted: false };
  render();
}

function screenToImage(sx, sy) {
  return [(sx - state.zoom.x) / state.zoom.scale, (sy - state.zoom.y) / state.zoom.scale];
}

function eventToScreen(event) {
  const rect = $("view").getBoundingClientRect();
  return [event.clientX - rect.left, event.clientY - rect.top];
}

function render() {
  const canvas = $("view");
  const ratio = window.devicePixelRatio || 1;
  const [w, h] = stageSize();
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(1, 0, 0, 1, 0, 0);
  context.clearRect(0, 0, canvas.width, canvas.height);
  const view = state.views[state.view];
  $("zoom-level").textContent = view ? `zoom ${Math.round(state.zoom.scale * ratio * 100)} %` : "";
  if (!view || !state.pixels) return;
  const z = state.zoom;
  context.setTransform(ratio * z.scale, 0, 0, ratio * z.scale, ratio * z.x, ratio * z.y);
  context.imageSmoothingEnabled = z.scale * ratio < 1; // magnified: the pixels as they are
  context.drawImage($("image"), 0, 0);
  const cam = $("cam");
  if (state.camShown && cam.getAttribute("src") && cam.complete && cam.naturalWidth) {
    context.imageSmoothingEnabled = true;
    context.globalAlpha = Number($("cam-opacity").value) / 100;
    context.drawImage(cam, 0, 0, view.width, view.height);
    context.globalAlpha = 1;
  }
  paintRoi(context, view, ratio * z.scale);
}

// ------------------------------------------------------------------ the ROI on screen
function frameToImage(view) {
  const [height, width] = state.frame;
  return [view.width / width, view.height / height];
}

let maskCanvas = null;
function maskLayer(bits) {
  const [height, width] = state.frame;
  if (!maskCanvas) maskCanvas = document.createElement("canvas");
  maskCanvas.width = width;
  maskCanvas.height = height;
  const context = maskCanvas.getContext("2d");
  const picture = context.createImageData(width, height);
  for (let i = 0; i < bits.length; i++) {
    if (!bits[i]) continue;
    picture.data[4 * i] = 92; picture.data[4 * i + 1] = 207; picture.data[4 * i + 2] = 122; picture.data[4 * i + 3] = 120;
  }
  context.putImageData(picture, 0, 0);
  return maskCanvas;
}

function paintRoi(context, view, devicePerImage) {
  const item = currentItem();
  if (!item || !state.frame[0]) return;
  const [fx, fy] = frameToImage(view);
  const line = 2 / devicePerImage; // 2 device pixels whatever the zoom
  const editing = !item.answer || state.revising;
  const drawing = state.drawing || freshDrawing();
  const recordedBits = state.recorded && state.recorded.item === item.item_id ? state.recorded.bits : null;
  const bits = editing ? drawing.base : recordedBits;
  if (bits) {
    context.imageSmoothingEnabled = false;
    context.drawImage(maskLayer(bits), 0, 0, view.width, view.height);
  }
  if (editing) {
    context.strokeStyle = "rgba(92, 207, 122, 0.55)";
    context.fillStyle = "rgba(92, 207, 122, 0.55)";
    context.lineCap = "round";
    context.lineJoin = "round";
    for (const stroke of drawing.strokes) {
      context.lineWidth = 2 * stroke.rx * fx;
      context.beginPath();
      stroke.points.forEach(([x, y], k) => (k ? context.lineTo(x * fx, y * fy) : context.moveTo(x * fx, y * fy)));
      if (stroke.points.length === 1) context.lineTo(stroke.points[0][0] * fx + 1e-3, stroke.points[0][1] * fy);
      context.stroke();
    }
  }
  context.lineWidth = line;
  context.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--box").trim() || "#ffd84d";
  const boxes = editing ? drawing.boxes : item.answer && item.answer.roi.kind === "boxes" ? item.answer.roi.boxes : [];
  for (const [x0, y0, x1, y1] of boxes) context.strokeRect(x0 * fx, y0 * fy, (x1 - x0) * fx, (y1 - y0) * fy);
  if (state.drag && state.drag.kind === "box" && state.drag.moved) {
    const [x0, y0, x1, y1] = dragBox(state.drag, view);
    context.setLineDash([4 * line, 3 * line]);
    context.strokeRect(x0 * fx, y0 * fy, (x1 - x0) * fx, (y1 - y0) * fy);
    context.setLineDash([]);
  }
}

function dragBox(drag, view) {
  // every shown-image pixel the drag touches, from the first to the last, as frame coordinates
  const clamp = (v, top) => Math.max(0, Math.min(top, v));
  const u0 = clamp(Math.floor(Math.min(drag.u0, drag.u1)), view.width);
  const v0 = clamp(Math.floor(Math.min(drag.v0, drag.v1)), view.height);
  const u1 = clamp(Math.floor(Math.max(drag.u0, drag.u1)) + 1, view.width);
  const v1 = clamp(Math.floor(Math.max(drag.v0, drag.v1)) + 1, view.height);
  const [fx, fy] = frameToImage(view);
  return [u0 / fx, v0 / fy, u1 / fx, v1 / fy];
}

// ------------------------------------------------------------------ pointer gestures
function startGesture(event) {
  const view = state.views[state.view];
  if (!view) return;
  event.preventDefault();
  $("view").focus({ preventScroll: true });
  const [sx, sy] = eventToScreen(event);
  $("view").setPointerCapture(event.pointerId);
  if (event.button === 1 || (event.button === 0 && state.spaceHeld)) {
    state.drag = { kind: "pan", sx, sy, x: state.zoom.x, y: state.zoom.y };
    $("view").classList.add("panning");
    return;
  }
  if (event.button === 2 || (event.button === 0 && event.ctrlKey)) {
    state.drag = { kind: "wl", sx, sy, width: state.wl.width, level: state.wl.level };
    $("view").classList.add("windowing");
    return;
  }
  const item = currentItem();
  if (event.button !== 0 || !item || (item.answer && !state.revising)) return;
  const [u, v] = screenToImage(sx, sy);
  const drawing = state.drawing;
  if (drawing.noFinding) {
    drawing.noFinding = false;
    $("no-finding").setAttribute("aria-pressed", "false");
  }
  if (state.tool === "brush") {
    const [fx, fy] = frameToImage(view);
    const radius = Number($("brush-size").value) / 2 / state.zoom.scale; // screen px -> image px
    const stroke = { points: [[u / fx, v / fy]], rx: radius / fx, ry: radius / fy };
    drawing.strokes.push(stroke);
    drawing.undo.push({ kind: "stroke" });
    state.drag = { kind: "brush", stroke };
  } else {
    state.drag = { kind: "box", u0: u, v0: v, u1: u, v1: v, sx, sy, moved: false };
  }
  render();
}

function moveGesture(event) {
  const drag = state.drag;
  if (!drag) return;
  const [sx, sy] = eventToScreen(event);
  const view = state.views[state.view];
  if (drag.kind === "pan") {
    state.zoom = { ...state.zoom, x: drag.x + sx - drag.sx, y: drag.y + sy - drag.sy, fitted: false };
    render();
  } else if (drag.kind === "wl") {
    const width = drag.width * Math.exp((sx - drag.sx) / 200); // right: wider window (less contrast)
    const level = drag.level + ((sy - drag.sy) / 300) * drag.width; // down: a higher level (darker)
    setWindow(width, level);
  } else if (drag.kind === "brush") {
    const [u, v] = screenToImage(sx, sy);
    const [fx, fy] = frameToImage(view);
    drag.stroke.points.push([u / fx, v / fy]); // a stroke is the polyline through every event: no gaps
    render();
  } else {
    [drag.u1, drag.v1] = screenToImage(sx, sy);
    drag.moved = drag.moved || Math.abs(sx - drag.sx) + Math.abs(sy - drag.sy) >= 3;
    render();
  }
}

function endGesture() {
  const drag = state.drag;
  state.drag = null;
  $("view").classList.remove("panning", "windowing");
  if (drag && drag.kind === "box" && drag.moved) {
    const box = dragBox(drag, state.views[state.view]);
    if (box[2] > box[0] && box[3] > box[1]) {
      state.drawing.boxes.push(box);
      state.drawing.undo.push({ kind: "box" });
    }
  }
  render();
}

function onWheel(event) {
  if (!state.views[state.view]) return;
  event.preventDefault();
  const [sx, sy] = eventToScreen(event);
  const steps = event.deltaMode === 1 ? event.deltaY * 16 : event.deltaY;
  zoomAbout(sx, sy, state.zoom.scale * Math.exp(-steps * 0.002));
}

// ------------------------------------------------------------------ the side panel
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
    fill($("facts"), []);
    fill($("reason"), []);
    $("reason-summary").textContent = "";
    $("reason-details").replaceChildren();
    $("probabilities").tBodies[0].replaceChildren();
    $("answer-state").textContent = "";
    setAnswerable(false);
    render();
    return;
  }
  $("current-title").textContent = `#${item.item_id} · ${item.source_id}`;
  camCaption(item);
  fill($("facts"), [["arm", `${item.strategy}, seed ${item.seed}`], ["round", String(item.round)],
                    ["rank", String(item.rank + 1)], ["model", item.model_version]]);
  $("reason-summary").textContent = item.reason.summary;
  const details = $("reason-details");
  details.replaceChildren();
  for (const sentence of item.reason.details) {
    const entry = document.createElement("li");
    entry.textContent = sentence;
    details.append(entry);
  }
  fill($("reason"), item.initial ? [["picked", "at random (round 0)"]]
    : [["rank", `${item.rank + 1} of its round`], [`${item.strategy} score`, number(item.score)],
       ["uncertainty", number(item.uncertainty)], ["Dice", number(item.dice)], ["soft Dice", number(item.soft_dice)]]);
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
  if (answer && state.revising) {
    stateLine.textContent = `revising: change the ROI if needed, then press the class (was ${answer.label_name})`;
    stateLine.className = "revising";
  } else if (answer) {
    const roi = answer.roi.kind === "boxes" ? `${answer.roi.boxes.length} box(es)`
      : answer.roi.kind === "mask" ? `a mask of ${answer.roi.pixels} pixels`
      : answer.roi.kind === "no finding" ? "no finding" : "no ROI drawn";
    const revised = answer.revision ? `, revision ${answer.revision}` : "";
    stateLine.textContent = `answered: ${answer.label_name}, ${roi} (by ${answer.annotator}${revised})`;
    stateLine.className = "done";
  } else {
    stateLine.textContent = "pending: draw the ROI (or mark no finding), then press the class";
    stateLine.className = "";
  }
  $("revise").hidden = !answer || !answer.revisable || state.revising;
  setAnswerable(!answer || state.revising);
  $("no-finding").setAttribute("aria-pressed", String(Boolean(state.drawing && state.drawing.noFinding)));
  render();
}

function setAnswerable(open) {
  for (const button of document.querySelectorAll("#classes button, #no-finding, #undo")) button.disabled = !open;
}

async function loadRecorded(item) {
  // a recorded mask is drawn again when the item is shown (the batch carries only its size)
  if (!item || !item.answer || item.answer.roi.kind !== "mask") return null;
  if (state.recorded && state.recorded.item === item.item_id && state.recorded.revision === item.answer.revision) {
    return state.recorded;
  }
  let response;
  try {
    response = await api(`/api/items/${item.item_id}/answer`);
  } catch (error) {
    say(`the recorded mask could not be read: ${error.message}`);
    return null;
  }
  if (!response.ok) return null;
  const answer = await response.json();
  const [height, width] = state.frame;
  const packed = Uint8Array.from(atob(answer.roi.packed), (c) => c.charCodeAt(0));
  const rowBytes = Math.ceil(width / 8);
  const bits = new Uint8Array(height * width);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) bits[y * width + x] = (packed[y * rowBytes + (x >> 3)] >> (7 - (x & 7))) & 1;
  }
  state.recorded = { item: item.item_id, revision: item.answer.revision, bits };
  render();
  return state.recorded;
}

// ------------------------------------------------------------------ editing the ROI
function undo() {
  const drawing = state.drawing;
  if (!drawing || !drawing.undo.length) return;
  const step = drawing.undo.pop();
  if (step.kind === "box") drawing.boxes.pop();
  else if (step.kind === "stroke") drawing.strokes.pop();
  else if (step.kind === "no-finding") drawing.noFinding = !drawing.noFinding;
  else if (step.kind === "clear") Object.assign(drawing, step.before);
  renderItem();
}

function toggleNoFinding() {
  const item = currentItem();
  if (!item || (item.answer && !state.revising)) return;
  const drawing = state.drawing;
  if (!drawing.noFinding && (drawing.boxes.length || drawing.strokes.length || drawing.base)) {
    say("clear the drawn ROI (undo) before marking no finding");
    return;
  }
  drawing.noFinding = !drawing.noFinding;
  drawing.undo.push({ kind: "no-finding" });
  renderItem();
}

async function startRevision() {
  const item = currentItem();
  if (!item || !item.answer || !item.answer.revisable || state.revising) return;
  const drawing = freshDrawing();
  const roi = item.answer.roi;
  if (roi.kind === "boxes") drawing.boxes = roi.boxes.map((b) => b.slice());
  if (roi.kind === "no finding") drawing.noFinding = true;
  if (roi.kind === "mask") {
    const recorded = await loadRecorded(item);
    if (!recorded) return;
    drawing.base = recorded.bits.slice();
    drawing.undo.push({ kind: "clear", before: { base: null } }); // undo once: start the mask afresh
  }
  state.drawing = drawing;
  state.revising = true;
  renderItem();
}

function frameMask() {
  // the frame's mask: recorded base, brush strokes and (for mask pools) nothing else; pixel-centre rule
  const [height, width] = state.frame;
  const drawing = state.drawing;
  const bits = drawing.base ? drawing.base.slice() : new Uint8Array(height * width);
  for (const stroke of drawing.strokes) {
    const points = stroke.points.length === 1 ? [stroke.points[0], stroke.points[0]] : stroke.points;
    for (let k = 1; k < points.length; k++) paintSegment(bits, points[k - 1], points[k], stroke.rx, stroke.ry);
  }
  return bits;
}

function paintSegment(bits, [ax, ay], [bx, by], rx, ry) {
  // pixels whose centre lies within the capsule around a-b (in units of the brush radius)
  const [height, width] = state.frame;
  const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - rx)), x1 = Math.min(width - 1, Math.ceil(Math.max(ax, bx) + rx));
  const y0 = Math.max(0, Math.floor(Math.min(ay, by) - ry)), y1 = Math.min(height - 1, Math.ceil(Math.max(ay, by) + ry));
  const dx = (bx - ax) / rx, dy = (by - ay) / ry;
  const length2 = dx * dx + dy * dy;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const px = (x + 0.5 - ax) / rx, py = (y + 0.5 - ay) / ry;
      const t = length2 ? Math.max(0, Math.min(1, (px * dx + py * dy) / length2)) : 0;
      const ex = px - t * dx, ey = py - t * dy;
      if (ex * ex + ey * ey <= 1) bits[y * width + x] = 1;
    }
  }
}

function packed(bits) {
  // NumPy packbits order: row by row, the leftmost pixel in the highest bit, rows padded to bytes
  const [height, width] = state.frame;
  const rowBytes = Math.ceil(width / 8);
  const bytes = new Uint8Array(height * rowBytes);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (bits[y * width + x]) bytes[y * rowBytes + (x >> 3)] |= 0x80 >> (x & 7);
    }
  }
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

// ------------------------------------------------------------------ answering
async function submit(label) {
  const item = currentItem();
  if (!item || state.busy || (item.answer && !state.revising)) return;
  const drawing = state.drawing;
  const annotator = $("annotator").value.trim();
  localStorage.setItem("xal-annotator", annotator);
  const bits = drawing.strokes.length || drawing.base ? frameMask() : null;
  const body = {
    label_index: label,
    boxes: drawing.boxes.length ? drawing.boxes : null,
    mask: bits && bits.some((v) => v) ? packed(bits) : null,
    no_finding: drawing.noFinding,
    annotator: annotator || null,
  };
  if (state.revising) body.revises = item.answer.revision;
  state.busy = true;
  const what = state.revising ? "correction" : "answer";
  try {
    let response;
    try {
      response = await api(`/api/items/${item.item_id}/answer`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    } catch (error) {
      say(`The ${what} was NOT recorded: ${error.message}. Your drawing is kept on this page; press the class ` +
          "again when the server is back.");
      return;
    }
    if (!response.ok) {
      say(`The ${what} was NOT recorded: ${await errorText(response)}`);
      if (response.status === 409) await loadBatch().catch(() => {});
      return;
    }
    say("");
    state.revising = false;
    await loadBatch().catch((error) => say(`recorded, but the batch could not be read again: ${error.message}`));
    if (state.batch && state.batch.items.length) nextOpen(1);
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

function applyCam() {
  state.camShown = $("cam-toggle").checked;
  $("cam-legend").hidden = !state.camShown;
  const item = currentItem();
  if (state.camShown && item && state.loadedItem === item.item_id) loadCam(item);
  camCaption(item);
  render();
}

function camCaption(item) {
  $("cam-caption").textContent = item && !item.initial && item.predicted_class !== null && state.batch
    ? `where the round-${item.round - 1} model looked for ${state.batch.classes[item.predicted_class]}` : "";
}

function toggleTool() {
  state.tool = state.tool === "box" ? "brush" : "box";
  $("tool").textContent = `tool: ${state.tool} (B)`;
  $("brush-size-label").hidden = state.tool !== "brush";
}

// ------------------------------------------------------------------ wiring
function onKey(event) {
  const target = event.target;
  const typing = (target instanceof HTMLInputElement && !["range", "checkbox", "button"].includes(target.type))
    || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
  if (typing || !state.batch) return;
  const control = target instanceof HTMLInputElement; // a slider or a check box has the focus
  const key = event.key;
  if (key === " ") {
    state.spaceHeld = true;
    event.preventDefault();
    return;
  }
  if (event.repeat) { // a held key acts once: holding 2 must not label the whole batch
    event.preventDefault();
    return;
  }
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") { undo(); event.preventDefault(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (key.startsWith("Arrow") && control) return; // the slider's own arrows
  if (/^[1-9]$/.test(key) && Number(key) <= state.batch.classes.length) submit(Number(key) - 1);
  else if (key === "n" || key === "N") toggleNoFinding();
  else if (key === "u" || key === "U") undo();
  else if (key === "s" || key === "S") nextOpen(1);
  else if (key === "e" || key === "E") startRevision();
  else if (key === "ArrowRight") show(state.index + 1);
  else if (key === "ArrowLeft") show(state.index - 1);
  else if (key === "c" || key === "C") { $("cam-toggle").checked = !$("cam-toggle").checked; applyCam(); }
  else if (key === "a" || key === "A") autoWindow();
  else if (key === "i" || key === "I") { state.invert = !state.invert; $("invert").checked = state.invert; schedulePaint(); }
  else if (key === "f" || key === "F") fit();
  else if (key === "=") oneToOne();
  else if ((key === "o" || key === "O") && state.views.source) setView(state.view === "pool" ? "source" : "pool");
  else if ((key === "b" || key === "B") && state.batch.roi_format === "mask") toggleTool();
  else return;
  event.preventDefault();
}

function wire() {
  const view = $("view");
  view.addEventListener("pointerdown", startGesture);
  view.addEventListener("pointermove", moveGesture);
  view.addEventListener("pointerup", endGesture);
  view.addEventListener("pointercancel", endGesture);
  view.addEventListener("wheel", onWheel, { passive: false });
  view.addEventListener("contextmenu", (event) => event.preventDefault());
  view.addEventListener("auxclick", (event) => event.preventDefault());
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (event) => { if (event.key === " ") state.spaceHeld = false; });
  window.addEventListener("blur", () => { state.spaceHeld = false; });
  new ResizeObserver(() => (state.zoom.fitted ? fit() : render())).observe(view);
  $("no-finding").addEventListener("click", toggleNoFinding);
  $("undo").addEventListener("click", undo);
  $("skip").addEventListener("click", () => nextOpen(1));
  $("revise").addEventListener("click", startRevision);
  $("next").addEventListener("click", () => show(state.index + 1));
  $("previous").addEventListener("click", () => show(state.index - 1));
  $("tool").addEventListener("click", toggleTool);
  $("fit").addEventListener("click", fit);
  $("one-to-one").addEventListener("click", oneToOne);
  $("auto-window").addEventListener("click", autoWindow);
  $("invert").addEventListener("change", () => { state.invert = $("invert").checked; schedulePaint(); });
  $("resolution").addEventListener("click", () => setView(state.view === "pool" ? "source" : "pool"));
  const typed = () => {
    const width = parseFloat($("window-width").value), level = parseFloat($("window-level").value);
    if (Number.isFinite(width) && width > 0 && Number.isFinite(level)) setWindow(width, level);
    else if ($("window-width").value !== "" && $("window-level").value !== "") setWindow(state.wl.width, state.wl.level);
  };
  $("window-width").addEventListener("change", typed);
  $("window-level").addEventListener("change", typed);
  $("preset").addEventListener("change", () => {
    const value = $("preset").value;
    if (value === "auto") autoWindow();
    else setWindow(...value.split("/").map(Number));
  });
  $("cam-toggle").addEventListener("change", applyCam);
  $("cam-opacity").addEventListener("input", render);
  $("annotator").addEventListener("change", () => localStorage.setItem("xal-annotator", $("annotator").value.trim()));
  $("sign-out").addEventListener("click", async () => {
    try {
      await api("/logout", { method: "POST" });
    } catch (error) {
      say(`could not sign out: ${error.message}`);
      return;
    }
    location.href = "/login";
  });
}

async function refresh() {
  try {
    await loadBatch();
  } catch (error) {
    if (!(error instanceof Unreachable)) say(`the batch could not be read: ${error.message}`);
    else if ($("message").hidden || $("message").dataset.kind === "connection") {
      say(`Lost contact with the server: ${error.message}. Nothing can be recorded until it is back; the page ` +
          "keeps trying every 3 s.", "connection");
    }
  }
}

wire();
refresh();
setInterval(() => { if (!state.busy && !state.drag) refresh(); }, 3000);
