"""The page at phone, tablet and laptop widths (issue 30), measured in a real browser (Playwright driving headless
Chromium) on the launched app after a comparison and the smallest real sweeps of the embedded model: nothing wider
than the screen outside a scroll box, every plot inside its box with its labels whole, the Run button on the first
screen of a phone, table headers broken only between words, dropdown text clear of its arrow, and body text at WCAG
AA contrast in the light and the dark theme.

Every check reads what the browser rendered (bounding boxes, line boxes of text ranges, computed colours), so it
holds for panels, plots and tables added later. Screenshots of every tab at every width land in SWAA_ARTIFACTS
(default test-artifacts/), under layout/.
"""

from __future__ import annotations

import re

import pytest
from helpers.browser import wait_until_ready

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

WIDTHS = (390, 768, 1400)
PHONE = {"width": 390, "height": 844}  # an iPhone 12-14 screen in CSS pixels
TABS = {"why": "Why: attention & masks", "sweeps": "Recipes & needles"}  # the tabs fill() drives
SWEEP_RECIPES = ("full", "swa")  # the smallest sweeps: two recipes, one sample, the shortest length
RUN_S = 600  # every run below on a busy 2-core CPU
AA_BODY, AA_LARGE = 4.5, 3.0  # WCAG 2.x 1.4.3 contrast minimums: body text, large text (24 px, or 18.66 px bold)


def _tick_only(page, label: str, keep: set[str]) -> None:
    """Leave only ``keep`` ticked in the checkbox group labelled ``label``."""
    group = page.locator(".block:visible").filter(has=page.get_by_text(label, exact=True))
    group = group.filter(has=page.locator("input[type=checkbox]")).last
    boxes = group.locator("input[type=checkbox]")
    for i in range(boxes.count()):
        box = boxes.nth(i)
        name = group.locator("label").nth(i).inner_text().strip()
        box.set_checked(name in keep)


def _set_number(page, label: str, value: int) -> None:
    box = page.locator(f'input[aria-label="number input for {label}"]:visible')
    box.fill(str(value))
    box.press("Enter")


def fill(page) -> None:
    """A comparison (board, summary table, latency bars, attention maps, masks), then the smallest real recipe
    sweep (plot and table), needle sweep (heatmap) and decode-speed curve: every plot and table the app draws."""
    from playwright.sync_api import expect

    from app.sidebar.strategy import recipe_choices

    labels = {name: title for title, name in recipe_choices()}
    wait_until_ready(page)
    page.click("#swaa-run")
    expect(page.locator('#swaa-board [data-testid="verdict"]')).to_have_count(3, timeout=RUN_S * 1000)
    expect(page.locator("#swaa-summary table")).to_be_visible()

    page.get_by_role("tab", name=TABS["sweeps"]).click()
    _tick_only(page, "Recipes", {labels[r] for r in SWEEP_RECIPES})
    _set_number(page, "Samples per recipe", 1)
    _set_number(page, "Length (tokens)", 256)
    page.get_by_role("button", name="Run recipe sweep").click()
    expect(page.get_by_text("Sweep results", exact=True)).to_be_visible(timeout=RUN_S * 1000)
    _tick_only(page, "Lengths (tokens)", {"256"})
    _set_number(page, "Depths (evenly from 0 to 1)", 2)
    page.get_by_role("button", name="Run needle sweep").click()
    expect(page.locator("#swaa-heatmap g.hm")).to_have_count(2, timeout=RUN_S * 1000)
    _tick_only(page, "Prompt lengths (tokens)", {"256"})
    page.get_by_role("button", name="Measure decode speed").click()
    expect(page.locator("#swaa-decode-speed g.trace.scatter")).to_have_count(2, timeout=RUN_S * 1000)
    page.get_by_role("tab", name=TABS["why"]).click()
    expect(page.locator("#swaa-attention g.hm")).to_have_count(2, timeout=RUN_S * 1000)


@pytest.fixture(scope="module")
def filled(browser, app_url):
    """One page for the whole module, filled with every plot and table (see fill); the tests then move it
    between widths and tabs."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(app_url)
    fill(page)
    yield page
    assert not page.errors, page.errors
    context.close()


def _tabs(page) -> list[str]:
    """The names of the page's tabs, whatever tabs it has (one added later is checked too)."""
    return page.locator('#swaa-tabs button[role="tab"]').all_inner_texts()


def _show(page, width: int, tab: str) -> None:
    """The page at ``width`` on the tab named ``tab``, scrolled to the top, after Plotly has followed the resize."""
    page.set_viewport_size({"width": width, "height": 900})
    page.get_by_role("tab", name=tab, exact=True).click()
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(400)  # Plotly's responsive resize runs on the window's resize event


def _each_tab(page, width: int, js: str, shots=None) -> dict[str, list]:
    """``js`` evaluated on every tab at ``width``: {tab: what it found}, tabs where it found nothing left out.
    With ``shots`` (a folder), a whole-page screenshot of each tab lands there as <tab>-<width>.png."""
    found = {}
    for tab in _tabs(page):
        _show(page, width, tab)
        if shots:
            shots.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^a-z0-9]+", "-", tab.split(":")[0].lower()).strip("-")
            page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
        result = page.evaluate(js)
        if result:
            found[tab] = result
    return found


# Elements whose box reaches past the viewport's edges, unless an ancestor scrolls sideways (a scroll box). Only the
# outermost such element is named; the document itself must not scroll sideways either.
_WIDER_THAN_VIEWPORT_JS = """() => {
  const vw = document.documentElement.clientWidth;
  const inScrollBox = el => {
    for (let a = el.parentElement; a; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === 'auto' || o === 'scroll') return true;
    }
    return false;
  };
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
  const wide = new Set(), out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (!el.checkVisibility({visibilityProperty: true})) continue;
    const r = el.getBoundingClientRect();
    // wholly left of or above the page: out of reach of scrolling, so out of sight (Plotly's text-measuring SVG)
    if (r.width < 2 || r.height < 2 || r.right <= 0 || r.bottom <= 0) continue;
    if ((r.right <= vw + 1 && r.left >= -1) || inScrollBox(el)) continue;
    wide.add(el);
    if (!wide.has(el.parentElement)) out.push(`${name(el)} spans ${Math.round(r.left)}..${Math.round(r.right)} px`);
  }
  const page = document.documentElement.scrollWidth;
  if (page > vw + 1) out.push(`the page scrolls sideways: ${page} px wide in a ${vw} px viewport`);
  return out.slice(0, 8);
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_nothing_is_wider_than_the_viewport_outside_a_scroll_box(filled, width, artifacts):
    """Also leaves the screenshots of every tab at this width in the artifacts, under layout/."""
    assert _each_tab(filled, width, _WIDER_THAN_VIEWPORT_JS, artifacts / "layout") == {}


# Every drawn Plotly figure: its SVG within its gr.Plot box; its titles, axis titles, annotations (subplot titles
# among them) and legend whole inside the SVG; no two of those texts overlapping; the plotting area (all subplots
# together) at least half the SVG's width, so neither the legend nor the margins eat the plot.
_PLOTS_JS = """() => {
  const out = [];
  const inside = (r, box) => r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1 &&
    r.bottom <= box.bottom + 1;
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 1 &&
    Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 1;
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    if (!plot.checkVisibility()) continue;
    const block = plot.closest('.block') || plot.parentElement;
    const where = (block.id || 'a plot') + ': ';
    const svg = plot.querySelector('svg.main-svg').getBoundingClientRect();
    const box = block.getBoundingClientRect();
    if (svg.left < box.left - 1 || svg.right > box.right + 1)
      out.push(where + `SVG ${Math.round(svg.width)} px wide in a ${Math.round(box.width)} px box`);
    const texts = [...new Set(plot.querySelectorAll('text[class*="gtitle"], [class^="g-x"][class$="title"] text, ' +
      '[class^="g-y"][class$="title"] text, .annotation-text, .legendtext, .cbtitle text'))]
      .filter(t => t.textContent.trim()).map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
    for (const [text, r] of texts)
      if (!inside(r, svg)) out.push(where + `"${text}" is cut off by the figure's edge`);
    const labels = texts.filter(([, r]) => r.width > 0);
    for (let i = 0; i < labels.length; i++)
      for (let j = i + 1; j < labels.length; j++)
        if (overlap(labels[i][1], labels[j][1])) out.push(where + `"${labels[i][0]}" overlaps "${labels[j][0]}"`);
    const areas = [...plot.querySelectorAll('.draglayer .nsewdrag')].map(d => d.getBoundingClientRect());
    if (areas.length) {
      const width = Math.max(...areas.map(a => a.right)) - Math.min(...areas.map(a => a.left));
      if (width < 0.5 * svg.width)
        out.push(where + `the plotting area is ${Math.round(width)} of ${Math.round(svg.width)} px`);
    }
  }
  return out;
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_every_plot_fits_its_box_with_its_labels_whole(filled, width):
    assert _each_tab(filled, width, _PLOTS_JS) == {}


# Every word of every visible table header: on one line (a word broken across lines has two line boxes) and
# inside its cell (not cut off or hidden under an ellipsis).
_HEADER_WORDS_JS = """() => {
  const out = [];
  for (const th of document.querySelectorAll('th')) {
    if (!th.checkVisibility({visibilityProperty: true})) continue;
    const cell = th.getBoundingClientRect();
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.parentElement.checkVisibility({visibilityProperty: true})) continue;
      for (const m of node.data.matchAll(/\\S+/g)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const lines = [...range.getClientRects()].filter(r => r.width > 0);
        const r = range.getBoundingClientRect();
        if (lines.length > 1) out.push(`"${m[0]}" in "${th.innerText.trim()}" breaks over ${lines.length} lines`);
        else if (r.right > cell.right + 1 || r.left < cell.left - 1)
          out.push(`"${m[0]}" in "${th.innerText.trim()}" runs out of its cell`);
      }
    }
  }
  return out;
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_table_headers_break_only_between_words(filled, width):
    found = _each_tab(filled, width, _HEADER_WORDS_JS)
    assert found == {}
    # the check saw the tables it is about: the comparison's summary and the sweep's results
    _show(filled, width, "Compare")
    assert filled.locator("#swaa-summary th").count() > 3
    _show(filled, width, TABS["sweeps"])
    assert filled.locator("th").filter(has_text="accuracy").count() >= 1


# Every dropdown's text stops before its arrow: the input's content box (its box less its right padding) ends left
# of the arrow icon, so a long choice is cut short instead of running under the arrow.
_DROPDOWN_JS = """() => {
  const out = [];
  for (const icon of document.querySelectorAll('.icon-wrap')) {
    const input = icon.parentElement.querySelector('input');
    if (!input || !input.checkVisibility()) continue;
    const box = input.getBoundingClientRect();
    const text = box.right - parseFloat(getComputedStyle(input).paddingRight);
    const arrow = icon.getBoundingClientRect().left;
    if (text > arrow + 1) out.push(`"${input.value}": text runs ${Math.round(text - arrow)} px under the arrow`);
  }
  return out;
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_dropdown_text_stops_before_its_arrow(filled, width):
    assert _each_tab(filled, width, _DROPDOWN_JS) == {}


# Contrast of every visible text node (outside plots' SVG and disabled controls) against what lies behind it:
# colours as the browser computed them (any CSS colour syntax, read back through a canvas pixel), the background
# composed from the ancestors' background colours (white behind the page), a gradient background judged by its
# worst stop, the text's alpha and its ancestors' opacity blended in. WCAG 2.x relative luminance and ratio.
_CONTRAST_JS = """([body, large]) => {
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 1;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const cache = new Map();
  const rgba = css => {
    if (!cache.has(css)) {
      ctx.clearRect(0, 0, 1, 1);
      ctx.fillStyle = '#000';
      ctx.fillStyle = css;
      ctx.fillRect(0, 0, 1, 1);
      const d = ctx.getImageData(0, 0, 1, 1).data;
      cache.set(css, [d[0], d[1], d[2], d[3] / 255]);
    }
    return cache.get(css);
  };
  const over = (top, under) => [0, 1, 2].map(i => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const lum = c => {
    const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  // What may lie behind an element's text: its background colour over what lies behind it, and a gradient's every
  // stop over that (a stop that is transparent shows what is below).
  const behind = new Map();
  const backgrounds = el => {
    if (!el) return [[255, 255, 255, 1]];
    if (!behind.has(el)) {
      const style = getComputedStyle(el);
      const color = rgba(style.backgroundColor);
      let below = color[3] >= 1 ? [color] : backgrounds(el.parentElement).map(b => over(color, b));
      const stops = (style.backgroundImage.match(/(rgba?|color|oklch|oklab|lab|lch|hsla?)\\([^)]*\\)/g) || []).map(rgba);
      if (stops.length) below = below.flatMap(b => stops.map(stop => over(stop, b)));
      behind.set(el, below);
    }
    return behind.get(el);
  };
  const out = [], seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    const text = node.data.trim();
    if (!text || !el || el.closest('svg, [disabled], [aria-disabled="true"], script, style')) continue;
    if (!el.checkVisibility({visibilityProperty: true, opacityProperty: true})) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const box = range.getBoundingClientRect();
    if (box.width < 2 || box.height < 2) continue;
    const style = getComputedStyle(el);
    let alpha = 1;
    for (let a = el; a; a = a.parentElement) alpha *= parseFloat(getComputedStyle(a).opacity);
    const fg = rgba(style.color);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? large : body;
    for (const bg of backgrounds(el)) {
      const shown = over([fg[0], fg[1], fg[2], fg[3] * alpha], bg);
      const r = ratio(shown, bg);
      const key = `${text.slice(0, 40)}|${style.color}`;
      if (r < need && !seen.has(key)) {
        seen.add(key);
        out.push(`"${text.slice(0, 40)}" ${r.toFixed(2)}:1 (needs ${need}): ${style.color} on rgb(${bg.slice(0, 3).map(Math.round)})`);
      }
    }
  }
  return out;
}"""


def _dark(page, on: bool) -> None:
    """Gradio's dark theme is the class "dark" on <body> (what ?__theme=dark and a dark system setting do)."""
    page.evaluate("(on) => document.body.classList.toggle('dark', on)", on)


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("width", WIDTHS)
def test_body_text_contrast_meets_wcag_aa(filled, width, theme):
    _dark(filled, theme == "dark")
    try:
        found = _each_tab(filled, width, f"() => ({_CONTRAST_JS})([{AA_BODY}, {AA_LARGE}])")
    finally:
        _dark(filled, False)
    assert found == {}


def test_contrast_check_sees_faint_text(filled):
    """The contrast check can fail: a paragraph of #aaa on white (2.3:1) is reported, #595959 (7:1) is not."""
    _show(filled, 1400, "Compare")
    filled.evaluate("""() => {
      for (const [id, color] of [['swaa-faint', '#aaa'], ['swaa-dark', '#595959']]) {
        const p = document.createElement('p');
        p.id = id; p.textContent = 'test text ' + id; p.style.cssText = `color: ${color}; background: white`;
        document.querySelector('#swaa-board').append(p);
      }
    }""")
    try:
        found = filled.evaluate(f"() => ({_CONTRAST_JS})([{AA_BODY}, {AA_LARGE}])")
    finally:
        filled.evaluate("() => document.querySelectorAll('#swaa-faint, #swaa-dark').forEach(p => p.remove())")
    assert [line for line in found if "test text" in line] == [
        '"test text swaa-faint" 2.32:1 (needs 4.5): rgb(170, 170, 170) on rgb(255,255,255)'
    ]


def test_run_button_is_on_a_phones_first_screen(browser, app_url):
    """A fresh page at 390 x 844: Run and Stop are inside the first screen and nothing covers them."""
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(app_url)
        wait_until_ready(page)
        page.evaluate("() => window.scrollTo(0, 0)")
        for button in ("#swaa-run", "#swaa-stop"):
            box = page.locator(button).bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (button, box)
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            hit = page.evaluate("([s, x, y]) => document.querySelector(s).contains(document.elementFromPoint(x, y))",
                                [button, x, y])  # fmt: skip
            assert hit, f"{button} is covered at its centre"
    finally:
        context.close()
