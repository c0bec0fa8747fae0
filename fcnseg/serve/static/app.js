// fcnseg serve: the page's logic. Plain JavaScript, no build step, no third-party code.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const state = { models: [], health: null, queue: Promise.resolve() };

function formatBytes(n) {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(0)} MB` : `${(n / 1024).toFixed(0)} KB`;
}

function setStatus(text) {
  $("#status").textContent = text;
}

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function init() {
  try {
    [state.models, state.health] = await Promise.all([getJSON("/models"), getJSON("/healthz")]);
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`);
    return;
  }
  const select = $("#model");
  for (const m of state.models) {
    const option = new Option(`${m.name} (${m.num_classes} classes)`, m.name, m.default, m.default);
    select.add(option);
  }
  const h = state.health;
  $("#limits").textContent =
    `${h.formats.join(", ")} · up to ${formatBytes(h.max_upload_bytes)} and ${(h.max_pixels / 1e6).toFixed(0)} Mpixel`;
  document.body.dataset.ready = "true";
}

function applyOpacity() {
  const value = $("#opacity").value;
  $("#opacity-value").textContent = `${value}%`;
  document.documentElement.style.setProperty("--overlay-opacity", String(value / 100));
}

// Videos go to /predict/video; the type is what the browser says or, when it says nothing, the name's extension.
const VIDEO_EXTS = /\.(mp4|m4v|mov|mkv|webm|avi|mpg|mpeg|ts|wmv|flv|ogv)$/i;

function isVideo(file) {
  return file.type ? file.type.startsWith("video/") : VIDEO_EXTS.test(file.name);
}

function newVideoCard(file) {
  const card = $("#video-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name;
  $(".badge", card).textContent = "waiting";
  $("video.clip", card).src = URL.createObjectURL(file);
  $("#results").prepend(card);
  return card;
}

function newCard(file) {
  if (isVideo(file)) return newVideoCard(file);
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name;
  $(".badge", card).textContent = "waiting";
  const url = URL.createObjectURL(file);
  for (const img of card.querySelectorAll("img.photo")) img.src = url;
  $("#results").prepend(card);
  return card;
}

function showError(card, message) {
  card.dataset.state = "error";
  $(".badge", card).textContent = "failed";
  const p = $(".error", card);
  p.textContent = message;
  p.hidden = false;
}

function showResult(card, body, roundTripMs) {
  const model = state.models.find((m) => m.name === body.model);
  const labels = $("img.labels", card);
  const src = `data:image/png;base64,${body.labels_png}`;
  labels.src = src;
  const legend = $(".legend", card);
  legend.replaceChildren();
  const rows = [...body.shares].sort((a, b) => b.share - a.share);
  for (const s of rows) {
    const li = document.createElement("li");
    li.dataset.class = s.name;
    li.dataset.share = String(s.share);
    if (s.share === 0) li.classList.add("absent");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = s.colour;
    const name = document.createElement("span");
    name.className = "class-name";
    name.textContent = s.name;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = s.share > 0 && s.share < 0.0005 ? "<0.1%" : `${(100 * s.share).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * s.share).toFixed(2)}%`;
    fill.style.background = s.colour;
    bar.append(fill);
    li.append(swatch, name, pct, bar);
    legend.append(li);
  }
  const what = document.createElement("span");
  what.textContent = `${body.width}×${body.height} ${body.format}` + (model ? ` · ${model.name}` : "");
  const when = document.createElement("span");
  when.className = "ms";
  when.textContent = `model ${body.ms.toFixed(0)} ms` +
    (body.queue_ms >= 1 ? ` · queued ${body.queue_ms.toFixed(0)} ms` : "") +
    ` · round trip ${roundTripMs.toFixed(0)} ms`;
  $(".timing", card).replaceChildren(what, when);
  const link = $(".download", card);
  link.href = src;
  link.download = `${body.filename.replace(/\.[^.]*$/, "") || "upload"}_labels.png`;
  link.hidden = false;
  return labels.decode().catch(() => undefined).then(() => {
    card.dataset.state = "done";
    $(".badge", card).textContent = `${body.ms.toFixed(0)} ms`;
  });
}

function contentFilename(response) {
  const match = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  return match ? match[1] : null;
}

// The overlay video: shown in the card's second <video>, with its download link, frames and frames/s.
async function showVideoResult(card, file, model, response, roundTripMs) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const video = $("video.overlay-video", card);
  const loaded = new Promise((resolve) => {
    video.addEventListener("loadeddata", () => resolve(true), { once: true });
    video.addEventListener("error", () => resolve(false), { once: true });
    setTimeout(() => resolve(video.readyState >= 1), 10000);
  });
  video.src = url;
  const frames = response.headers.get("X-Fcnseg-Frames");
  const fps = response.headers.get("X-Fcnseg-Frames-Per-S");
  const queueMs = Number(response.headers.get("X-Fcnseg-Queue-Ms") || 0);
  const what = document.createElement("span");
  what.className = "video-info";
  what.textContent = `${blob.type || "video"} · ${formatBytes(blob.size)}` +
    (frames ? ` · ${frames} frames` : "") + (model ? ` · ${model}` : "");
  const when = document.createElement("span");
  when.className = "ms";
  when.textContent = (fps ? `${Number(fps).toFixed(1)} frames/s · ` : "") +
    (queueMs >= 1 ? `queued ${queueMs.toFixed(0)} ms · ` : "") + `round trip ${(roundTripMs / 1000).toFixed(1)} s`;
  $(".timing", card).replaceChildren(what, when);
  const link = $(".download", card);
  link.href = url;
  link.type = blob.type;
  link.dataset.bytes = String(blob.size);
  const ext = blob.type === "video/webm" ? ".webm" : ".mp4";
  link.download = contentFilename(response) || `${file.name.replace(/\.[^.]*$/, "") || "upload"}_overlay${ext}`;
  link.hidden = false;
  if (!(await loaded)) {
    const note = $(".note", card);
    note.textContent = `This browser cannot play ${blob.type || "the video"}: download it instead.`;
    note.hidden = false;
  }
  card.dataset.state = "done";
  $(".badge", card).textContent = frames ? `${frames} frames` : "done";
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function segment(file, card) {
  if (state.health && file.size > state.health.max_upload_bytes) {
    showError(card, `${file.name}: ${formatBytes(file.size)} is over the server's limit of ` +
      `${formatBytes(state.health.max_upload_bytes)}`);
    return;
  }
  $(".badge", card).textContent = "segmenting…";
  const video = isVideo(file);
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", $("#model").value);
  if (video) {
    form.append("smooth", $("#smooth").value);
  } else {
    form.append("flip", $("#flip").checked ? "true" : "false");
    if ($("#max-size").value) form.append("max_size", $("#max-size").value);
  }
  const start = performance.now();
  // A full queue answers 503 with Retry-After: wait and try again a few times.
  for (let attempt = 0; attempt < 6; attempt++) {
    let response;
    try {
      response = video ? await fetch("/predict/video", { method: "POST", body: form })
        : await fetch("/predict", { method: "POST", body: form, headers: { Accept: "application/json" } });
    } catch (err) {
      showError(card, `${file.name}: the server did not answer (${err.message})`);
      return;
    }
    if (video && response.ok) {
      try {
        await showVideoResult(card, file, form.get("model"), response, performance.now() - start);
      } catch (err) {
        showError(card, `${file.name}: the overlay video did not arrive (${err.message})`);
      }
      return;
    }
    if (video && (response.status === 404 || response.status === 405)) {
      showError(card, `${file.name}: this server does not segment videos (it needs PyAV: pip install 'fcnseg[video]')`);
      return;
    }
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (response.ok) {
      await showResult(card, body, performance.now() - start);
      return;
    }
    if (response.status === 503 && attempt < 5) {
      $(".badge", card).textContent = "server busy, retrying…";
      await sleep(1000 * Number(response.headers.get("Retry-After") || 1));
      continue;
    }
    showError(card, `${response.status}: ${body.detail || response.statusText}`);
    return;
  }
}

function addFiles(files) {
  const list = [...files];
  if (!list.length) return;
  // Cards appear at once; requests go one after another so a batch does not fill the server's queue.
  for (const file of list) {
    const card = newCard(file);
    state.queue = state.queue.then(() => segment(file, card));
  }
  const videos = list.filter(isVideo).length;
  const images = list.length - videos;
  const parts = [];
  if (images) parts.push(`${images} image${images > 1 ? "s" : ""}`);
  if (videos) parts.push(`${videos} video${videos > 1 ? "s" : ""}`);
  setStatus(`${parts.join(" and ")} added`);
}

function setupDrop() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  // Dropping outside the box must not make the browser navigate away to the image or video.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

document.addEventListener("DOMContentLoaded", () => {
  $("#opacity").addEventListener("input", applyOpacity);
  $("#controls").addEventListener("submit", (event) => event.preventDefault());
  applyOpacity();
  setupDrop();
  init();
});
