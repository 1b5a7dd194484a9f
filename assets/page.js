() => {
  // Plotly follows the window's size (Gradio turns on its responsive config) but not a box that changes size on
  // its own: a tab shown for the first time (its plots were drawn while hidden, at Plotly's default 700 px), an
  // accordion opened, the sidebar moved below the tabs. Each plot is redrawn at its box's width when that changes.
  const seen = new WeakSet();
  const resized = new ResizeObserver((entries) => {
    for (const { target } of entries) {
      if (window.Plotly && target._fullLayout && target.offsetParent) window.Plotly.Plots.resize(target);
    }
  });
  let queued = false;
  const watch = () => {
    queued = false;
    for (const plot of document.querySelectorAll(".js-plotly-plot")) {
      if (!seen.has(plot)) {
        seen.add(plot);
        resized.observe(plot);
      }
    }
  };
  new MutationObserver(() => {
    if (!queued) {
      queued = true;
      requestAnimationFrame(watch);
    }
  }).observe(document.body, { childList: true, subtree: true });
  watch();
}
