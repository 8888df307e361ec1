"""The batched decode loop without a server: texts equal generate_text's, alone or among 15 others,
past the context too; rows at different positions; the waiting line, the busy error, cancellation;
the loop's own process, and what happens when it dies."""

import itertools
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, free_port, make_tiny_model

from decoders import TorchDecoder, decode_rows
from engine import Batcher, Engine, EngineBusy, EngineStopped


@pytest.fixture(scope="module")
def model(shakespeare_vocab):
    return make_tiny_model(shakespeare_vocab).eval()  # block_size 32: 100 characters slide the window 3 times


def run(engine, model, prompt, n, **sampling):
    req = engine.submit(model.tokenizer.encode(prompt), n, **sampling)
    return prompt + model.tokenizer.decode(req.result(timeout=60))


SETTINGS = [  # 16 requests, each with its own settings
    dict(temperature=0),
    dict(temperature=0.8, seed=1),
    dict(temperature=1.0, seed=2, top_k=5),
    dict(temperature=0.6, seed=3, top_p=0.9),
    dict(temperature=1.0, seed=4, top_k=10, top_p=0.8),
    dict(temperature=0.3, seed=5),
    dict(temperature=0),
    dict(temperature=1.0, seed=7, top_k=1),
] * 2


def test_alone_greedy_and_seeded_equal_generate_text_past_the_context(model):
    engine = Engine(model, slots=4)
    for sampling in SETTINGS[:5]:
        assert run(engine, model, "ROMEO:", 100, **sampling) == model.generate_text("ROMEO:", 100, **sampling)
    long_prompt = "First Citizen:\nBefore we proceed any further, hear me speak."  # longer than the context
    assert run(engine, model, long_prompt, 50, temperature=0) == model.generate_text(long_prompt, 50, temperature=0)


def test_sixteen_at_once_each_equal_their_text_alone(model):
    engine = Engine(model, slots=16)
    prompts = [("ROMEO:", "KING:\n", "To be, or not")[i % 3] * (1 + i % 4) for i in range(16)]
    lengths = [40 + 11 * i for i in range(16)]  # they finish at different steps, some past the context
    reqs = [engine.submit(model.tokenizer.encode(p), n, **s) for p, n, s in zip(prompts, lengths, SETTINGS)]
    texts = [p + model.tokenizer.decode(r.result(timeout=60)) for p, r in zip(prompts, reqs)]
    # one step served them all: batched, not one after another (that would take sum(lengths) steps);
    # the later submits may join the loop a few steps after the first
    assert engine.steps <= max(lengths) + 16
    for text, p, n, s in zip(texts, prompts, lengths, SETTINGS):
        assert text == model.generate_text(p, n, **s)


def test_requests_join_the_running_batch(model):
    engine = Engine(model, slots=8)
    reqs = []
    for i in range(8):  # each arrives while the earlier ones are mid-way
        reqs.append(engine.submit(model.tokenizer.encode("ROMEO:"), 80, temperature=0.9, seed=i))
        while len(reqs[-1].tokens) < 5 and not reqs[-1].done.is_set():
            time.sleep(0.001)
    for i, r in enumerate(reqs):
        assert "ROMEO:" + model.tokenizer.decode(r.result(60)) == model.generate_text(
            "ROMEO:", 80, temperature=0.9, seed=i
        )


@torch.inference_mode()
def test_decode_rows_matches_decode_step_row_by_row(model):
    """Rows at positions 3, 17 and 9: each attends to its own prefix only."""
    loop = TorchDecoder(model, slots=3)  # only its cache and its transposed weights are used here
    ids = [torch.randint(0, 65, (1, n)) for n in (3, 17, 9)]
    alone = []
    for row, x in enumerate(ids):
        cache = model._new_cache(1)
        model(x, kv_cache=cache)
        loop.k[:, row, :, : x.size(1)], loop.v[:, row, :, : x.size(1)] = (
            cache.k[:, 0, :, : x.size(1)],
            cache.v[:, 0, :, : x.size(1)],
        )
        alone.append(model.decode_step(torch.tensor([7]), cache))
    batched = decode_rows(model, loop.weights, torch.tensor([7, 7, 7]), torch.tensor([3, 17, 9]), loop.k, loop.v)
    torch.testing.assert_close(batched, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_past_the_slots_requests_wait_in_order_then_the_line_is_full(model):
    engine = Engine(model, slots=1, max_waiting=2)
    ids = model.tokenizer.encode("ROMEO:")
    first = engine.submit(ids, 10**6, temperature=1.0, seed=0)  # runs until cancelled
    while not first.tokens:
        time.sleep(0.001)
    second, third = engine.submit(ids, 20, temperature=0), engine.submit(ids, 20, temperature=0)
    assert (engine.position(first), engine.position(second), engine.position(third)) == (0, 1, 2)
    with pytest.raises(EngineBusy, match="busy: all 1 slots are generating and 2 requests wait"):
        engine.submit(ids, 20)
    first.cancel()  # frees the slot: the line moves on, in order
    assert len(second.result(timeout=30)) == 20 and len(third.result(timeout=30)) == 20
    assert second.done.is_set() and engine.stats() == {"running": 0, "waiting": 0, "steps": engine.steps}
    assert first.done.is_set() and len(first.tokens) < 10**6


def test_cancel_frees_the_slot_for_the_next_request(model):
    engine = Engine(model, slots=1, max_waiting=0)
    ids = model.tokenizer.encode("ROMEO:")
    running = engine.submit(ids, 10**6, temperature=0.8)
    while not running.tokens:
        time.sleep(0.001)
    with pytest.raises(EngineBusy):
        engine.submit(ids, 10)
    running.cancel()
    running.result(timeout=10)  # it stops
    assert (
        engine.submit(ids, 10, temperature=0).result(timeout=10)
        == model.generate(model.encode_prompt("ROMEO:"), 10, temperature=0)[0, 6:].tolist()
    )


def test_a_waiting_request_that_is_cancelled_leaves_the_line(model):
    engine = Engine(model, slots=1, max_waiting=1)
    ids = model.tokenizer.encode("ROMEO:")
    running = engine.submit(ids, 10**6)
    waiting = engine.submit(ids, 10)
    waiting.cancel()
    engine.submit(ids, 10)  # the cancelled one no longer counts against the line
    running.cancel()


def test_bad_settings_are_refused_by_name(model):
    engine = Engine(model, slots=1)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        engine.submit([1, 2], 10, temperature=-1)
    with pytest.raises(ValueError, match="ids must hold at least one token"):
        engine.submit([], 10)
    with pytest.raises(ValueError, match="slots must be >= 1"):
        Engine(model, slots=0)


def test_the_cache_is_preallocated_for_every_slot(model):
    c = model.config
    loop = TorchDecoder(model, slots=5)
    assert loop.k.shape == loop.v.shape == (c.n_layer, 5, c.n_head, c.block_size, c.n_embd // c.n_head)


def test_the_loop_runs_in_its_own_process_and_close_stops_it(model):
    engine = Engine(model, slots=2)
    assert engine.process.pid != os.getpid() and engine.process.poll() is None
    assert run(engine, model, "ROMEO:", 30, temperature=0) == model.generate_text("ROMEO:", 30, temperature=0)
    engine.close()
    assert engine.process.returncode == 0
    with pytest.raises(EngineStopped, match="the decode loop has stopped"):
        engine.submit(model.tokenizer.encode("ROMEO:"), 5)


def test_a_killed_loop_fails_its_requests_with_a_clear_error_instead_of_hanging(model):
    engine = Engine(model, slots=1, max_waiting=1)
    ids = model.tokenizer.encode("ROMEO:")
    running, waiting = engine.submit(ids, 10**6), engine.submit(ids, 10)
    while not running.tokens:
        time.sleep(0.001)
    engine.process.kill()  # as the kernel's out-of-memory killer would
    for req in (running, waiting):
        with pytest.raises(EngineStopped, match=r"the decode loop has stopped \(exit code -9\); restart the app"):
            req.result(timeout=30)
    with pytest.raises(EngineStopped):
        engine.submit(ids, 5)


def test_in_a_thread_the_loop_gives_the_same_texts(model):
    """Where a process cannot be given a pipe (Windows), the same loop runs in a thread."""
    engine = Engine(model, slots=4, process=False)
    assert engine.process is None
    for sampling in SETTINGS[:3]:
        assert run(engine, model, "ROMEO:", 60, **sampling) == model.generate_text("ROMEO:", 60, **sampling)
    engine.close()


def test_a_failing_request_fails_alone_and_the_loop_goes_on(model):
    """A prefill that raises (an id outside the vocabulary) ends that request with the error, and the
    requests of the same step get their texts; a seed the loop could not use is refused at submit."""
    engine = Engine(model, slots=4)
    good = model.tokenizer.encode("ROMEO:")
    reqs = [engine.submit(ids, 20, temperature=0) for ids in (good, [10**6], good)]
    with pytest.raises(RuntimeError, match="IndexError"):
        reqs[1].result(timeout=30)
    for req in (reqs[0], reqs[2]):
        assert "ROMEO:" + model.tokenizer.decode(req.result(timeout=30)) == model.generate_text(
            "ROMEO:", 20, temperature=0
        )
    with pytest.raises(ValueError, match="Overflow"):  # at submit, for this caller only
        engine.submit(good, 5, seed=2**64)
    assert run(engine, model, "ROMEO:", 30, temperature=0) == model.generate_text("ROMEO:", 30, temperature=0)
    assert engine.stats()["running"] == 0
    engine.close()


def test_a_failing_notify_does_not_stop_the_other_requests(model):
    engine = Engine(model, slots=2)

    def broken():
        raise RuntimeError("event loop is closed")

    ids = model.tokenizer.encode("ROMEO:")
    bad, fine = engine.submit(ids, 20, notify=broken), engine.submit(ids, 20, temperature=0)
    assert len(bad.result(timeout=30)) == 20
    assert fine.result(timeout=30) == model.generate(model.encode_prompt("ROMEO:"), 20, temperature=0)[0, 6:].tolist()
    assert run(engine, model, "KING:", 10, temperature=0) == model.generate_text("KING:", 10, temperature=0)
    engine.close()


def run_batcher(batcher, rows, join_late=(), steps_before_join=3):
    """Drive a Batcher by hand (no process, no thread): `rows` join at once, `join_late` after a few
    steps; returns {rid: (token ids, error or None)} once every request has ended."""
    from engine import Outbox

    sent = []
    out = Outbox(sent.append)
    for row in rows:
        batcher.add(row)
    with torch.inference_mode():
        for i in itertools.count():
            if i == steps_before_join:
                for row in join_late:
                    batcher.add(row)
            if not batcher.active and i > steps_before_join:
                break
            try:  # as engine.serve runs each step
                batcher.step(out)
            except Exception as e:
                batcher.fail(out, e)
            out.flush(batcher.steps)
    tokens, ended = {}, {}
    for _, _, toks, done in sent:
        for rid, token, _ in toks:
            tokens.setdefault(rid, []).append(token)
        ended.update(dict(done))
    return {rid: (tokens.get(rid, []), ended[rid]) for rid in ended}


@pytest.mark.parametrize("temperature, top_p", [(1e-40, None), (5e-324, None), (1.0, 1e-300)])
def test_a_request_whose_sampling_fails_ends_alone_and_the_others_keep_their_text(model, temperature, top_p):
    """Three 1,500-character requests are writing when one with a tiny temperature (or top-p) joins: whatever
    that row's sampling does, the three finish with the very texts they get alone."""
    from engine import Row

    ids = model.tokenizer.encode("ROMEO:")
    good = [Row(i, ids, 1500, 0.8, None, None, i) for i in range(3)]
    bad = Row(3, ids, 1500, temperature, None, top_p, 7)
    results = run_batcher(Batcher(TorchDecoder(model, 4)), good, join_late=[bad])
    for i in range(3):
        tokens, error = results[i]
        assert error is None, error
        assert "ROMEO:" + model.tokenizer.decode(tokens) == model.generate_text("ROMEO:", 1500, temperature=0.8, seed=i)
    tokens, error = results[3]  # it completes (sampled greedily) or fails alone, saying why
    if error is None:
        assert len(tokens) == 1500
    else:
        assert f"temperature {temperature}" in error and "probability tensor" in error, error
        assert "\n" not in error


def test_a_failing_batched_step_decodes_each_row_alone_and_loses_no_one(model, monkeypatch):
    """When the batched decode step itself fails, each row takes its step alone: a row that fails alone
    ends with its error, every other row goes on with the text it gets alone."""
    import decoders
    from engine import Row

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(decoders, "decode_rows", broken)
    ids = model.tokenizer.encode("KING:")
    rows = [Row(i, ids, 100, (0, 0.9)[i % 2], None, None, i) for i in range(4)]
    results = run_batcher(Batcher(TorchDecoder(model, 4)), rows)
    for i in range(4):
        tokens, error = results[i]
        assert error is None, error
        expected = model.generate_text("KING:", 100, temperature=(0, 0.9)[i % 2], seed=i)
        assert "KING:" + model.tokenizer.decode(tokens) == expected


@pytest.mark.slow
def test_a_loop_that_cannot_hold_its_cache_fails_at_start_saying_why(model):
    """The KV cache is allocated before the loop says it is ready: a billion slots fail Engine() itself,
    with the reason, instead of an engine that answers every request "restart"."""
    with pytest.raises(RuntimeError, match="could not load the model and its KV cache: .*can't allocate memory"):
        Engine(model, slots=10**9)


# ---------------------------------------------------------------------------- the ONNX Runtime backend


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    """The model's standard graph (export_onnx.py), which the onnx backend runs."""
    pytest.importorskip("onnxruntime")
    from export_onnx import export_standard

    return export_standard(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@torch.inference_mode()
def test_onnx_decoder_logits_equal_torch_single_and_batched(model, onnx_file):
    """The same calls to both decoders: rows prefilled at different lengths, batched steps, a step alone, a row
    re-prefilled after a slide while the others decode, a row leaving and one joining; logits within 1e-4."""
    from decoders import OnnxDecoder

    decoders = TorchDecoder(model, slots=4), OnnxDecoder(onnx_file, model, slots=4, threads=1)
    g, block, gaps = torch.Generator().manual_seed(0), model.config.block_size, []

    def both(call):
        torch_logits, onnx_logits = (call(d) for d in decoders)
        assert torch_logits.shape == onnx_logits.shape
        gaps.append(float((torch_logits - onnx_logits).abs().max()))

    def ids(n):
        return torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist()

    pos = {0: 3, 1: 17, 2: 9}  # rows at different positions
    for rid, n in pos.items():
        both(lambda d, rid=rid, x=ids(n): d.prefill(rid, x))
    for step in range(60):
        full = [r for r in pos if pos[r] == block]
        for rid in full:  # a full window: slide and re-prefill, as the engine does
            both(lambda d, rid=rid, x=ids(block - block // 4): d.prefill(rid, x))
            pos[rid] = block - block // 4
        rids = [r for r in pos if r not in full]  # its neighbours decode in the step where it is re-prefilled
        if step == 5:
            rids = rids[1:2]  # one row alone while the others wait
        if rids:
            both(lambda d, rids=rids, x=ids(len(rids)): d.decode(rids, x))
        for rid in rids:
            pos[rid] += 1
        if step == 12:
            for d in decoders:
                d.drop(0)
            del pos[0]
        if step == 18:  # joins the running batch
            both(lambda d, x=ids(5): d.prefill(9, x))
            pos[9] = 5
    assert len(gaps) > 50 and max(gaps) < 1e-4, max(gaps)


@pytest.mark.parametrize("process", [True, False])
def test_onnx_backend_texts_equal_generate_text_alone_and_batched(model, onnx_file, process):
    """Greedy and seeded texts from ONNX Runtime are the texts of generate_text (PyTorch), one request alone
    and 16 at once past the context: the sampling is the engine's own, whichever backend computes the logits."""
    engine = Engine(model, slots=16, process=process, backend="onnx", onnx_file=onnx_file)
    assert engine.decoding == "decoding with ONNX Runtime (--backend onnx)"
    for sampling in SETTINGS[:4]:
        assert run(engine, model, "ROMEO:", 100, **sampling) == model.generate_text("ROMEO:", 100, **sampling)
    prompts = [("ROMEO:", "KING:\n", "To be, or not")[i % 3] * (1 + i % 4) for i in range(16)]
    lengths = [40 + 11 * i for i in range(16)]
    reqs = [engine.submit(model.tokenizer.encode(p), n, **s) for p, n, s in zip(prompts, lengths, SETTINGS)]
    for p, n, s, r in zip(prompts, lengths, SETTINGS, reqs):
        assert p + model.tokenizer.decode(r.result(timeout=60)) == model.generate_text(p, n, **s)
    engine.close()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cancel_frees_the_slot_with_either_backend(model, onnx_file, backend):
    engine = Engine(model, slots=2, max_waiting=0, backend=backend, onnx_file=onnx_file)
    ids = model.tokenizer.encode("ROMEO:")
    endless = [engine.submit(ids, 10**6, temperature=0.8, seed=i) for i in range(2)]
    while not all(r.tokens for r in endless):
        time.sleep(0.001)
    with pytest.raises(EngineBusy):
        engine.submit(ids, 10)
    endless[0].cancel()
    endless[0].result(timeout=10)
    assert run(engine, model, "ROMEO:", 40, temperature=0) == model.generate_text("ROMEO:", 40, temperature=0)
    endless[1].cancel()
    engine.close()


def test_a_killed_onnx_loop_fails_its_requests_with_the_clear_error(model, onnx_file):
    engine = Engine(model, slots=1, max_waiting=1, backend="onnx", onnx_file=onnx_file)
    ids = model.tokenizer.encode("ROMEO:")
    running, waiting = engine.submit(ids, 10**6), engine.submit(ids, 10)
    while not running.tokens:
        time.sleep(0.001)
    engine.process.kill()
    for req in (running, waiting):
        with pytest.raises(EngineStopped, match=r"the decode loop has stopped \(exit code -9\); restart the app"):
            req.result(timeout=30)


def test_auto_times_both_keeps_the_faster_and_says_so(model, onnx_file, capfd):
    engine = Engine(model, slots=4, backend="auto", onnx_file=onnx_file)
    line = (
        r"decoding with (PyTorch|ONNX Runtime), the faster here \(one text [\d.]+ ms/step with PyTorch, [\d.]+ with "
        r"ONNX Runtime; 4 at once [\d.]+ and [\d.]+ ms/step\)"
    )
    assert re.fullmatch(line, engine.decoding), engine.decoding
    assert run(engine, model, "ROMEO:", 50, temperature=0) == model.generate_text("ROMEO:", 50, temperature=0)
    engine.close()
    assert f"engine: {engine.decoding}" in capfd.readouterr().err  # the worker's log line at start
    without = Engine(model, slots=2, process=False, backend="auto", onnx_file=None, no_graph="no onnx/model.onnx")
    assert without.decoding == "decoding with PyTorch (no onnx/model.onnx)"


def test_the_onnx_backend_without_onnxruntime_is_a_clear_error(model, onnx_file, monkeypatch):
    """--backend onnx where onnxruntime is not installed: one sentence naming the pip command; auto decodes
    with PyTorch and says why."""
    from decoders import ORT_VERSION, OnnxRuntimeMissing, choose_decoder

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(OnnxRuntimeMissing, match=rf"not installed here .*: pip install onnxruntime=={ORT_VERSION}$"):
        choose_decoder(model, 2, onnx_file, backend="onnx")
    decoder, why = choose_decoder(model, 2, onnx_file, backend="auto")
    assert decoder.name == "torch" and f"pip install onnxruntime=={ORT_VERSION}" in why
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"onnxruntime=={ORT_VERSION}" in requirements.split()  # the version the message names is the app's


def test_app_backend_onnx_without_onnxruntime_exits_with_one_line(tmp_path, model):
    """`python app.py --backend onnx` where `import onnxruntime` fails: one line, no traceback, before any start."""
    model.save_pretrained(tmp_path / "m")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "onnxruntime.py").write_text("raise ImportError('No module named onnxruntime')\n")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "app.py", "--model", str(tmp_path / "m"), "--backend", "onnx", "--port", str(free_port())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install onnxruntime==" in proc.stderr.strip().splitlines()[-1]


def test_a_model_with_a_context_of_one_exports_and_generates_with_either_backend(tmp_path, shakespeare_vocab):
    """A model trained with --block-size 1 writes with GPT.stream (each character re-prefilled alone): the engine,
    with either backend, writes its very texts, batched too, and `hub.py export-onnx` exports it (it raised an
    AssertionError; in the app a 2-token request failed and took a batched 1-token request with it)."""
    folder = tmp_path / "b1"
    tiny = make_tiny_model(shakespeare_vocab, seed=2, block_size=1).eval()
    tiny.save_pretrained(folder)
    proc = subprocess.run(
        [sys.executable, "hub.py", "export-onnx", str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr
    for backend in ("torch", "onnx"):
        engine = Engine(tiny, slots=4, process=False, backend=backend, onnx_file=folder / "onnx" / "model.onnx")
        reqs = [
            (p, n, engine.submit(tiny.tokenizer.encode(p), n, temperature=0.9, seed=n))
            for p, n in [("RO", 30), ("K", 1)]
        ]
        for p, n, req in reqs:
            assert p + tiny.tokenizer.decode(req.result(timeout=60)) == tiny.generate_text(
                p, n, temperature=0.9, seed=n
            )
        engine.close()
