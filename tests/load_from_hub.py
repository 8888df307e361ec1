"""Load a model repo from the Hub server named by HF_ENDPOINT, with our loader and with transformers.

    HF_ENDPOINT=http://127.0.0.1:PORT python tests/load_from_hub.py ORG/NAME PROMPT N OUT.pt

Run in a fresh process because huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE and HF_HUB_CACHE at
import. Saves to OUT.pt: our logits on a full context, each reader's greedy continuation of PROMPT
(N characters), and the error that loading a repo the server does not have gives.
"""

import sys
from pathlib import Path

import torch
from huggingface_hub import constants, snapshot_download
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the project's root
from model_gpt2 import load_model  # noqa: E402

repo, prompt, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = load_model(repo)
idx = torch.arange(model.config.block_size).unsqueeze(0) % model.config.vocab_size
with torch.no_grad():
    logits = model(idx)[0]
try:
    load_model("testorg/no-such-model")
    missing = None
except Exception as e:
    missing = f"{type(e).__name__}: {e}"

hf_model = AutoModelForCausalLM.from_pretrained(repo).eval()
# AutoTokenizer asks for optional files the repo does not have (tokenizer.model, special_tokens_map.json...).
# The Hub answers 404 for those, which transformers takes as "not there"; olah, having no upstream, answers
# 401, which transformers takes as "no such repo". So the repo's files are downloaded through the server
# first, and AutoTokenizer then reads the repo id from that cache, as it does offline.
snapshot_download(repo)
constants.HF_HUB_OFFLINE = True
tokenizer = AutoTokenizer.from_pretrained(repo)
ids = tokenizer(prompt, return_tensors="pt").input_ids
hf_ids = hf_model.generate(ids, max_new_tokens=n, do_sample=False)[0]
result = {
    "logits": logits,
    "text": model.generate_text(prompt, n, temperature=0),
    "transformers_text": tokenizer.decode(hf_ids),
    "transformers_class": type(hf_model).__name__,
    "missing": missing,
}
torch.save(result, out)
