// "How it learned": the model's timeline.jsonl (timeline.py: the same prompt sampled at step 0 and at each evaluation
// of its training). A slider over the steps shows that step's text and losses, and a loss curve (inline SVG) marks the
// step. The file is read from the model's folder (window.gptPage.ready's baseUrl, from app.js); a model without one
// (trained before the timeline existed, or another repo) gets a line saying why, and no controls.
"use strict";

(() => {
  const CSS = `
    #timeline { margin-top: 1.5em; border: 1px solid #d1d5db; border-radius: 6px; padding: .4em .8em .8em; }
    #timeline h2 { font-size: 1.1em; margin: .3em 0; }
    #timeline-status { color: #6b7280; font-size: .9em; }
    .timeline-row { display: flex; flex-wrap: wrap; gap: 1.2em; margin-top: .6em; }
    .timeline-row > div { flex: 1 1 300px; min-width: 0; }
    #timeline-step { width: 100%; padding: 0; border: 0; }
    #timeline-losses { font-size: .9em; margin-bottom: .3em; }
    #timeline-text { white-space: pre-wrap; overflow-wrap: anywhere; font-family: ui-monospace, monospace; font-size: .95em;
                     border: 1px solid #d1d5db; border-radius: 6px; padding: .6em; margin: 0; background: #f9fafb; }
    #timeline-curve { width: 100%; height: auto; display: block; }
    #timeline-curve text { font: 11px system-ui, sans-serif; fill: #4b5563; }
    .timeline-key { font-size: .85em; color: #4b5563; }
    .timeline-key b { display: inline-block; width: 1.2em; height: .25em; vertical-align: middle; margin: 0 .3em 0 .6em; }`;
  const NONE =
    "it was trained before train_gpt2.py wrote a timeline, or with --timeline-prompt ''. " +
    "A model trained with train_gpt2.py has one: its sample of the same prompt at each evaluation.";
  const W = 360, H = 220, PAD = { left: 44, right: 12, top: 12, bottom: 34 }; // the curve's SVG units
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const fixed = (x) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(4) : "not recorded");

  function build() {
    const style = document.createElement("style");
    style.textContent = CSS;
    document.head.append(style);
    $("timeline").innerHTML = `
      <h2 id="timeline-title">How it learned</h2>
      <div id="timeline-status" role="status">Reading the model's timeline…</div>
      <div id="timeline-view" hidden>
        <p id="timeline-about"><small></small></p>
        <label for="timeline-step">Step <small>(arrow keys move it, one evaluation at a time)</small></label>
        <input id="timeline-step" type="range" min="0" step="1">
        <div class="timeline-row">
          <div>
            <div id="timeline-losses" aria-live="polite"></div>
            <pre id="timeline-text"></pre>
          </div>
          <div>
            <svg id="timeline-curve" viewBox="0 0 ${W} ${H}" role="img"></svg>
            <div class="timeline-key"><b style="background:#ea580c"></b>val loss<b style="background:#2563eb"></b>train loss
              <b style="background:#111827"></b>this step</div>
          </div>
        </div>
      </div>`;
  }

  // Python's json writes NaN and Infinity, which JSON.parse refuses: read them as null, as app.js reads config.json
  function parseRows(text) {
    const rows = text.split("\n").filter((line) => line.trim()).map((line) =>
      JSON.parse(line.replace(/([:[,]\s*)-?(?:NaN|Infinity)(?=\s*[,\]}])/g, "$1null")));
    if (!rows.length) throw new Error("the file is empty");
    for (const r of rows)
      if (!r || typeof r.text !== "string" || !Number.isInteger(r.step)) throw new Error("a row lacks its step or text");
    return rows;
  }

  // The folder app.js reads the model from (gptPage.ready's baseUrl). The timeline needs no model: when app.js could
  // not load it (no ONNX Runtime, no onnx/model.onnx), the page's own folder (the meta tag) still has its timeline,
  // unless ?model= asked for another one (app.js alone decides which addresses a page may read).
  async function modelFolder() {
    try {
      if (window.gptPage && window.gptPage.ready) return (await window.gptPage.ready).baseUrl;
    } catch (e) {
      if (new URLSearchParams(location.search).has("model")) throw new Error(`the model was not loaded (${e.message})`);
    }
    if (new URLSearchParams(location.search).has("model")) throw new Error("the page did not say which model it runs");
    return document.querySelector('meta[name="model-url"]').content;
  }

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // The val and train losses over the steps, a dot at each evaluation, and a vertical line at the chosen step.
  function drawCurve(rows, index) {
    const series = [["val_loss", "#ea580c"], ["train_loss", "#2563eb"]];
    const finite = (x) => typeof x === "number" && Number.isFinite(x);
    const losses = rows.flatMap((r) => series.map(([key]) => r[key]).filter(finite));
    const lo = losses.length ? Math.min(...losses) : 0, hi = losses.length ? Math.max(...losses) : 1;
    const first = rows[0].step, last = rows[rows.length - 1].step;
    const x = (step) => PAD.left + ((step - first) / Math.max(1, last - first)) * (W - PAD.left - PAD.right);
    const y = (loss) => PAD.top + ((hi - loss) / Math.max(1e-9, hi - lo)) * (H - PAD.top - PAD.bottom);
    const parts = [
      svg("line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, stroke: "#9ca3af" }),
      svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom, stroke: "#9ca3af" }),
      svg("text", { x: PAD.left - 4, y: y(hi) + 4, "text-anchor": "end" }, hi.toFixed(2)),
      svg("text", { x: PAD.left - 4, y: y(lo) + 4, "text-anchor": "end" }, lo.toFixed(2)),
      svg("text", { x: PAD.left, y: H - PAD.bottom + 14, "text-anchor": "start" }, first.toLocaleString("en-US")),
      svg("text", { x: W - PAD.right, y: H - PAD.bottom + 14, "text-anchor": "end" }, last.toLocaleString("en-US")),
      svg("text", { x: (PAD.left + W - PAD.right) / 2, y: H - 4, "text-anchor": "middle" }, "step"),
    ];
    for (const [key, color] of series) {
      const pts = rows.filter((r) => finite(r[key])).map((r) => [x(r.step), y(r[key])]);
      if (!pts.length) continue;
      parts.push(svg("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
      for (const [cx, cy] of pts) parts.push(svg("circle", { cx, cy, r: 2.5, fill: color }));
    }
    const at = rows[index];
    parts.push(svg("line", { id: "timeline-marker", x1: x(at.step), x2: x(at.step), y1: PAD.top, y2: H - PAD.bottom,
      stroke: "#111827", "stroke-width": 1.5, "stroke-dasharray": "4 3" }));
    if (finite(at.val_loss)) parts.push(svg("circle", { cx: x(at.step), cy: y(at.val_loss), r: 5, fill: "none", stroke: "#111827", "stroke-width": 2 }));
    const curve = $("timeline-curve");
    curve.setAttribute("aria-label", `Loss curve over ${rows.length} evaluations; the marked step is ${at.step}`);
    curve.replaceChildren(...parts);
  }

  function showStep(rows, index) {
    const r = rows[index];
    const tokens = Number.isInteger(r.tokens) ? ` · ${r.tokens.toLocaleString("en-US")} tokens` : "";
    $("timeline-losses").textContent =
      `Step ${r.step.toLocaleString("en-US")}${tokens} · val loss ${fixed(r.val_loss)} · train loss ${fixed(r.train_loss)}`;
    $("timeline-text").textContent = r.text; // text, never HTML: the file is data
    $("timeline-step").setAttribute("aria-valuetext", `step ${r.step}, evaluation ${index + 1} of ${rows.length}`);
    drawCurve(rows, index);
  }

  async function start() {
    build();
    const status = $("timeline-status");
    let url;
    try {
      url = (await modelFolder()) + "timeline.jsonl";
    } catch (e) {
      status.textContent = `No timeline to show: ${e.message}.`;
      return;
    }
    let rows;
    try {
      const res = await fetch(url);
      if (res.status === 404) {
        status.textContent = `This model has no timeline.jsonl: ${NONE}`;
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      rows = parseRows(await res.text());
    } catch (e) {
      status.textContent = `No timeline to show: ${url} could not be read (${e.message}).`;
      return;
    }
    const r0 = rows[0];
    $("timeline-about").firstElementChild.textContent =
      `The prompt ${JSON.stringify(r0.prompt ?? "")} sampled from the model at step 0 and at each evaluation of its ` +
      `training (${r0.chars} characters, temperature ${r0.temperature}, seed ${r0.seed}): the samples differ only ` +
      `by what it had learned.`;
    const slider = $("timeline-step");
    slider.max = String(rows.length - 1);
    slider.value = String(rows.length - 1);
    slider.addEventListener("input", () => showStep(rows, Number(slider.value)));
    showStep(rows, rows.length - 1);
    status.textContent = "";
    status.hidden = true;
    $("timeline-view").hidden = false;
  }

  start().finally(() => { $("timeline").dataset.state = "done"; });
})();
