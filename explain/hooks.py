"""Record one forward pass of a Gemma3 model on a prompt: every stage of it, and what the figures draw.

`record(model, tokenizer, prompt)` runs the model's own forward once, with forward hooks and pre-hooks
on its named modules that keep every intermediate tensor (explain.STAGES per layer, MODEL_STAGES for the
whole model), and with every block's `Attention.attend` swapped for `Probabilities`, which receives q and
k after RoPE, computes the same softmax(q k^T * scale + mask) v written out (with the mask the model
passes) and keeps q, k and the probabilities. Nothing is re-derived: each stage is a tensor the model
itself computed, and the logit lens runs each residual through the model's own final norm and
unembedding. The hooks are removed and `attend` restored in a `finally`, so the model is left exactly
as it was found, also when the pass raises.

Memory (see `record_bytes`): every stage is kept in the model's dtype (the attention probabilities in
fp32, the dtype the model's softmax computes them in), on the CPU, each tensor once (a layer's "input"
is the previous layer's "output", "embed" is layer 0's "input"). Per token and layer that is
8 x hidden + 4 x heads x head_dim + 4 x kv_heads x head_dim + 3 x ffn numbers, plus
heads x T fp32 probabilities; per token for the model 2 x hidden + vocab. For the 270m preset
(`Gemma3Config.from_preset("270m")`: hidden 640, 4 heads and 1 key/value head of 256, ffn 2048,
18 layers, vocabulary 50,257) that is 16,384 numbers per token and layer, 346,449 per token in all, plus
288 x T^2 bytes of probabilities:

    bf16:    692,898 x T + 288 x T^2 bytes   (100 tokens: 72 MB;  MAX_TOKENS = 256: 196 MB)
    fp32:  1,385,796 x T + 288 x T^2 bytes   (100 tokens: 141 MB; MAX_TOKENS = 256: 374 MB)

The MAX_TOKENS cut bounds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gemma3 import Gemma3Config

MAX_TOKENS = 256  # longer prompts are cut: attention maps grow as T^2, and the page must stay quick
TOP_CANDIDATES = 50  # next-token candidates whose text is kept (next_token_figure shows at most these)

# Per-layer stages in the order the block computes them (shapes for T tokens, batch dimension dropped).
STAGES = (
    "input",           # [T, hidden]             residual stream entering the layer
    "attn_norm",       # [T, hidden]             pre-attention RMSNorm
    "q",               # [T, heads, head_dim]    wq, before the q norm
    "k",               # [T, kv_heads, head_dim] wk, before the k norm
    "v",               # [T, kv_heads, head_dim] wv
    "q_norm",          # [T, heads, head_dim]    per-head RMSNorm over head_dim
    "k_norm",          # [T, kv_heads, head_dim]
    "q_rope",          # [T, heads, head_dim]    after RoPE (what attention receives)
    "k_rope",          # [T, kv_heads, head_dim]
    "attn_probs",      # [heads, T, T]           softmax(q k^T * scale + mask), fp32, zero where masked
    "attn_out",        # [T, heads * head_dim]   attention output, the heads side by side: the input of wo
    "o",               # [T, hidden]             wo
    "post_attn_norm",  # [T, hidden]             what the attention half adds to the residual
    "mid",             # [T, hidden]             residual after the attention half: input + post_attn_norm
    "ffn_norm",        # [T, hidden]             pre-feed-forward RMSNorm
    "gate",            # [T, ffn]
    "up",              # [T, ffn]
    "act",             # [T, ffn]                gelu_tanh(gate) * up: the input of down
    "down",            # [T, hidden]
    "post_ffn_norm",   # [T, hidden]             what the feed-forward half adds
    "output",          # [T, hidden]             residual leaving the layer: mid + post_ffn_norm
)
MODEL_STAGES = (
    "embed",       # [T, hidden] embedding x sqrt(hidden): the input of layer 0
    "final_norm",  # [T, hidden] final RMSNorm of the last layer's output
    "logits",      # [T, vocab]  the model's own output
)


def show_token(text: str) -> str:
    """A token's text made visible: spaces as ␣, newlines as ↵, tabs as ⇥, other unprintables as \\uXXXX."""
    out = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    out = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in out)
    return out or "∅"


def record_bytes(config: Gemma3Config, tokens: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the stage tensors a Record keeps for `tokens` tokens of a model in `dtype` (its budget;
    a model without post-norms keeps less: there post_attn_norm is o and post_ffn_norm is down)."""
    size = torch.empty(0, dtype=dtype).element_size()
    c, T = config, tokens
    per_layer = 8 * c.hidden + 4 * c.heads * c.head_dim + 4 * c.kv_heads * c.head_dim + 3 * c.ffn
    numbers = T * (c.layers * per_layer + 2 * c.hidden + c.vocab_size)
    return numbers * size + c.layers * c.heads * T * T * 4


@dataclass
class Record:
    """One recorded forward pass (batch 1) on the CPU.

    L = layers, T = tokens, H = query heads, V = vocabulary. `stage(name, layer)` gives every stage
    (STAGES per layer, MODEL_STAGES for the model) in the model's dtype. The views the figures use are
    derived from them: residual, attn_added, ffn_added (fp32, built on each access), attn_probs, logits.
    lens_ids / lens_probs: for each residual row and position, the top-1 token of
    final_norm + unembedding and its probability (row L is the model's own prediction).
    """

    tokens: list[int]
    labels: list[str]                # "3: ␣time" -- position, then the token's visible text; unique
    stages: list[dict] = field(repr=False)          # L x {name in STAGES: tensor}
    model_stages: dict = field(repr=False)          # {name in MODEL_STAGES: tensor}
    lens_ids: torch.Tensor = field(repr=False)      # [L + 1, T] long
    lens_probs: torch.Tensor = field(repr=False)    # [L + 1, T]
    next_ids: list[int] = field(repr=False)         # the TOP_CANDIDATES most likely next tokens, best first
    token_text: dict[int, str] = field(repr=False)  # visible text of every token id above (prompt, lens, next)
    layer_types: list[str]           # "sliding" / "full" per layer
    config: Gemma3Config
    notice: str | None = None        # set when the prompt was cut
    prompt_tokens: int = 0           # tokens in the prompt before any cut
    lens_ranks: dict | None = field(default=None, repr=False)  # explain.figures.lens_ranks, once it has run

    @property
    def layers(self) -> int:
        return len(self.layer_types)

    @property
    def seq_len(self) -> int:
        return len(self.tokens)

    def stage(self, name: str, layer: int | None = None) -> torch.Tensor:
        """The tensor of stage `name` (of `layer` for a per-layer stage), batch dimension dropped.

        The tensor is the record's own (shared by every view of it): read it, don't modify it in place.
        """
        if name in MODEL_STAGES:
            if layer is not None:
                raise ValueError(f"Stage {name!r} belongs to the whole model, not to a layer: ask for it "
                                 f"without a layer, not with layer={layer!r}.")
            return self.model_stages[name]
        if name not in STAGES:
            raise ValueError(f"There is no stage {name!r}: the stages of a layer are {', '.join(STAGES)}; "
                             f"those of the whole model are {', '.join(MODEL_STAGES)}.")
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.layers:
            raise ValueError(f"Stage {name!r} is recorded for each layer: give a layer from 0 to "
                             f"{self.layers - 1}, not {layer!r}.")
        return self.stages[layer][name]

    # ---- views derived from the stages ----
    @property
    def residual(self) -> torch.Tensor:
        """[L + 1, T, hidden] fp32: row 0 the input of layer 0 (the scaled embedding), row i + 1 the output
        of layer i; residual[i + 1] = residual[i] + attn_added[i] + ffn_added[i]."""
        return torch.stack([self.model_stages["embed"]] + [s["output"] for s in self.stages]).float()

    @property
    def attn_added(self) -> torch.Tensor:
        """[L, T, hidden] fp32: what each attention half adds to the residual (after its post-norm)."""
        return torch.stack([s["post_attn_norm"] for s in self.stages]).float()

    @property
    def ffn_added(self) -> torch.Tensor:
        """[L, T, hidden] fp32: what each feed-forward half adds to the residual (after its post-norm)."""
        return torch.stack([s["post_ffn_norm"] for s in self.stages]).float()

    @property
    def attn_probs(self) -> list[torch.Tensor]:
        """L x [H, T, T] fp32, rows sum to 1, zero where the mask hides a key."""
        return [s["attn_probs"] for s in self.stages]

    @property
    def logits(self) -> torch.Tensor:
        """[T, V] the model's final logits, in its dtype."""
        return self.model_stages["logits"]

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded stages, each tensor's memory counted once."""
        seen: dict[int, int] = {}
        for t in [*self.model_stages.values(), *(t for s in self.stages for t in s.values())]:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())


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
    """A drop-in for gemma3.model.attend that writes attention out and keeps q, k (after RoPE) and the
    probabilities of its last call."""

    def __init__(self):
        self.q: torch.Tensor | None = None      # [B, H, Tq, D]
        self.k: torch.Tensor | None = None      # [B, KV, Tk, D]
        self.probs: torch.Tensor | None = None  # [B, H, Tq, Tk] fp32

    def __call__(self, q, k, v, mask, scale):
        self.q, self.k = q.detach(), k.detach()
        group = q.shape[1] // k.shape[1]  # query heads per key/value head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if mask is None:  # plain causal: the keys are exactly the queries
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = (q @ k.transpose(-2, -1)).float() * scale
        probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        self.probs = probs.detach()
        return probs.to(v.dtype) @ v


def _taps(block) -> tuple:
    """(stage, module, "pre" for the module's input / "out" for its output) of every hooked stage."""
    a, f = block.attn, block.ffn
    return (("input", block, "pre"), ("attn_norm", block.attn_norm, "out"),
            ("q", a.wq, "out"), ("k", a.wk, "out"), ("v", a.wv, "out"),
            ("q_norm", a.q_norm, "out"), ("k_norm", a.k_norm, "out"),
            ("attn_out", a.wo, "pre"), ("o", a.wo, "out"), ("post_attn_norm", block.post_attn_norm, "out"),
            ("mid", block.ffn_norm, "pre"), ("ffn_norm", block.ffn_norm, "out"),
            ("gate", f.gate, "out"), ("up", f.up, "out"), ("act", f.down, "pre"), ("down", f.down, "out"),
            ("post_ffn_norm", block.post_ffn_norm, "out"), ("output", block, "out"))


def _forward(model, ids: list[int]) -> tuple[list[dict], dict]:
    """One forward pass of the model with every stage kept (batch 1, on the model's device)."""
    blocks = list(model.blocks)
    got: list[dict] = [{} for _ in blocks]
    whole: dict = {}

    def keep(where: dict, name: str, kind: str):
        if kind == "pre":
            return lambda module, args: where.__setitem__(name, args[0].detach()[0])
        return lambda module, args, output: where.__setitem__(name, output.detach()[0])

    saved = [b.attn.attend for b in blocks]
    kept = [Probabilities() for _ in blocks]
    handles = []
    try:
        for i, b in enumerate(blocks):
            for name, module, kind in _taps(b):
                register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
                handles.append(register(keep(got[i], name, kind)))
            b.attn.attend = kept[i]
        handles.append(model.final_norm.register_forward_hook(keep(whole, "final_norm", "out")))
        with torch.no_grad():
            whole["logits"] = model(torch.tensor([ids], device=model.embed.weight.device))[0]
    finally:
        for h in handles:
            h.remove()
        for b, attend in zip(blocks, saved):
            b.attn.attend = attend

    T = len(ids)
    for i, (b, k) in enumerate(zip(blocks, kept)):
        a, s = b.attn, got[i]
        for name, heads in (("q", a.heads), ("k", a.kv_heads), ("v", a.kv_heads)):
            s[name] = s[name].view(T, heads, a.head_dim)
        s["q_rope"] = k.q[0].transpose(0, 1).contiguous()
        s["k_rope"] = k.k[0].transpose(0, 1).contiguous()
        s["attn_probs"] = k.probs[0]
        got[i] = {name: s[name] for name in STAGES}
    whole["embed"] = got[0]["input"]
    return got, {name: whole[name] for name in MODEL_STAGES}


def _to_cpu(layers: list[dict], whole: dict) -> tuple[list[dict], dict]:
    """Every stage on the CPU; a tensor kept under two names (a layer's input, the previous output)
    is copied once."""
    copies: dict = {}

    def cpu(t):
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype)
        if key not in copies:
            copies[key] = t.cpu()
        return copies[key]

    return [{n: cpu(t) for n, t in s.items()} for s in layers], {n: cpu(t) for n, t in whole.items()}


def record(model, tokenizer, prompt: str, max_tokens: int = MAX_TOKENS) -> Record:
    """Run `model` once on `prompt` and keep every stage of the pass (see Record and STAGES).

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

    layers, whole = _forward(model, ids)
    logits = whole["logits"]
    with torch.no_grad():
        lens_ids, lens_probs = _logit_lens(model, [whole["embed"]] + [s["output"] for s in layers[:-1]])
        top = logits.float().max(-1)  # the last row is the model's own output, not a recomputation
        last_p = 1.0 / (logits.float() - top.values[:, None]).exp().sum(-1)
        lens_ids = torch.cat((lens_ids, top.indices[None].cpu()))
        lens_probs = torch.cat((lens_probs, last_p[None].cpu()))
        next_ids = logits[-1].float().topk(min(TOP_CANDIDATES, logits.shape[-1])).indices.tolist()
    layers, whole = _to_cpu(layers, whole)

    def text(i: int) -> str:
        return show_token(tokenizer.decode([i]))

    token_text = {i: text(i) for i in set(ids) | set(lens_ids.flatten().tolist()) | set(next_ids)}
    return Record(
        tokens=list(ids),
        labels=[f"{p}: {token_text[i]}" for p, i in enumerate(ids)],
        stages=layers,
        model_stages=whole,
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
