"""The architecture walk-through: Gemma 3 as a diagram of its forward pass, one box per stage, and for each
stage what it does, its equation, the lines of code that compute it and a picture of its tensor.

Pure functions of a config (the diagram, every box's shape for T tokens), of a stage name (the words, the
equation, the source lines, taken from the model's own code with `inspect` so they cannot drift from it)
and of a Record (the panel figure, drawn from `Record.stage`). The walk goes through every stage in the
order the model computes it: the token ids and the embedding, every stage of layer 0, of layer 1, ...,
then the final norm, the logits, the softmax and the next token.
"""

from __future__ import annotations

import html
import inspect
import math
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from gemma3 import generation as gen
from gemma3 import model as gm

from . import phone
from .figures import FONT, FULL, INK, SLIDING, TEAL, _title
from .figures import _style as _app_style
from .hooks import MODEL_STAGES, STAGES, Record

BEFORE = ("ids", "embed")                           # model stages before the layers
AFTER = ("final_norm", "logits", "probs", "next")   # and after them
WALK_STAGES = BEFORE + STAGES + AFTER               # every box of the diagram, in forward order
PER_LAYER = frozenset(STAGES)
MAX_COLUMNS = 128   # heatmap columns: wider tensors are sampled (evenly spaced dimensions, each value exact)
TOP = 20            # tokens shown by the logits and softmax panels
BAR = "#64748b"      # slate-500: the panels' plain bars (teal marks the token that really follows)
# a legend under the plots, over none of them
BELOW = dict(orientation="h", x=0, xanchor="left", yref="container", y=0.005, yanchor="bottom")


@dataclass(frozen=True)
class Step:
    box: str          # the label in the diagram
    title: str        # the panel's heading
    about: str        # two or three sentences; {names} filled from the config and the layer (see _facts)
    equation: str


STEPS: dict[str, Step] = {
    "ids": Step("token ids", "Token ids",
                "The tokenizer cuts your prompt into pieces and looks each up in a vocabulary of {vocab:,} entries"
                "{bos_note}: the model only ever sees these {T} numbers. Pick a token below to follow it through "
                "every stage.",
                "ids = tokenize(prompt), each in 0 … {vocab_1:,}"),
    "embed": Step("embedding × √{hidden}", "Embedding × √hidden",
                  "Each id picks its row of the {vocab:,} × {hidden} embedding table, and the row is multiplied by "
                  "√{hidden} ≈ {sqrt_hidden:.1f} (cast to the weights' dtype), as the original Transformer did: "
                  "the table's small numbers become vectors on the scale of what the layers will add. {tied_note}",
                  "x₀ = E[ids] · √{hidden}"),
    "input": Step("residual stream in", "The residual stream entering layer {layer}",
                  "Each token's {hidden} numbers as they enter layer {layer}: the embedding plus everything the "
                  "earlier layers added. A layer never overwrites this stream; it adds two contributions to it "
                  "(attention, then feed-forward). Watch the RMS of the tokens grow from layer to layer.",
                  "x = output of layer {layer_1} (layer 0: x₀)"),
    "attn_norm": Step("RMSNorm (pre-attention)", "Pre-attention RMSNorm",
                      "Divides each token's vector by its root-mean-square, then multiplies it dimension by dimension "
                      "by (1 + w), a learned weight that starts at zero. However large the stream has grown, "
                      "attention reads vectors of a steady size: the RMS of every token is about the same here.",
                      "h = x / √(mean(x²) + ε) ⊙ (1 + w)"),
    "q": Step("Wq", "Wq: the queries",
              "A {hidden} × {q_width} matrix turns each token into {heads} queries of {head_dim} numbers, one per "
              "head: what this token looks for. {head_dim_note}",
              "q = h W_q, split into {heads} heads of {head_dim}"),
    "k": Step("Wk", "Wk: the keys",
              "{kv_sharing}",
              "k = h W_k, {kv_heads} head{kv_s} of {head_dim}"),
    "v": Step("Wv", "Wv: the values",
              "The values are what a token hands on when another token attends to it. Like the keys, {kv_heads} "
              "head{kv_s} {kv_shared_by}; values get no norm and no rotation.",
              "v = h W_v, {kv_heads} head{kv_s} of {head_dim}"),
    "q_norm": Step("q RMSNorm", "RMSNorm of each query head",
                   "Gemma 3 normalises every query head over its {head_dim} numbers before RoPE (Gemma 2 capped the "
                   "scores instead). It bounds the size of q, and with it the scores q·k: compare the RMS per head "
                   "with the Wq box, where it is whatever the matrix made it.",
                   "q̂ = q / rms(q) ⊙ (1 + w_q), per head"),
    "k_norm": Step("k RMSNorm", "RMSNorm of each key head",
                   "The same per-head normalisation for the keys, with its own weight. With both q and k of a steady "
                   "size, no score q·k can run away, whatever the input.",
                   "k̂ = k / rms(k) ⊙ (1 + w_k), per head"),
    "q_rope": Step("RoPE q", "RoPE on the queries",
                   "Rotary position embedding turns each pair of numbers (i, i + {half_dim}) by the angle position × "
                   "base^(−2i/{head_dim}). This layer is {kind}, so the base is {base:,.0f}. A rotation keeps the "
                   "size (the RMS is the q norm's) but makes q·k depend on how far apart two tokens are.",
                   "q′ = q̂ ⊙ cos(pθ) + rotate_half(q̂) ⊙ sin(pθ),  θᵢ = {base:,.0f}^(−2i/{head_dim})"),
    "k_rope": Step("RoPE k", "RoPE on the keys",
                   "The keys are turned by the same angles for their own positions. A query and a key {far} apart "
                   "end up turned against each other by exactly that distance, which is how attention knows order. "
                   "Base {base:,.0f} on this {kind} layer.",
                   "k′ = k̂ ⊙ cos(pθ) + rotate_half(k̂) ⊙ sin(pθ)"),
    "attn_probs": Step("masked attention", "Masked attention: the probabilities",
                       "Each query scores every key with q·k / √{qpas:g} ({qpas_note}); the mask hides later "
                       "keys{window_note}, and a softmax turns each row into probabilities that sum to 1. One map "
                       "per query head, {heads_read}; the selected token's row is outlined.",
                       "P = softmax(q′ k′ᵀ / √{qpas:g} + mask)"),
    "attn_out": Step("P · v", "The weighted values",
                     "Each head mixes the value vectors with its row of probabilities, and the {heads} heads' results "
                     "are laid side by side: {heads} × {head_dim} = {q_width} numbers per token.",
                     "a = P v, the {heads} heads side by side"),
    "o": Step("Wo", "Wo: back to the stream's width",
              "A {q_width} × {hidden} matrix mixes the heads' results and brings them back to the width of the "
              "residual stream.",
              "o = a W_o"),
    "post_attn_norm": Step("RMSNorm (post-attention)", "Post-attention RMSNorm",
                           "Gemma 3 normalises the attention result again before adding it, so what the attention half "
                           "adds has a size set by its own learned weight (1 + w), not by the layer's arithmetic: the "
                           "RMS of what each layer adds is its weight's, so no layer's part grows with the stream.",
                           "o′ = o / rms(o) ⊙ (1 + w)"),
    "mid": Step("+ residual: x + o′", "Residual add after attention",
                "The attention half's contribution joins the stream that came in. Nothing is overwritten: what earlier "
                "layers wrote stays, and this layer's part is added on top.",
                "x_mid = x + o′"),
    "ffn_norm": Step("RMSNorm (pre-feed-forward)", "Pre-feed-forward RMSNorm",
                     "The same normalisation as before attention, with its own weight, so the feed-forward reads "
                     "vectors of a steady size.",
                     "h′ = x_mid / √(mean(x_mid²) + ε) ⊙ (1 + w)"),
    "gate": Step("W_gate", "The gate",
                 "Two matrices widen each token from {hidden} to {ffn} numbers. This one, after GELU, decides how much "
                 "of each of the {ffn} features gets through.",
                 "g = h′ W_gate"),
    "up": Step("W_up", "Up",
               "The other widening: the values of the {ffn} features, to be scaled by the gate.",
               "u = h′ W_up"),
    "act": Step("GELU(gate) × up", "GeGLU: GELU(gate) × up",
                "GELU passes a positive gate almost unchanged, turns a negative one into a small negative value "
                "(never below −0.17) and a strongly negative one (below about −3) into nearly zero. Each of the "
                "{ffn} features passes up's value on, scaled by its gate: features with a large negative gate are "
                "switched off for this token. This gated unit (GeGLU) replaces the plain MLP of older transformers. The title "
                "says how many gates are near zero for the selected token.",
                "a = gelu_tanh(g) ⊙ u"),
    "down": Step("W_down", "Down",
                 "A {ffn} × {hidden} matrix brings the features back to the width of the stream.",
                 "d = a W_down"),
    "post_ffn_norm": Step("RMSNorm (post-feed-forward)", "Post-feed-forward RMSNorm",
                          "Like the attention half, the feed-forward result is normalised before it is added, so its "
                          "size is set by the learned weight.",
                          "d′ = d / rms(d) ⊙ (1 + w)"),
    "output": Step("+ residual: x_mid + d′", "Residual add: the layer's output",
                   "The feed-forward contribution joins the stream. {next_note}",
                   "x_out = x_mid + d′"),
    "final_norm": Step("final RMSNorm", "Final RMSNorm",
                       "After the last layer the stream is normalised once more, so the output layer compares vectors "
                       "of a steady size.",
                       "z = x_L / √(mean(x_L²) + ε) ⊙ (1 + w)"),
    "logits": Step("{head_box}", "{head_title}",
                   "Each final vector is compared, by a dot product, with every one of the {vocab:,} tokens: "
                   "{head_how} A high logit means the vector points the way of that token.",
                   "{head_equation}"),
    "probs": Step("softmax", "Softmax: the probabilities",
                  "The softmax turns the {vocab:,} logits at each position into probabilities that sum to 1 (sampling "
                  "divides the logits by the temperature first; here it is 1). The panel shows the most likely tokens "
                  "after the selected token.",
                  "p = exp(logits) / Σ exp(logits)"),
    "next": Step("next token", "The next token",
                 "At every position the model predicts the token after it; generation uses the last position's. Greedy "
                 "decoding takes the most likely token; sampling draws one at random, token i with probability p_i, "
                 "so a likely token usually wins and an unlikely one sometimes does. (The code draws q_i from an "
                 "exponential distribution for every token and takes the largest p_i / q_i, which picks token i "
                 "exactly that often.) Teal bars: the prediction is the token that follows in your prompt.",
                 "next = argmax p (greedy), or a draw from p"),
}

# Where each stage is computed: (function, substrings of the lines to show; None: the whole function).
SOURCES: dict[str, tuple] = {
    "ids": ((gm.Gemma3.forward, ("def forward", "B, T = input_ids.shape")),),
    "embed": ((gm.Gemma3.forward, ("w = self.embed.weight", "x = self.embed(input_ids)")),),
    "input": ((gm.Gemma3.forward, ("for i, block in enumerate(self.blocks)", "x = block(x, cos, sin")),),
    "attn_norm": ((gm.Block.forward, ("self.attn_norm(x)",)), (gm.RMSNorm.forward, None)),
    "q": ((gm.Attention.forward, ("q = self.wq(x)",)),),
    "k": ((gm.Attention.forward, ("k = self.wk(x)",)),),
    "v": ((gm.Attention.forward, ("v = self.wv(x)",)),),
    "q_norm": ((gm.Attention.forward, ("q = RoPE.rotate(self.q_norm(q)",)), (gm.RMSNorm.forward, None)),
    "k_norm": ((gm.Attention.forward, ("k = RoPE.rotate(self.k_norm(k)",)), (gm.RMSNorm.forward, None)),
    "q_rope": ((gm.Attention.forward, ("q = RoPE.rotate(",)), (gm.RoPE.forward, ("angles",)),
               (gm.RoPE.rotate, None)),
    "k_rope": ((gm.Attention.forward, ("k = RoPE.rotate(",)), (gm.RoPE.forward, ("angles",)),
               (gm.RoPE.rotate, None)),
    "attn_probs": ((gm.Attention.prompt_attention, ("if len(past_pos) == 0", "mask = None", "else:", "mask = sliding_mask(",
                                                      "return self.attend(")),
                   (gm.sliding_mask, ("allowed", "if window is not None")),
                   (gm.attend, ("return F.scaled_dot_product_attention",))),
    "attn_out": ((gm.Attention.prompt_attention, ("return self.attend(",)),
                 (gm.Attention.forward, ("out.transpose(1, 2).reshape",))),
    "o": ((gm.Attention.forward, ("return self.wo(",)),),
    "post_attn_norm": ((gm.Block.forward, ("self.post_attn_norm(",)), (gm.RMSNorm.forward, None)),
    "mid": ((gm.Block.forward, ("x = x + self.post_attn_norm(",)),),
    "ffn_norm": ((gm.Block.forward, ("self.ffn_norm(x)",)), (gm.RMSNorm.forward, None)),
    "gate": ((gm.FeedForward.forward, ("self.gate(x)",)),),
    "up": ((gm.FeedForward.forward, ("self.up(x)",)),),
    "act": ((gm.FeedForward.forward, ('F.gelu(self.gate(x), approximate="tanh") * self.up(x)',)),),
    "down": ((gm.FeedForward.forward, ("return self.down(",)),),
    "post_ffn_norm": ((gm.Block.forward, ("self.post_ffn_norm(",)), (gm.RMSNorm.forward, None)),
    "output": ((gm.Block.forward, ("return x + self.post_ffn_norm(",)),),
    "final_norm": ((gm.Gemma3.forward, ("x = self.final_norm(x)",)),),
    "logits": ((gm.Gemma3.forward, ("head = w if self.head is None", "return F.linear(x, head)")),),
    "probs": ((gen.sampling_probs, ("logits = logits / temperature", "return logits.softmax(dim=-1)")),),
    "next": ((gen.next_token, ("if temperature < GREEDY_BELOW", ".argmax(dim=-1)", "probs = sampling_probs(",
                                "return draw(")),
             (gen.draw, ("exponential_", "return (probs / q)"))),
}

# The diagram: sections of rows, each row one box or side-by-side boxes (None: an empty cell, v passing by).
SECTIONS = (
    ("into", "Into the model", (("ids",), ("embed",))),
    ("attention", "attention half", (("input",), ("attn_norm",), ("q", "k", "v"), ("q_norm", "k_norm", None),
                                     ("q_rope", "k_rope", None), ("attn_probs",), ("attn_out",), ("o",),
                                     ("post_attn_norm",), ("mid",))),
    ("ffn", "feed-forward half", (("ffn_norm",), ("gate", "up"), ("act",), ("down",), ("post_ffn_norm",),
                                  ("output",))),
    ("out", "Out of the model", (("final_norm",), ("logits",), ("probs",), ("next",))),
)


# ---- the walk ------------------------------------------------------------------------------------
def walk(layers: int) -> list[tuple[str, int | None]]:
    """Every (stage, layer) of the forward pass in order; layer None for the model's own stages."""
    return ([(s, None) for s in BEFORE] + [(s, i) for i in range(layers) for s in STAGES]
            + [(s, None) for s in AFTER])


def step(stage: str, layer: int, layers: int, direction: int) -> tuple[str, int]:
    """The stage `direction` (+1 next, -1 previous) steps from `stage` (in `layer` if it is a layer's), and the
    layer to show with it: after layer i's output comes layer i + 1's input; the ends stay where they are."""
    order = walk(layers)
    here = order.index((stage, layer if stage in PER_LAYER else None))
    name, at = order[min(max(here + direction, 0), len(order) - 1)]
    return name, layer if at is None else at


# ---- shapes and words from the config --------------------------------------------------------------
def shape(config, T, stage: str) -> tuple:
    """The tensor shape of `stage` for T tokens (T may be a placeholder such as "T")."""
    c = config
    q, kv = (T, c.heads, c.head_dim), (T, c.kv_heads, c.head_dim)
    if stage in ("q", "q_norm", "q_rope"):
        return q
    if stage in ("k", "v", "k_norm", "k_rope"):
        return kv
    if stage in ("gate", "up", "act"):
        return (T, c.ffn)
    return {"ids": (T,), "attn_probs": (c.heads, T, T), "attn_out": (T, c.heads * c.head_dim),
            "logits": (T, c.vocab_size), "probs": (T, c.vocab_size), "next": (T,)}.get(stage, (T, c.hidden))


def shape_text(shape_: tuple) -> str:
    return "[" + ", ".join(str(n) for n in shape_) + "]"


BOS_NOTE = {True: " (the tokenizer's BOS token goes first, as in generation)",
            False: " (this model's tokenizer adds no BOS token: position 0 is your prompt's first piece)",
            None: ""}


def bos_first(rec: Record) -> bool | None:
    """Whether the recording starts with a BOS token the tokenizer put before the prompt (explain.record prepends
    one exactly when the tokenizer has one); None when the prompt was cut, where the record cannot tell."""
    if rec.notice is not None:
        return None
    return rec.seq_len == rec.prompt_tokens + 1


def _head_facts(c) -> dict:
    """How this model's heads are shaped and share their keys and values (multi-query, grouped or neither)."""
    per_kv, wide = c.heads // c.kv_heads, c.hidden // c.heads
    if c.kv_heads == 1:
        sharing, shared_by, read = (
            f"Only 1 key head for {c.heads} query heads: every query head compares itself with the same keys. This is "
            f"multi-query attention; it keeps {per_kv}× fewer keys and values in the cache than one per head.",
            f"shared by all {c.heads} query heads", "all reading the same shared key head")
    elif per_kv > 1:
        sharing, shared_by, read = (
            f"Only {c.kv_heads} key heads for {c.heads} query heads: each key head serves {per_kv} query heads. This "
            f"is grouped-query attention; it keeps {per_kv}× fewer keys and values in the cache than one per head.",
            f"each shared by {per_kv} query heads", f"each group of {per_kv} reading its shared key head")
    else:
        sharing, shared_by, read = ("One key head per query head (plain multi-head attention).",
                                    "one per query head", "each reading its own key head")
    note = (f"head_dim {c.head_dim} is Gemma's choice, not hidden / heads ({wide})." if c.head_dim != wide else
            f"Here head_dim {c.head_dim} equals hidden / heads; Gemma 3 270M chooses 256 rather than 640 / 4 = 160.")
    return dict(kv_sharing=sharing, kv_shared_by=shared_by, heads_read=read, head_dim_note=note)


def _facts(config, layer: int, T, bos: bool | None = None) -> dict:
    c = config
    sliding = c.layer_types[layer] == "sliding"
    last = layer == c.layers - 1
    tied = c.tied_head
    return dict(
        bos_note=BOS_NOTE[bos], vocab=c.vocab_size, vocab_1=c.vocab_size - 1, hidden=c.hidden, sqrt_hidden=math.sqrt(c.hidden), T=T,
        heads=c.heads, kv_heads=c.kv_heads, kv_s="" if c.kv_heads == 1 else "s",
        **_head_facts(c), head_dim=c.head_dim, half_dim=c.head_dim // 2, q_width=c.heads * c.head_dim, ffn=c.ffn,
        qpas=c.query_pre_attn_scalar,
        qpas_note=(f"{c.query_pre_attn_scalar:g} is the config's query_pre_attn_scalar, here head_dim: the usual "
                   f"1/√d scaling" if c.query_pre_attn_scalar == c.head_dim else
                   f"{c.query_pre_attn_scalar:g} is the config's query_pre_attn_scalar, here not head_dim "
                   f"({c.head_dim})"),
        layer=layer, layer_1=layer - 1, kind="sliding" if sliding else "full",
        base=c.rope_local_base if sliding else c.rope_global_base,
        far="d positions",
        window_note=(f" and, on this sliding layer, keys more than {c.window - 1} positions back (a window of "
                     f"{c.window})" if sliding else " (a full layer: every earlier key stays visible)"),
        next_note=("This is the model's last layer: its output goes to the final norm." if last else
                   f"This output is the input of layer {layer + 1}."),
        tied_note=("The same table is reused at the end as the output layer (the head is tied)." if tied else
                   "This model has a separate output matrix (its head is not tied)."),
        head_box="tied unembedding" if tied else "unembedding",
        head_title="Tied unembedding: the logits" if tied else "Unembedding: the logits",
        head_how=("the rows of the embedding table the model started with (the head is tied: no separate output "
                  "matrix)." if tied else "the rows of the model's own output matrix (this model's head is not tied)."),
        head_equation="logits = z Eᵀ (E: the embedding table)" if tied else "logits = z W_headᵀ",
    )


def layer_label(config, layer: int) -> str:
    """"Layer 3 · sliding · window 512 · RoPE base 10,000" (or full with the global base)."""
    if config.layer_types[layer] == "sliding":
        return f"Layer {layer} · sliding · window {config.window} · RoPE base {config.rope_local_base:,.0f}"
    return f"Layer {layer} · full · RoPE base {config.rope_global_base:,.0f}"


def guide(config, stage: str, layer: int, T, bos: bool | None = None) -> str:
    """Markdown for the panel: the heading, the shape, the sentences and the equation of `stage` (`bos`: whether
    the tokens start with a BOS token, bos_first; None: the text makes no claim)."""
    s, f = STEPS[stage], _facts(config, layer, T, bos)
    where = f"{layer_label(config, layer)} · " if stage in PER_LAYER else ""
    about, equation = s.about.format(**f), s.equation.format(**f)
    if stage in NO_POST_NORM and not getattr(config, "post_norms", True):
        about = ("This model has no post-norms (only the two pre-norms in each block, like Gemma 1): "
                 "what is added to the stream is the sub-layer's output itself, so its size is not held steady.")
        equation = NO_POST_NORM[stage]
    return (f"### {s.title.format(**f)}\n{where}shape `{shape_text(shape(config, T, stage))}`\n\n"
            f"{about}\n\n**Equation** `{equation}`")


NO_POST_NORM = {"post_attn_norm": "o′ = o (no post-norm in this model)",
                "post_ffn_norm": "d′ = d (no post-norm in this model)"}


# ---- the source lines ------------------------------------------------------------------------------
def source_lines(stage: str) -> list[tuple[str, int, list[str]]]:
    """For `stage`: (function's qualified name, its module, [(line number, line)]) for each place of the code that
    computes it, read from the code itself. Raises LookupError when a marker is no longer in its function."""
    out = []
    for fn, markers in SOURCES[stage]:
        lines, start = inspect.getsourcelines(fn)
        lines = [line.rstrip("\n") for line in lines]
        if markers is None:
            picked = list(range(len(lines)))
        else:
            picked = []
            for m in markers:
                hits = [i for i, line in enumerate(lines) if m in line]
                if not hits:
                    raise LookupError(f"{fn.__qualname__} no longer has a line with {m!r} (stage {stage!r}).")
                picked += [j for i in hits for j in _statement(lines, i)]
            picked = sorted(set(picked))
        out.append((fn.__qualname__, fn.__module__, [(start + i, lines[i]) for i in picked]))
    return out


def _statement(lines: list[str], i: int) -> range:
    """Line i and the lines that continue its statement (while a bracket it opened is still open)."""
    depth, j = 0, i
    while True:
        code = lines[j].split("#", 1)[0]
        depth += sum(code.count(o) for o in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0 or j == len(lines) - 1:
            return range(i, j + 1)
        j += 1


def source(stage: str) -> str:
    """The lines that compute `stage`, as Python: one block per function, headed by its file and line numbers."""
    blocks = []
    for name, module, lines in source_lines(stage):
        first, last = lines[0][0], lines[-1][0]
        path = module.replace(".", "/") + ".py"
        where = f"{first}" if first == last else f"{first}-{last}"
        body, prev = [], None
        indent = min(len(t) - len(t.lstrip()) for _, t in lines if t.strip())
        for n, t in lines:
            if prev is not None and n != prev + 1:
                body.append("...")
            body.append(t[indent:])
            prev = n
        blocks.append(f"# {path}:{where}  {name}\n" + "\n".join(body))
    return "\n\n".join(blocks)


def source_html(stage: str) -> str:
    """The lines that compute `stage` as HTML: one block per function, headed by its file and function, each line
    beside its own line number in that file (a gap in the numbers is marked ⋯), indentation kept."""
    blocks = []
    for name, module, lines in source_lines(stage):
        path = module.replace(".", "/") + ".py"
        indent = min(len(t) - len(t.lstrip()) for _, t in lines if t.strip())
        rows, prev = [], None
        for n, t in lines:
            if prev is not None and n != prev + 1:
                rows.append('<div class="wt-src wt-gap"><span class="wt-ln">⋯</span><code></code></div>')
            code = t[indent:]
            cls = " wt-comment" if code.lstrip().startswith("#") else ""
            rows.append(f'<div class="wt-src{cls}" data-line="{n}"><span class="wt-ln">{n}</span>'
                        f'<code>{html.escape(code, quote=False) or " "}</code></div>')
            prev = n
        first, last = lines[0][0], lines[-1][0]
        where = f"line {first}" if first == last else f"lines {first}–{last}"
        blocks.append(f'<div class="wt-code-block"><p class="wt-code-head"><b>{html.escape(name)}</b> · '
                      f'{path}, {where}</p><div class="wt-code-lines">{"".join(rows)}</div></div>')
    return ('<div class="wt-code"><p class="wt-code-title">The lines of the model\'s code that compute it</p>'
            + "".join(blocks) + "</div>")


SOURCE_CSS = """
.wt-code { font-size: 13px; }
.wt-code-title { margin: 0 0 6px; font-weight: 600; }
.wt-code-block { margin: 0 0 10px; border: 1px solid var(--border-color-primary); border-radius: 6px;
  background: var(--background-fill-secondary); overflow: hidden; }
.wt-code-head { margin: 0; padding: 4px 8px; color: var(--body-text-color-subdued); font-size: 12px;
  border-bottom: 1px solid var(--border-color-primary); overflow-wrap: anywhere; }
.wt-code-lines { overflow-x: auto; padding: 4px 0; }
.wt-src { display: flex; min-width: max-content; line-height: 20px; }
.wt-ln { flex: 0 0 4.5ch; padding: 0 8px 0 0; text-align: right; color: var(--body-text-color-subdued);
  user-select: none; font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace; }
.wt-src code { flex: 1 0 auto; padding: 0 10px 0 8px; border-left: 1px solid var(--border-color-primary);
  background: none; white-space: pre; font-family: ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace;
  font-size: 13px; line-height: 20px; }
.wt-comment code { color: var(--body-text-color-subdued); }
.wt-gap .wt-ln { text-align: center; }
"""


# ---- the diagram -----------------------------------------------------------------------------------
# The residual stream runs down the left of each half of the layer, as in the well-known block pictures: it starts
# at the layer's input, passes a normalised copy into the half ("branch"), runs past the half's boxes (the skip
# path) and takes the half's output back in at a "+" ("add"). Each row of a half says which piece of it it draws.
RAIL_TIPS = {
    "start": "the residual stream enters the layer",
    "branch": "the stream goes on unchanged (the skip path); a normalised copy goes into this half",
    "line": "the residual stream, passing this half by (the skip path)",
    "add": "+: this half's output is added to the residual stream",
}


def rail(section: str, row: tuple) -> str | None:
    """What the residual stream does beside `row` of a layer `section`: "start", "branch", "add" or "line";
    None outside the layer."""
    if section not in ("attention", "ffn"):
        return None
    if row == ("input",):
        return "start"
    if row in (("attn_norm",), ("ffn_norm",)):
        return "branch"
    if row in (("mid",), ("output",)):
        return "add"
    return "line"


def diagram_html(config, T=None, layer: int = 0, selected: str | None = None) -> str:
    """The diagram as HTML: a box per stage (data-stage="q_norm"), its shape for T tokens ("T" when None), the
    chosen layer's kind, the residual stream beside the layer's boxes (data-rail: its start, where each half
    branches off it and where its "+" adds the half's output back), and a strip of every layer (data-layer="3")
    to pick another one."""
    T = "T" if T is None else T
    c = config
    head = (f"hidden {c.hidden} · {c.heads} query head{'s' if c.heads > 1 else ''} and {c.kv_heads} key/value "
            f"head{'s' if c.kv_heads > 1 else ''} of {c.head_dim} · feed-forward {c.ffn} · vocabulary "
            f"{c.vocab_size:,} · {c.layers} layers · T = {T} token{'' if T == 1 else 's'}")
    chips = "".join(
        f'<button type="button" class="wt-chip wt-{t}{" wt-on" if i == layer else ""}" data-layer="{i}" '
        f'title="{html.escape(layer_label(c, i))}">{i}</button>' for i, t in enumerate(c.layer_types))
    kind = c.layer_types[layer]
    parts = []
    for key, title, rows in SECTIONS:
        if key in ("attention", "ffn"):
            title = f"{layer_label(c, layer)}: {title}"
        body = "".join(_row(c, T, row, selected, rail(key, row)) for row in rows)
        cls = f" wt-layer wt-{kind}" if key in ("attention", "ffn") else ""
        parts.append(f'<section class="wt-sec{cls}" data-section="{key}"><h4>{html.escape(title)}</h4>{body}</section>')
    return (f'<div class="wt-diagram"><p class="wt-head">{html.escape(head)}</p>'
            f'<div class="wt-layers"><span>layer</span>{chips}'
            f'<span class="wt-key"><i class="wt-sliding"></i>sliding <i class="wt-full"></i>full '
            f'<i class="wt-resid"></i>residual stream <b class="wt-plus-key">+</b> add</span></div>'
            f'<div class="wt-flow">{"".join(parts)}</div></div>')


def _row(config, T, row: tuple, selected, rail_kind: str | None = None) -> str:
    cells = []
    for stage in row:
        if stage is None:
            cells.append('<div class="wt-pass" aria-hidden="true"></div>')
            continue
        box = STEPS[stage].box.format(**_facts(config, 0, T))
        sel = " wt-sel" if stage == selected else ""
        cells.append(f'<button type="button" class="wt-box{sel}" data-stage="{stage}" id="wt-box-{stage}">'
                     f'<span class="wt-name">{html.escape(box)}</span>'
                     f'<code class="wt-shape">{shape_text(shape(config, T, stage))}</code></button>')
    grid = f'<div class="wt-cells wt-n{len(row)}">{"".join(cells)}</div>'
    if rail_kind is None:
        return f'<div class="wt-row">{grid}</div>'
    node = '<span class="wt-node">+</span>' if rail_kind == "add" else '<span class="wt-node"></span>'
    return (f'<div class="wt-row wt-railed"><div class="wt-rail wt-rail-{rail_kind}" data-rail="{rail_kind}" '
            f'title="{RAIL_TIPS[rail_kind]}">{node}</div>{grid}</div>')


DIAGRAM_CSS = """
.wt-diagram { font-size: 14px; font-family: FONT; }
.wt-head { margin: 0 0 6px; color: var(--body-text-color-subdued); }
.wt-layers { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin-bottom: 10px; }
.wt-chip { min-width: 28px; padding: 2px 4px; border-radius: 4px; border: 2px solid transparent; color: #fff;
  cursor: pointer; font: inherit; font-size: 12px; }
.wt-chip.wt-sliding, .wt-key i.wt-sliding { background: SLIDING; }
.wt-chip.wt-full, .wt-key i.wt-full { background: FULL; }
.wt-chip.wt-on { border-color: var(--body-text-color); box-shadow: 0 0 0 2px var(--background-fill-primary) inset; }
.wt-key { margin-left: 8px; color: var(--body-text-color-subdued); font-size: 12px; }
.wt-key i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 3px 0 6px; }
.wt-key i.wt-resid { width: 4px; height: 12px; background: RESID; vertical-align: -1px; }
.wt-plus-key { display: inline-block; width: 14px; height: 14px; margin: 0 3px 0 8px; border: 2px solid RESID;
  border-radius: 50%; font-size: 11px; line-height: 10px; text-align: center; color: RESID; }
.wt-flow { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.wt-sec { flex: 1 1 230px; min-width: 0; border: 1px solid var(--border-color-primary); border-radius: 8px;
  padding: 8px; background: var(--background-fill-secondary); }
.wt-sec.wt-layer { flex: 1.4 1 300px; }
.wt-sec.wt-sliding { border-left: 4px solid SLIDING; }
.wt-sec.wt-full { border-left: 4px solid FULL; }
.wt-sec h4 { margin: 0 0 6px; font-size: 13px; font-weight: 600; }
.wt-row { position: relative; padding-top: 14px; }
.wt-row::before { content: "↓"; position: absolute; top: -2px; left: 50%; transform: translateX(-50%);
  font-size: 12px; line-height: 14px; color: var(--body-text-color-subdued); }
.wt-sec .wt-row:first-of-type { padding-top: 0; }
.wt-sec .wt-row:first-of-type::before { content: none; }
.wt-cells { display: grid; gap: 6px; }
.wt-n1 { grid-template-columns: 1fr; }
.wt-n2 { grid-template-columns: 1fr 1fr; }
.wt-n3 { grid-template-columns: 1fr 1fr 1fr; }
.wt-railed { padding-left: 32px; }
.wt-railed::before { left: calc(50% + 16px); }
.wt-rail { position: absolute; left: 0; top: 0; bottom: 0; width: 26px; }
.wt-rail::before { content: ""; position: absolute; left: 11px; width: 4px; top: 0; bottom: 0; background: RESID; }
.wt-node { position: absolute; top: calc(50% + 7px); }
.wt-row:first-of-type .wt-node { top: 50%; }
.wt-rail-start::before { top: 50%; }
.wt-rail-start .wt-node { left: 6px; width: 14px; height: 14px; margin-top: -7px; border-radius: 50%;
  background: RESID; }
.wt-rail-branch .wt-node { left: 13px; right: -6px; height: 2px; margin-top: -1px; background: RESID; }
.wt-rail-branch .wt-node::after { content: ""; position: absolute; right: -1px; top: -4px; border: 5px solid transparent;
  border-left: 6px solid RESID; border-right: 0; }
.wt-rail-add .wt-node { left: 2px; width: 22px; height: 22px; margin-top: -11px; box-sizing: border-box;
  border: 2px solid RESID; border-radius: 50%; background: var(--background-fill-primary); color: RESID;
  font-weight: 700; font-size: 15px; line-height: 18px; text-align: center; }
.wt-rail-add .wt-node::after { content: ""; position: absolute; left: 20px; width: 10px; top: 8px; height: 2px;
  background: RESID; }
.wt-box { display: flex; flex-direction: column; align-items: center; gap: 1px; min-width: 0; padding: 4px 3px;
  border: 1px solid var(--border-color-primary); border-radius: 6px; background: var(--background-fill-primary);
  color: var(--body-text-color); cursor: pointer; font: inherit; font-size: 13px; line-height: 1.25; }
.wt-box:hover { border-color: var(--color-accent); }
.wt-box.wt-sel { border: 2px solid var(--color-accent); background: var(--color-accent-soft); }
.wt-name { overflow-wrap: anywhere; text-align: center; }
.wt-shape { font-size: 11.5px; color: var(--body-text-color-subdued); background: none; padding: 0;
  overflow-wrap: anywhere; }
.wt-pass { border-left: 2px dashed var(--border-color-primary); margin-left: 50%; min-height: 20px; }
""".replace("SLIDING", SLIDING).replace("FULL", FULL).replace("RESID", INK).replace("FONT", FONT)

# Clicks on a box or a layer chip become the component's "click" event with {stage} or {layer}.
DIAGRAM_JS = """
element.addEventListener('click', (e) => {
  const box = e.target.closest('[data-stage]');
  if (box) {
    trigger('click', {stage: box.dataset.stage});
    // a visitor's click (not the tour's) brings the stage's controls and words into view where they lie low on
    // the screen or below it (on a phone the diagram is several screens tall)
    const controls = document.getElementById('walk-controls');
    if (e.isTrusted && controls && controls.getBoundingClientRect().top > window.innerHeight * 0.6) {
      const still = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
      controls.scrollIntoView({block: 'start', behavior: still ? 'auto' : 'smooth'});
    }
    return;
  }
  const chip = e.target.closest('[data-layer]');
  if (chip) { trigger('click', {layer: Number(chip.dataset.layer)}); }
});
"""


# ---- the panel figure ------------------------------------------------------------------------------
PANEL_HEIGHT = 660   # every panel at most this tall: a 1440 x 1000 screen shows it whole under its heading

# What to look for in each panel: the second line of its title.
LOOK = {
    "ids": "each piece of your prompt is one number; the model sees nothing else",
    "embed": "every token starts at about the same size (RMS)",
    "input": "the RMS bars: the stream grows from layer to layer",
    "attn_norm": "the RMS bars are level: every token now has about the same size",
    "q": "each head's queries before their norm: sizes differ by head and token",
    "k": "the keys the query heads share",
    "v": "shared like the keys; no norm, no rotation",
    "q_norm": "every head's RMS is now set by its norm weight, not by the token",
    "k_norm": "the key head's RMS is now set by its norm weight",
    "q_rope": "the RMS is the q norm's: a rotation changes angles, not sizes",
    "k_rope": "the RMS is the k norm's: a rotation changes angles, not sizes",
    "attn_probs": "each row sums to 1; the outlined row is the selected token's",
    "attn_out": "the heads' results side by side, one block per head",
    "o": "back at the stream's width: what attention computed",
    "post_attn_norm": "what attention adds: its size is set by the norm weight",
    "mid": "the stream after attention added its part",
    "ffn_norm": "the RMS bars are level again: the feed-forward reads a steady size",
    "gate": "large negative gates will be switched off by GELU",
    "up": "the values the gate lets through",
    "act": "up's values scaled by GELU(gate): faint where the gate is negative",
    "down": "back at the stream's width: what the feed-forward computed",
    "post_ffn_norm": "what the feed-forward adds: its size is set by the norm weight",
    "output": "the layer's output: the stream with both halves added",
    "final_norm": "the RMS bars are level: the head compares vectors of one size",
    "logits": "the highest dot products with the unembedding; teal: the true next token",
    "probs": "the same order as the logits, now probabilities summing to 1",
    "next": "teal: the model's first choice is the token that really follows",
}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)


def _columns(D: int, n: int) -> np.ndarray:
    """At most n evenly spaced indices of D (all of them when D <= n)."""
    return np.arange(D) if D <= n else np.unique(np.linspace(0, D - 1, n).round().astype(int))


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x.astype(np.float64) ** 2).mean(-1)).astype(np.float32)


def _label(rec: Record, token: int) -> str:
    return html.escape(rec.labels[token])


def stage_figure(rec: Record, stage: str, layer: int, token: int) -> go.Figure:
    """The picture of `stage` (of `layer`) for the recorded prompt, with token position `token` selected."""
    if stage not in STEPS:
        raise ValueError(f"There is no stage {stage!r}; the stages are {', '.join(WALK_STAGES)}.")
    if not 0 <= token < rec.seq_len:
        raise ValueError(f"Token must be a position from 0 to {rec.seq_len - 1}, not {token!r}.")
    if stage == "ids":
        fig = _ids_figure(rec, token)
    elif stage == "attn_probs":
        fig = _attention_figure(rec, layer, token)
    elif stage in ("logits", "probs"):
        fig = _top_figure(rec, stage, token)
    elif stage == "next":
        fig = _next_figure(rec, token)
    else:
        fig = _tensor_figure(rec, stage, layer, token)
    _app_style(fig)
    legend = any(getattr(t, "showlegend", False) for t in fig.data)
    fig.update_layout(margin=dict(l=60, r=20, t=110, b=70 if legend else 50),
                      title=dict(font=dict(size=14), x=0.01, xanchor="left", yref="container", y=1, yanchor="top",
                                 pad=dict(t=14)))
    return phone.stack(fig, cols=2 if stage == "attn_probs" else 1)   # on a phone, panels one above another


def _heading(main: str, look: str, fact: str) -> dict:
    """The panel's title: what it is, then (smaller) what to look for and the selected token's number."""
    return _title(main, f"look: {look}<br>{fact}")


def _tensor(rec: Record, stage: str, layer: int) -> torch.Tensor:
    return rec.stage(stage) if stage in MODEL_STAGES else rec.stage(stage, layer)


def _tensor_figure(rec: Record, stage: str, layer: int, token: int) -> go.Figure:
    """Heatmap token x (sampled) dimension; below, side by side, the RMS of each token's vector (per head) and the
    selected token's whole vector."""
    t = _tensor(rec, stage, layer)
    x = _np(t)
    T = x.shape[0]
    heads = x.shape[1] if x.ndim == 3 else 1
    x3 = x.reshape(T, heads, -1)
    D = x3.shape[2]
    cols = _columns(D, max(1, MAX_COLUMNS // heads))
    z = x3[:, :, cols].reshape(T, -1)
    lim = float(np.quantile(np.abs(z), 0.99)) or 1.0
    names = [f"head {h}, dim {d}" if heads > 1 else f"dim {d}" for h in range(heads) for d in cols]
    where = f"layer {layer} · " if stage in PER_LAYER else ""
    sampled = f"<br>({len(cols)} of {D} dims{' per head' if heads > 1 else ''}, evenly spaced)" if len(cols) < D else ""
    fig = make_subplots(rows=2, cols=2, row_heights=[0.6, 0.4], vertical_spacing=0.2, horizontal_spacing=0.1,
                        specs=[[{"colspan": 2}, None], [{}, {}]],
                        subplot_titles=(f"value of each token × dimension{sampled}",
                                        "RMS of each token" + (" (per head)" if heads > 1 else ""),
                                        f"every dimension of {_label(rec, token)}"))
    ylabels = [html.escape(s) for s in rec.labels]
    y0, y1 = fig.layout.yaxis.domain  # the colorbar as tall as the heatmap
    fig.add_trace(go.Heatmap(z=z, x=names, y=ylabels, colorscale="RdBu_r", zmid=0,
                             zmin=-lim, zmax=lim, colorbar=dict(len=y1 - y0, y=y1, yanchor="top", thickness=12),
                             hovertemplate="%{y}, %{x}: %{z:.4g}<extra></extra>"), row=1, col=1)
    fig.add_shape(type="rect", x0=-0.5, x1=z.shape[1] - 0.5, y0=token - 0.5, y1=token + 0.5,
                  line=dict(color=INK, width=2), row=1, col=1)
    for h in range(1, heads):
        fig.add_vline(x=h * len(cols) - 0.5, line=dict(color="#444", width=1), row=1, col=1)
    # token rows as the attention maps label them (explain.figures): a category axis, on which Plotly names every
    # k-th token, k chosen from the drawn size (every token when they fit); the hover names every row
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=10), row=1, col=1)
    fig.update_xaxes(title_text="head · dimension" if heads > 1 else "dimension", showticklabels=False, row=1, col=1)
    rms = _rms(x3)  # [T, heads]
    for h in range(heads):
        fig.add_trace(go.Bar(x=list(range(T)), y=rms[:, h], name=f"head {h}" if heads > 1 else "RMS",
                             showlegend=heads > 1, customdata=ylabels,
                             marker_color=None if heads > 1 else TEAL,
                             hovertemplate="%{customdata}: RMS %{y:.4g}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(title_text="token position", row=2, col=1)
    full = x3[token].reshape(-1)
    fig.add_trace(go.Scatter(y=full, mode="lines", line=dict(width=1, color=INK), showlegend=False,
                             hovertemplate="dim %{x}: %{y:.4g}<extra></extra>"), row=2, col=2)
    fig.update_xaxes(title_text="dimension" + (" (heads in turn)" if heads > 1 else ""), row=2, col=2)
    fig.update_layout(title=_heading(f"{where}{STEPS[stage].title.format(**_facts(rec.config, layer or 0, T))} "
                                     f"{shape_text(tuple(t.shape))}", LOOK[stage], _fact(rec, stage, layer, token, x3)),
                      height=PANEL_HEIGHT, barmode="group", legend=BELOW)
    return fig


def _fact(rec: Record, stage: str, layer: int, token: int, x3: np.ndarray) -> str:
    """One live number for the title: the selected token's RMS, or for the gate how much of it GELU shuts."""
    if stage == "act":
        g = F.gelu(rec.stage("gate", layer)[token].float(), approximate="tanh")
        near = float((g.abs() < 0.05).float().mean()) * 100
        return f"{_label(rec, token)}: {near:.0f}% of {g.numel()} GELU(gate) values<br>within ±0.05 of 0"
    rms = _rms(x3[token])
    per = ", ".join(f"{r:.3g}" for r in rms) if len(rms) > 1 else f"{rms[0]:.4g}"
    return f"{_label(rec, token)} has RMS {per}"


def _attention_figure(rec: Record, layer: int, token: int) -> go.Figure:
    p = _np(rec.stage("attn_probs", layer))  # [H, T, T]
    H, T = p.shape[0], p.shape[1]
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    fig = make_subplots(rows=rows + 1, cols=cols, vertical_spacing=0.12 / rows + 0.04, horizontal_spacing=0.04,
                        row_heights=[0.62 / rows] * rows + [0.38],
                        specs=[[{}] * cols for _ in range(rows)] + [[{"colspan": cols}] + [None] * (cols - 1)],
                        subplot_titles=[f"query head {h}" for h in range(H)] + [""] * (rows * cols - H)
                        + [f"what {_label(rec, token)} attends to, per head"])
    labels = [html.escape(s) for s in rec.labels]
    y0, y1 = fig.get_subplot(rows, 1).yaxis.domain[0], fig.get_subplot(1, 1).yaxis.domain[1]
    for h in range(H):
        r, c = h // cols + 1, h % cols + 1
        fig.add_trace(go.Heatmap(z=p[h], x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues", showscale=h == 0,
                                 colorbar=dict(len=y1 - y0, y=y1, yanchor="top", thickness=12, title="p"),
                                 hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra>head " + str(h) + "</extra>"),
                      row=r, col=c)
        fig.add_shape(type="rect", x0=-0.5, x1=T - 0.5, y0=token - 0.5, y1=token + 0.5,
                      line=dict(color=INK, width=2), row=r, col=c)
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=r, col=c)
        fig.update_xaxes(showticklabels=False, row=r, col=c)
    for h in range(H):
        fig.add_trace(go.Scatter(x=labels, y=p[h, token], mode="lines+markers", name=f"head {h}",
                                 hovertemplate="key %{x}: %{y:.3f}<extra></extra>"),
                      row=rows + 1, col=1)
    # the keys by their tokens, on a category axis: Plotly labels every one that fits (every k-th on a long prompt)
    fig.update_xaxes(title_text="key (position: token)", type="category", tickangle=-45, row=rows + 1, col=1)
    fig.update_yaxes(title_text="probability", range=[0, 1.02], row=rows + 1, col=1)
    kind = rec.layer_types[layer]
    window = rec.config.window
    seen = token + 1 if kind == "full" else min(token + 1, window)
    fig.update_layout(title=_heading(f"layer {layer} ({kind}) attention [{H}, {T}, {T}]", LOOK["attn_probs"],
                                     f"{_label(rec, token)} sees {seen} key{'s' if seen != 1 else ''}"),
                      height=PANEL_HEIGHT, legend=BELOW)
    return fig


def _top_figure(rec: Record, stage: str, token: int) -> go.Figure:
    logits = rec.logits[token].float()
    values = logits if stage == "logits" else logits.softmax(-1)
    top = values.topk(min(TOP, values.numel()))
    ids = top.indices.tolist()
    follows = rec.tokens[token + 1] if token + 1 < rec.seq_len else None
    text = [html.escape(_token_text(rec, i)) for i in ids]
    colors = [TEAL if i == follows else BAR for i in ids]
    fig = go.Figure(go.Bar(x=_np(top.values), y=[f"{t} " for t in text], orientation="h", marker_color=colors,
                           hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    what = "logit" if stage == "logits" else "probability"
    fig.update_xaxes(title_text=what, tickformat=None if stage == "logits" else ".2~p")
    shown = ("the token that follows is not among them" if follows is not None and follows not in ids else
             "" if follows is None else f"teal: {html.escape(_token_text(rec, follows))}, the token that follows")
    fig.update_layout(title=_heading(f"the {len(ids)} highest {what.replace('y', 'ie')}s after {_label(rec, token)}",
                                     LOOK[stage], shown),
                      height=min(PANEL_HEIGHT, max(360, 24 * len(ids) + 170)))
    return fig


def _token_text(rec: Record, i: int) -> str:
    if i in rec.token_text:
        return rec.token_text[i]
    return f"#{i}"


def _next_figure(rec: Record, token: int) -> go.Figure:
    probs = rec.logits.float().softmax(-1)
    top = probs.max(-1)
    T = rec.seq_len
    hits = [i + 1 < T and int(top.indices[i]) == rec.tokens[i + 1] for i in range(T)]
    text = [html.escape(_token_text(rec, int(i))) for i in top.indices]
    colors = [TEAL if h else BAR for h in hits]
    line = [INK if i == token else "rgba(0,0,0,0)" for i in range(T)]
    fig = go.Figure(go.Bar(y=[html.escape(s) for s in rec.labels], x=_np(top.values), orientation="h",
                           text=text, textposition="auto" if T <= 30 else "none",
                           marker=dict(color=colors, line=dict(color=line, width=2)),
                           hovertemplate="after %{y}: %{text} with p = %{x:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title_text="after token")
    fig.update_xaxes(title_text="probability of the top prediction", range=[0, 1])
    n = sum(hits)
    last = html.escape(_token_text(rec, int(top.indices[-1])))
    fig.update_layout(title=_heading("the most likely next token at every position", LOOK["next"],
                                     f"{n} of {T - 1} match the prompt · after the last token: {last}"),
                      height=min(PANEL_HEIGHT, max(380, 22 * T + 170)))
    return fig


def _ids_figure(rec: Record, token: int) -> go.Figure:
    T = rec.seq_len
    fill = ["#ffe3cc" if i == token else "white" for i in range(T)]
    fig = go.Figure(go.Table(
        header=dict(values=["position", "token", "id"], align="left", fill_color="#e8e8f4"),
        cells=dict(values=[list(range(T)), [html.escape(_token_text(rec, i)) for i in rec.tokens], rec.tokens],
                   align="left", fill_color=[fill] * 3, height=24)))
    fig.update_layout(title=_heading(f"{T} token ids", LOOK["ids"],
                                     f"the selected one: {_label(rec, token)}, id {rec.tokens[token]}"),
                      height=min(PANEL_HEIGHT, 30 * T + 200))
    return fig


# ---- everything the panel shows ----------------------------------------------------------------------
@dataclass
class View:
    stage: str
    layer: int
    token: int
    diagram: str          # diagram_html for the record's T, the layer, the stage selected
    guide: str            # markdown
    figure: go.Figure
    source: str           # the model's lines that compute it, as HTML with their own line numbers (source_html)
    tokens: list[str]     # the record's token labels (for a token picker)
    config: object        # the model's Gemma3Config


def view(rec: Record, stage: str, layer: int, token: int) -> View:
    """Everything the walk-through shows for `stage` of `layer` with token position `token` selected."""
    c = rec.config
    return View(stage, layer, token, diagram_html(c, rec.seq_len, layer, stage),
                guide(c, stage, layer, rec.seq_len, bos_first(rec)), stage_figure(rec, stage, layer, token),
                source_html(stage), list(rec.labels), c)
