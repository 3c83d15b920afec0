"""The page's look: the theme, the CSS and the one script every page runs (app.LAUNCH hands them to launch())."""

import json

import gradio as gr

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="pink")
CSS = """
#story .story-view { font-family: Georgia, 'Times New Roman', serif; font-size: 1.05rem; line-height: 1.6;
  white-space: pre-wrap; min-height: 22rem; max-height: 36rem; overflow-y: auto; padding: 0.6rem 0.8rem;
  border: 1px solid var(--border-color-primary); border-radius: var(--radius-lg);
  background: var(--input-background-fill); color: var(--body-text-color); }
#story .story-empty { color: var(--body-text-color-subdued); font-style: italic; }
#story .story-prompt { font-weight: 700; }
#story .tok { cursor: pointer; border-radius: 3px; color: #111827; }
#story .tok:hover { outline: 2px solid var(--color-accent); }
#story .story-legend { font-size: 0.85rem; color: var(--body-text-color-subdued); margin-top: 0.4rem; }
#story .story-legend span { padding: 0 0.3em; border-radius: 3px; color: #111827; }
#model-bar { padding: 0.4rem 0.6rem; }
/* the model picker: a long name ends in "…" before the dropdown's arrow (20 px, absolutely placed), not under it */
#model-picker input { text-overflow: ellipsis; padding-right: 26px !important; }
/* Train's torch.compile box: about as wide as its neighbours (Gradio gives a checkbox no minimum width, so on a phone
   it shrank to "tor" and a word a line); too narrow a row, it wraps onto a row of its own */
#train-compile { min-width: min(150px, 100%) !important; }
/* the Train tab's runs table: a header wraps between its words, never inside one ("prese / t"); the table sizes its
   columns from what their headers can shrink to */
#train-runs th .header-content, #train-runs th .header-content * { word-break: normal !important;
  overflow-wrap: normal !important; }
.guide { color: var(--body-text-color-subdued); }
/* every tab stays reachable: Gradio moves the tabs that its hidden copy of the bar measures as too wide into a
   "..." menu; measured narrow, they all stay in the bar, which wraps onto a second line when it must */
.tab-container.visually-hidden button { padding: 0 !important; font-size: 1px !important; min-width: 0 !important; }
.tab-wrapper { height: auto !important; }
.tab-container[role=tablist] { flex-wrap: wrap !important; height: auto !important; row-gap: 2px; }
/* an error is said once, in its toast: no "Error" box over the event's outputs (it would hide them, the model
   picker included, until their next update); a figure whose redraw failed stays as it was */
[data-testid=status-tracker]:has(> .error) { display: none !important; }
/* toasts rise from the bottom right: at the top they would lie over the model bar's Load button, which the next
   action (a load that follows a failed one) needs */
.toast-wrap { top: auto !important; bottom: var(--size-4) !important; }
/* the model bar's choice of model: on a wide screen a row under the model's line, as if no accordion held it */
@media (min-width: 761px) {
  #model-choose { padding: 0 !important; border: none !important; }
  #model-choose > .label-wrap { display: none !important; }
}
/* Plotly's toolbar never covers text: on a touch screen or a phone it is hidden (a double tap resets the axes) */
@media (max-width: 760px), (hover: none) { .js-plotly-plot .modebar-container { display: none !important; } }
/* a phone: narrow page margins; the model bar compact; Generate in one column (prompt, buttons, settings folded by
   the page script, the story, then the example prompts); figures as wide as the screen (the script lays them out) */
@media (max-width: 760px) {
  .prose h1 { font-size: 1.45rem !important; margin-bottom: 0.2rem !important; }
  #model-info { font-size: 0.85rem; line-height: 1.35; }
  #model-choose .row > * { min-width: 100% !important; }
  #model-choose .row > .column { flex-direction: row !important; gap: 6px; }
  #model-choose .row > .column > * { flex: 1 1 0; }
  #generate-row { flex-direction: column !important; flex-wrap: nowrap !important; }
  #generate-row > .column { display: contents !important; }
  #generate-row > .column > * { order: 5; }
  #generate-row > .column > .form:has(#prompt) { order: 1; }
  #generate-row #gen-buttons { order: 2; }
  #generate-row #gen-settings { order: 3; }
  #gen-buttons { flex-wrap: nowrap !important; }
  #gen-buttons > button { min-width: 0 !important; }
  #generate-row #story { order: 4; }
  #generate-row #gen-info { order: 5; }
  #generate-row #gen-examples { order: 6; }
  #story .story-view { min-height: 12rem; max-height: 70vh; }
  #next-sampling > *, #next-sampling > .form > .block { min-width: 100% !important; }
}
"""
# Gradio scopes launch(css=...) to the app's content: the page's own margins are set by the script, with this
PAGE_CSS = "@media (max-width: 760px) { .main.app { padding-left: 8px !important; padding-right: 8px !important; } }"
# The page script:
# - Plotly draws a figure in a hidden tab 700 px wide (it cannot measure a hidden panel): whenever a figure's width
#   changes (its tab is shown, the window resized) it is redrawn at the width it now has.
# - After every drawing, a figure's text is laid out for its width (fitText): narrower than NARROW px, it takes
#   the phone layout it carries in layout.meta (explain.phone: side-by-side panels stacked, ...), its title
#   wraps onto lines that fit and sits below the plot's label, fonts and side margins shrink, and the top margin
#   makes room for the title and whatever stands above the plot (legend, subplot titles); at any width a title
#   that the toolbar would cover moves below it. A new figure from the server starts from its own layout again.
# - On a phone, Generate's settings start folded.
# - A click on a story token opens Explore's Next token view (app.link_story): the page scrolls to that figure
#   rather than wherever the switch of tabs leaves it, unless the visitor scrolls meanwhile.
# - A click on a button, a tab or a story token clears the toasts of the last action.
JS = r"""
() => {
  const NARROW = 640, PHONE = '(max-width: 760px)';
  const style = document.createElement('style');
  style.textContent = __PAGE_CSS__;
  document.head.appendChild(style);

  const get = (o, path) => path.split('.').reduce((v, k) => (v == null ? undefined : v[k]), o);
  const textOf = (t) => (t && typeof t === 'object' ? t.text : t) || '';
  const overlap = (a, b) => a.width > 0 && b.width > 0 && a.left < b.right && b.left < a.right
    && a.top < b.bottom && b.top < a.bottom;
  // break a title's lines at spaces so none is wider than px (tags take no room; a span's font-size counts)
  const wrapLine = (line, px, base) => {
    let size = base, out = '', used = 0;
    for (const part of line.split(/(<[^>]*>)/)) {
      if (part.startsWith('<')) {
        const m = part.match(/font-size:\s*(\d+)px/);
        if (m) size = +m[1]; else if (/^<\/span/i.test(part)) size = base;
        out += part;
        continue;
      }
      for (const w of part.split(/(\s+)/)) {
        if (!w) continue;
        if (/^\s+$/.test(w)) { if (used) { out += ' '; used += size * 0.3; } continue; }
        const wpx = w.length * size * 0.62;
        if (used && used + wpx > px) { out = out.replace(/ $/, '') + '<br>'; used = 0; }
        out += w;
        used += wpx;
      }
    }
    return out;
  };
  const wrap = (text, px, base) => text.split(/<br\s*\/?>/i).map((l) => wrapLine(l, px, base)).join('<br>');
  const snapshot = (l) => ({title: textOf(l.title), yref: get(l, 'title.yref'), y: get(l, 'title.y'),
    yanchor: get(l, 'title.yanchor'), pad: get(l, 'title.pad.t'), font: get(l, 'font.size'),
    t: get(l, 'margin.t'), l: get(l, 'margin.l'), r: get(l, 'margin.r')});
  const fitText = (gd) => {
    const full = gd._fullLayout;
    if (!full || !window.Plotly || gd._fitting || gd.offsetParent === null || !full.width) return;
    if (gd.layout !== gd._seen) {
      gd._seen = gd.layout; gd._orig = snapshot(gd.layout); gd._placed = gd._keep = gd._phone = false;
    }
    const o = gd._orig, w = full.width, narrow = w < NARROW, box = gd.getBoundingClientRect();
    const meta = get(gd.layout, 'meta.phone') && gd.layout.meta;
    if (meta && narrow !== gd._phone) {   // the figure's own phone layout (explain.phone), or its wide one again
      const side = narrow ? meta.phone : meta.wide;
      gd._phone = narrow;
      if ('title.text' in side.layout) o.title = side.layout['title.text'];
      gd._fitting = true;
      let done = window.Plotly.relayout(gd, side.layout);
      for (const [i, upd] of side.traces) done = done.then(() => window.Plotly.restyle(gd, upd, [i]));
      done.finally(() => { gd._fitting = false; fitText(gd); });
      return;
    }
    const bar = gd.querySelector('.modebar-container');
    const barBox = bar && getComputedStyle(bar).display !== 'none' && gd.querySelector('.modebar')
      ? gd.querySelector('.modebar').getBoundingClientRect() : null;
    const title = gd.querySelector('.gtitle');
    if (barBox && title && overlap(barBox, title.getBoundingClientRect())) gd._keep = true;
    const lab = gd.closest('.block') && gd.closest('.block').querySelector(':scope > label');   // nor the label
    if (lab && title && lab.offsetParent !== null && overlap(lab.getBoundingClientRect(), title.getBoundingClientRect()))
      gd._keep = true;
    const upd = {};
    const set = (k, v) => { if (get(gd.layout, k) !== v) upd[k] = v; };
    if (narrow || gd._keep) {
      const label = gd.closest('.block') && gd.closest('.block').querySelector(':scope > label');
      const above = Math.max(label && label.offsetParent !== null ? label.getBoundingClientRect().bottom : 0,
                             barBox ? barBox.bottom : 0);
      const base = get(full, 'title.font.size') || 14;
      if (o.title) {
        set('title.text', narrow ? wrap(o.title, w - 20, base) : o.title);
        set('title.yref', 'container'); set('title.y', 1); set('title.yanchor', 'top');
        // the label and the toolbar sit at the block's top: a larger gap is a measure taken mid-scroll or mid-switch
        const want = Math.max(4, Math.min(above - box.top + 4, 80)), pad = get(gd.layout, 'title.pad.t');
        if (pad == null || get(gd.layout, 'title.yref') !== 'container') set('title.pad.t', Math.round(want));
        else if (title) {   // Plotly sets a title of several lines off by a little: move it to where it should be
          const shift = want - (title.getBoundingClientRect().top - box.top);
          if (Math.abs(shift) > 2) set('title.pad.t', Math.max(0, Math.round(pad + shift)));
        }
      }
      if (narrow) {
        set('font.size', Math.min(o.font || 13, 11));
        set('margin.l', Math.min(o.l == null ? 80 : o.l, 36));
        set('margin.r', Math.min(o.r == null ? 80 : o.r, 12));
      }
      if (!Object.keys(upd).length) {   // laid out: the top margin holds the title and what is above the plot
        const plotTop = box.top + full._size.t;
        let need = title ? title.getBoundingClientRect().bottom - box.top + 6 : 0, over = 0;
        gd.querySelectorAll('.legend, .annotation, .slider-container').forEach((el) => {
          const r = el.getBoundingClientRect();
          if (r.height && r.top < plotTop && r.bottom > box.top) over = Math.max(over, plotTop - r.top);
        });
        need = Math.round(need + over);
        if (title && Math.abs(need - full._size.t) > 3 && need > full._size.t - over) set('margin.t', need);
      }
      gd._placed = true;
    } else if (gd._placed) {   // wide again: the figure's own layout
      Object.assign(upd, {'title.text': o.title, 'title.yref': o.yref ?? null, 'title.y': o.y ?? null,
        'title.yanchor': o.yanchor ?? null, 'title.pad.t': o.pad ?? null, 'font.size': o.font ?? null,
        'margin.t': o.t ?? null, 'margin.l': o.l ?? null, 'margin.r': o.r ?? null});
      gd._placed = false;
    }
    if (Object.keys(upd).length && (gd._fits = (gd._fits || 0) + 1) < 8) {
      gd._fitting = true;
      window.Plotly.relayout(gd, upd).finally(() => { gd._fitting = false; fitText(gd); });
    } else if (!Object.keys(upd).length) gd._fits = 0;
  };

  const seen = new WeakSet();
  const fit = new ResizeObserver((entries) => {
    for (const e of entries) {
      const gd = e.target, w = e.contentRect.width;
      if (w > 0 && window.Plotly && gd._fullLayout && Math.abs(gd._fullLayout.width - w) > 1) window.Plotly.Plots.resize(gd);
    }
  });
  let folded = false;
  const chooser = () => document.querySelector('#model-choose > .label-wrap');
  window.matchMedia(PHONE).addEventListener('change', (e) => {   // wide again: the model row shows, unfolded
    if (!e.matches && chooser() && !chooser().classList.contains('open')) chooser().click();
  });
  const watch = () => {
    document.querySelectorAll('.js-plotly-plot').forEach((gd) => {
      if (seen.has(gd) || !gd.on) return;
      seen.add(gd);
      fit.observe(gd);
      gd.on('plotly_afterplot', () => setTimeout(() => fitText(gd)));
      fitText(gd);
    });
    const settings = !folded && document.querySelector('#gen-settings > .label-wrap');
    if (settings && chooser()) {   // on a phone the prompt, the buttons and the story come first
      folded = true;
      if (window.matchMedia(PHONE).matches)
        [settings, chooser()].forEach((b) => b.classList.contains('open') && b.click());
    }
  };
  new MutationObserver(watch).observe(document.body, {childList: true, subtree: true});
  watch();

  document.addEventListener('click', (ev) => {
    // the toasts speak of the last action: the next one (a button, a tab, a story token) clears them
    if (ev.target.closest('button, [data-i]') && !ev.target.closest('.toast-wrap'))
      document.querySelectorAll('.toast-wrap [data-testid=toast-close]').forEach((b) => b.click());
    if (!ev.target.closest('#story [data-i]')) return;
    // a story token: follow the page to the Next token figure it opens, until that figure is drawn (a new title)
    const title = () => { const t = document.querySelector('#plot-next .gtitle'); return t ? t.textContent : ''; };
    const start = Date.now(), before = title();
    let drawn = 0, moved = false;
    const stop = () => { moved = true; };
    for (const type of ['wheel', 'touchmove', 'keydown']) window.addEventListener(type, stop, {once: true, passive: true});
    const follow = () => {
      const plot = document.querySelector('#plot-next');
      if (moved || Date.now() - start > 20000 || (drawn && Date.now() - drawn > 1000)) return;
      if (plot && plot.offsetParent !== null && plot.getBoundingClientRect().height > 0) {
        if (!drawn && title() && title() !== before) drawn = Date.now();
        const top = plot.getBoundingClientRect().top;
        if (Math.abs(top - 8) > 4) window.scrollTo({top: window.scrollY + top - 8, behavior: 'instant'});
      }
      setTimeout(follow, 100);
    };
    setTimeout(follow, 100);
  }, true);
}
""".replace("__PAGE_CSS__", json.dumps(PAGE_CSS))
