"""The Gradio app's "How it learned" view: a slider over the model's timeline.jsonl (the same prompt sampled at step 0
and at each evaluation of its training: timeline.py), showing that step's text and losses, and the loss curve with a
marker at the step.

app.py's build_demo adds it with one call, `add_timeline_view(source)`, inside its Blocks. The timeline comes from
the local folder or the Hub repo the app serves; a model without one (trained before the timeline existed, or
another repo) gets a line saying why, and no slider. It ships to the Space with app.py.
"""

import math

import gradio as gr
import pandas as pd

from timeline import NoTimeline, load_timeline, row_heading

TEXT_LABEL = "The model's text at this step (prompt included)"


def add_timeline_view(source: str) -> None:
    """The view, in the Blocks being built."""
    with gr.Accordion("How it learned", open=True, elem_id="timeline"):
        try:
            if not source:
                raise NoTimeline("the app was not told which model folder or Hub repo it serves")
            rows = load_timeline(source)
        except NoTimeline as e:
            gr.Markdown(f"No timeline for this model: {e}", elem_id="timeline_missing")
            return
        first = rows[0]
        gr.Markdown(
            f"The prompt {first.get('prompt', '')!r} sampled from the model at step 0 and at each evaluation of its "
            f"training ({first.get('chars')} characters, temperature {first.get('temperature')}, seed "
            f"{first.get('seed')}): the samples differ only by what it had learned. Move the slider (or use the arrow "
            "keys on it) to go through the steps."
        )
        last = len(rows) - 1
        slider = gr.Slider(
            0, max(last, 1), last, step=1, label="Evaluation (0 = before training)", elem_id="timeline_step"
        )
        with gr.Row():
            with gr.Column(scale=3):
                heading = gr.Markdown(heading_of(rows[last]), elem_id="timeline_heading")
                text = gr.Textbox(
                    rows[last]["text"], label=TEXT_LABEL, lines=8, interactive=False, elem_id="timeline_text"
                )
            with gr.Column(scale=2):
                plot = gr.LinePlot(
                    curve(rows, last),
                    x="step",
                    y="loss",
                    color="series",
                    color_map={"val loss": "#ea580c", "train loss": "#2563eb", "this step": "#111827"},
                    label="Loss at each evaluation (nats per character)",
                    height=260,
                    elem_id="timeline_plot",
                )

        def show(index):
            row = rows[min(max(int(index), 0), last)]
            return heading_of(row), row["text"], curve(rows, rows.index(row))

        slider.change(show, slider, [heading, text, plot], api_visibility="private", show_progress="hidden")


def heading_of(row: dict) -> str:
    return f"**{row_heading(row)}**"


def curve(rows: list[dict], index: int) -> pd.DataFrame:
    """The val and train losses over the steps, and the chosen step as a vertical line across them."""
    points = [
        (r["step"], r[key], name)
        for key, name in (("val_loss", "val loss"), ("train_loss", "train loss"))
        for r in rows
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    losses = [p[1] for p in points] or [0.0, 1.0]
    step = rows[index]["step"]
    points += [(step, min(losses), "this step"), (step, max(losses), "this step")]
    return pd.DataFrame(points, columns=["step", "loss", "series"])
