// The medpredict web page: load the model card, send an upload, show the result with its uncertainty
// in plain words and the heat map beside the original. Every new request or error clears the last result.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let typedKey = "";     // only when the page is public (--public-docs); otherwise the browser's login is used
let previewUrl = null;

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function authHeaders() { return typedKey ? { "X-API-Key": typedKey } : {}; }

function pct(p) { return `${(100 * p).toFixed(1)} %`; }

async function loadModel() {
  let res;
  try {
    res = await fetch("/api/v1/model", { headers: authHeaders(), credentials: "same-origin" });
  } catch (err) {
    setStatus("The service did not answer.", true);
    return;
  }
  if (res.status === 401) {
    model = null;
    $("key-block").hidden = false;
    $("model-line").textContent = "Enter the API key to load the model.";
    if (typedKey) setStatus("The API key was refused.", true);
    return;
  }
  if (!res.ok) { setStatus("Could not load the model.", true); return; }
  model = await res.json();
  if (typedKey) sessionStorage.setItem("medpredict-key", typedKey);
  const threshold = model.threshold == null || !model.positive_label ? "" :
    ` · ${model.positive_label} at ${pct(model.threshold)} or more`;
  $("model-line").textContent = `Model ${model.identity} · classes: ${model.labels.join(", ")}${threshold}`;
  $("record-block").hidden = !(model.input_kind === "table" || model.input_kind === "fusion");
  if ($("status").className === "error") setStatus("");
}

function onKeyChange() {
  const value = $("api-key").value.trim();
  if (value && value !== typedKey) { typedKey = value; loadModel(); }
}

// The result of the last request: gone on every new choice, request or error, so that a
// result is never shown beside an image it does not belong to.
function clearResult() {
  $("result").hidden = true;
  for (const id of ["result-source", "result-label", "result-score", "result-meta", "map-caption"]) {
    $(id).textContent = "";
  }
  $("result-label").className = "";
  $("refer-banner").hidden = true;
  $("refer-reasons").replaceChildren();
  document.querySelector("#probabilities tbody").replaceChildren();
  $("uncertainty").replaceChildren();
  $("record-list").replaceChildren();
  $("record-notes").hidden = true;
  for (const id of ["original", "overlay-base", "heatmap"]) $(id).removeAttribute("src");
  $("pictures").hidden = true;
}

function showPreview() {
  clearResult();
  setStatus("");
  const file = $("file").files[0];
  if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
  $("preview").removeAttribute("src");
  $("preview-figure").hidden = !file;
  if (!file) return;
  const browserCanShow = /^image\/(png|jpeg)$/.test(file.type);
  $("preview").hidden = !browserCanShow;
  if (browserCanShow) {
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    $("preview-caption").textContent = `Chosen: ${file.name}`;
  } else if (/\.dcm$/i.test(file.name) || file.type === "application/dicom") {
    $("preview-caption").textContent = `Chosen: ${file.name}. A browser cannot show DICOM; the image appears with the result.`;
  } else {
    $("preview-caption").textContent = `Chosen: ${file.name}. Not a PNG or JPEG by its name; the service checks its content.`;
  }
}

function item(list, term, value, help) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  const strong = document.createElement("span");
  strong.className = "value";
  strong.textContent = value;
  const explain = document.createElement("span");
  explain.className = "help";
  explain.textContent = help;
  dd.append(strong, explain);
  list.append(dt, dd);
}

// The contract's uncertainty, each item with what it means in plain words.
function renderUncertainty(p) {
  const list = $("uncertainty");
  if (p.threshold != null && p.positive_label) {
    item(list, "Decision threshold (locked at validation)",
      `${p.positive_label} when its probability is ${pct(p.threshold)} or more`,
      "This cut-off was chosen once, on the validation cases, before the model was tested, and is never " +
      "adjusted afterwards: the sensitivity and specificity reported for the model hold at this cut-off.");
  }
  const u = p.uncertainty || {};
  if (typeof u.entropy === "number") {
    item(list, "Entropy", `${u.entropy.toFixed(2)} (0 = certain, 1 = no preference)`,
      "How evenly the probability is spread over the classes. Near 0: the model strongly favours one class. " +
      "Near 1: it cannot tell the classes apart.");
  }
  if (Array.isArray(p.prediction_set) && typeof p.set_coverage === "number") {
    const coverage = Math.round(100 * p.set_coverage);
    item(list, `Plausible classes (${coverage} % coverage)`,
      p.prediction_set.length ? p.prediction_set.join(", ") : "none",
      `The classes the model cannot rule out for this image. For cases like those it was validated on, ` +
      `the true class is in this set about ${coverage} times in 100. One class: a clear answer. ` +
      "Two or more: the model cannot decide between them. None: no class fits well.");
  }
  const check = p.input_check || {};
  if (check.status) {
    const score = typeof check.ood_score === "number" && typeof check.ood_threshold === "number" ?
      ` (score ${check.ood_score.toFixed(1)}, limit ${check.ood_threshold.toFixed(1)})` : "";
    item(list, "Input check", `${check.status}${score}`,
      "Whether this image resembles the images the model was validated on. 'unusual': a different kind of " +
      "image, device or quality, so the answer may be unreliable. 'not checked': this model has no such check.");
  }
  item(list, "Referral", p.refer ? "yes: refer for clinician review" : "no",
    "A case is referred when the plausible classes are not exactly the model's finding, or when the input " +
    "check finds the image unusual. The reasons, if any, are listed at the top of the result.");
}

function renderRecordCheck(check) {
  if (!check) return;
  const lines = [];
  for (const name of check.imputed || []) {
    lines.push(`${name}: no value, so the value typical of the training data was used.`);
  }
  for (const c of check.clipped || []) {
    lines.push(`${c.field}: ${c.value} is beyond the values seen in training; ${c.used} was used.`);
  }
  if (!lines.length) lines.push("Every value was used as sent.");
  for (const line of lines) {
    const li = document.createElement("li");
    li.textContent = line;
    $("record-list").append(li);
  }
  $("record-notes").hidden = false;
}

function showResult(body, fileName) {
  const p = body.prediction;
  const positive = p.positive_label || (model && model.positive_label);
  $("result-source").textContent = p.source || fileName || "the record sent";
  const label = $("result-label");
  label.textContent = p.decision || p.label;
  label.className = positive ? (label.textContent === positive ? "positive" : "negative") : "";
  $("result-score").textContent = p.score == null ? "" : `Probability of ${positive || p.label}: ${pct(p.score)}`;
  const rows = document.querySelector("#probabilities tbody");
  for (const [name, prob] of Object.entries(p.probabilities || {})) {
    const tr = document.createElement("tr");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * prob).toFixed(1)}%`;
    const cells = [name, pct(prob), bar].map((content) => {
      const td = document.createElement("td");
      td.append(content);
      return td;
    });
    cells[2].className = "bar-cell";
    tr.append(...cells);
    rows.append(tr);
  }
  $("refer-banner").hidden = p.refer !== true;
  for (const reason of p.referral_reasons || []) {
    const li = document.createElement("li");
    li.textContent = reason;
    $("refer-reasons").append(li);
  }
  renderUncertainty(p);
  renderRecordCheck(body.record_check);
  if (body.image_png) {
    $("original").src = body.image_png;
    $("overlay-base").src = body.image_png;
    if (body.heatmap_png) $("heatmap").src = body.heatmap_png;
    $("map-caption").textContent = body.explanation || "No heat map for this model";
    $("pictures").hidden = false;
  }
  const identity = body.model && (body.model.text || `${body.model.name} ${body.model.version}`);
  $("result-meta").textContent = `Model ${identity} · request ${body.request_id} · ${body.latency_ms} ms`;
  $("result").hidden = false;
}

function errorText(status, body) {
  const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
  if (status === 503) return `The service is busy; try again in a moment. (${detail || "503"})`;
  return `Not accepted (${status}): ${detail || "no reason given"}`;
}

async function predict(event) {
  event.preventDefault();
  clearResult();
  if (!model) await loadModel();
  if (!model) return;
  const form = new FormData();
  const file = $("file").files[0];
  if (file) form.append("file", file);
  const record = $("record").value.trim();
  if (!$("record-block").hidden && record) form.append("record", record);
  if (!file && !record) { setStatus("Choose an image first.", true); return; }
  const name = file ? file.name : "the record";
  $("predict-button").disabled = true;
  setStatus(`Predicting for ${name}…`);
  try {
    const res = await fetch("/api/v1/predict", {
      method: "POST", headers: authHeaders(), body: form, credentials: "same-origin",
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) { setStatus(errorText(res.status, body), true); return; }
    showResult(body, file ? file.name : null);
    const p = body.prediction;
    const score = p.score == null ? "" : ` (probability ${pct(p.score)})`;
    setStatus(`Result for ${p.source || name}: ${p.decision || p.label}${score}.` +
      (p.refer ? " Referred for clinician review." : ""));
  } catch (err) {
    setStatus("The service did not answer.", true);
  } finally {
    $("predict-button").disabled = false;
  }
}

function onOpacity() {
  const value = Number($("opacity").value);
  $("heatmap").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value} %`;
}

window.addEventListener("DOMContentLoaded", () => {
  typedKey = sessionStorage.getItem("medpredict-key") || "";
  if (typedKey) $("api-key").value = typedKey;
  $("api-key").addEventListener("change", onKeyChange);
  $("file").addEventListener("change", showPreview);
  $("opacity").addEventListener("input", onOpacity);
  $("predict-form").addEventListener("submit", predict);
  onOpacity();
  loadModel();
});
