// The medpredict web page: load the model card with the API key, send an upload, show the result.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let loadedKey = null;  // the key the model card was loaded with; change events repeat on blur

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function key() { return $("api-key").value.trim(); }

async function loadModel() {
  const current = key();
  if (!current || current === loadedKey) return;
  loadedKey = current;
  model = null;
  const res = await fetch("/api/v1/model", { headers: { "X-API-Key": current } });
  if (!res.ok) {
    loadedKey = null;
    setStatus(res.status === 401 ? "The API key was refused." : "Could not load the model.", true);
    return;
  }
  sessionStorage.setItem("medpredict-key", current);
  model = await res.json();
  const threshold = model.threshold == null ? "" : ` · threshold ${Number(model.threshold).toFixed(2)}`;
  $("model-line").textContent = `Model ${model.name} · version ${model.version} · classes: ${model.labels.join(", ")}${threshold}`;
  $("record-block").hidden = !(model.input_kind === "table" || model.input_kind === "fusion");
  if ($("status").className === "error") setStatus("");
}

function pct(p) { return `${(100 * p).toFixed(1)} %`; }

function showResult(body) {
  const p = body.prediction;
  const positive = model && model.positive_label;
  const label = $("result-label");
  label.textContent = p.label;
  label.className = positive ? (p.label === positive ? "positive" : "negative") : "";
  $("result-score").textContent = p.score == null ? "" :
    `Probability of ${positive || p.label}: ${pct(p.score)}`;
  $("result-threshold").textContent = p.threshold == null ? "" :
    `Decision threshold (locked at validation): ${pct(p.threshold)}`;
  const rows = Object.entries(p.probabilities).map(([name, prob]) =>
    `<tr><td>${escapeHtml(name)}</td><td>${pct(prob)}</td><td class="bar-cell"><div class="bar" style="width:${(100 * prob).toFixed(1)}%"></div></td></tr>`);
  document.querySelector("#probabilities tbody").innerHTML = rows.join("");
  renderUncertainty(p);
  $("result-meta").textContent = `Request ${body.request_id} · model ${body.model.version} · ${body.latency_ms} ms`;
  if (body.overlay_png) {
    $("overlay").src = body.overlay_png;
    $("explanation-kind").textContent = body.explanation || "Grad-CAM";
    $("overlay-figure").hidden = false;
  } else {
    $("overlay-figure").hidden = true;
  }
  $("result").hidden = false;
}

// The contract's uncertainty in words a clinician can use: the prediction set, the
// referral and its reasons, the input check.
function renderUncertainty(p) {
  const lines = [];
  const u = p.uncertainty || {};
  if (typeof u.entropy === "number") {
    lines.push(`Entropy ${u.entropy.toFixed(2)} (0 = certain, 1 = no preference between classes)`);
  }
  if (Array.isArray(p.prediction_set) && typeof p.set_coverage === "number") {
    const set = p.prediction_set.length ? p.prediction_set.join(", ") : "none";
    lines.push(`Plausible classes at ${Math.round(100 * p.set_coverage)} % coverage: ${set}`);
  }
  const check = p.input_check || {};
  if (check.status && check.status !== "not checked") {
    lines.push(`Input check: ${check.status}`);
  }
  for (const reason of p.referral_reasons || []) {
    lines.push(`Referral: ${reason}`);
  }
  const list = $("result-uncertainty");
  list.innerHTML = "";
  for (const line of lines.length ? lines : ["not reported by this model"]) {
    const item = document.createElement("li");
    item.textContent = line;
    list.appendChild(item);
  }
  $("refer-banner").hidden = p.refer !== true;
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function predict(event) {
  event.preventDefault();
  if (!model) await loadModel();
  if (!model) return;
  const form = new FormData();
  const file = $("file").files[0];
  if (file) form.append("file", file);
  const record = $("record").value.trim();
  if (!$("record-block").hidden && record) form.append("record", record);
  if (!file && !record) { setStatus("Choose an image first.", true); return; }
  $("predict-button").disabled = true;
  setStatus("Predicting…");
  try {
    const res = await fetch("/api/v1/predict", { method: "POST", headers: { "X-API-Key": key() }, body: form });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      setStatus(`Not accepted (${res.status}): ${detail || res.statusText}`, true);
      return;
    }
    showResult(body);
    setStatus("Done.");
  } catch (err) {
    setStatus("The service did not answer.", true);
  } finally {
    $("predict-button").disabled = false;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("medpredict-key");
  if (saved) { $("api-key").value = saved; loadModel(); }
  $("api-key").addEventListener("change", loadModel);
  $("predict-form").addEventListener("submit", predict);
});
