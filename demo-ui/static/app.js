// Squire's demo page: sends the form to POST /api/search and shows the
// results and every stage. Plain JavaScript, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("query"), fileInput = $("image"), drop = $("drop"), preview = $("preview");
let health = null;
let lastBody = null;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

async function loadHealth() {
  try {
    const r = await fetch("/api/health");
    health = await r.json();
    $("collection").textContent = `${health.images} images · model ${String(health.model).split("/").pop()}` + (health.mllm ? ` · MLLM ${health.mllm.model}` : " · no MLLM");
    const sel = $("rerank");
    const names = { superglobal: "SuperGlobal refinement", ebr: "EBR (grid, one MLLM call)", cotrr: "CoTRR (chain of thought)", pointwise: "pointwise (Yes/No)" };
    for (const s of health.stages) sel.append(el("option", { value: s, text: names[s] || s }));
    if (health.stages.includes("superglobal") && health.stages.includes("ebr")) {
      sel.append(el("option", { value: "superglobal,ebr", text: "SuperGlobal, then EBR" }));
    }
    $("sqaf-wrap").hidden = !health.mllm;
  } catch (e) {
    $("collection").textContent = "the server does not answer /api/health";
  }
}

function setFile(file) {
  if (!file) return;
  const dt = new DataTransfer();
  dt.items.add(file);
  fileInput.files = dt.files;
  showPreview();
}

function showPreview() {
  const f = fileInput.files[0];
  preview.hidden = !f;
  $("clear-image").hidden = !f;
  if (f) { preview.src = URL.createObjectURL(f); preview.alt = `reference image ${f.name}`; }
}

fileInput.addEventListener("change", showPreview);
$("clear-image").addEventListener("click", () => { fileInput.value = ""; showPreview(); fileInput.focus(); });
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => setFile(e.dataTransfer.files[0]));
$("rerank").addEventListener("change", () => { if (lastBody) run(lastBody); });

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const body = new FormData();
  const text = $("text").value.trim();
  if (text) body.append("text", text);
  if (fileInput.files[0]) body.append("image", fileInput.files[0]);
  if (!text && !fileInput.files[0]) { showError("Type a query, add an image, or both."); return; }
  run(body);
});

function withOptions(body) {
  const b = new FormData();
  for (const [k, v] of body.entries()) if (!["k", "rerank", "sqaf"].includes(k)) b.append(k, v);
  b.append("k", $("k").value);
  b.append("rerank", $("rerank").value);
  if ($("sqaf").checked && !$("sqaf-wrap").hidden) b.append("sqaf", "true");
  return b;
}

// Each search gets a number; an answer that arrives after a newer search
// started is dropped, so a quick reranker switch never shows stale results.
let latest = 0;

async function run(body) {
  lastBody = body;
  const mine = ++latest;
  showError("");
  const go = $("go");
  go.disabled = true; go.textContent = "Searching…";
  document.body.setAttribute("aria-busy", "true");
  try {
    const r = await fetch("/api/search", { method: "POST", body: withOptions(body) });
    const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (mine !== latest) return;
    if (!r.ok) { showError(data.error || `HTTP ${r.status}`); return; }
    render(data);
  } catch (e) {
    if (mine === latest) showError(`The server could not be reached: ${e}`);
  } finally {
    if (mine === latest) {
      go.disabled = false; go.textContent = "Search";
      document.body.removeAttribute("aria-busy");
    }
  }
}

function movement(rank, before) {
  if (before == null) return el("span", { class: "move new", title: "not in the previous stage's list", text: "new" });
  const d = before - rank;
  if (d > 0) return el("span", { class: "move up", title: `up from ${before}`, text: `▲${d}` });
  if (d < 0) return el("span", { class: "move down", title: `down from ${before}`, text: `▼${-d}` });
  return el("span", { class: "move", title: "unchanged", text: "=" });
}

function thumb(r, cls) {
  return el("img", { src: `/api/thumbs/${r.id}`, alt: r.path, loading: "lazy", class: cls || "" });
}

function render(d) {
  const q = d.query;
  const t = d.timings || {};
  const summary = $("summary");
  summary.hidden = false;
  summary.replaceChildren();
  summary.append(el("p", { text: `${q.kind} query · ${d.results.length} results from ${d.store.images} images (${d.store.method}) · ${(t.total_ms || 0).toFixed(1)} ms` }));
  if (d.sqaf && d.sqaf.caption) summary.append(el("p", { class: "caption" }, el("strong", { text: "SQAF caption: " }), d.sqaf.caption));
  if (d.sqaf && d.sqaf.fallback) summary.append(el("p", { class: "caption", text: `SQAF fell back: ${d.sqaf.fallback}` }));
  const table = el("table", { class: "timings" }, el("tr", {}, el("th", { text: "stage" }), el("th", { text: "ms" })));
  for (const [k, v] of Object.entries(t)) table.append(el("tr", {}, el("th", { text: k.replace(/_ms$/, "") }), el("td", { text: Number(v).toFixed(2) })));
  summary.append(table);
  if (d.cost && d.cost.total && d.cost.total.calls > 0) {
    const c = d.cost.total;
    summary.append(el("p", { class: "muted", text: `MLLM: ${c.calls} call(s), ${c.images} image(s), ${c.prompt_tokens} + ${c.completion_tokens} tokens, ${c.cache_hits} from cache` }));
  }

  $("results-h").hidden = false;
  const list = $("results");
  list.replaceChildren();
  for (const r of d.results) {
    const again = el("button", { type: "button", class: "small", text: "More like this" });
    again.addEventListener("click", () => {
      const b = new FormData();
      b.append("image_id", r.id);
      $("text").value = "";
      fileInput.value = ""; showPreview();
      run(b);
    });
    const meta = el("div", { class: "meta" },
      el("span", {}, el("strong", { text: `#${r.rank}` }), " ", r.first_stage_rank != null || d.stages.length ? movement(r.rank, r.first_stage_rank) : null),
      el("span", { text: `score ${r.score.toFixed(4)}` }),
      el("span", { class: "path", text: r.path }));
    const link = el("a", { href: `/api/images/${r.id}`, target: "_blank", rel: "noopener", "aria-label": `open ${r.path}` }, thumb(r));
    list.append(el("li", { class: "card", "data-id": r.id }, link, meta, again));
  }

  const stages = $("stages");
  stages.replaceChildren();
  $("stages-section").hidden = !(d.per_stage && d.per_stage.length);
  for (const s of d.per_stage || []) {
    const box = el("div", { class: "stage", "data-stage": s.stage });
    const label = { first: "First stage", superglobal: "SuperGlobal refinement", ebr: "EBR: one MLLM call on a marked grid", cotrr: "CoTRR: listwise chain of thought", pointwise: "Pointwise Yes/No" }[s.stage] || s.stage;
    box.append(el("h3", { text: `${label} · ${Number(s.ms).toFixed(1)} ms` }));
    const ol = el("ol");
    for (const r of s.results) {
      ol.append(el("li", {}, thumb(r), el("span", { text: `#${r.rank} ` }), s.stage === "first" ? null : movement(r.rank, r.previous_rank)));
    }
    box.append(ol);
    const detail = d[s.stage];
    if (detail) {
      for (const url of detail.grid_images || []) box.append(el("img", { class: "ebr-grid", src: url, alt: `the grid sent to the MLLM by ${s.stage}` }));
      if (detail.fallback) box.append(el("p", { class: "error", text: `kept the previous order: ${detail.fallback}` }));
      if ((detail.answers || []).length) {
        box.append(el("details", {}, el("summary", { text: "MLLM answer" }), el("pre", { text: detail.answers.join("\n---\n") })));
      }
    }
    stages.append(box);
  }
}

loadHealth();
