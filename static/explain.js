// "Inside the model": what the model does with the prompt + generated text, from onnx/explain.onnx (export_onnx.py).
// For the character picked in a strip of the text: its likeliest next characters (the real next one marked), the
// characters it attended to in a chosen layer and head, a grid of every layer x head (a T x T heat map each) to
// pick from, and the logit lens (the guess after each layer). The numbers are GPT.explain's (model_gpt2.py).
// app.js hands over what it loaded (window.gptPage.ready) and says when a text is written ("gpt:generated").
// explain.onnx's weights are external data inside model.onnx: the page passes the bytes it already has.
"use strict";

(() => {
  const TOP = 5; // next characters shown per position
  const LENS_TOP = 3; // guesses listed per layer in the logit lens
  const CSS = `
    #inside { margin-top: 1.5em; border: 1px solid #d1d5db; border-radius: 6px; padding: .4em .8em; }
    #inside > summary { font-weight: 600; font-size: 1.1em; cursor: pointer; padding: .3em 0; }
    #inside h3 { font-size: .95em; margin: .8em 0 .3em; }
    #inside-strip { display: flex; flex-wrap: wrap; font-family: ui-monospace, monospace; font-size: 1em; line-height: 1.6;
                    border: 1px solid #d1d5db; border-radius: 6px; padding: .4em; background: #f9fafb; max-height: 14em; overflow-y: auto; }
    #inside-strip:focus-within { outline: 2px solid #2563eb; }
    #inside-strip [role=option] { min-width: .7em; text-align: center; cursor: pointer; border-radius: 2px; white-space: pre; }
    #inside-strip [role=option].blank { color: #9ca3af; }
    #inside-strip [role=option][aria-selected=true] { outline: 2px solid #1d4ed8; color: #1d4ed8; font-weight: 700; }
    #inside-strip [role=option]:focus { outline: 3px solid #2563eb; }
    #inside-strip .break { flex-basis: 100%; height: 0; }
    .inside-row { display: flex; flex-wrap: wrap; gap: 1.5em; }
    .inside-row > div { flex: 1 1 280px; min-width: 0; }
    #inside-candidates { list-style: none; padding: 0; margin: 0; }
    #inside-candidates li { display: grid; grid-template-columns: 6.5em 1fr 3.6em; align-items: center; gap: .4em; margin: .15em 0; }
    #inside-candidates .bar { height: .9em; background: #fb923c; border-radius: 2px; }
    #inside-candidates li.real { font-weight: 700; }
    #inside-candidates li.real .bar { background: #16a34a; }
    #inside-candidates .ch, #inside-lens .ch { font-family: ui-monospace, monospace; }
    #inside-lens { border-collapse: collapse; font-size: .9em; }
    #inside-lens td, #inside-lens th { padding: .15em .5em; text-align: left; border-bottom: 1px solid #e5e7eb; }
    #inside-heads { display: grid; gap: .3em; justify-content: start; grid-template-columns: auto repeat(var(--heads), minmax(0, 64px)); align-items: center; }
    #inside-heads button { padding: 0; background: none; border: 2px solid transparent; border-radius: 3px; cursor: pointer; line-height: 0; }
    #inside-heads button[aria-pressed=true] { border-color: #1d4ed8; }
    #inside-heads canvas { width: 100%; aspect-ratio: 1; image-rendering: pixelated; border: 1px solid #e5e7eb; }
    #inside-heads .label { font-size: .8em; color: #6b7280; }`;

  const $ = (id) => document.getElementById(id);
  const shown = (ch) => (ch === "\n" ? "↵" : ch === " " ? "·" : ch === "\t" ? "⇥" : ch);
  const named = (ch) => (ch === "\n" ? "↵ new line" : ch === " " ? "␣ space" : ch === "\t" ? "⇥ tab" : ch);
  const fixed = (p) => p.toFixed(3);
  let explainer = null; // a promise of {page, session}: explain.onnx opened once, on first use
  let view = null; // the last explained window: {chars, T, L, H, V, attention, logits, lens, pos, layer, head}

  function build() {
    const style = document.createElement("style");
    style.textContent = CSS;
    document.head.append(style);
    const section = $("inside");
    section.innerHTML = `
      <summary>Inside the model</summary>
      <p><small>Pick a character of the text (click, or Tab to the strip and use the arrow keys): what the model
        expected next, which characters one of its heads looked at, and how its guess formed layer by layer.</small></p>
      <button id="inside-run" type="button">Look inside the text</button>
      <div id="inside-status" role="status"></div>
      <div id="inside-note" class="note" hidden></div>
      <div id="inside-error" class="error" role="alert" hidden></div>
      <div id="inside-view" hidden>
        <h3 id="inside-strip-label">The text <small id="inside-shading"></small></h3>
        <div id="inside-strip" role="listbox" aria-labelledby="inside-strip-label"></div>
        <div class="inside-row">
          <div>
            <h3 id="inside-candidates-label">Next character</h3>
            <ol id="inside-candidates" aria-labelledby="inside-candidates-label"></ol>
          </div>
          <div>
            <h3>Layer by layer <small>(logit lens: each layer's guess)</small></h3>
            <table id="inside-lens"></table>
          </div>
        </div>
        <h3 id="inside-heads-label">Attention, every layer x head <small>(pick one; rows: characters, columns: what they look at)</small></h3>
        <div id="inside-heads" role="group" aria-labelledby="inside-heads-label"></div>
      </div>`;
    section.addEventListener("toggle", () => section.open && !view && lookInside());
    $("inside-run").addEventListener("click", () => lookInside());
    $("inside-strip").addEventListener("keydown", onKey);
    document.addEventListener("gpt:generated", (e) => section.open && lookInside(e.detail.text));
  }

  function say(id, text) {
    $(id).textContent = text;
    $(id).hidden = !text;
  }

  // The text the page shows: prompt + generated text, else the prompt.
  const currentText = () => $("output").textContent || $("prompt").value;

  async function open() {
    const page = await window.gptPage.ready;
    const res = await fetch(page.baseUrl + "onnx/explain.onnx");
    if (res.status === 404) throw new Error(`${page.baseUrl} has no onnx/explain.onnx (a model pushed by an earlier ` +
      "release): push it again with `python hub.py push` to see inside it");
    if (!res.ok) throw new Error(`${page.baseUrl}onnx/explain.onnx answered HTTP ${res.status}`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    const session = await page.ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
      externalData: [{ path: "model.onnx", data: new Uint8Array(page.modelBytes) }], // the weights, not fetched again
    });
    return { page, session };
  }

  // Run explain.onnx on the last window of `text` and show it. Bad text: a message, no exception.
  async function lookInside(text = currentText()) {
    const section = $("inside");
    section.dataset.state = "running";
    say("inside-error", "");
    say("inside-note", "");
    try {
      if (!window.gptPage) throw new Error("the page's model is not loaded (app.js did not start)");
      explainer = explainer || open();
      explainer.catch(() => (explainer = null)); // a failed load is tried again next time
      const { page, session } = await explainer;
      const chars = Array.from(text || ""); // characters, not UTF-16 units, as Python counts them
      if (!chars.length) throw new Error("There is no text to look inside yet: write a prompt or generate a text first.");
      const unknown = [...new Set(chars.filter((ch) => !page.stoi.has(ch)))];
      const known = chars.filter((ch) => page.stoi.has(ch));
      if (!known.length)
        throw new Error(`None of the text's characters are in the model's vocabulary (${unknown.map((c) => JSON.stringify(c)).join(" ")}): ` +
          "write with characters it knows.");
      const block = page.config.n_positions ?? page.config.block_size;
      const notes = [];
      if (known.length > block)
        notes.push(`Showing the last ${block} characters: the model reads at most ${block}, so the ${known.length - block} before them are left out.`);
      if (unknown.length) notes.push(`Not in the model's vocabulary, left out: ${unknown.map((c) => JSON.stringify(c)).join(" ")}`);
      say("inside-note", notes.join(" "));
      const window_ = known.slice(-block);
      $("inside-status").textContent = `Running the model on ${window_.length} characters…`;
      const ids = BigInt64Array.from(window_, (ch) => BigInt(page.stoi.get(ch)));
      const t0 = performance.now();
      const out = await session.run({ input_ids: new page.ort.Tensor("int64", ids, [1, ids.length]) });
      const ms = performance.now() - t0;
      window.lastExplain = { chars: ids.length, ms }; // read by the benchmark
      const [, L, H, T] = out.attention.dims;
      const V = out.logits.dims[2];
      const keep = view && view.L === L && view.H === H ? view : { layer: 0, head: 0 };
      view = {
        chars: window_, vocab: Array.from(page.vocab), stoi: page.stoi, T, L, H, V, attention: out.attention.data, logits: out.logits.data,
        lens: out.lens_logits.data, pos: T - 1, layer: keep.layer, head: keep.head,
      };
      $("inside-status").textContent = `${T} characters, ${L} layers x ${H} heads, in ${Math.round(ms)} ms.`;
      $("inside-view").hidden = false;
      drawStrip();
      drawHeads();
      select(T - 1, false);
    } catch (e) {
      say("inside-error", e.message);
      $("inside-status").textContent = "";
    }
    section.dataset.state = "done";
  }

  // ---------------------------------------------------------------------------- numbers (GPT.explain's, in JS)

  function softmax(data, start, n) {
    let max = -Infinity;
    for (let i = 0; i < n; i++) max = Math.max(max, data[start + i]);
    const p = new Float64Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += p[i] = Math.exp(data[start + i] - max);
    for (let i = 0; i < n; i++) p[i] /= sum;
    return p;
  }

  const topK = (p, k) => [...p.keys()].sort((a, b) => p[b] - p[a] || a - b).slice(0, k); // ties: the lower id, as torch

  // Attention row of character i in layer l, head h: the weights it gives characters 0..i (rows sum to 1).
  function attentionRow(l, h, i) {
    const { T, H } = view;
    const start = ((l * H + h) * T + i) * T;
    return view.attention.subarray(start, start + T);
  }

  // ---------------------------------------------------------------------------- drawing

  function drawStrip() {
    const strip = $("inside-strip");
    const items = [];
    view.chars.forEach((ch, i) => {
      const option = document.createElement("span");
      option.id = `inside-ch-${i}`;
      option.setAttribute("role", "option");
      option.dataset.pos = i;
      option.dataset.char = ch;
      option.textContent = shown(ch);
      if (ch === " " || ch === "\n" || ch === "\t") option.classList.add("blank");
      option.setAttribute("aria-label", `${i + 1}: ${named(ch)}`);
      option.tabIndex = -1;
      option.addEventListener("click", () => select(i));
      items.push(option);
      if (ch === "\n") items.push(Object.assign(document.createElement("span"), { className: "break" }));
    });
    strip.replaceChildren(...items);
  }

  function drawHeads() {
    const grid = $("inside-heads");
    grid.style.setProperty("--heads", view.H);
    const cells = [document.createElement("span")];
    for (let h = 0; h < view.H; h++)
      cells.push(Object.assign(document.createElement("span"), { className: "label", textContent: `head ${h + 1}` }));
    for (let l = 0; l < view.L; l++) {
      cells.push(Object.assign(document.createElement("span"), { className: "label", textContent: `layer ${l + 1}` }));
      for (let h = 0; h < view.H; h++) {
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.layer = l;
        button.dataset.head = h;
        button.setAttribute("aria-label", `layer ${l + 1}, head ${h + 1}`);
        button.title = `layer ${l + 1}, head ${h + 1}`;
        const canvas = document.createElement("canvas");
        canvas.width = canvas.height = view.T;
        heatMap(canvas, l, h);
        button.append(canvas);
        button.addEventListener("click", () => {
          view.layer = l;
          view.head = h;
          select(view.pos, false);
        });
        cells.push(button);
      }
    }
    grid.replaceChildren(...cells);
  }

  // One head as a T x T image: row i = character i's attention, darker = more (square root: small weights show).
  function heatMap(canvas, l, h) {
    const { T } = view;
    const image = new ImageData(T, T);
    for (let i = 0; i < T; i++) {
      const row = attentionRow(l, h, i);
      for (let j = 0; j < T; j++) {
        const v = Math.sqrt(row[j]), at = 4 * (i * T + j);
        image.data[at] = 255 - v * (255 - 194);
        image.data[at + 1] = 255 - v * (255 - 65);
        image.data[at + 2] = 255 - v * (255 - 12);
        image.data[at + 3] = 255;
      }
    }
    canvas.getContext("2d").putImageData(image, 0, 0);
  }

  // Show position i: selection in the strip, its attention shading, the candidates and the lens.
  function select(i, focus = true) {
    view.pos = i;
    const strip = $("inside-strip");
    const row = attentionRow(view.layer, view.head, i);
    let most = 0;
    for (let j = 0; j <= i; j++) most = Math.max(most, row[j]);
    for (const option of strip.querySelectorAll("[role=option]")) {
      const j = Number(option.dataset.pos);
      const chosen = j === i;
      option.setAttribute("aria-selected", String(chosen));
      option.tabIndex = chosen ? 0 : -1; // one tab stop: the chosen character (arrow keys move)
      const w = j <= i ? row[j] : 0;
      option.dataset.weight = fixed(w);
      option.style.background = j <= i && most > 0 ? `rgba(234, 88, 12, ${(0.85 * w) / most})` : "";
      option.title = j <= i ? `attention ${fixed(w)}` : "after the chosen character: not seen";
    }
    strip.setAttribute("aria-activedescendant", `inside-ch-${i}`);
    $("inside-shading").textContent = `(shaded: where layer ${view.layer + 1}, head ${view.head + 1} looked from the chosen character)`;
    const option = $(`inside-ch-${i}`);
    if (focus) option.focus();
    else option.scrollIntoView({ block: "nearest" });
    for (const button of $("inside-heads").querySelectorAll("button"))
      button.setAttribute("aria-pressed", String(+button.dataset.layer === view.layer && +button.dataset.head === view.head));
    drawCandidates(i);
    drawLens(i);
  }

  function drawCandidates(i) {
    const { V, vocab, chars, T } = view;
    const p = softmax(view.logits, i * V, V);
    const real = i + 1 < T ? chars[i + 1] : null;
    const realId = real === null ? -1 : view.stoi.get(real);
    $("inside-candidates-label").textContent = `After ${JSON.stringify(chars[i])} (character ${i + 1} of ${T}), the model expected`;
    const top = topK(p, TOP);
    const rows = top.map((k) => candidate(vocab[k], p[k], k === realId));
    if (realId >= 0 && !top.includes(realId)) rows.push(candidate(real, p[realId], true));
    if (real === null) rows.push(Object.assign(document.createElement("li"), { textContent: "(the text ends here: nothing came next)" }));
    $("inside-candidates").replaceChildren(...rows);
  }

  function candidate(ch, prob, real) {
    const li = document.createElement("li");
    li.dataset.char = ch;
    li.dataset.prob = fixed(prob);
    if (real) {
      li.classList.add("real");
      li.dataset.real = "true";
    }
    const name = Object.assign(document.createElement("span"), { className: "ch", textContent: named(ch) + (real ? " ✓" : "") });
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${Math.max(1, 100 * prob)}%`;
    const value = Object.assign(document.createElement("span"), { className: "prob", textContent: fixed(prob) });
    li.setAttribute("aria-label", `${named(ch)}: ${fixed(prob)}${real ? ", the character that came next" : ""}`);
    li.append(name, bar, value);
    return li;
  }

  function drawLens(i) {
    const { L, T, V, vocab } = view;
    const head = document.createElement("tr");
    head.innerHTML = "<th>after layer</th><th>top guess</th><th>probability</th><th>then</th>";
    const rows = [head];
    for (let l = 0; l < L; l++) {
      const p = softmax(view.lens, (l * T + i) * V, V);
      const [best, ...rest] = topK(p, LENS_TOP);
      const tr = document.createElement("tr");
      tr.dataset.layer = l + 1;
      tr.dataset.char = vocab[best];
      tr.dataset.prob = fixed(p[best]);
      const cells = [String(l + 1) + (l === L - 1 ? " (the output)" : ""), named(vocab[best]), fixed(p[best]),
        rest.map((k) => `${named(vocab[k])} ${fixed(p[k])}`).join(", ")];
      for (const [c, text] of cells.entries()) {
        const td = Object.assign(document.createElement("td"), { textContent: text });
        if (c === 1) td.className = "ch";
        tr.append(td);
      }
      rows.push(tr);
    }
    $("inside-lens").replaceChildren(...rows);
  }

  // Arrow keys move along the strip (Up/Down by a line of ~40), Home/End to the ends; Enter/Space select too.
  function onKey(e) {
    if (!view) return;
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -40, ArrowDown: 40, Home: -Infinity, End: Infinity };
    if (e.key in moves) {
      e.preventDefault();
      select(Math.min(view.T - 1, Math.max(0, view.pos + moves[e.key])));
    } else if ((e.key === "Enter" || e.key === " ") && e.target.dataset.pos !== undefined) {
      e.preventDefault();
      select(Number(e.target.dataset.pos));
    }
  }

  build();
})();
