// The static Space's page: loads config.json and onnx/model.onnx (the standard GPT-2 graph of export_onnx.py, with
// the weights) from the model's files, then generates one character per ONNX Runtime Web call of onnx/step.onnx (the
// page's own decode step: a few tens of KB, its weights read from model.onnx's bytes), with the same rules as app.py
// and model_gpt2.GPT.stream (KV cache, sliding window past the context, sampling). step.onnx takes the cache as one
// buffer, positions outermost, and returns only the new positions' keys and values: the standard graph's
// present.* outputs (the whole cache, out of WebAssembly's memory at every step) made generating 1.5-2x slower.
//
// What this page offers other scripts (the "Inside the model" views):
//   window.gptPage = { ready: Promise<{ort, session, config, vocab, stoi, modelBytes, baseUrl}> }
//     ort         ONNX Runtime Web (the global the page loaded)      session  the InferenceSession on step.onnx
//     config      config.json as read                                 vocab    the characters, by id (an Array)
//     stoi        Map character -> id                                 baseUrl  the model folder's URL, ending in /
//     modelBytes  an ArrayBuffer of onnx/model.onnx: explain.onnx's (and step.onnx's) weights point into it, so a
//                 view opens explain.onnx without downloading the weights a second time:
//                   ort.InferenceSession.create(explainBytes,
//                     {externalData: [{path: "model.onnx", data: new Uint8Array(modelBytes)}]})
//   ready rejects when the model does not load. After each generation that completes, the page dispatches
//   document.dispatchEvent(new CustomEvent("gpt:generated", {detail: {text /* prompt + generated */}})).
"use strict";

const ORT_DIST = "https://cdn.jsdelivr.net/npm/onnxruntime-web@1.30.0/dist/";
const MAX_TOKENS = 2000;
const MAX_PROMPT = 10000; // characters kept of a longer prompt, as in app.py
const PAINT_EVERY_MS = 50; // let the browser paint the streamed text ~20 times a second

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const HUB = "https://huggingface.co/";

// A Hub repo id by huggingface_hub's rules (validate_repo_id): ORG/NAME, each part letters, digits, "_", "-" and ".",
// starting and ending with a letter, digit or "_"; no "--" or ".."; not ending in .git; the name 96 characters at most.
function isRepoId(id) {
  const parts = id.split("/");
  return parts.length === 2 && parts.every((part) => /^\w(?:[\w.-]*\w)?$/.test(part)) && parts[1].length <= 96 &&
    !/--|\.\./.test(id) && !id.endsWith(".git");
}

// Where the model's files come from, and the repo (with its page) when it is on the Hub. `?model=` may name
// only a Hub model repo, so that no link to this page can show another host's files under the page's name;
// without it the page runs its own model (the meta tag: the Hub repo it was deployed for, or the preview's model/).
function modelSource() {
  const own = document.querySelector('meta[name="model-url"]').content;
  const asked = params.get("model");
  const url = asked === null || asked === own ? own : isRepoId(asked) ? `${HUB}${asked}/resolve/main/` : asked;
  const hub = url.match(/^(https?:\/\/[^/]+\/)([^/]+\/[^/]+)\/resolve\/main\/$/);
  if (url === own) return { url, repo: hub && isRepoId(hub[2]) ? hub[2] : null, page: hub ? hub[1] + hub[2] : null };
  if (hub && hub[1] === HUB && isRepoId(hub[2])) return { url, repo: hub[2], page: HUB + hub[2] };
  throw new Error(`?model= takes a model repo on the Hugging Face Hub, ORG/NAME or ${HUB}ORG/NAME/resolve/main/, ` +
    `got '${asked}': this page runs no model from anywhere else`);
}

let SOURCE = null, REFUSED = null;
try {
  SOURCE = modelSource();
} catch (e) {
  REFUSED = e.message;
}

let model = null; // {session, vocab, stoi, block, layers, heads, headDim}
window.lastRun = null; // {chars, seconds, firstMs}: read by the benchmark
let pageReady;
window.gptPage = { ready: new Promise((resolve, reject) => { pageReady = { resolve, reject }; }) };
window.gptPage.ready.catch(() => {}); // a page without views: a failed load is shown on the page, not thrown again

// ---------------------------------------------------------------------------- the model's facts

function count(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n.toLocaleString("en-US");
}

// Parameters of a GPT-2 with tied embeddings (model.num_params()), when config.json does not say.
function countParams(c, block) {
  const C = c.n_embd, b = c.bias === false ? 0 : 1;
  const perLayer = 2 * C * (1 + b) + (3 * C * C + 3 * C * b) + (C * C + C * b) + (4 * C * C + 4 * C * b) + (4 * C * C + C * b);
  return Array.from(c.vocab).length * C + block * C + c.n_layer * perLayer + C * (1 + b);
}

// A training fact from config.json, shown only when it is a finite number: anyone may have written that file.
const finite = (x) => (typeof x === "number" && Number.isFinite(x) ? x : null);

function showSource() {
  const where = document.createElement("span");
  if (SOURCE && SOURCE.page) {
    const link = document.createElement("a");
    link.href = SOURCE.page;
    link.textContent = SOURCE.repo || SOURCE.page;
    where.append("Model: ", link, " on the Hugging Face Hub");
  } else if (SOURCE) {
    where.textContent = `Model: the local folder (${SOURCE.url})`;
  } else {
    where.textContent = "Model: none";
  }
  $("source").replaceChildren(where);
}

function showFacts(c, block) {
  const info = c.train_info && typeof c.train_info === "object" ? c.train_info : {};
  const val = finite(info.val_loss_full) ?? finite(info.val_loss);
  const tokens = finite(info.tokens_seen);
  const n = finite(c.num_params) ?? countParams(c, block);
  const line1 = document.createElement("div"), bold = document.createElement("b");
  bold.textContent = `${count(n)} parameters`; // text, never HTML: config.json is data
  line1.append(bold, ` · ${c.n_layer} layers · ${c.n_head} heads · ${c.n_embd} dim · ` +
    `context ${block} characters · vocabulary ${c.vocab_size} characters`);
  const line2 = document.createElement("div");
  line2.textContent = `Validation loss ${val !== null ? val.toFixed(3) : "not recorded"} (nats per character) · ` +
    `${tokens ? count(tokens) : "not recorded"} tokens trained`;
  $("facts").replaceChildren(line1, line2);
}

// ---------------------------------------------------------------------------- loading

async function fetchWithProgress(url, onProgress) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url} answered HTTP ${res.status}`);
  const total = Number(res.headers.get("content-length")) || 0;
  const reader = res.body.getReader();
  const chunks = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.length;
    onProgress(got, total);
  }
  const bytes = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  return bytes;
}

// config.json as Python's json writes it: a NaN or Infinity value (not JSON) is read as null
function parseConfig(text) {
  try {
    return JSON.parse(text);
  } catch (e) {
    return JSON.parse(text.replace(/([:[,]\s*)-?(?:NaN|Infinity)(?=\s*[,\]}])/g, "$1null"));
  }
}

async function load() {
  const t0 = performance.now();
  const MODEL_URL = SOURCE.url;
  const res = await fetch(MODEL_URL + "config.json");
  if (!res.ok) throw new Error(`${MODEL_URL}config.json answered HTTP ${res.status}`);
  const c = parseConfig(await res.text());
  const block = c.n_positions ?? c.block_size; // transformers' name, else ours
  if (typeof c.vocab !== "string" || !block) throw new Error("config.json lacks the vocabulary or the context length");
  for (const [key, value] of Object.entries({ n_layer: c.n_layer, n_head: c.n_head, n_embd: c.n_embd, context: block }))
    if (!Number.isInteger(value) || value < 1) throw new Error(`config.json's ${key} is not a positive integer: ${JSON.stringify(value)}`);
  showFacts(c, block);
  const vocab = Array.from(c.vocab);
  const stepBytes = fetch(MODEL_URL + "onnx/step.onnx").then(async (r) => {
    if (r.status === 404) return null; // a repo pushed by an earlier release: its model.onnx is this step's graph
    if (!r.ok) throw new Error(`${MODEL_URL}onnx/step.onnx answered HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  });
  stepBytes.catch(() => {}); // awaited below, after model.onnx: a failure is thrown there
  const bytes = await fetchWithProgress(MODEL_URL + "onnx/model.onnx", (got, total) => {
    $("status").textContent = `Downloading the model: ${(got / 1e6).toFixed(1)}` +
      (total ? ` of ${(total / 1e6).toFixed(1)} MB (${Math.round((100 * got) / total)}%)` : " MB");
    if (total) $("progress").value = got / total;
  });
  $("status").textContent = "Starting the model…";
  ort.env.wasm.wasmPaths = ORT_DIST;
  // threads need a cross-origin isolated page (the Space's COOP/COEP headers), else one thread. By default ONNX
  // Runtime takes half the cores (at most 4): on 2 busy cores a second thread made decoding slower (bench.py --browser)
  if (params.get("threads")) ort.env.wasm.numThreads = Number(params.get("threads"));
  if (!self.crossOriginIsolated) ort.env.wasm.numThreads = 1;
  // step.onnx's weights are external data at their offsets in model.onnx: the bytes downloaded above, not fetched again
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  const step = await stepBytes;
  const session = step
    ? await ort.InferenceSession.create(step, { ...options, externalData: [{ path: "model.onnx", data: bytes }] })
    : await ort.InferenceSession.create(bytes, options);
  if (!session.inputNames.includes("past_key"))
    throw new Error(`${MODEL_URL}onnx/step.onnx is missing: push the model again with hub.py`);
  model = {
    session, vocab, block, stoi: new Map(vocab.map((ch, i) => [ch, i])),
    layers: c.n_layer, heads: c.n_head, headDim: c.n_embd / c.n_head,
  };
  pageReady.resolve({
    ort, session, config: c, vocab, stoi: model.stoi, modelBytes: bytes.buffer, baseUrl: new URL(MODEL_URL, location.href).href,
  });
  $("progress").hidden = true;
  $("status").textContent = `Ready: loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s, ` +
    `${ort.env.wasm.numThreads} thread${ort.env.wasm.numThreads > 1 ? "s" : ""}.`;
  $("generate").disabled = false;
}

// ---------------------------------------------------------------------------- generation

// One preallocated cache per run: positions first, so the first P positions are a prefix of the buffer, passed to
// step.onnx as a view (no copy here, no growing concatenation), and each call's new positions are written after them.
function newCache(m) {
  const stride = m.layers * m.heads * m.headDim;
  return { stride, P: 0, key: new Float32Array(m.block * stride), value: new Float32Array(m.block * stride) };
}

// Feed `ids` at positions P, P+1, ... after the cached ones; return the logits after the last one.
async function step(m, cache, ids) {
  const T = ids.length, n = cache.P * cache.stride, dims = [cache.P, m.layers, m.heads, m.headDim];
  const out = await m.session.run({
    input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, T]),
    past_key: new ort.Tensor("float32", cache.key.subarray(0, n), dims),
    past_value: new ort.Tensor("float32", cache.value.subarray(0, n), dims),
  });
  cache.key.set(out.present_key.data, n); // (T, layers, heads, headDim): the new positions only
  cache.value.set(out.present_value.data, n);
  cache.P += T;
  const V = m.vocab.length;
  return out.logits.data.subarray((T - 1) * V, T * V);
}

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i; // the first of equal maxima, as torch
  return best;
}

// model_gpt2.sample_next_token: temperature 0 = argmax; top N keeps the N likeliest (N <= 0 = all).
function sample(logits, temperature, topN) {
  if (temperature === 0) return argmax(logits);
  let z = Array.from(logits, (x) => x / temperature);
  if (topN > 0 && topN < z.length) {
    const kept = new Set([...z.keys()].sort((a, b) => z[b] - z[a] || a - b).slice(0, topN));
    z = z.map((x, i) => (kept.has(i) ? x : -Infinity));
  }
  const top = Math.max(...z);
  const p = z.map((x) => Math.exp(x - top));
  let r = Math.random() * p.reduce((a, b) => a + b, 0);
  for (let i = 0; i < p.length; i++) if ((r -= p[i]) < 0 && p[i] > 0) return i;
  return argmax(z);
}

// GPT.stream: prefill the window once, then one position per character; when the window would pass
// the context, keep its last block - block/4 characters and prefill them again.
async function* stream(m, ids, n, temperature, topN) {
  const shift = Math.max(1, Math.floor(m.block / 4));
  let context = ids.slice(-m.block); // what the model sees: at most block characters
  let cache = newCache(m);
  let logits = await step(m, cache, context);
  for (let i = 0; i < n; i++) {
    const next = sample(logits, temperature, topN);
    yield m.vocab[next];
    if (i === n - 1) break;
    context.push(next);
    if (context.length > m.block) {
      context = context.slice(-Math.max(1, m.block - shift)); // a block of 1 keeps its one character
      cache = newCache(m);
      logits = await step(m, cache, context);
    } else {
      logits = await step(m, cache, [next]);
    }
  }
}

// ---------------------------------------------------------------------------- the form

function readSettings() {
  const raw = (id) => $(id).value.trim();
  const maxTokens = Number(raw("max_tokens"));
  if (raw("max_tokens") === "" || !Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS)
    throw new Error(`max tokens must be an integer from 1 to ${MAX_TOKENS}, got '${raw("max_tokens")}'`);
  const temperature = Number(raw("temperature"));
  if (raw("temperature") === "" || !Number.isFinite(temperature) || temperature < 0 || temperature > 1)
    throw new Error(`temperature must be a number from 0 to 1 (0 = greedy), got '${raw("temperature")}'`);
  const topN = raw("top_n") === "" ? 0 : Number(raw("top_n"));
  if (!Number.isInteger(topN)) throw new Error(`top N must be an integer or empty, got '${raw("top_n")}'`);
  return { maxTokens, temperature, topN };
}

function show(id, text) {
  $(id).textContent = text;
  $(id).hidden = !text;
}

async function generate() {
  show("error", "");
  show("note", "");
  let settings;
  try {
    settings = readSettings();
  } catch (e) {
    show("error", e.message);
    return;
  }
  const m = model;
  let chars = Array.from($("prompt").value || " "); // characters, not UTF-16 units, as Python counts them
  const notes = [];
  if (chars.length > MAX_PROMPT) {
    notes.push(`The prompt has ${chars.length.toLocaleString("en-US")} characters: only its last ` +
      `${MAX_PROMPT.toLocaleString("en-US")} are kept (the model reads the last ${m.block}).`);
    chars = chars.slice(-MAX_PROMPT);
  }
  const unknown = [...new Set(chars.filter((ch) => !m.stoi.has(ch)))];
  if (unknown.length) notes.push(`Not in the model's vocabulary, left out: ${unknown.map((ch) => JSON.stringify(ch)).join(" ")}`);
  show("note", notes.join(" "));
  let text = chars.filter((ch) => m.stoi.has(ch)).join("");
  if (!text) text = m.stoi.has(" ") ? " " : m.vocab[0]; // what the model sees instead of nothing

  $("generate").disabled = true;
  $("output").textContent = text;
  $("stats").textContent = "";
  const t0 = performance.now();
  let firstMs = null, made = 0, painted = t0, failed = false;
  try {
    for await (const ch of stream(m, Array.from(text, (c) => m.stoi.get(c)), settings.maxTokens, settings.temperature, settings.topN)) {
      text += ch;
      made += 1;
      if (firstMs === null) firstMs = performance.now() - t0;
      if (performance.now() - painted >= PAINT_EVERY_MS) {
        $("output").textContent = text;
        await new Promise((r) => setTimeout(r, 0)); // give the browser a frame to show it
        painted = performance.now();
      }
    }
  } catch (e) {
    show("error", `Generation failed: ${e.message}`);
    failed = true;
  }
  const seconds = (performance.now() - t0) / 1000;
  $("output").textContent = text;
  window.lastRun = { chars: made, seconds, firstMs };
  $("stats").textContent = `${made} characters in ${seconds.toFixed(2)} s (${Math.round(made / seconds)} characters/s); ` +
    `first character after ${Math.round(firstMs)} ms`;
  $("generate").disabled = false;
  if (!failed) document.dispatchEvent(new CustomEvent("gpt:generated", { detail: { text } }));
  document.body.dataset.state = "done";
}

$("generate").addEventListener("click", () => {
  document.body.dataset.state = "generating";
  generate();
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && e.shiftKey && !$("generate").disabled) {
    e.preventDefault();
    $("generate").click();
  }
});
showSource();
if (REFUSED) {
  $("progress").hidden = true;
  $("facts").textContent = "";
  show("error", REFUSED);
  $("status").textContent = "Not loaded.";
  pageReady.reject(new Error(REFUSED));
} else {
  load().catch((e) => {
    pageReady.reject(e);
    $("progress").hidden = true;
    show("error", `Could not load the model from ${SOURCE.url}: ${e.message}`);
    $("status").textContent = "Not loaded.";
  });
}
