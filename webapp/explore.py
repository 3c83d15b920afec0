"""The Explore tab's figures: checked inputs, and one recording per (model, prompt) reused by every view.

Switching the layer, the head or the sampling temperature redraws from the cached Record; only a new
prompt or a new model runs the model again. Recording switches the model's attention modules into a
probability-keeping mode, so it takes that model's exclusive lock (a generation on the same model waits one
token; other models are not touched). Recordings are shared by every session that chose the same model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import explain
from explain import gemma3_views as gv
from explain import walkthrough
from explain.figures import LENS_TOKENS, lens_ranks

from .inputs import UserError, choice, number, text

CACHE_SIZE = 4   # recordings kept, at most
CACHE_BYTES = 800_000_000  # and at most this much of them (the newest always stays): a recording keeps every
                           # stage of the pass, explain.record_bytes (270m, 256 tokens: 374 MB in fp32, 196 in bf16)
MAX_MASK_LEN = 8192
NEXT_TEMPERATURE = (0.0, 2.0, 1.0)
NEXT_TOP_K = (0, 500, 0)          # the ranges of Generate's settings (webapp.generation), so a story's fit
NEXT_TOP_P = (0.05, 1.0, 1.0)     # 1 = off
NEXT_REPETITION_PENALTY = (0.5, 2.0, 1.0)
# The default prompt: 19 tokens (GPT-2), short enough that every view writes every token, ending where the next token
# is open: measured on assets/demo-model, the top 5 after it are " park" 25%, " garden" 21%, " forest" 19%,
# " beach" 18%, " farm" 17% (not one token near 100%). It is shorter than the demo model's 64-token window, so on it
# sliding and full layers attend alike: the Masks view (its own length slider, twice the window by default) and the
# guides show the window, and a prompt longer than the window shows it in Attention.
PROMPT = "Once upon a time, there was a girl named Lily. One day, she went to the"

# Two or three sentences per view: what the picture is and what to look for.
GUIDE = {
    "mask": "Which keys each query may attend to. Sliding layers (indigo) see only the last *window* tokens (a "
            "band along the diagonal); full layers (pink) see everything before them (a triangle). The two differ "
            "only past the window: the length starts at twice the window, so the band shows; below the window both "
            "are the same triangle. Gemma 3 puts one full layer after every five sliding ones, shown in the strip at "
            "the bottom right.",
    "rope": "RoPE turns each pair of query/key dimensions by an angle that grows with the position. Sliding "
            "layers use base 10,000 (fast-turning pairs, good for nearby tokens), full layers base 1,000,000 (slow "
            "pairs that still tell positions apart far away). Top right: how similar a vector stays to itself as the "
            "distance grows.",
    "attention": "Each row is a token of your prompt (the query) and shows how much it attends to each earlier "
                 "token (the keys). Look for heads that attend to the previous token (a line just left of the "
                 "diagonal) or to the first token (a bright first column, an 'attention sink'). On sliding layers "
                 "(title in indigo) a query sees only the last *window* keys, so on a prompt longer than the window "
                 "the cells further back stay empty: a band along the diagonal instead of a triangle; full layers "
                 "(pink) see every earlier token. The default prompt is shorter than the demo model's 64-token window: "
                 "paste a longer story to see the band. Long prompts label every few tokens (zoom in for the others); "
                 "hovering a cell names both tokens.",
    "activations": "Top: how large the residual stream grows, layer by layer and token by token. Bottom left: how "
                   "much the attention (blue) and the feed-forward (amber) part of each layer add. Bottom right: "
                   "attention entropy: low = a head looks at few tokens, high = it spreads its attention. Layer names "
                   "are indigo for sliding layers and pink for full ones, in every view.",
    "next_token": "The most likely next tokens after your prompt, with the probabilities sampling would use at the "
                  "settings you choose (blue bars) and, once those change them, the model's own at temperature 1 "
                  "(dark ticks). The scale is "
                  "logarithmic, because temperature divides the *log*-probabilities: below 1 the bars grow steeper "
                  "(the top token takes over; 0 always picks it), above 1 they level out and rarer words get a "
                  "chance. Top-k keeps only the k best, top-p the best that together reach p (the rest get no bar); the "
                  "repetition penalty lowers the tokens already in the prompt. Opened from a story's token, the view "
                  "uses the story's settings and marks in green the token the story drew.",
    "logit_lens": "Each cell runs the residual stream after a layer through the final norm and the unembedding, as if "
                  "the model stopped there: the text is the token it would predict, the colour how much probability it "
                  "already gives the model's final prediction (hover for its rank, and the true next token's). "
                  "Outlined cells already predict the true next token (the top row shows it). A prompt longer than "
                  f"{LENS_TOKENS} tokens shows its last {LENS_TOKENS}: the slider above the grid moves to the others. "
                  "With a tied head the "
                  "unembedding is the embedding itself, so the *embedding* row mostly predicts the input token again: "
                  "a token's vector is most similar to itself. In a trained model the guesses settle into the final "
                  "prediction layer by layer; in random weights they stay noise.",
    "parameters": "Where the parameters live, matrix by matrix (every layer's summed): attention in blue, feed-forward "
                  "in amber, embedding and head in teal. With the GPT-2 vocabulary the "
                  "embedding is a large share of a small model; with a tied head the output layer reuses it for free. "
                  "Wk and Wv are a quarter of Wq: four query heads share one key/value head.",
}


class Explorer:
    """Figures for the model a session chose (`source`, a checked source; None: the default model)."""

    def __init__(self, cache, cache_size: int = CACHE_SIZE, cache_bytes: int = CACHE_BYTES):
        self.cache = cache            # webapp.models.ModelCache
        self.cache_size, self.cache_bytes = cache_size, cache_bytes
        self._records: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.recordings = 0   # how many times a model was run (tests check the cache)

    # ---- recording ----
    def record(self, prompt, source=None):
        prompt = checked_prompt(prompt)
        loaded = self.cache.get(source)
        key = (loaded.version, prompt)   # a version per load: a reloaded source is recorded again
        hit = self._get(key)
        if hit is not None:
            return hit
        with loaded.exclusive():
            hit = self._get(key)
            if hit is not None:
                return hit
            rec = explain.record(loaded.model, loaded.tokenizer, prompt)
            self.recordings += 1
        with self._lock:
            self._records[key] = rec
            while len(self._records) > 1 and (len(self._records) > self.cache_size or
                                              sum(r.nbytes for r in self._records.values()) > self.cache_bytes):
                self._records.popitem(last=False)
        return rec

    def _get(self, key):
        with self._lock:
            rec = self._records.get(key)
            if rec is not None:
                self._records.move_to_end(key)
            return rec

    def _model(self, source):
        return self.cache.get(source).model

    # ---- figures from the architecture (no prompt) ----
    def mask(self, seq_len, source=None):
        cfg = self._model(source).config
        n = number(seq_len, "Sequence length", 1, min(cfg.context, MAX_MASK_LEN), integer=True)
        return explain.mask_figure(cfg, n)

    def rope(self, source=None):
        return explain.rope_figure(self._model(source).config)

    def parameters(self, source=None):
        return explain.parameter_figure(self._model(source))

    # ---- figures from a recorded prompt ----
    def attention(self, prompt, layer, head, source=None):
        rec = self.record(prompt, source)
        layer = number(layer, "Layer", 0, rec.layers - 1, integer=True)
        heads = rec.attn_probs[0].shape[0]
        if head in (None, "", "all", "All heads", -1):
            head = None
        else:
            if isinstance(head, str):
                try:
                    head = int(head.strip())
                except ValueError:
                    raise UserError(f"Head must be 'all' or a number from 0 to {heads - 1}, not {head!r}.") from None
            head = number(head, "Head", 0, heads - 1, integer=True)
        return explain.attention_figure(rec, layer, head), rec.notice

    def activations(self, prompt, source=None):
        rec = self.record(prompt, source)
        return explain.activation_figure(rec), rec.notice

    def next_token(self, prompt, temperature, top_k, top_p=1.0, repetition_penalty=1.0, story=None, source=None):
        """The next-token view; `story` ({"prompt", "id"}, from a click on a story's token): when it is this prompt,
        the token the story drew there is marked."""
        rec = self.record(prompt, source)
        t = number(temperature, "Temperature", *NEXT_TEMPERATURE[:2])
        k = number(top_k if top_k is not None else 0, "Top-k", *NEXT_TOP_K[:2], integer=True)
        p = number(top_p if top_p is not None else 1.0, "Top-p", *NEXT_TOP_P[:2])
        r = number(repetition_penalty if repetition_penalty is not None else 1.0, "Repetition penalty",
                   *NEXT_REPETITION_PENALTY[:2])
        sampled = None
        if isinstance(story, dict) and story.get("prompt") == prompt:
            sampled = (story["id"], explain.hooks.show_token(self.cache.get(source).tokenizer.decode([story["id"]])))
        return explain.next_token_figure(rec, t, k or None, top_p=p if p < 1 else None, repetition_penalty=r,
                                         sampled=sampled), rec.notice

    def logit_lens(self, prompt, source=None):
        rec = self.record(prompt, source)
        loaded = self.cache.get(source)
        with loaded.reading():
            ranks = lens_ranks(loaded.model, rec)  # computed on the first draw, then kept on the record
        return explain.logit_lens_figure(rec, ranks), rec.notice

    # ---- the walk-through ----
    def walk(self, prompt, stage, layer, token, source=None, clamp: bool = False):
        """The walk-through's view (explain.walkthrough.View) of `stage` in `layer`, with token position `token`
        selected (-1: the last). With `clamp`, a layer or token past this model's or prompt's last stands for the
        last one (the page's pickers may still hold a choice made for another model or prompt)."""
        rec = self.record(prompt, source)
        stage = choice(stage, "Stage", walkthrough.WALK_STAGES)
        layer = number(layer, "Layer", 0, None if clamp else rec.layers - 1, integer=True)
        token = number(token, "Token", -rec.seq_len, None if clamp else rec.seq_len - 1, integer=True)
        token = token % rec.seq_len if token < 0 else min(token, rec.seq_len - 1)
        return walkthrough.view(rec, stage, min(layer, rec.layers - 1), token)

    def walk_step(self, stage, layer, direction: int, source=None):
        """(stage, layer) one step along the forward pass from `stage` in `layer` (direction +1 or -1)."""
        layers = self.cache.get(source).model.config.layers
        stage = choice(stage, "Stage", walkthrough.WALK_STAGES)
        layer = min(number(layer, "Layer", 0, None, integer=True), layers - 1)
        return walkthrough.step(stage, layer, layers, direction)

    # ==== What is special about Gemma 3 (explain.gemma3_views; the "Gemma 3" sub-tab, webapp/ui/gemma3_views.py) ====
    def gemma3_view(self, prompt, topic, layer, head, source=None):
        """(figure, text, notice, layer, layers, heads) of one topic of explain.gemma3_views.TOPICS on the prompt.

        A layer beyond this model's last (the slider of a model with more layers) is read as its last layer, which
        is returned with the model's layer and head counts so the page can set its controls to this model."""
        topic = choice(topic, "The topic", gv.TOPICS)
        rec = self.record(prompt, source)
        layer = min(number(layer, "Layer", 0, None, integer=True), rec.layers - 1)
        heads = rec.config.heads
        if head in (None, "", "all", -1):
            head = None
        else:
            try:
                head = int(head.strip()) if isinstance(head, str) else head
            except ValueError:
                raise UserError(f"Head must be 'all' or a number from 0 to {heads - 1}, not {head!r}.") from None
            head = min(number(head, "Head", 0, None, integer=True), heads - 1)
        loaded = self.cache.get(source)
        with loaded.reading():   # the views read the model's weights, RoPE and final norm
            fig, words = gv.gemma3_view(topic, rec, loaded.model, layer, head)
        return fig, words, rec.notice, layer, rec.layers, heads


def checked_prompt(prompt) -> str:
    return text(prompt, "The Explore prompt", hint="type a sentence for the model to read")


def prompt_ok(prompt) -> bool:
    """Whether Explore takes `prompt`. "Look inside" says what is wrong with one it refuses, once: the other views
    it redraws check this and keep what they show, silently."""
    try:
        checked_prompt(prompt)
    except UserError:
        return False
    return True


def default_mask_len(info) -> int:
    """Long enough to show the window's band: twice the window, within the context."""
    return max(1, min(info.context, 2 * info.window, MAX_MASK_LEN))


def head_choices(info) -> list[str]:
    return ["all"] + [str(h) for h in range(info.heads)]
