"""The batched decode loop without a server: texts equal generate_text's, alone or among 15 others,
past the context too; rows at different positions; the waiting line, the busy error, cancellation;
the loop's own process, and what happens when it dies."""

import itertools
import os
import time

import pytest
import torch
from helpers import make_tiny_model

from engine import Batcher, Engine, EngineBusy, EngineStopped, decode_rows


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
    loop = Batcher(model, slots=3)  # only its cache and its transposed weights are used here
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
    loop = Batcher(model, slots=5)
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
    results = run_batcher(Batcher(model, slots=4), good, join_late=[bad])
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
    import engine
    from engine import Row

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "decode_rows", broken)
    ids = model.tokenizer.encode("KING:")
    rows = [Row(i, ids, 100, (0, 0.9)[i % 2], None, None, i) for i in range(4)]
    results = run_batcher(Batcher(model, slots=4), rows)
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
