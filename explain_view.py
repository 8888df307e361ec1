"""The app's "Inside the model" views of a text, and its /explain API: app.py's build_demo adds both with
`add_explain_view(model, output)`. The numbers are GPT.explain's (model_gpt2.py), for the last window
of the text (at most block_size characters; unknown characters are left out, and the page says so).

The views, for the character picked with the "Character" slider (1 = the window's first):
- its `TOP` likeliest next characters as bars, the character that really came next marked;
- the text shaded by the attention that character gave each one, in the chosen layer and head;
- every layer x head as a T x T heat map (row i: where character i looked), the chosen one framed;
- the logit lens: the guess after each layer (each layer's output through ln_f and the head).

The API: one text and one position (0 = the window's first character, -1 = its last, as in Python):

    from gradio_client import Client
    seen = Client("http://127.0.0.1:7860").predict("ROMEO:\\nWhat light", -1, api_name="/explain")

returns a dict (JSON):

    chars      the window's characters (list of T strings)
    cut        characters before the window, left out (the model reads at most block_size)
    unknown    characters not in the model's vocabulary, left out (distinct, in order of appearance)
    position   the position explained, 0 ... T - 1
    char       the character at that position
    top        [{"char", "prob"}] x 5: the likeliest next characters, likeliest first
    next       the character that really came next (null for the last), next_prob its probability
    attention  [n_layer][n_head][position + 1]: the weights that character gave characters 0 ... position
               (each list sums to 1; the characters after it get none)
    lens       [n_layer] of [{"char", "prob"}] x 3: the guess after each layer (the last is the model's own)

An empty text, a text of unknown characters only, or a position outside the window is an error whose
message says what to change (gradio_client raises it as AppError).
"""

import html

import gradio as gr
import numpy as np

from model_gpt2 import GPT

TOP = 5  # next characters per position
TILE = 96  # pixels a head's heat map gets at least in the grid image (small windows are scaled up)
ORANGE = np.array([194, 65, 12])  # the heat maps' darkest colour (the page's too)


def named(ch: str) -> str:
    return {"\n": "↵ new line", " ": "␣ space", "\t": "⇥ tab"}.get(ch, ch)


def window_position(seen: dict, position) -> int:
    """position (0 = first, -1 = last) as an index into the window; ValueError naming the valid range."""
    T = len(seen["chars"])
    if isinstance(position, float) and position.is_integer():
        position = int(position)
    if not isinstance(position, int) or isinstance(position, bool) or not -T <= position < T:
        raise ValueError(
            f"position must be an integer from {-T} to {T - 1} (the window has {T} characters), got {position!r}"
        )
    return position % T


def explain_position(model: GPT, text: str, position: int = -1) -> dict:
    """The /explain API's answer (see the module docstring)."""
    seen = model.explain(text, top=TOP)
    i = window_position(seen, position)
    return {
        "chars": seen["chars"],
        "cut": seen["cut"],
        "unknown": seen["unknown"],
        "position": i,
        "char": seen["chars"][i],
        "top": seen["top"][i],
        "next": seen["next"][i],
        "next_prob": seen["next_prob"][i],
        "attention": [[row[i][: i + 1] for row in layer] for layer in seen["attention"]],
        "lens": [layer[i] for layer in seen["lens"]],
    }


# ---------------------------------------------------------------------------- the views


def notes(seen: dict, block_size: int) -> list[str]:
    said = []
    if seen["cut"]:
        said.append(
            f"Showing the last {len(seen['chars'])} characters: the model reads at most {block_size}, "
            f"so the {seen['cut']} before them are left out."
        )
    if seen["unknown"]:
        said.append("Not in the model's vocabulary, left out: " + " ".join(repr(ch) for ch in seen["unknown"]))
    return said


def view_html(seen: dict, i: int, layer: int, head: int, block_size: int) -> str:
    """The text shaded by attention, the candidates and the lens, for position i and the chosen head (0-based)."""
    e = html.escape
    row = seen["attention"][layer][head][i]
    most = max(row[: i + 1])
    strip = []
    for j, ch in enumerate(seen["chars"]):
        w = row[j] if j <= i else 0.0
        style = f"background: rgba(234, 88, 12, {0.85 * w / most:.3f});" if j <= i and most > 0 else ""
        style += "outline: 2px solid #1d4ed8; font-weight: 700;" if j == i else ""
        shown = {"\n": "↵", " ": "·", "\t": "⇥"}.get(ch, ch)
        strip.append(
            f'<span data-pos="{j}" data-weight="{w:.3f}" title="attention {w:.3f}" style="{style}">{e(shown)}</span>'
        )
        if ch == "\n":
            strip.append("<br>")
    real = seen["next"][i]
    bars = [(c["char"], c["prob"], c["char"] == real) for c in seen["top"][i]]
    if real is not None and not any(r for _, _, r in bars):
        bars.append((real, seen["next_prob"][i], True))
    items = "".join(
        f'<li data-char="{e(ch)}" data-prob="{p:.3f}"{" data-real=true" if r else ""} style="font-weight: {700 if r else 400}">'
        f'<code style="display: inline-block; width: 7em">{e(named(ch))}{" ✓" if r else ""}</code>'
        f'<span style="display: inline-block; width: {max(1, round(200 * p))}px; height: .8em; '
        f'background: {"#16a34a" if r else "#fb923c"}"></span> {p:.3f}</li>'
        for ch, p, r in bars
    )
    if real is None:
        items += "<li>(the text ends here: nothing came next)</li>"
    lens = []
    for n, (best, *rest) in enumerate(layer[i] for layer in seen["lens"]):
        then = ", ".join(f"{named(g['char'])} {g['prob']:.3f}" for g in rest)
        lens.append(
            f'<tr data-layer="{n + 1}" data-char="{e(best["char"])}" data-prob="{best["prob"]:.3f}">'
            f"<td>{n + 1}{' (the output)' if n == len(seen['lens']) - 1 else ''}</td>"
            f"<td><code>{e(named(best['char']))}</code></td><td>{best['prob']:.3f}</td><td>{e(then)}</td></tr>"
        )
    said = "".join(f"<p>{e(note)}</p>" for note in notes(seen, block_size))
    T = len(seen["chars"])
    return f"""<div id="inside-view">{said}
<p><b>The text</b> <small>(shaded: where layer {layer + 1}, head {head + 1} looked from character {i + 1})</small></p>
<div id="inside-strip" style="font-family: monospace; line-height: 1.6; white-space: pre-wrap">{"".join(strip)}</div>
<p><b>After {e(repr(seen["chars"][i]))} (character {i + 1} of {T}), the model expected</b></p>
<ol id="inside-candidates" style="list-style: none; padding: 0">{items}</ol>
<p><b>Layer by layer</b> <small>(logit lens: each layer's guess)</small></p>
<table id="inside-lens"><tr><th>after layer</th><th>top guess</th><th>probability</th><th>then</th></tr>{"".join(lens)}</table>
</div>"""


def heads_image(seen: dict, layer: int, head: int) -> np.ndarray:
    """Every layer x head as a T x T heat map (uint8 RGB), the chosen one framed in blue."""
    attention = np.asarray(seen["attention"], dtype=np.float32)  # (L, H, T, T)
    L, H, T, _ = attention.shape
    scale = -(-TILE // T)  # whole pixels per character
    size, gap = T * scale, 6
    image = np.full((L * (size + gap) + gap, H * (size + gap) + gap, 3), 255, dtype=np.uint8)
    for n in range(L):
        for h in range(H):
            v = np.sqrt(attention[n, h]).repeat(scale, 0).repeat(scale, 1)[..., None]  # sqrt: small weights show
            y, x = gap + n * (size + gap), gap + h * (size + gap)
            if (n, h) == (layer, head):
                image[y - 3 : y + size + 3, x - 3 : x + size + 3] = (29, 78, 216)
            image[y : y + size, x : x + size] = (255 - v * (255 - ORANGE)).astype(np.uint8)
    return image


def add_explain_view(model: GPT, text_box: gr.Textbox) -> None:
    """Inside a gr.Blocks: an "Inside the model" accordion that explains the text in `text_box`, and /explain."""
    c = model.config
    # reading the box makes it an input of an event, which Gradio would turn into an editable box: it stays as it was
    text_box.interactive = text_box.interactive if text_box.interactive is not None else False

    def show(text, position, layer, head):
        try:
            seen = model.explain(text or "", top=TOP)
        except ValueError as e:
            return f'<p class="inside-error" role="alert">{html.escape(str(e))}</p>', None, gr.Slider()
        T = len(seen["chars"])
        i, chosen = min(int(position or T), T) - 1, (int(layer) - 1, int(head) - 1)
        html_view, image = view_html(seen, i, *chosen, c.block_size), heads_image(seen, *chosen)
        return html_view, image, gr.Slider(maximum=max(T, 2), value=i + 1)  # a slider needs two ends

    with gr.Accordion("Inside the model", open=False, elem_id="inside"):
        gr.Markdown(
            "Pick a character of the text: what the model expected next, which characters one of its heads "
            "looked at, and how its guess formed layer by layer (the logit lens)."
        )
        with gr.Row():
            last = max(c.block_size, 2)  # a slider needs two ends (past the text's end means its last character)
            position = gr.Slider(1, last, last, step=1, label="Character", elem_id="inside_position")
            layer = gr.Dropdown(list(range(1, c.n_layer + 1)), value=1, label="Layer", elem_id="inside_layer")
            head = gr.Dropdown(list(range(1, c.n_head + 1)), value=1, label="Head", elem_id="inside_head")
        look = gr.Button("Look inside the text", elem_id="inside_look")
        view = gr.HTML(elem_id="inside_html")
        grid = gr.Image(label="Attention, every layer x head (rows: characters, columns: what they look at)")
        inputs, outputs = [text_box, position, layer, head], [view, grid, position]
        look.click(lambda text, _p, la, h: show(text, c.block_size, la, h), inputs, outputs, api_visibility="private")
        position.release(show, inputs, outputs, api_visibility="private")
        for choice in (layer, head):
            choice.input(show, inputs, outputs, api_visibility="private")

    def explain(text: str, position: int = -1) -> dict:
        """What the model does at one position of a text's last window: next characters, attention, logit lens."""
        try:
            return explain_position(model, text, position)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None

    gr.api(explain, api_name="explain")
