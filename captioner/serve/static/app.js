"use strict";
// The captioner page: each chosen or dropped image is its own POST /caption (so results show as
// they come, and the server batches requests that arrive together); a word's map is drawn over
// the network's view as `captioner caption --explain` draws its overlays
// (captioner/model/explain_files.py): bilinear upsampling, matplotlib's jet, 60% at the peak.

const HEAT_ALPHA = 0.6;
const VIEW_SIDE = 224; // pixels of the shorter side of the drawn view
// matplotlib's "jet": (position, value) points of each channel, linear in between.
const JET = [
  [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
];

const form = document.getElementById("options");
const drop = document.getElementById("drop");
const picker = document.getElementById("files");
const results = document.getElementById("results");

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text; // text, never markup: names come from users
  return node;
}

async function showModel() {
  const line = document.getElementById("model");
  try {
    const health = await (await fetch("health")).json();
    line.textContent = `${health.checkpoint} on ${health.device}`;
  } catch (error) {
    line.textContent = `the server does not answer (${error.message})`;
  }
}

function captionFiles(files) {
  for (const file of files) captionFile(file);
}

async function captionFile(file) {
  const card = newCard(file);
  results.append(card);
  const body = new FormData(form); // the options; the picker has no name, so it is not sent
  body.append("image", file, file.name);
  try {
    const response = await fetch("caption", { method: "POST", body });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
    fill(card, answer.results[0]);
  } catch (error) {
    card.dataset.state = "error";
    card.querySelector(".caption").textContent = "";
    card.querySelector(".error").textContent = error.message;
  }
}

function newCard(file) {
  const card = element("li", "result");
  card.dataset.state = "pending";
  const pictures = element("figure", "pictures");
  const photo = element("img", "photo");
  photo.alt = file.name;
  photo.src = URL.createObjectURL(file);
  photo.onload = photo.onerror = () => URL.revokeObjectURL(photo.src);
  pictures.append(photo);
  const text = element("div", "text");
  text.append(element("h2", "name", file.name), element("p", "caption", "captioning…"),
              element("p", "error"));
  card.append(pictures, text);
  return card;
}

function fill(card, result) {
  card.dataset.state = "done";
  const caption = card.querySelector(".caption");
  caption.textContent = "";
  const words = result.caption.split(" ").filter((w) => w);
  const spans = words.map((word) => element("span", "word", word));
  spans.forEach((span, t) => caption.append(span, t + 1 < spans.length ? " " : ""));
  card.querySelector(".text").append(nBestTable(result.n_best));
  if (result.explanation) explain(card, caption, spans, result.explanation);
}

function nBestTable(nBest) {
  const table = element("table", "nbest");
  const head = table.createTHead().insertRow();
  for (const title of ["#", "caption", "score", "log-prob"]) head.append(element("th", "", title));
  const body = table.createTBody();
  nBest.forEach((entry, n) => {
    const row = body.insertRow();
    row.append(element("td", "number", String(n + 1)), element("td", "", entry.caption),
               element("td", "number", entry.score.toFixed(3)),
               element("td", "number", entry.logprob.toFixed(3)));
  });
  return table;
}

function explain(card, caption, spans, explanation) {
  const [width, height] = explanation.view_size;
  const scale = VIEW_SIDE / Math.min(width, height);
  const canvas = element("canvas", "view");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  canvas.title = "the image as the network saw it";
  card.querySelector(".pictures").append(canvas);
  caption.classList.add("explained");
  const context = canvas.getContext("2d");
  const view = new Image();
  view.onload = () => {
    context.imageSmoothingQuality = "high";
    context.drawImage(view, 0, 0, canvas.width, canvas.height);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
    const overlays = [];
    const show = (t) => context.putImageData(
      overlays[t] ??= overlay(pixels, explanation.maps[t], explanation.grid), 0, 0);
    spans.forEach((span, t) => {
      const empty = !explanation.maps[t].flat().some((v) => v > 0);
      span.classList.toggle("empty", empty);
      span.title = empty ? "no map: Grad-CAM has nothing to show for this word" : "";
      span.tabIndex = 0;
      const on = () => { span.classList.add("active"); show(t); };
      const off = () => { span.classList.remove("active"); context.putImageData(pixels, 0, 0); };
      span.addEventListener("mouseenter", on);
      span.addEventListener("focus", on);
      span.addEventListener("mouseleave", off);
      span.addEventListener("blur", off);
    });
    card.dataset.maps = "ready";
  };
  view.src = explanation.view;
}

function overlay(pixels, map, [rows, cols]) {
  const { width, height } = pixels;
  const heat = upsample(map, rows, cols, height, width);
  const out = new ImageData(width, height);
  for (let i = 0; i < heat.length; i++) {
    const alpha = HEAT_ALPHA * heat[i];
    for (let c = 0; c < 3; c++) {
      const colour = 255 * channel(JET[c], heat[i]);
      out.data[4 * i + c] = Math.round(pixels.data[4 * i + c] * (1 - alpha) + colour * alpha);
    }
    out.data[4 * i + 3] = 255;
  }
  return out;
}

// Bilinear, as torch's interpolate(..., align_corners=False): cell centres map onto pixel centres.
function upsample(map, rows, cols, height, width) {
  const out = new Float32Array(height * width);
  const source = (i, outer, inner) => Math.max(0, (i + 0.5) * inner / outer - 0.5);
  for (let y = 0; y < height; y++) {
    const sy = source(y, height, rows), y0 = Math.floor(sy), y1 = Math.min(y0 + 1, rows - 1);
    for (let x = 0; x < width; x++) {
      const sx = source(x, width, cols), x0 = Math.floor(sx), x1 = Math.min(x0 + 1, cols - 1);
      const top = map[y0][x0] + (map[y0][x1] - map[y0][x0]) * (sx - x0);
      const bottom = map[y1][x0] + (map[y1][x1] - map[y1][x0]) * (sx - x0);
      out[y * width + x] = top + (bottom - top) * (sy - y0);
    }
  }
  return out;
}

function channel(points, value) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (value <= x1) return y0 + (y1 - y0) * (value - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

picker.addEventListener("change", () => {
  captionFiles(picker.files);
  picker.value = ""; // the same file can be chosen again
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  captionFiles(event.dataTransfer.files); // a file that is no image gets the server's one-line answer
});
form.addEventListener("submit", (event) => event.preventDefault());
// The server refuses an n-best larger than the beam, so the page never sends one: n-best follows
// the beam down (and says so), and cannot be raised above it.
function keepNBestWithinBeam() {
  const nBest = form.elements.n_best, note = document.getElementById("settings-note");
  const width = Number(form.elements.beam_size.value);
  if (!Number.isInteger(width) || width < 1 || width > 20) return; // half typed: the server says what is wrong
  nBest.max = String(width);
  note.textContent = "";
  if (Number(nBest.value) > width) {
    note.textContent = `n-best lowered from ${nBest.value} to ${width}: a beam of ${width} keeps ${width} captions at most`;
    nBest.value = String(width);
  }
}
form.elements.beam_size.addEventListener("input", keepNBestWithinBeam);
form.elements.n_best.addEventListener("input", keepNBestWithinBeam);
keepNBestWithinBeam();
showModel();
