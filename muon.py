"""The optimizers train_gpt2.py can use: AdamW alone, or Muon for the hidden matrices with AdamW for the rest.

    python train_gpt2.py --preset cpu --optimizer muon     # the cpu preset's choice
    python train_gpt2.py --preset cpu --optimizer adamw    # AdamW for every parameter (as gpt_dev.ipynb)

Muon (Keller Jordan, 2024; modded-nanogpt) replaces each hidden weight matrix's update by its
momentum made (nearly) orthogonal with a few Newton-Schulz iterations: every direction of the
matrix moves at the same rate, whatever the gradient's scale. It suits only the 2-D weights inside
the blocks; the embeddings (tied with the head), biases and LayerNorms keep AdamW. The weights
stay exactly GPT-2's: only the update rule changes.
"""

import torch

# the quintic iteration's coefficients, chosen to push small singular values up fast (modded-nanogpt)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz on a (..., m, n) stack: each matrix's singular values pushed to ~[0.7, 1.2], in fp32.

    torch.optim.Muon runs this in bf16, which a GPU does fast; a CPU without bf16 units runs it
    3-4x slower than fp32. Matrices of one shape are stacked, so each iteration is three batched
    matmuls, with the scalings and sums folded into them (baddbmm): ~0.7x the time of separate ops.
    """
    a, b, c = NS_COEFFICIENTS
    shape, tall = g.shape, g.size(-2) > g.size(-1)
    g = g.reshape(-1, *shape[-2:])  # one matrix or a stack: (batch, m, n), as baddbmm takes
    x = g.mT if tall else g  # (batch, short, long): the Gram matrix x @ x.T is the small one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram
        x = torch.baddbmm(x, poly, x, beta=a)  # a * x + poly @ x
    return (x.mT if tall else x).reshape(shape)


class CPUMuon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz iteration in fp32, batched by shape: the same update,
    the same state (one momentum buffer per matrix), so resume files and settings are shared."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                by_shape.setdefault(p.shape, []).append((p, update))
            for shape, items in by_shape.items():
                ortho = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"], group["eps"])
                # torch.optim.Muon's "original" scaling: a tall matrix (out > in) takes a larger step
                lr = group["lr"] * max(1.0, shape[0] / shape[1]) ** 0.5
                for (p, _), o in zip(items, ortho):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(o, alpha=-lr)
        return loss


def param_groups(model) -> dict:
    """Muon's parameters (2-D weights inside the blocks) and AdamW's (embeddings, biases, LayerNorms), by name."""
    groups = {"muon": [], "adamw_decay": [], "adamw_no_decay": []}
    for name, p in model.named_parameters():  # the tied head is listed once, as transformer.wte.weight
        if not p.requires_grad:
            continue
        if p.dim() == 2 and name.startswith("transformer.h."):
            groups["muon"].append((name, p))
        elif p.dim() >= 2:
            groups["adamw_decay"].append((name, p))
        else:
            groups["adamw_no_decay"].append((name, p))
    ids = [id(p) for g in groups.values() for _, p in g]
    expected = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == expected, "every parameter in exactly one optimizer group"
    return groups


def build_optimizers(model, cfg, device_type: str) -> list:
    """[AdamW] for --optimizer adamw; [AdamW, Muon] for --optimizer muon. Each group keeps its peak
    learning rate as "peak_lr": the schedule scales it (train_gpt2.lr_factor)."""
    if cfg.optimizer == "adamw":
        opts = [model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)]
    else:
        groups = param_groups(model)
        adamw = torch.optim.AdamW(
            [
                {"params": [p for _, p in groups["adamw_decay"]], "weight_decay": cfg.weight_decay},
                {"params": [p for _, p in groups["adamw_no_decay"]], "weight_decay": 0.0},
            ],
            lr=cfg.learning_rate,
            betas=(cfg.beta1, cfg.beta2),
            fused=device_type in ("cuda", "cpu"),
        )
        muon_class = torch.optim.Muon if device_type == "cuda" else CPUMuon  # bf16 is fast only on a GPU
        muon = muon_class(
            [p for _, p in groups["muon"]],
            lr=cfg.muon_lr,
            weight_decay=cfg.muon_weight_decay,
            momentum=cfg.muon_momentum,
        )
        opts = [adamw, muon]
    for opt in opts:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return opts
