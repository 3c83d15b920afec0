"""The guided first visit: "Show me how it works" takes a first-time visitor through one prompt, tab by tab.

Seven steps follow the Explore prompt from its tokens to the next token, then to a story and to training: each
switches the tab (and sub-tab) itself, outlines the figure it talks about and scrolls it into view, and explains it
in a short card (step k of n, Back, Next, Leave tour, and ▾ to fold it to one line where it hides part of a tall
figure; Escape leaves at any step, the arrow keys step). The tour runs in the page alone and costs the server nothing
beyond the figures the tabs draw when they are shown.

The steps are data (STEPS, checked by tests/test_tour.py): their words, the tabs to open, the elements to outline
(by elem_id) and, on the walk-through, the stage box to click. The numbers in the words ({hidden}, {layers}, ...)
come from the default model (facts()), and the page replaces them with the model this visitor has loaded, read
from the walk-through's diagram and the model bar as they are shown.
"""

import math
from dataclasses import asdict, dataclass

import gradio as gr

import explain
from webapp.explore import PROMPT


@dataclass(frozen=True)
class Step:
    title: str
    text: str                     # two or three plain sentences; {fact} names from facts(), *words* in italics
    tabs: tuple[str, ...]         # the ids of the tabs to select, outer first
    targets: tuple[str, ...]      # CSS selectors by elem_id: the first is the figure the step is about
    stage: str | None = None      # a walk-through stage to show (its box in the diagram is clicked)
    copy_prompt: bool = False     # put the Explore prompt into Generate's prompt box (the visitor's own text there
                                  # comes back when the tour ends, unless they wrote a story from the tour's)


STEPS = (
    Step("Your prompt becomes tokens",
         "We follow one prompt, “{prompt}”, through the model. The tokenizer cuts it into pieces (words, parts "
         "of words, spaces) and swaps each for its number in a vocabulary of {vocab} entries: {tokens} numbers in "
         "all, listed here, and all that the model ever sees.",
         ("explore", "walk"), ("#walk-plot", "#wt-box-ids"), stage="ids"),
    Step("Each token becomes a vector",
         "Each number picks its row of a {vocab} × {hidden} table: {hidden} numbers the model learned for that "
         "token. The row is multiplied by √{hidden} ≈ {sqrt_hidden}, so it starts on the scale of what the "
         "{layers} layers will add to it. Each row of this heatmap is one token of the prompt.",
         ("explore", "walk"), ("#walk-plot", "#wt-box-embed"), stage="embed"),
    Step("Attention: each token looks back",
         "In every layer, each token takes in what it needs from the tokens before it. Each small map is one head: "
         "a row is one token, its bright cells the earlier tokens it attends to. *Sliding* layers see only the "
         "last {window} tokens, *full* ones ({full} of {layers}) the whole prompt: {window_note}",
         ("explore", "attention"), ("#attention-grid", "#attention-layer")),
    Step("The feed-forward network (GeGLU)",
         "After attention, each token goes alone through a small network: its {hidden} numbers are widened to "
         "{ffn} twice, one copy bent by GELU (the *gate*) and multiplied by the other (*up*), as this heatmap "
         "shows. The result is brought back down to {hidden} numbers, normalised again (Gemma 3's post-norm) and "
         "added to the token's vector; then the "
         "next layer starts.",
         ("explore", "walk"), ("#walk-plot", "#wt-box-act"), stage="act"),
    Step("Scoring the next token",
         "After the last layer, the model gives each of the {vocab} tokens a score for coming next, and softmax "
         "turns the scores into probabilities: these bars. Writing means drawing one token from them; Temperature, "
         "Top-k and Top-p (the sliders above) reshape the bars before the draw.",
         ("explore", "next"), ("#plot-next", "#next-sampling")),
    Step("A story, token by token",
         "A story repeats that step: draw a token, append it, run the model on that new token only, reusing the "
         "keys and values it kept for the earlier ones (the KV cache), which gives what rereading the whole text "
         "would. The same "
         "prompt is now in the box: press Generate to watch the story grow, then click any word of it to see the "
         "choice the model had there.",
         ("generate",), ("#generate-btn", "#story"), copy_prompt=True),
    Step("Training lowers the loss",
         "The model learned all this by training: each step reads a batch of stories and nudges every one of "
         "its parameters ({params} in the model loaded now) so that the token that really came next gets a "
         "higher probability. The loss is how surprised "
         "the model was: guessing at random scores ln {vocab} ≈ {ln_vocab} (the dashed line), and a run's curve, "
         "drawn here as it trains, falls below it step by step. The Start button, after this tab's settings, "
         "begins a run with them.",
         ("train",), ("#train-loss", "#train-start")),
)


# what the attention step says about the window: true of a prompt inside it (the default: sliding and full layers
# look alike) and of one past it ({tokens} and {window} filled in; the page picks one for the prompt it shows)
WINDOW_NOTES = ("these {tokens} tokens fit inside the window, so here both kinds look alike. Move the Layer slider "
                "to see how each layer's heads differ.",
                "these {tokens} tokens overflow the window, so a sliding layer leaves the keys further back empty "
                "(hatched). Move the Layer slider to a full layer to compare.")


def window_note(tokens: int, window: int) -> str:
    return WINDOW_NOTES[int(tokens) > int(window)].format(tokens=tokens, window=window)


def facts(loaded) -> dict:
    """The numbers the steps name, for `loaded` (a webapp.models.LoadedModel) and the default Explore prompt."""
    c, tok = loaded.model.config, loaded.tokenizer
    bos = 1 if getattr(tok, "bos_id", None) is not None else 0
    full = sum(t == "full" for t in c.layer_types)
    tokens = min(len(tok.encode(PROMPT)) + bos, explain.MAX_TOKENS, c.context)
    return {"prompt": short(PROMPT), "tokens": tokens,
            "vocab": f"{c.vocab_size:,}", "hidden": c.hidden, "sqrt_hidden": f"{math.sqrt(c.hidden):.1f}",
            "ln_vocab": f"{math.log(c.vocab_size):.1f}",
            "layers": c.layers, "heads": c.heads, "ffn": c.ffn, "window": c.window, "full": full,
            "window_note": window_note(tokens, c.window), "params": f"{loaded.info.params / 1e6:.1f}M"}


def short(prompt: str, limit: int = 42) -> str:
    """The prompt's first words, cut at a word and marked with … when there is more."""
    text = " ".join(prompt.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",.;:") + "…"


BUTTON = ('<div class="tour-wrap"><button type="button" id="tour-start" class="tour-start" aria-haspopup="dialog">'
          '<span aria-hidden="true">▶</span> Show me how it works</button></div>')
BUTTON_CSS = """
.tour-wrap { display: flex; justify-content: flex-end; }
.tour-start { display: inline-flex; align-items: center; gap: 0.5em; padding: 0.55em 1.1em; border-radius: 999px;
  border: 1px solid var(--color-accent); background: var(--color-accent-soft); color: var(--body-text-color);
  font: inherit; font-weight: 600; cursor: pointer; white-space: nowrap; }
.tour-start:hover { background: var(--color-accent); color: #fff; }
.tour-start span { font-size: 0.8em; }
"""
# global: the card lives on document.body and the outline goes on other components (the script adds this once)
CSS = """
#tour-start.tour-new { animation: tour-pulse 1.8s ease-in-out 4; }
@keyframes tour-pulse { 50% { box-shadow: 0 0 0 7px color-mix(in srgb, var(--color-accent) 30%, transparent); } }
#page-header { align-items: center; flex-wrap: wrap; }
#page-header > #page-title { flex: 1 1 320px !important; min-width: min(320px, 100%) !important; }
#page-header > #tour { flex: 0 0 auto !important; width: auto !important; min-width: fit-content !important; }
.tour-spot { outline: 3px solid var(--color-accent) !important; outline-offset: 3px; border-radius: 8px;
  box-shadow: 0 0 0 7px color-mix(in srgb, var(--color-accent) 22%, transparent) !important;
  scroll-margin: 16px; transition: box-shadow 0.3s; }
#tour-card { position: fixed; z-index: 1000; width: 380px; max-width: calc(100vw - 16px); box-sizing: border-box;
  padding: 14px 16px 12px; border-radius: 12px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary); color: var(--body-text-color);
  box-shadow: 0 12px 36px rgba(15, 23, 42, 0.28); font-size: 15px; line-height: 1.5; }
#tour-card .tour-top { display: flex; align-items: center; justify-content: space-between; gap: 8px; }
#tour-step { font-size: 12px; font-weight: 600; letter-spacing: 0.04em; text-transform: uppercase;
  color: var(--color-accent); }
#tour-card .tour-x, #tour-card .tour-fold { border: none; background: none; color: var(--body-text-color-subdued);
  font-size: 22px; line-height: 1; cursor: pointer; padding: 0 4px; }
#tour-card .tour-fold { font-size: 16px; margin-left: auto; }
#tour-card .tour-short { display: none; flex: 1 1 auto; min-width: 0; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; font-weight: 600; cursor: pointer; }
/* folded away: one line (the step, its title, unfold and leave), so a tall figure is seen whole */
#tour-card.tour-folded { width: auto; max-width: min(420px, calc(100vw - 16px)); padding: 8px 12px; }
#tour-card.tour-folded .tour-short { display: block; }
#tour-card.tour-folded h3, #tour-card.tour-folded p, #tour-card.tour-folded .tour-dots,
#tour-card.tour-folded .tour-nav { display: none; }
#tour-card h3 { margin: 4px 0 6px; font-size: 17px; line-height: 1.3; }
#tour-card p { margin: 0 0 10px; }
#tour-card .tour-dots { display: flex; gap: 5px; margin-bottom: 10px; }
#tour-card .tour-dots i { width: 7px; height: 7px; border-radius: 50%; background: var(--border-color-primary); }
#tour-card .tour-dots i.on { background: var(--color-accent); }
#tour-card .tour-nav { display: flex; gap: 8px; align-items: center; }
#tour-card .tour-nav button { font: inherit; font-size: 14px; padding: 6px 14px; border-radius: 8px; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--button-secondary-background-fill);
  color: var(--body-text-color); }
#tour-card .tour-nav #tour-leave { margin-right: auto; border: none; background: none; padding-left: 0;
  color: var(--body-text-color-subdued); text-decoration: underline; }
#tour-card .tour-nav #tour-next { background: var(--color-accent); border-color: var(--color-accent); color: #fff; }
#tour-card .tour-nav button:disabled { opacity: 0.45; cursor: default; }
@media (max-width: 640px) {
  #tour .tour-wrap { justify-content: flex-start; }
  /* a sheet docked at the bottom, as short as it reads: the figure stands above it */
  #tour-card { width: auto; font-size: 14px; line-height: 1.4; max-height: 42vh; overflow-y: auto;
    padding: 10px 14px 10px; border-radius: 12px 12px 8px 8px; }
  #tour-card h3 { font-size: 16px; margin: 2px 0 4px; }
  #tour-card p { margin: 0 0 8px; }
  #tour-card .tour-dots { display: none; }
  #tour-card .tour-nav button { padding: 5px 12px; }
}
#tour-room { height: 0; }
"""

# The tour in the page: `element` is the button's gr.HTML; props: steps, facts, prompt (for an empty Explore
# prompt), css (CSS, added to the page once).
SCRIPT = r"""
const steps = props.steps, base = props.facts;
if (!document.getElementById('tour-style')) {
  const st = document.createElement('style'); st.id = 'tour-style'; st.textContent = props.css;
  document.head.appendChild(st);
}
const state = {k: null, run: 0, timer: null, ready: false, clicks: 0, last: 0, sel: null, spot: 0, folded: false,
               own: null};   // own: the visitor's Generate prompt the tour replaced, and what it put there
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const q = (sel) => { try { return document.querySelector(sel); } catch (e) { return null; } };
const shown = (el) => !!el && el.isConnected && el.getClientRects().length > 0 && !el.closest('.visually-hidden');
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
const calm = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
const start_btn = element.querySelector('#tour-start');
if (start_btn && !localStorage.getItem('gemma3-tour-seen')) start_btn.classList.add('tour-new');

function short(text, limit = 42) {
  const t = text.split(/\s+/).filter(Boolean).join(' ');
  if (t.length <= limit) return t;
  const cut = t.slice(0, limit), sp = cut.lastIndexOf(' ');
  return (sp > 0 ? cut.slice(0, sp) : cut).replace(/[,.;:]+$/, '') + '…';
}

// the numbers of the model this visitor has loaded, where the page shows them; else the default model's
function facts() {
  const f = {...base};
  const head = q('#walk-diagram .wt-head'), t = head ? head.textContent : '';
  const grab = (name, re) => { const m = t.match(re); if (m) f[name] = m[1]; };
  grab('hidden', /hidden (\d+)/); grab('heads', /(\d+) query head/); grab('ffn', /feed-forward (\d+)/);
  grab('vocab', /vocabulary ([\d,]+)/); grab('layers', /(\d+) layers/); grab('tokens', /T = (\d+)/);
  if (q('#walk-diagram .wt-chip')) f.full = document.querySelectorAll('#walk-diagram .wt-chip.wt-full').length;
  const sliding = q('#walk-diagram .wt-chip.wt-sliding');
  const w = sliding && (sliding.getAttribute('title') || '').match(/window (\d+)/);
  if (w) f.window = w[1];
  const info = q('#model-info'), p = info && info.textContent.match(/([\d.]+[kMB]) parameters/);
  if (p) f.params = p[1];
  const ta = q('#explore-prompt textarea');
  if (ta && ta.value.trim()) f.prompt = short(ta.value);
  f.window_note = props.notes[Number(f.tokens) > Number(f.window) ? 1 : 0].replace(/\{(\w+)\}/g, (m, k) => f[k]);
  f.sqrt_hidden = Math.sqrt(Number(f.hidden)).toFixed(1);
  f.ln_vocab = Math.log(Number(String(f.vocab).replace(/,/g, ''))).toFixed(1);
  return f;
}

function words(text) {
  const f = facts();
  return esc(text).replace(/\*([^*]+)\*/g, '<em>$1</em>').replace(/\{(\w+)\}/g, (m, k) => (k in f ? esc(f[k]) : m));
}

const storyNow = () => { const e = q('#story'); return e ? e.textContent : ''; };

function setValue(ta, value) {
  Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(ta, value);
  ta.dispatchEvent(new Event('input', {bubbles: true}));
}

function tabButton(id) {
  const all = [...document.querySelectorAll(`button[role="tab"][data-tab-id="${id}"]`)];
  return all.find(shown) || null;
}

async function waitFor(fn, ms, run) {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v || run !== state.run || Date.now() > end) return v;
    await sleep(60);
  }
}

function card() {
  let c = q('#tour-card');
  if (c) return c;
  c = document.createElement('div');
  c.id = 'tour-card';
  c.setAttribute('role', 'dialog'); c.setAttribute('aria-modal', 'false');
  c.setAttribute('aria-labelledby', 'tour-title'); c.setAttribute('aria-describedby', 'tour-text');
  c.innerHTML = '<div class="tour-top"><span id="tour-step"></span><span class="tour-short"></span>' +
    '<button type="button" class="tour-fold" aria-expanded="true"></button><button type="button" class="tour-x" ' +
    'aria-label="Leave the tour" title="Leave the tour (Esc)">×</button></div><h3 id="tour-title"></h3>' +
    '<p id="tour-text"></p><div class="tour-dots" aria-hidden="true"></div><div class="tour-nav">' +
    '<button type="button" id="tour-leave">Leave tour</button><button type="button" id="tour-back">← Back</button>' +
    '<button type="button" id="tour-next">Next →</button></div>';
  c.querySelector('.tour-x').addEventListener('click', leave);
  c.querySelector('#tour-leave').addEventListener('click', leave);
  c.querySelector('.tour-fold').addEventListener('click', () => fold(!state.folded));
  c.querySelector('.tour-short').addEventListener('click', () => fold(false));
  c.querySelector('#tour-back').addEventListener('click', () => { if (state.k > 0) go(state.k - 1); });
  c.querySelector('#tour-next').addEventListener('click', () => (state.k < steps.length - 1 ? go(state.k + 1) : leave()));
  document.body.appendChild(c);
  return c;
}

function render() {
  const c = q('#tour-card'), s = steps[state.k];
  if (!c || !s) return;
  const put = (sel, html) => { const e = c.querySelector(sel); if (e.innerHTML !== html) e.innerHTML = html; };
  put('#tour-step', state.folded ? `${state.k + 1}/${steps.length}` : `Step ${state.k + 1} of ${steps.length}`);
  put('#tour-title', esc(s.title));
  put('.tour-short', esc(s.title));
  c.classList.toggle('tour-folded', state.folded);
  const f = c.querySelector('.tour-fold'), label = state.folded ? 'Show the card again' : 'Fold the card away';
  put('.tour-fold', state.folded ? '▴' : '▾');
  f.setAttribute('aria-expanded', String(!state.folded)); f.setAttribute('aria-label', label); f.title = label;
  put('#tour-text', words(s.text));
  put('.tour-dots', steps.map((_, i) => `<i${i === state.k ? ' class="on"' : ''}></i>`).join(''));
  c.querySelector('#tour-back').disabled = state.k === 0;
  put('#tour-next', state.k === steps.length - 1 ? 'Finish ✓' : 'Next →');
}

const isPhone = () => document.documentElement.clientWidth <= 640;

// on a phone the card is a sheet docked at the bottom (the page scrolls the figure into the part above it, with
// room added below the page so that even the last figure can rise there); elsewhere it goes to the corner where it
// hides least of the step's figure and the controls it names
function place() {
  const c = q('#tour-card');
  if (!c || state.k == null) return;
  const W = document.documentElement.clientWidth, H = window.innerHeight, phone = isPhone(), m = phone ? 8 : 16;
  const w = c.offsetWidth, h = c.offsetHeight;
  room(phone ? h + 2 * m : 0);
  if (phone) {
    c.style.left = m + 'px'; c.style.right = m + 'px'; c.style.top = Math.max(m, H - h - m) + 'px';
    return;
  }
  const rs = steps[state.k].targets.map(q).filter(shown).map((e) => e.getBoundingClientRect());
  const spots = [[W - w - m, H - h - m], [m, H - h - m], [W - w - m, m], [m, m]];
  const hidden = ([x, y]) => rs.reduce((sum, r, i) => {
    const dx = Math.min(x + w, r.right, W) - Math.max(x, r.left, 0), dy = Math.min(y + h, r.bottom, H) - Math.max(y, r.top, 0);
    return sum + (dx > 0 && dy > 0 ? dx * dy * (i === 0 ? 1 : 4) : 0);   // a named control counts more: it is small
  }, 0);
  let best = state.spot < spots.length ? state.spot : 0;
  spots.forEach((s, i) => { if (hidden(s) < hidden(spots[best]) - 1) best = i; });
  state.spot = best;
  c.style.left = spots[best][0] + 'px'; c.style.top = Math.max(m, spots[best][1]) + 'px'; c.style.right = 'auto';
}

// empty space after the page, as tall as the docked card: the page can scroll its last figure above the card
function room(px) {
  let r = q('#tour-room');
  if (!r && px > 0) {
    r = document.createElement('div'); r.id = 'tour-room'; r.setAttribute('aria-hidden', 'true');
    document.body.appendChild(r);
  }
  if (r && r.style.height !== px + 'px') r.style.height = px + 'px';
}

// the part of the window the card leaves free: above it on a phone, all of it elsewhere
function free() {
  const c = q('#tour-card'), H = window.innerHeight;
  return isPhone() && c ? Math.max(120, c.getBoundingClientRect().top - 8) : H;
}

function tick() {
  if (state.k == null) return;
  const s = steps[state.k];
  if (state.ready) {
    const want = s.targets.map(q).filter(shown);
    document.querySelectorAll('.tour-spot').forEach((e) => { if (!want.includes(e)) e.classList.remove('tour-spot'); });
    want.forEach((e) => e.classList.add('tour-spot'));
    // the walk-through shows the step's stage: its box is clicked, and again if the redraw that selecting the tab
    // started lands after the click (a new diagram, not showing the stage), or if nothing came back for a while
    const sel = q('#walk-diagram .wt-sel');
    if (s.stage && state.clicks < 3 && !(sel && sel.dataset.stage === s.stage) &&
        (sel !== state.sel || Date.now() - state.last > 2500)) {
      const box = q('#wt-box-' + s.stage);
      if (shown(box)) { box.click(); state.clicks++; state.last = Date.now(); state.sel = sel; }
    }
  }
  render();
  place();
}

// folded, the card is one line, so that a figure taller than the space beside the card is seen whole; a new step
// unfolds it (its words are new)
function fold(on) {
  state.folded = on;
  render(); place();
  q('#tour-card .tour-fold').focus({preventScroll: true});   // the arrow keys still step, Escape still leaves
}

async function go(k) {
  const run = ++state.run, s = steps[k];
  state.k = k; state.ready = false; state.clicks = 0; state.last = 0; state.sel = null; state.folded = false;
  document.querySelectorAll('.tour-spot').forEach((e) => e.classList.remove('tour-spot'));
  render(); place();
  for (const id of s.tabs) {
    const b = await waitFor(() => tabButton(id), 3000, run);
    if (run !== state.run) return;
    if (b && b.getAttribute('aria-selected') !== 'true') { b.click(); await sleep(120); }
  }
  if (s.copy_prompt) {
    const from = q('#explore-prompt textarea'), to = q('#prompt textarea');
    if (from && to && from.value.trim() && to.value !== from.value) {
      if (to.value.trim() && !state.own) state.own = {text: to.value, put: from.value, story: storyNow()};
      setValue(to, from.value);
    }
  }
  const t = await waitFor(() => { const e = q(s.targets[0]); return shown(e) && e; }, 6000, run);
  if (run !== state.run) return;
  state.ready = true;
  tick();
  if (!t) return;
  bring(s, calm ? 'auto' : 'smooth');
  // a figure drawn or a tab laid out meanwhile may move it (and stop a smooth scroll): look again twice, then for
  // ten seconds whenever the layout moved it (a busy server draws late), never because the visitor scrolled
  let was = where(s);
  for (let i = 0; i < 15; i++) {
    await sleep(700);
    if (run !== state.run) return;
    place();
    const now = where(s);   // bringing scrolls the window, which leaves it as it is
    if (!inView(s) && (i < 2 || now !== was)) bring(s, 'auto');
    was = now;
  }
}

// where the step's box lies in the page (not in the window: scrolling leaves it as it is)
function where(s) {
  const b = span(s);
  return b ? [b.lead.id, Math.round(b.top + window.scrollY), Math.round(b.bottom - b.top)].join() : '';
}

// what the step shows: its figure and, where they fit beside it in the free part of the window, the controls it
// names (the other targets), as one box; the element whose top is the box's top leads the scroll
function span(s) {
  const t = q(s.targets[0]);
  if (!shown(t)) return null;
  const els = s.targets.map(q).filter(shown), rs = els.map((e) => e.getBoundingClientRect());
  const top = Math.min(...rs.map((r) => r.top)), bottom = Math.max(...rs.map((r) => r.bottom));
  if (bottom - top <= free() - 24) return {lead: els[rs.findIndex((r) => r.top === top)], top, bottom, all: true};
  const r = t.getBoundingClientRect();
  return {lead: t, top: r.top, bottom: r.bottom, all: false};
}

// the box's top near the top of the window (a small box on a wide screen in the middle), so the card, docked
// below it on a phone, hides none of its top
function bring(s, behavior) {
  const b = span(s);
  if (!b) return;
  const small = !isPhone() && b.bottom - b.top < 0.6 * free() && b.lead === q(s.targets[0]);
  b.lead.scrollIntoView({block: small ? 'center' : 'start', behavior});
}

function inView(s) {
  const b = span(s), F = free();
  return !b || (b.top >= -1 && (b.bottom <= F + 1 || b.top <= 0.35 * F));
}

function onKey(e) {
  if (state.k == null) return;
  if (e.key === 'Escape') { e.preventDefault(); leave(); return; }
  if (!e.target.closest || !e.target.closest('#tour-card')) return;
  if (e.key === 'ArrowRight' && state.k < steps.length - 1) go(state.k + 1);
  if (e.key === 'ArrowLeft' && state.k > 0) go(state.k - 1);
}

function leave() {
  state.run++; state.k = null; state.ready = false;
  clearInterval(state.timer); state.timer = null;
  document.removeEventListener('keydown', onKey, true);
  window.removeEventListener('resize', place);
  document.querySelectorAll('.tour-spot').forEach((e) => e.classList.remove('tour-spot'));
  const to = q('#prompt textarea'), own = state.own;
  state.own = null;
  if (own && to && to.value === own.put && storyNow() === own.story) setValue(to, own.text);   // no story written from it
  const c = q('#tour-card');
  if (c) c.remove();
  const r = q('#tour-room');
  if (r) r.remove();
  if (shown(start_btn)) start_btn.focus({preventScroll: true});
}

function start() {
  leave();
  localStorage.setItem('gemma3-tour-seen', '1');
  if (start_btn) start_btn.classList.remove('tour-new');
  const ta = q('#explore-prompt textarea');   // one prompt for the whole tour: the Explore prompt, or ours
  if (ta && !ta.value.trim()) { setValue(ta, props.prompt); setTimeout(() => { const b = q('#look-inside'); if (b) b.click(); }, 100); }
  card();
  state.timer = setInterval(tick, 400);
  document.addEventListener('keydown', onKey, true);
  window.addEventListener('resize', place);
  go(0);
  q('#tour-next').focus({preventScroll: true});
}

element.addEventListener('click', (e) => { if (e.target.closest('#tour-start')) start(); });
"""


def build(loaded) -> gr.HTML:
    """The "Show me how it works" button and its tour, in the current Blocks; the numbers are `loaded`'s (the
    default model's) until the page shows the visitor's own."""
    steps = [asdict(s) for s in STEPS]
    return gr.HTML(BUTTON, css_template=BUTTON_CSS, js_on_load=SCRIPT, elem_id="tour", scale=0, min_width=250,
                   steps=steps, facts=facts(loaded), notes=WINDOW_NOTES, prompt=PROMPT, css=CSS)


def header(text: str, loaded) -> gr.HTML:
    """The page's title (Markdown `text`) with the tour's button beside it (below it on a phone)."""
    with gr.Row(equal_height=True, elem_id="page-header"):
        gr.Markdown(text, elem_id="page-title", scale=1, min_width=320)
        return build(loaded)
