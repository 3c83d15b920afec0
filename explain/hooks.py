"""Record one forward pass of a Gemma3 model on a prompt: everything the explain figures draw.

`record(model, tokenizer, prompt)` runs the model's own forward once, with forward hooks that copy
the residual stream and the two contributions each block adds to it, and with every block's
`Attention.attend` swapped for `Probabilities`, which computes the same softmax(q k^T * scale + mask) v
written out (with the mask the model passes) and keeps the probabilities. The hooks are removed and
`attend` restored in a `finally`, so the model is left exactly as it was found, also when the pass raises. Nothing is re-derived: the logit
lens runs each residual through the model's own final norm and unembedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gemma3 import Gemma3Config

MAX_TOKENS = 256  # longer prompts are cut: attention maps grow as T^2, and the page must stay quick
TOP_CANDIDATES = 50  # next-token candidates whose text is kept (next_token_figure shows at most these)


def show_token(text: str) -> str:
    """A token's text made visible: spaces as ␣, newlines as ↵, tabs as ⇥, other unprintables as \\uXXXX."""
    out = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return out or "∅"


@dataclass
class Record:
    """One recorded forward pass (batch 1), all tensors fp32 on the CPU.

    L = layers, T = tokens, H = query heads, V = vocabulary.
    residual[0] is the input of block 0 (scaled embedding), residual[i + 1] the output of block i;
    residual[i + 1] = residual[i] + attn_out[i] + ffn_out[i] (what each block adds, after its post-norms).
    lens_ids / lens_probs: for each residual row and position, the top-1 token of
    final_norm + unembedding and its probability (row L is the model's own prediction).
    """

    tokens: list[int]
    labels: list[str]                # "3: ␣time" -- position, then the token's visible text; unique
    residual: torch.Tensor           # [L + 1, T, hidden]
    attn_out: torch.Tensor           # [L, T, hidden]
    ffn_out: torch.Tensor            # [L, T, hidden]
    attn_probs: list[torch.Tensor]   # L x [H, T, T], rows sum to 1, zero where the mask hides a key
    logits: torch.Tensor             # [T, V] final logits
    lens_ids: torch.Tensor           # [L + 1, T] long
    lens_probs: torch.Tensor         # [L + 1, T]
    next_ids: list[int]              # the TOP_CANDIDATES most likely next tokens after the prompt, best first
    token_text: dict[int, str]       # visible text of every token id above (prompt, lens, next candidates)
    layer_types: list[str]           # "sliding" / "full" per layer
    config: Gemma3Config
    notice: str | None = None        # set when the prompt was cut
    prompt_tokens: int = 0           # tokens in the prompt before any cut

    @property
    def layers(self) -> int:
        return len(self.layer_types)

    @property
    def seq_len(self) -> int:
        return len(self.tokens)


def _fit(ids: list[int], bos_id, max_tokens: int) -> tuple[list[int], str | None, int]:
    """Prepend BOS (as generation does) and keep at most max_tokens: BOS plus the prompt's last tokens."""
    n = len(ids)
    head = [bos_id] if bos_id is not None else []
    keep = max_tokens - len(head)
    if n <= keep:
        return head + ids, None, n
    notice = (f"The prompt has {n} tokens; only its last {keep} were recorded (the explainer shows at most "
              f"{max_tokens} tokens, so that the next-token prediction is still the one at the end of your text).")
    return head + ids[-keep:], notice, n


class Probabilities:
    """A drop-in for gemma3.model.attend that writes attention out and keeps its probabilities."""

    def __init__(self):
        self.probs: torch.Tensor | None = None  # [B, H, Tq, Tk] of the last call

    def __call__(self, q, k, v, mask, scale):
        group = q.shape[1] // k.shape[1]  # query heads per key/value head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if mask is None:  # plain causal: the keys are exactly the queries
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.transpose(-2, -1)).float() * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        self.probs = probs.detach()
        return probs.to(v.dtype) @ v


def record(model, tokenizer, prompt: str, max_tokens: int = MAX_TOKENS) -> Record:
    """Run `model` once on `prompt` and keep what every figure needs (see Record).

    A prompt longer than `max_tokens` keeps its last tokens (where the next token is predicted,
    as `gemma3.generate` does) and the record carries a notice saying so.
    """
    if not isinstance(prompt, str):
        raise ValueError("The prompt must be text.")
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be a whole number of at least 2, not {max_tokens!r}.")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("The prompt is empty: type some text for the model to read.")
    cfg = model.config
    ids, notice, n_prompt = _fit(ids, getattr(tokenizer, "bos_id", None), min(max_tokens, cfg.context))

    blocks = list(model.blocks)
    L = len(blocks)
    got: dict = {"input": None, "block": [None] * L, "attn": [None] * L, "ffn": [None] * L}

    def keep_input(module, args):
        got["input"] = args[0].detach()

    def keeper(kind, i):
        def hook(module, args, output):
            got[kind][i] = output.detach()
        return hook

    saved = [b.attn.attend for b in blocks]
    kept = [Probabilities() for _ in blocks]
    handles = []
    device = model.embed.weight.device
    try:
        handles.append(blocks[0].register_forward_pre_hook(keep_input))
        for i, b in enumerate(blocks):
            handles.append(b.register_forward_hook(keeper("block", i)))
            handles.append(b.post_attn_norm.register_forward_hook(keeper("attn", i)))
            handles.append(b.post_ffn_norm.register_forward_hook(keeper("ffn", i)))
            b.attn.attend = kept[i]
        with torch.no_grad():
            logits = model(torch.tensor([ids], device=device))[0]
            probs = [k.probs[0].float().cpu() for k in kept]
    finally:
        for h in handles:
            h.remove()
        for b, attend in zip(blocks, saved):
            b.attn.attend = attend

    residual = [got["input"][0]] + [x[0] for x in got["block"]]
    with torch.no_grad():
        lens_ids, lens_probs = _logit_lens(model, residual[:-1])
        top = logits.float().max(-1)  # the last row is the model's own output, not a recomputation
        last_p = 1.0 / (logits.float() - top.values[:, None]).exp().sum(-1)
        lens_ids = torch.cat((lens_ids, top.indices[None].cpu()))
        lens_probs = torch.cat((lens_probs, last_p[None].cpu()))
        next_ids = logits[-1].float().topk(min(TOP_CANDIDATES, logits.shape[-1])).indices.tolist()

    def text(i: int) -> str:
        return show_token(tokenizer.decode([i]))

    token_text = {i: text(i) for i in set(ids) | set(lens_ids.flatten().tolist()) | set(next_ids)}
    cpu = lambda ts: torch.stack([t.float().cpu() for t in ts])  # noqa: E731
    return Record(
        tokens=list(ids),
        labels=[f"{p}: {token_text[i]}" for p, i in enumerate(ids)],
        residual=cpu(residual),
        attn_out=cpu([x[0] for x in got["attn"]]),
        ffn_out=cpu([x[0] for x in got["ffn"]]),
        attn_probs=probs,
        logits=logits.float().cpu(),
        lens_ids=lens_ids,
        lens_probs=lens_probs,
        next_ids=next_ids,
        token_text=token_text,
        layer_types=list(cfg.layer_types),
        config=cfg,
        notice=notice,
        prompt_tokens=n_prompt,
    )


def _logit_lens(model, residuals) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 token and its probability from final_norm + unembedding of each residual [T, hidden]."""
    w = model.embed.weight if model.head is None else model.head.weight
    ids, ps = [], []
    for x in residuals:
        logits = F.linear(model.final_norm(x), w).float()
        top = logits.max(-1)
        ids.append(top.indices.cpu())
        ps.append((1.0 / (logits - top.values[:, None]).exp().sum(-1)).cpu())
    return torch.stack(ids), torch.stack(ps)

