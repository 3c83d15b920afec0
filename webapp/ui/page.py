"""The page's look: the theme, the CSS and the one script every page runs (app.LAUNCH hands them to launch())."""

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
.guide { color: var(--body-text-color-subdued); }
/* every tab stays reachable: Gradio moves the tabs that its hidden copy of the bar measures as too wide into a
   "..." menu; measured narrow, they all stay in the bar, which wraps onto a second line when it must */
.tab-container.visually-hidden button { padding: 0 !important; font-size: 1px !important; min-width: 0 !important; }
.tab-wrapper { height: auto !important; }
.tab-container[role=tablist] { flex-wrap: wrap !important; height: auto !important; row-gap: 2px; }
/* an error is said once, in its toast: no "Error" box over the event's outputs (it would hide them, the model
   picker included, until their next update); a figure whose redraw failed stays as it was */
[data-testid=status-tracker]:has(> .error) { display: none !important; }
/* at phone width a figure keeps a readable width and scrolls sideways instead of shrinking to slivers */
@media (max-width: 760px) {
  .explore-plot { overflow-x: auto !important; }
  .explore-plot .js-plotly-plot { min-width: 720px; }
}
"""
# Plotly draws a figure in a hidden tab 700 px wide (it cannot measure a hidden panel): whenever a figure's width
# changes (its tab is shown, the window resized) it is redrawn at the width it now has.
JS = """
() => {
  const seen = new WeakSet();
  const fit = new ResizeObserver((entries) => {
    for (const e of entries) {
      const gd = e.target, w = e.contentRect.width;
      if (w > 0 && window.Plotly && gd._fullLayout && Math.abs(gd._fullLayout.width - w) > 1) window.Plotly.Plots.resize(gd);
    }
  });
  const watch = () => document.querySelectorAll('.js-plotly-plot').forEach((gd) => {
    if (!seen.has(gd)) { seen.add(gd); fit.observe(gd); }
  });
  new MutationObserver(watch).observe(document.body, {childList: true, subtree: true});
  watch();
  // the toasts speak of the last action: the next one (a button, a tab, a story token) clears them
  document.addEventListener('click', (ev) => {
    if (!ev.target.closest('button, [data-i]') || ev.target.closest('.toast-wrap')) return;
    document.querySelectorAll('.toast-wrap [data-testid=toast-close]').forEach((b) => b.click());
  }, true);
}
"""
