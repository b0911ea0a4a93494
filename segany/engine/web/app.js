// The annotation page: image list, the canvas where clicks become masks, the objects panel.
// Talks to the server's JSON API (segany/engine/app.py); no build step, no framework.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  images: [],            // records from GET /api/images
  current: null,         // the open image record
  picture: null,         // its HTMLImageElement
  objects: [],           // accepted objects of the open image, with decoded masks
  selected: null,        // id of the selected object
  editing: null,         // {id, version} when refining an existing object
  prompt: emptyPrompt(),
  candidates: [],        // [{score, logits, mask, prompt, model}] (mask computed when first shown)
  proposal: null,        // shape and upscaling of the last reply's logits
  chosen: 0,
  undo: [],              // snapshots {prompt, candidates, chosen}
  redo: [],
  startedAt: null,       // when work on the current mask began (the paper tracked time per mask)
  sequence: 0,           // predict requests sent; older replies are dropped
  answered: 0,           // the request whose reply is shown
  model: null,
  view: { scale: 1, x: 0, y: 0 },
  fitScale: 1,           // the scale at which the whole image fits
  pan: null,             // the last pointer position while panning
  spaceHeld: false,
  layers: { objects: null, mask: null },
  drag: null,
};

function emptyPrompt() {
  return { points: [], labels: [], box: null, text: null };
}

function hasPrompt(prompt) {
  return prompt.points.length > 0 || prompt.box !== null || Boolean(prompt.text);
}

// ---------------------------------------------------------------- server calls

// A request to the server; errors become exceptions carrying the server's message.
async function request(method, url, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const reply = await fetch(url, options);
  if (!reply.ok) {
    const data = await reply.json().catch(() => ({}));
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
    throw new Error(detail || `${method} ${url} failed (${reply.status})`);
  }
  return reply;
}

async function api(method, url, body) {
  const reply = await request(method, url, body);
  return reply.status === 204 ? null : reply.json();
}

function toast(message, isError = false) {
  const box = $("toast");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), isError ? 6000 : 2500);
}

function reportErrors(action) {
  return (...args) => Promise.resolve(action(...args)).catch((error) => toast(error.message, true));
}

// ---------------------------------------------------------------- images

async function loadImages() {
  const data = await api("GET", "/api/images");
  state.images = data.images;
  renderImageList();
  renderProgress(data.stats);
  if (data.problems.length) toast(`${data.problems.length} file(s) could not be read: ${data.problems[0]}`, true);
}

function renderImageList() {
  const list = $("image-list");
  list.replaceChildren(...state.images.map((image) => {
    const item = document.createElement("li");
    item.dataset.id = image.id;
    item.classList.toggle("current", state.current !== null && image.id === state.current.id);
    item.classList.toggle("done", image.done);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = image.path;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${image.objects} object${image.objects === 1 ? "" : "s"}` +
      (image.prefilled ? " · prefilled" : "") + (image.done ? " · done" : "");
    item.append(name, meta);
    item.addEventListener("click", reportErrors(() => openImage(image.id)));
    return item;
  }));
}

function renderProgress(stats) {
  const done = stats.done, total = stats.images;
  $("progress-fill").style.width = total ? `${(100 * done) / total}%` : "0";
  $("progress-text").textContent = `${done}/${total} done · ${stats.objects} objects`;
}

async function refreshImageRecord() {
  const data = await api("GET", "/api/images");
  state.images = data.images;
  state.current = state.images.find((image) => image.id === state.current.id) || state.current;
  renderImageList();
  renderProgress(data.stats);
  $("done").textContent = state.current.done ? "Mark not done" : "Mark done";
}

async function openImage(id) {
  const record = state.images.find((image) => image.id === id);
  if (!record) return;
  state.current = record;
  state.selected = null;
  state.editing = null;
  resetPrompt();
  state.undo = [];
  state.redo = [];
  renderImageList();
  $("image-name").textContent = record.path;
  $("done").textContent = record.done ? "Mark not done" : "Mark done";
  history.replaceState(null, "", `#${id}`);
  state.picture = await loadPicture(`/api/images/${id}/file`);
  if (state.current !== record) return;  // the person moved on meanwhile
  fitView();
  await loadObjects();
  draw();
  setBusy(true, "Preparing image (embedding)…");
  try {
    await api("POST", `/api/images/${id}/embedding`);
  } finally {
    if (state.current === record) setBusy(false);
  }
}

function loadPicture(url) {
  return new Promise((resolve, reject) => {
    const picture = new Image();
    picture.onload = () => resolve(picture);
    picture.onerror = () => reject(new Error(`could not load ${url}`));
    picture.src = url;
  });
}

function step(offset) {
  if (!state.images.length) return;
  const index = state.images.findIndex((image) => state.current && image.id === state.current.id);
  const next = Math.min(state.images.length - 1, Math.max(0, index + offset));
  if (next !== index) openImage(state.images[next].id).catch((error) => toast(error.message, true));
}

function setBusy(busy, text) {
  $("busy").hidden = !busy;
  if (text) $("busy-text").textContent = text;
}

// ---------------------------------------------------------------- objects

async function loadObjects() {
  const data = await api("GET", `/api/images/${state.current.id}`);
  state.objects = data.objects.map((object) => ({ ...object, mask: Masks.fromRle(object.rle) }));
  if (!state.objects.some((object) => object.id === state.selected)) state.selected = null;
  renderObjectLayer();
  renderObjectList();
}

function colourOf(id) {
  const hue = (id * 137.508) % 360;
  return `hsl(${hue}deg 85% 60%)`;
}

function rgbaOf(id, alpha) {
  // 0xAABBGGRR for an ImageData Uint32 view (little-endian)
  const [r, g, b] = hslToRgb(((id * 137.508) % 360) / 360, 0.85, 0.6);
  return ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

function hslToRgb(h, s, l) {
  const f = (n) => {
    const k = (n + h * 12) % 12;
    const a = s * Math.min(l, 1 - l);
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

function renderObjectList() {
  const list = $("object-list");
  $("object-count").textContent = state.objects.length ? `(${state.objects.length})` : "";
  if (!state.objects.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No objects yet: click on the image, then accept.";
    list.replaceChildren(empty);
  } else {
    list.replaceChildren(...state.objects.map((object) => {
      const item = document.createElement("li");
      item.dataset.id = object.id;
      item.classList.toggle("selected", object.id === state.selected);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(object.id);
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = `#${object.id} ${object.label || "(no label)"}`;
      const info = document.createElement("span");
      info.className = "info";
      info.textContent = `${object.area.toLocaleString()} px · ${object.seconds.toFixed(1)} s`;
      item.append(swatch, what);
      if (object.source === "prefilled") {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "auto";
        tag.title = "prefilled by the automatic generator";
        item.append(tag);
      }
      item.append(info);
      item.addEventListener("click", () => select(object.id === state.selected ? null : object.id));
      return item;
    }));
  }
  const chosen = state.objects.find((object) => object.id === state.selected);
  $("selected").hidden = !chosen;
  if (chosen && document.activeElement !== $("selected-label")) $("selected-label").value = chosen.label;
}

function select(id) {
  state.selected = id;
  renderObjectLayer();
  renderObjectList();
  draw();
}

async function saveSelectedLabel() {
  const object = state.objects.find((item) => item.id === state.selected);
  if (!object) return;
  await api("PATCH", `/api/objects/${object.id}`, { version: object.version, label: $("selected-label").value });
  await loadObjects();
  draw();
  toast("Label saved");
}

async function deleteSelected() {
  const object = state.objects.find((item) => item.id === state.selected);
  if (!object) return;
  await api("DELETE", `/api/objects/${object.id}`);
  if (state.editing && state.editing.id === object.id) cancelEdit();
  state.selected = null;
  await loadObjects();
  await refreshImageRecord();
  draw();
  toast(`Deleted object #${object.id}`);
}

function editSelected() {
  const object = state.objects.find((item) => item.id === state.selected);
  if (!object) return;
  state.editing = { id: object.id, version: object.version };
  remember();
  state.prompt = object.prompts ? structuredClone(object.prompts) : emptyPrompt();
  state.candidates = [{ score: object.score ?? 1, mask: object.mask, stored: true }];
  state.chosen = 0;
  state.startedAt = performance.now();
  showText();
  $("label").value = object.label;
  $("editing").hidden = false;
  $("editing-id").textContent = `#${object.id}`;
  renderMaskLayer();
  renderCandidates();
  draw();
}

function cancelEdit() {
  state.editing = null;
  $("editing").hidden = true;
  resetPrompt();
  draw();
}

async function accept() {
  const candidate = state.candidates[state.chosen];
  if (!candidate) {
    toast("Nothing to accept yet: click on an object first", true);
    return;
  }
  const seconds = state.startedAt === null ? 0 : (performance.now() - state.startedAt) / 1000;
  // The server recomputes the exact full-size mask from the prompt and the candidate chosen.
  const fields = { label: $("label").value, seconds: Math.min(seconds, 86400) };
  // The prompt and model revision are those the candidate was made from, even if a click or a
  // model reload happened since: what is stored is what the person saw.
  if (!candidate.stored) {
    Object.assign(fields, { prompts: candidate.prompt, candidate: state.chosen, model: candidate.model });
  }
  let saved;
  if (state.editing) {
    saved = await api("PATCH", `/api/objects/${state.editing.id}`, { version: state.editing.version, ...fields });
    state.editing = null;
    $("editing").hidden = true;
  } else {
    saved = await api("POST", `/api/images/${state.current.id}/objects`, fields);
  }
  resetPrompt();
  state.undo = [];
  state.redo = [];
  await loadObjects();
  await refreshImageRecord();
  draw();
  toast(`Saved object #${saved.id}${saved.label ? ` (${saved.label})` : ""}`);
}

async function prefill() {
  setBusy(true, "Prefilling confident masks…");
  try {
    const data = await api("POST", `/api/images/${state.current.id}/prefill`);
    await loadObjects();
    await refreshImageRecord();
    draw();
    toast(`Prefilled ${data.added.length} object(s): keep, delete or add`);
  } finally {
    setBusy(false);
  }
}

async function toggleDone() {
  await api("POST", `/api/images/${state.current.id}/done`, { done: !state.current.done });
  await refreshImageRecord();
}

// ---------------------------------------------------------------- the prompt and its masks

function resetPrompt() {
  state.prompt = emptyPrompt();
  state.candidates = [];
  state.chosen = 0;
  state.startedAt = null;
  state.sequence++;
  showText();
  renderMaskLayer();
  renderCandidates();
}

function remember() {
  state.undo.push({ prompt: structuredClone(state.prompt), candidates: state.candidates, chosen: state.chosen });
  state.redo = [];
}

function restore(from, to) {
  if (!from.length) return;
  to.push({ prompt: structuredClone(state.prompt), candidates: state.candidates, chosen: state.chosen });
  const snapshot = from.pop();
  state.prompt = snapshot.prompt;
  state.candidates = snapshot.candidates;
  state.chosen = snapshot.chosen;
  state.sequence++;  // a reply still on its way belongs to the prompt just left
  showText();
  renderMaskLayer();
  renderCandidates();
  draw();
}

function changePrompt(change) {
  if (!state.current) return;
  remember();
  if (state.startedAt === null) state.startedAt = performance.now();
  change(state.prompt);
  draw();
  predict().catch((error) => toast(error.message, true));
}

// The text box shows the text of the prompt on screen (after undo, clear, accept, edit).
function showText() {
  $("text-prompt").value = state.prompt.text || "";
}

// Enter in the text box: segment what the words describe, with the points and box given so far.
function submitText() {
  const text = $("text-prompt").value.trim() || null;
  changePrompt((prompt) => (prompt.text = text));
}

async function predict() {
  const prompt = state.prompt;
  if (!hasPrompt(prompt)) {
    state.candidates = [];
    renderMaskLayer();
    renderCandidates();
    draw();
    return;
  }
  const sequence = ++state.sequence;
  const started = performance.now();
  const asked = structuredClone(prompt);
  // The body is the logits (int16); the X-Proposal header describes them.
  const answer = await request("POST", `/api/images/${state.current.id}/predict`, asked);
  const reply = JSON.parse(answer.headers.get("X-Proposal"));
  const logits = new Int16Array(await answer.arrayBuffer());
  if (sequence !== state.sequence) return;
  state.answered = sequence;
  const [, rows, cols] = reply.shape;
  state.proposal = { rows, cols, inputSize: reply.input_size, upscale: reply.upscale };
  state.candidates = reply.scores.map((score, index) => ({
    score, logits: logits.subarray(index * rows * cols, (index + 1) * rows * cols), mask: null,
    prompt: asked, model: reply.model,
  }));
  state.chosen = state.candidates.reduce((best, c, i, all) => (c.score > all[best].score ? i : best), 0);
  noteModel(reply.model);
  renderMaskLayer();
  renderCandidates();
  draw();
  $("latency").textContent = `${Math.round(performance.now() - started)} ms`;
  $("latency").title = "from the click to the mask drawn";
}

function choose(index) {
  if (index < 0 || index >= state.candidates.length) return;
  state.chosen = index;
  renderMaskLayer();
  renderCandidates();
  draw();
}

function renderCandidates() {
  const box = $("candidates");
  if (!state.candidates.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "Click on the image to get candidate masks.";
    box.replaceChildren(empty);
  } else {
    box.replaceChildren(...state.candidates.map((candidate, index) => {
      const button = document.createElement("button");
      button.classList.toggle("chosen", index === state.chosen);
      button.title = `candidate ${index + 1} (key ${index + 1}): predicted IoU ${candidate.score.toFixed(3)}`;
      button.innerHTML = `<b>${index + 1}</b><small>${candidate.score.toFixed(2)}</small>`;
      button.addEventListener("click", () => choose(index));
      return button;
    }));
  }
  $("accept").disabled = !state.candidates.length;
}

// ---------------------------------------------------------------- drawing

function layerFor(width, height) {
  const layer = document.createElement("canvas");
  layer.width = width;
  layer.height = height;
  return layer;
}

function borderThickness() {
  return Math.max(1, Math.round(1.5 / state.view.scale));
}

function paintLayer(masks) {
  const { width, height } = state.picture;
  const layer = layerFor(width, height);
  const context = layer.getContext("2d");
  const pixels = context.createImageData(width, height);
  const view = new Uint32Array(pixels.data.buffer);
  for (const { mask, fill, edge } of masks) Masks.paint(view, mask, width, height, fill, edge, borderThickness());
  context.putImageData(pixels, 0, 0);
  return layer;
}

function renderObjectLayer() {
  if (!state.picture) return;
  state.layers.objects = paintLayer(state.objects.map((object) => {
    const strong = object.id === state.selected;
    return { mask: object.mask, fill: rgbaOf(object.id, strong ? 150 : 90), edge: rgbaOf(object.id, 255) };
  }));
}

// A candidate's full-size mask, computed from its low-res logits when first shown.
function maskOf(candidate) {
  if (!candidate.mask) {
    const { rows, cols, inputSize, upscale } = state.proposal;
    candidate.mask = Masks.fromLogits(candidate.logits, rows, cols, inputSize, upscale,
                                      state.picture.width, state.picture.height);
  }
  return candidate.mask;
}

function renderMaskLayer() {
  const candidate = state.candidates[state.chosen];
  state.layers.mask = candidate && state.picture
    ? paintLayer([{ mask: maskOf(candidate), fill: 0x8cff9a3c, edge: 0xffffc04c }])
    : null;
}

function fitView() {
  const canvas = $("canvas");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
  if (!state.picture) return;
  const margin = 16 * ratio;
  const scale = Math.min((canvas.width - 2 * margin) / state.picture.width,
                         (canvas.height - 2 * margin) / state.picture.height);
  state.fitScale = scale;
  state.view = {
    scale,
    x: (canvas.width - state.picture.width * scale) / 2,
    y: (canvas.height - state.picture.height * scale) / 2,
  };
  renderObjectLayer();
  renderMaskLayer();
}

function draw() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.picture) return;
  const { scale, x, y } = state.view;
  const width = state.picture.width * scale, height = state.picture.height * scale;
  context.imageSmoothingEnabled = true;
  context.drawImage(state.picture, x, y, width, height);
  for (const layer of [state.layers.objects, state.layers.mask]) {
    if (layer) context.drawImage(layer, x, y, width, height);
  }
  const ratio = window.devicePixelRatio || 1;
  const box = state.drag && state.drag.moved ? dragBox(state.drag) : state.prompt.box;
  if (box) {
    const [a, b] = [toScreen(box[0], box[1]), toScreen(box[2], box[3])];
    context.lineWidth = 2 * ratio;
    context.setLineDash([6 * ratio, 4 * ratio]);
    context.strokeStyle = "#ffffff";
    context.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    context.setLineDash([]);
  }
  state.prompt.points.forEach(([px, py], index) => {
    const [sx, sy] = toScreen(px, py);
    context.beginPath();
    context.arc(sx, sy, 6 * ratio, 0, 2 * Math.PI);
    context.fillStyle = state.prompt.labels[index] === 1 ? "#3ecf8e" : "#ff6b6b";
    context.fill();
    context.lineWidth = 2 * ratio;
    context.strokeStyle = "#ffffff";
    context.stroke();
  });
}

function toScreen(px, py) {
  return [state.view.x + px * state.view.scale, state.view.y + py * state.view.scale];
}

function toImage(event) {
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const ratio = canvas.width / rect.width;
  const sx = (event.clientX - rect.left) * ratio, sy = (event.clientY - rect.top) * ratio;
  return [(sx - state.view.x) / state.view.scale, (sy - state.view.y) / state.view.scale];
}

function insidePicture([x, y]) {
  return state.picture && x >= 0 && y >= 0 && x <= state.picture.width && y <= state.picture.height;
}

function clampToPicture([x, y]) {
  return [Math.min(Math.max(x, 0), state.picture.width), Math.min(Math.max(y, 0), state.picture.height)];
}

function dragBox(drag) {
  const [x0, y0] = drag.start, [x1, y1] = clampToPicture(drag.end);
  return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
}

function objectAt([x, y]) {
  const index = Math.floor(y) * state.picture.width + Math.floor(x);
  for (let i = state.objects.length - 1; i >= 0; i--) {
    if (state.objects[i].mask[index]) return state.objects[i];
  }
  return null;
}

// ---------------------------------------------------------------- mouse and keyboard

// Zoom with the wheel around the cursor; pan by dragging with the middle button or with
// Space held; Z fits the image again. Mask borders are redrawn for the new scale once the
// zooming pauses.
function onWheel(event) {
  if (!state.picture) return;
  event.preventDefault();
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const ratio = canvas.width / rect.width;
  const sx = (event.clientX - rect.left) * ratio, sy = (event.clientY - rect.top) * ratio;
  const factor = Math.pow(1.0015, -event.deltaY);
  const scale = Math.min(Math.max(state.view.scale * factor, state.fitScale / 4), 32);
  state.view = {
    scale,
    x: sx - ((sx - state.view.x) * scale) / state.view.scale,
    y: sy - ((sy - state.view.y) * scale) / state.view.scale,
  };
  draw();
  clearTimeout(onWheel.timer);
  onWheel.timer = setTimeout(() => { renderObjectLayer(); renderMaskLayer(); draw(); }, 150);
}

function startPan(event) {
  const canvas = $("canvas");
  canvas.setPointerCapture(event.pointerId);
  state.pan = { x: event.clientX, y: event.clientY };
}

function onPointerDown(event) {
  if (!state.picture) return;
  if (event.button === 1 || (event.button === 0 && state.spaceHeld)) {
    event.preventDefault();
    startPan(event);
    return;
  }
  if (event.button !== 0) return;
  const point = toImage(event);
  if (!insidePicture(point)) return;
  $("canvas").setPointerCapture(event.pointerId);
  state.drag = { start: point, end: point, moved: false, shift: event.shiftKey, alt: event.altKey };
}

function onPointerMove(event) {
  if (state.pan) {
    const canvas = $("canvas");
    const ratio = canvas.width / canvas.getBoundingClientRect().width;
    state.view.x += (event.clientX - state.pan.x) * ratio;
    state.view.y += (event.clientY - state.pan.y) * ratio;
    state.pan = { x: event.clientX, y: event.clientY };
    draw();
    return;
  }
  if (!state.drag) return;
  state.drag.end = toImage(event);
  const [x0, y0] = toScreen(...state.drag.start), [x1, y1] = toScreen(...state.drag.end);
  const ratio = window.devicePixelRatio || 1;
  if (Math.hypot(x1 - x0, y1 - y0) > 5 * ratio) state.drag.moved = true;
  if (state.drag.moved) draw();
}

function onPointerUp() {
  if (state.pan) {
    state.pan = null;
    return;
  }
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (drag.moved) {
    const box = dragBox(drag);
    changePrompt((prompt) => (prompt.box = box));
  } else if (drag.alt) {
    const object = objectAt(drag.start);
    select(object ? object.id : null);
  } else {
    changePrompt((prompt) => {
      prompt.points.push(drag.start);
      prompt.labels.push(drag.shift ? 0 : 1);
    });
  }
}

function onContextMenu(event) {
  event.preventDefault();
  const point = toImage(event);
  if (!insidePicture(point)) return;
  changePrompt((prompt) => {
    prompt.points.push(point);
    prompt.labels.push(0);
  });
}

function onKey(event) {
  const typing = event.target instanceof HTMLInputElement;
  const key = event.key;
  if (typing) {
    if (key === "Enter") {
      event.preventDefault();
      if (event.target.id === "selected-label") reportErrors(saveSelectedLabel)();
      else if (event.target.id === "text-prompt") submitText();
      else reportErrors(accept)();
    } else if (key === "Escape") {
      event.target.blur();
    }
    return;
  }
  if ($("help").open) return;
  const control = event.ctrlKey || event.metaKey;
  const actions = {
    Enter: accept, a: accept,
    Escape: () => (state.editing ? cancelEdit() : hasPrompt(state.prompt) ? (remember(), resetPrompt(), draw()) : select(null)),
    "1": () => choose(0), "2": () => choose(1), "3": () => choose(2),
    Tab: () => choose((state.chosen + 1) % Math.max(1, state.candidates.length)),
    n: () => step(1), ArrowRight: () => step(1), p: () => step(-1), ArrowLeft: () => step(-1),
    Delete: deleteSelected, Backspace: deleteSelected, e: editSelected,
    l: () => $("label").focus(), t: () => $("text-prompt").focus(), f: prefill, m: toggleDone, "?": () => $("help").showModal(),
    z: () => { fitView(); draw(); },
  };
  let action = null;
  if (control && (key === "z" || key === "Z")) action = event.shiftKey ? () => restore(state.redo, state.undo) : () => restore(state.undo, state.redo);
  else if (control && key === "y") action = () => restore(state.redo, state.undo);
  else if (!control && !event.altKey) action = actions[key];
  if (!action) return;
  event.preventDefault();
  reportErrors(action)();
}

// ---------------------------------------------------------------- the model

function noteModel(revision) {
  if (state.model !== null && revision !== state.model) toast("A new model checkpoint is in use");
  state.model = revision;
}

async function pollModel() {
  const info = await api("GET", "/api/model");
  const name = info.checkpoint ? info.checkpoint.split(/[\\/]/).pop() : "embedded default model";
  $("model").textContent = `model: ${name} · ${info.revision.slice(0, 8)}`;
  $("model").title = `${info.checkpoint || "embedded default model"}\nloaded ${new Date(info.loaded_at * 1000).toLocaleString()}` +
    (info.last_error ? `\nlast reload failed: ${info.last_error}` : "");
  $("text-prompt-row").hidden = !info.text_prompts;
  const changed = state.model !== null && info.revision !== state.model;
  noteModel(info.revision);
  if (changed && state.current && hasPrompt(state.prompt)) await predict();
}

// ---------------------------------------------------------------- start

function wire() {
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", onPointerDown);
  canvas.addEventListener("pointermove", onPointerMove);
  canvas.addEventListener("pointerup", reportErrors(onPointerUp));
  canvas.addEventListener("contextmenu", onContextMenu);
  canvas.addEventListener("wheel", onWheel, { passive: false });
  document.addEventListener("keydown", onKey);
  document.addEventListener("keydown", (event) => {
    if (event.key === " " && !(event.target instanceof HTMLInputElement)) {
      event.preventDefault();
      state.spaceHeld = true;
    }
  });
  document.addEventListener("keyup", (event) => { if (event.key === " ") state.spaceHeld = false; });
  window.addEventListener("resize", () => { fitView(); draw(); });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("undo").addEventListener("click", () => restore(state.undo, state.redo));
  $("redo").addEventListener("click", () => restore(state.redo, state.undo));
  $("clear").addEventListener("click", () => { remember(); resetPrompt(); draw(); });
  $("accept").addEventListener("click", reportErrors(accept));
  $("cancel-edit").addEventListener("click", cancelEdit);
  $("save-label").addEventListener("click", reportErrors(saveSelectedLabel));
  $("edit-mask").addEventListener("click", editSelected);
  $("delete").addEventListener("click", reportErrors(deleteSelected));
  $("prefill").addEventListener("click", reportErrors(prefill));
  $("done").addEventListener("click", reportErrors(toggleDone));
  $("help-button").addEventListener("click", () => $("help").showModal());
}

async function start() {
  wire();
  renderCandidates();
  fitView();
  await loadImages();
  await pollModel();
  setInterval(() => pollModel().catch(() => {}), 5000);
  const wanted = Number(location.hash.slice(1));
  const first = state.images.find((image) => image.id === wanted) ||
    state.images.find((image) => !image.done) || state.images[0];
  if (first) await openImage(first.id);
}

start().catch((error) => toast(error.message, true));
