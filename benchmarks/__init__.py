"""bench.py's benchmarks, one module per subject; bench.py parses the command line, runs them and prints the table.

common.py       timing helpers, the matmul peak, FLOPs per token, the model shapes compared
training.py     train_gpt2's own training step, timed per preset; torch.compile's cost and gain
nanogpt.py      nanoGPT's CPU configuration: where a step's time goes, and nanoGPT's own train.py in the same run
generation.py   KV-cached streaming against nanoGPT's full recompute; what one cached token costs
quality.py      the cpu preset's best val loss within its time budget, per seed
browser.py      the static Space's page in headless Chromium (ONNX Runtime Web)
serving.py      app.py under many users at once, the decode loop alone, batched against lone texts
"""
