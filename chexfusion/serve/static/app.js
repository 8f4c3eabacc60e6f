// chexfusion web demo: choose the images of one study, send them to /api/predict, show the findings
// and, for the chosen finding, the decoder's attention over each image. Plain JS, no network but this server.
"use strict";

const VIEW_CHOICES = ["auto", "frontal", "lateral", "unknown"];
const VIEW_SOURCES = { user: "set by you", dicom: "from the DICOM header", default: "not given" };
// Five points of a perceptual dark-blue -> green -> yellow scale, interpolated linearly.
const SCALE = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const DISPLAY_WIDTH = 300;

const state = { health: null, entries: [], result: null, selected: null };
const $ = (id) => document.getElementById(id);

function setState(name) { document.body.dataset.state = name; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function formatBytes(n) {
  return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`;
}

function colour(v) {
  const x = Math.min(1, Math.max(0, v)) * (SCALE.length - 1);
  const i = Math.min(SCALE.length - 2, Math.floor(x));
  const t = x - i;
  return SCALE[i].map((c, k) => Math.round(c + t * (SCALE[i + 1][k] - c)));
}

// ------------------------------------------------------------------ start-up

async function loadHealth() {
  try {
    const response = await fetch("/health");
    if (!response.ok) throw new Error(`status ${response.status}`);
    const health = await response.json();
    state.health = health;
    const scored = health.max_images_scored ? `, up to ${health.max_images_scored} images scored per study` : "";
    $("run-info").textContent =
      `Model: ${health.kind} run “${health.run}”, ${health.classes.length} findings${scored}.`;
    $("classes-row").hidden = !health.scores_other_names;  // text-query runs score typed names
    const l = health.limits;
    $("limits-hint").textContent = `JPEG, PNG or DICOM, read from the file's content. At most ${l.max_images} ` +
      `images, ${formatBytes(l.max_file_bytes)} per file and ${formatBytes(l.max_request_bytes)} in all.`;
    setState("ready");
  } catch (err) {
    $("run-info").textContent = "The model server does not answer.";
    showError(`GET /health failed: ${err.message}`);
    setState("error");
  }
}

// ------------------------------------------------------------------ choosing files

function addFiles(fileList) {
  const max = state.health ? state.health.limits.max_images : Infinity;
  for (const file of fileList) {
    if (state.entries.length >= max) {
      showError(`At most ${max} images per study: ${file.name} and later files were not added.`);
      break;
    }
    const looksLikeImage = file.type === "image/jpeg" || file.type === "image/png";
    state.entries.push({ file, view: "auto", used: null, url: looksLikeImage ? URL.createObjectURL(file) : null });
  }
  renderFileTable();
}

function removeEntry(index) {
  const [entry] = state.entries.splice(index, 1);
  if (entry.url) URL.revokeObjectURL(entry.url);
  renderFileTable();
}

// The view an image is (or will be) scored as: what the server said after an analysis, else what "auto" will do.
// A JPEG or PNG carries no view, so "auto" scores it as unknown: `chexfusion predict` takes the CSV's
// ViewPosition instead, and the two disagree unless the user sets the view here.
function viewUsedText(entry) {
  if (entry.used) return `${entry.used.view} (${VIEW_SOURCES[entry.used.source]})`;
  if (entry.view !== "auto") return `${entry.view} (set by you)`;
  return entry.url ? "unknown: a JPEG or PNG has no view in it; set frontal or lateral"
    : "from the DICOM header, unknown if it has none";
}

function renderFileTable() {
  const body = $("file-table").querySelector("tbody");
  body.replaceChildren();
  state.entries.forEach((entry, index) => {
    const row = document.createElement("tr");
    const thumbCell = document.createElement("td");
    if (entry.url) {
      const img = document.createElement("img");
      img.src = entry.url;
      img.alt = entry.file.name;
      img.className = "thumb";
      thumbCell.append(img);
    } else {
      thumbCell.textContent = "(preview after analysis)";
      thumbCell.className = "hint";
    }
    const nameCell = document.createElement("td");
    nameCell.textContent = `${entry.file.name} (${formatBytes(entry.file.size)})`;
    const viewCell = document.createElement("td");
    const select = document.createElement("select");
    select.className = "view-select";
    select.setAttribute("aria-label", `view of ${entry.file.name}`);
    for (const v of VIEW_CHOICES) select.add(new Option(v, v, false, v === entry.view));
    const used = document.createElement("td");
    used.className = "view-used";
    used.textContent = viewUsedText(entry);
    select.addEventListener("change", () => {
      entry.view = select.value;
      entry.used = null;  // scored as chosen at the next analysis
      used.textContent = viewUsedText(entry);
    });
    viewCell.append(select);
    const removeCell = document.createElement("td");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => removeEntry(index));
    removeCell.append(remove);
    row.append(thumbCell, nameCell, viewCell, used, removeCell);
    body.append(row);
  });
  $("file-table").hidden = state.entries.length === 0;
  $("submit").disabled = state.entries.length === 0;
  $("clear").disabled = state.entries.length === 0;
}

// ------------------------------------------------------------------ analysis

async function analyse() {
  showError("");
  const form = new FormData();
  for (const entry of state.entries) {
    form.append("files", entry.file, entry.file.name);
    form.append("views", entry.view);
  }
  const classes = $("classes-input").value.trim();
  if (state.health && state.health.scores_other_names && classes) form.append("classes", classes);
  form.append("maps", $("map-method").value);
  $("submit").disabled = true;
  $("busy").hidden = false;
  setState("busy");
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    state.result = body;
    body.images.forEach((image, i) => {
      if (state.entries[i]) state.entries[i].used = { view: image.view, source: image.view_source };
    });
    renderFileTable();
    renderResults();
    setState("done");
  } catch (err) {
    showError(err.message);
    setState("error");
  } finally {
    $("submit").disabled = state.entries.length === 0;
    $("busy").hidden = true;
  }
}

function renderResults() {
  const result = state.result;
  $("aggregation").textContent = result.study.aggregation === "fusion"
    ? "One prediction for the whole study: the stage-2 model reads all images together."
    : "Stage-1 model: each image is scored alone; the study's probability is the maximum over its images.";
  const list = $("findings");
  list.replaceChildren();
  for (const finding of result.study.findings) {
    const item = document.createElement("li");
    item.className = "finding";
    item.dataset.class = finding.class;
    item.dataset.probability = String(finding.probability);
    const button = document.createElement("button");
    button.type = "button";
    const name = document.createElement("span");
    name.className = "finding-name";
    name.textContent = finding.class;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * finding.probability).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "probability";
    value.textContent = `${(100 * finding.probability).toFixed(1)}%`;
    const group = document.createElement("span");
    group.className = `group group-${finding.group}`;
    group.textContent = finding.group;
    group.title = finding.train_prevalence === null ? "not trained on: scored from its name (zero-shot)"
      : `${(100 * finding.train_prevalence).toFixed(2)}% of training images`;
    button.append(name, bar, value, group);
    button.addEventListener("click", () => selectFinding(finding.class));
    item.append(button);
    list.append(item);
  }
  const { height, width } = result.heatmaps;
  $("scaling").textContent = `Heat map: ${result.heatmaps.scaling}; ${height} × ${width} values per image, ` +
    "upsampled bilinearly.";
  buildImageCards();
  $("results").hidden = false;
  selectFinding(result.study.findings[0].class);
}

function buildImageCards() {
  const grid = $("image-grid");
  grid.replaceChildren();
  state.result.images.forEach((image, index) => {
    const card = document.createElement("figure");
    card.className = "image-card";
    const width = DISPLAY_WIDTH;
    const height = Math.round(DISPLAY_WIDTH / image.display_aspect);
    const stack = document.createElement("div");
    stack.className = "stack";
    stack.style.width = `${width}px`;
    stack.style.height = `${height}px`;
    const img = document.createElement("img");
    img.src = image.preview;
    img.alt = `${image.name} as the model saw it`;
    img.width = width;
    img.height = height;
    const canvas = document.createElement("canvas");
    canvas.className = "heat";
    canvas.dataset.image = String(index);
    canvas.width = width;
    canvas.height = height;
    stack.append(img, canvas);
    const caption = document.createElement("figcaption");
    const source = VIEW_SOURCES[image.view_source];
    caption.textContent = `${image.name}: ${image.view} view (${source}), ${image.format} ` +
      `${image.width} × ${image.height}` + (image.used ? "" : "; not scored (past the run's image limit)");
    card.append(stack, caption);
    grid.append(card);
  });
}

function selectFinding(name) {
  state.selected = name;
  $("selected-finding").textContent = name;
  for (const item of $("findings").children) item.classList.toggle("selected", item.dataset.class === name);
  const queries = state.result.heatmaps.query_of_class;
  const sharing = Object.keys(queries).filter((c) => c !== name && queries[c] === queries[name]);
  const mapped = state.result.heatmaps.mapped;
  const attention = state.result.heatmaps.method === "attention";
  $("query-note").textContent = mapped && !mapped.includes(name)
    ? "No map for this finding: Group-CAM maps the most probable findings only."
    : attention && sharing.length ? `This finding's decoder query is shared with: ${sharing.join(", ")} (same map).` : "";
  drawHeatmaps();
}

// Bilinear upsampling of a [h][w] grid to the canvas, sampling at pixel centres (as align_corners=False).
function drawHeatmap(canvas, grid, opacity) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (!grid) return;
  const gh = grid.length, gw = grid[0].length;
  const pixels = ctx.createImageData(width, height);
  for (let y = 0; y < height; y++) {
    const fy = Math.min(gh - 1, Math.max(0, ((y + 0.5) * gh) / height - 0.5));
    const y0 = Math.floor(fy), y1 = Math.min(gh - 1, y0 + 1), ty = fy - y0;
    for (let x = 0; x < width; x++) {
      const fx = Math.min(gw - 1, Math.max(0, ((x + 0.5) * gw) / width - 0.5));
      const x0 = Math.floor(fx), x1 = Math.min(gw - 1, x0 + 1), tx = fx - x0;
      const top = grid[y0][x0] * (1 - tx) + grid[y0][x1] * tx;
      const bottom = grid[y1][x0] * (1 - tx) + grid[y1][x1] * tx;
      const v = top * (1 - ty) + bottom * ty;
      const [r, g, b] = colour(v);
      const o = 4 * (y * width + x);
      pixels.data[o] = r;
      pixels.data[o + 1] = g;
      pixels.data[o + 2] = b;
      pixels.data[o + 3] = Math.round(255 * opacity * (0.15 + 0.85 * v));
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

function drawHeatmaps() {
  if (!state.result || !state.selected) return;
  const opacity = Number($("opacity").value);
  for (const canvas of document.querySelectorAll("canvas.heat")) {
    const maps = state.result.heatmaps.images[Number(canvas.dataset.image)];
    drawHeatmap(canvas, maps ? maps[state.selected] : null, opacity);
  }
}

function drawLegend() {
  const canvas = $("legend-bar");
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    const [r, g, b] = colour(x / (canvas.width - 1));
    ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  drawLegend();
  $("file-input").addEventListener("change", (event) => {
    showError("");
    addFiles(event.target.files);
    event.target.value = "";  // choosing the same file again fires change again
  });
  $("clear").addEventListener("click", () => {
    while (state.entries.length) removeEntry(state.entries.length - 1);
  });
  $("submit").addEventListener("click", analyse);
  $("opacity").addEventListener("input", drawHeatmaps);
  $("map-method").addEventListener("change", () => { if (state.result && state.entries.length) analyse(); });
  loadHealth();
});
