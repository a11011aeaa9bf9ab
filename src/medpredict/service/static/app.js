// The medpredict web page: load the model card, send an upload, show the result with its uncertainty
// in plain words and the heat map beside the original. Every new request or error clears the last result.
// Every word shown comes from the page's language table (S, put into the page by the server from the
// web.js.* keys of report/strings.yaml); values of the user's data are shown as they are, marked
// translate="no".
"use strict";

const $ = (id) => document.getElementById(id);
const S = JSON.parse($("page-strings").textContent);
let model = null;
let typedKey = "";     // only when the page is public (--public-docs); otherwise the browser's login is used
let previewUrl = null;

// A value of the user's data (file name, class label, the model's identity): shown as it is.
function data(value) {
  const span = document.createElement("span");
  span.translate = false;
  span.textContent = String(value);
  return span;
}

// Values of the user's data, one after the other, separated as the language separates a list.
function dataList(values) {
  const out = document.createDocumentFragment();
  values.forEach((value, i) => {
    if (i) out.append(S.list_separator);
    out.append(data(value));
  });
  return out;
}

// The wording of `key` with its {fields} filled in, as nodes (a field may be a node, e.g. data(...),
// copied at each place: a language may name it twice). A key missing from the table shows as
// itself, which the untranslated-text test catches.
function say(key, fields = {}) {
  const out = document.createDocumentFragment();
  for (const part of (S[key] ?? key).split(/(\{\w+\})/)) {
    const field = /^\{(\w+)\}$/.exec(part);
    const value = field && field[1] in fields ? fields[field[1]] : part;
    if (value instanceof Node) out.append(value.cloneNode(true));
    else if (value !== "") out.append(String(value));
  }
  return out;
}

// The same as plain text, for a field inside another sentence.
function sayText(key, fields = {}) { return say(key, fields).textContent; }

// A term of the service's answers (referral reason, heat-map method) in the page's language; as sent if unknown.
function term(kind, value) { return S[`${kind}:${value}`] ?? value; }

function setStatus(content, isError) {
  const el = $("status");
  el.replaceChildren(content || "");
  el.className = isError ? "error" : "muted";
}

function authHeaders() { return typedKey ? { "X-API-Key": typedKey } : {}; }

function pct(p) { return `${(100 * p).toFixed(1)} %`; }

async function loadModel() {
  let res;
  try {
    res = await fetch("/api/v1/model", { headers: authHeaders(), credentials: "same-origin" });
  } catch (err) {
    setStatus(say("no_answer"), true);
    return;
  }
  if (res.status === 401) {
    model = null;
    $("key-block").hidden = false;
    $("model-line").replaceChildren(say("enter_key"));
    if (typedKey) setStatus(say("key_refused"), true);
    return;
  }
  if (!res.ok) { setStatus(say("model_failed"), true); return; }
  model = await res.json();
  if (typedKey) sessionStorage.setItem("medpredict-key", typedKey);
  const threshold = model.threshold == null || !model.positive_label ? "" :
    say("model_threshold", { label: data(model.positive_label), threshold: pct(model.threshold) });
  $("model-line").replaceChildren(
    say("model_line", { identity: data(model.identity), labels: dataList(model.labels), threshold }));
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
  let key = "chosen_other";
  if (browserCanShow) {
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    key = "chosen";
  } else if (/\.dcm$/i.test(file.name) || file.type === "application/dicom") {
    key = "chosen_dicom";
  }
  $("preview-caption").replaceChildren(say(key, { name: data(file.name) }));
}

function item(list, term, value, help) {
  const dt = document.createElement("dt");
  dt.append(term);
  const dd = document.createElement("dd");
  const strong = document.createElement("span");
  strong.className = "value";
  strong.append(value);
  const explain = document.createElement("span");
  explain.className = "help";
  explain.append(help);
  dd.append(strong, explain);
  list.append(dt, dd);
}

// The contract's uncertainty, each item with what it means in plain words.
function renderUncertainty(p) {
  const list = $("uncertainty");
  if (p.threshold != null && p.positive_label) {
    item(list, say("threshold_term"),
      say("threshold_value", { label: data(p.positive_label), threshold: pct(p.threshold) }),
      say("threshold_help"));
  }
  const u = p.uncertainty || {};
  if (typeof u.entropy === "number") {
    item(list, say("entropy_term"), say("entropy_value", { entropy: u.entropy.toFixed(2) }), say("entropy_help"));
  }
  if (Array.isArray(p.prediction_set) && typeof p.set_coverage === "number") {
    const coverage = Math.round(100 * p.set_coverage);
    item(list, say("set_term", { coverage }),
      p.prediction_set.length ? dataList(p.prediction_set) : say("set_none"),
      say("set_help", { coverage }));
  }
  const check = p.input_check || {};
  if (check.status) {
    const score = typeof check.ood_score === "number" && typeof check.ood_threshold === "number" ?
      sayText("check_score", { score: check.ood_score.toFixed(1), limit: check.ood_threshold.toFixed(1) }) : "";
    const verdict = S[`check.${check.status}`] ? say(`check.${check.status}`) : data(check.status);
    const value = document.createDocumentFragment();
    value.append(verdict, score);
    item(list, say("check_term"), value, say("check_help"));
  }
  item(list, say("referral_term"), say(p.refer ? "referral_yes" : "referral_no"), say("referral_help"));
}

function renderRecordCheck(check) {
  if (!check) return;
  const lines = [];
  for (const name of check.imputed || []) lines.push(say("record_imputed", { name: data(name) }));
  for (const c of check.clipped || []) {
    lines.push(say("record_clipped", { name: data(c.field), value: data(c.value), used: data(c.used) }));
  }
  if (!lines.length) lines.push(say("record_as_sent"));
  for (const line of lines) {
    const li = document.createElement("li");
    li.append(line);
    $("record-list").append(li);
  }
  $("record-notes").hidden = false;
}

function mapCaption(body) {
  const of = body.explanation_of;
  if (!of) return body.explanation ? data(body.explanation) : say("no_map");
  return say("map_caption", { method: term("method", of.method), label: data(of.class_label) });
}

function showResult(body, fileName) {
  const p = body.prediction;
  const positive = p.positive_label || (model && model.positive_label);
  $("result-source").replaceChildren(p.source || fileName || sayText("record_sent"));
  const label = $("result-label");
  label.textContent = p.decision || p.label;
  label.className = positive ? (label.textContent === positive ? "positive" : "negative") : "";
  $("result-score").replaceChildren(p.score == null ? "" :
    say("score", { label: data(positive || p.label), probability: pct(p.score) }));
  const rows = document.querySelector("#probabilities tbody");
  for (const [name, prob] of Object.entries(p.probabilities || {})) {
    const tr = document.createElement("tr");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * prob).toFixed(1)}%`;
    const cells = [data(name), pct(prob), bar].map((content) => {
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
    li.textContent = term("reason", reason);
    $("refer-reasons").append(li);
  }
  renderUncertainty(p);
  renderRecordCheck(body.record_check);
  if (body.image_png) {
    $("original").src = body.image_png;
    $("overlay-base").src = body.image_png;
    if (body.heatmap_png) $("heatmap").src = body.heatmap_png;
    $("map-caption").replaceChildren(mapCaption(body));
    $("pictures").hidden = false;
  }
  const identity = body.model && (body.model.text || `${body.model.name} ${body.model.version}`);
  $("result-meta").replaceChildren(
    say("result_meta", { identity: data(identity), request: data(body.request_id), ms: body.latency_ms }));
  $("result").hidden = false;
}

// An error in the page's language, chosen by the status; the service's own detail (it names the
// file or field, in English) follows it as it was sent.
function errorText(status, body) {
  const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
  const sent = detail ? data(detail) : say("no_reason");
  if (status === 503) return say("busy", { detail: detail ? sent : "503" });
  const reason = S[`reason.${status}`] ? `reason.${status}` : "reason.other";
  return say("not_accepted", { status, reason: say(reason), detail: sent });
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
  if (!file && !record) { setStatus(say("choose_first"), true); return; }
  const name = file ? data(file.name) : say("the_record");
  $("predict-button").disabled = true;
  setStatus(say("predicting", { name }));
  try {
    const res = await fetch("/api/v1/predict", {
      method: "POST", headers: authHeaders(), body: form, credentials: "same-origin",
    });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) { setStatus(errorText(res.status, body), true); return; }
    showResult(body, file ? file.name : null);
    const p = body.prediction;
    const score = p.score == null ? "" : sayText("result_status_score", { probability: pct(p.score) });
    const source = p.source ? data(p.source) : file ? data(file.name) : say("the_record");
    const done = say("result_status", { source, decision: data(p.decision || p.label), score });
    if (p.refer) done.append(say("referred_status"));
    setStatus(done);
  } catch (err) {
    setStatus(say("no_answer"), true);
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
