"""A real browser (Playwright driving Debian's headless Chromium) against the launched app with the embedded model.

Screenshots land in SWAA_ARTIFACTS (default test-artifacts/) for people to look at.
"""

from __future__ import annotations

import re

import pytest
from helpers.browser import wait_until_ready

pytestmark = [pytest.mark.browser, pytest.mark.embedded]

RUN_S = 600  # three columns on a busy 2-core CPU


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    yield page
    context.close()


def test_default_comparison_streams_columns_and_draws_plots(page, app_url, artifacts):
    from playwright.sync_api import expect

    page.goto(app_url)
    wait_until_ready(page)
    page.screenshot(path=str(artifacts / "01-open.png"), full_page=True)

    page.click("#swaa-run")
    board = page.locator("#swaa-board")
    expect(board.locator('[data-testid="verdict"]')).to_have_count(3, timeout=RUN_S * 1000)
    columns = board.locator("section.swaa-col")
    expect(columns).to_have_count(3)
    expect(columns.nth(0)).to_contain_text("Full attention")
    expect(columns.nth(1)).to_contain_text("SWA only (W=256)")
    for i in range(3):
        output = columns.nth(i).locator('[data-testid="output"]').inner_text()
        assert output.strip(), f"column {i} shows no generated text"
        metrics = columns.nth(i).locator('[data-testid="metrics"]').inner_text()
        for name in ("time to first token", "decode speed", "answer time", "KV cache"):
            assert name in metrics
        assert re.search(r"\d", metrics)
    expect(page.locator("#swaa-summary")).to_contain_text("What SWAA saved")

    # Plotly draws into SVG: one horizontal bar per column and stage.
    expect(page.locator("#swaa-latency .main-svg").first).to_be_visible(timeout=60_000)
    assert page.locator("#swaa-latency g.point").count() == 6
    page.screenshot(path=str(artifacts / "02-compare.png"), full_page=True)
    # The README's picture: the page down to the latency bars (copied to assets/screenshot.png when it looks right).
    box = page.locator("#swaa-latency").bounding_box()
    page.screenshot(
        path=str(artifacts / "readme-screenshot.png"),
        clip=dict(x=0, y=0, width=1440, height=box["y"] + box["height"] + 16),
        full_page=True,
    )

    page.get_by_role("tab", name="Why: attention & masks").click()
    expect(page.locator("#swaa-attention .main-svg").first).to_be_visible(timeout=RUN_S * 1000)
    expect(page.locator("#swaa-attention")).to_contain_text("Layer 0", timeout=RUN_S * 1000)
    expect(page.locator("#swaa-masks g.hm")).to_have_count(3)  # one mask picture per column
    expect(page.locator("#swaa-attention g.hm")).to_have_count(2)  # FA and SWAA side by side
    page.screenshot(path=str(artifacts / "03-why.png"), full_page=True)

    page.get_by_role("tab", name="Guided tour").click()
    page.get_by_role("button", name="Next ▶").click()
    expect(page.get_by_text("2 · SWA in prefill, full attention in decode")).to_be_visible()
    page.screenshot(path=str(artifacts / "04-tour.png"))
    assert not page.errors, page.errors


def test_shared_link_restores_the_settings(page, app_url, artifacts):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/?w=128&k=4&fal=none&fad=off&len=640&depth=0.5&seed=3")
    wait_until_ready(page)
    config = page.locator("#swaa-config")
    expect(config).to_contain_text('"sliding_window_size": 128')
    expect(config).to_contain_text('"keep_first": 4')
    expect(config).to_contain_text('"force_fa_decode": false')
    page.locator("#swaa-share").get_by_text("Share & export").click()
    link = page.locator("#swaa-share-link textarea, #swaa-share-link input").first
    expect(link).to_have_value(re.compile(r"w=128"))
    value = link.input_value()
    for part in ("k=4", "fal=none", "fad=off", "len=640", "depth=0.5", "seed=3"):
        assert part in value
    assert value.startswith(app_url)
    page.screenshot(path=str(artifacts / "05-shared-link.png"), full_page=True)
    assert not page.errors, page.errors


def test_typed_text_survives_a_reload(page, app_url):
    from playwright.sync_api import expect

    page.goto(app_url)
    wait_until_ready(page)
    page.get_by_label("Your text (paste, upload or example)").check()
    page.locator("#swaa-document textarea").fill("The harbour master's boat is painted teal.")
    page.locator("#swaa-question textarea").fill("What colour is the boat?")
    page.wait_for_timeout(1500)  # the browser stores the text after the change event
    page.reload()
    wait_until_ready(page)
    expect(page.locator("#swaa-document textarea")).to_have_value("The harbour master's boat is painted teal.")
    expect(page.locator("#swaa-question textarea")).to_have_value("What colour is the boat?")


def test_a_failed_load_leaves_the_page_usable(page, app_url, artifacts):
    from playwright.sync_api import expect

    from app.sidebar.model import model_choices
    from swaa_core.models.registry import DEFAULT_MODEL

    page.goto(app_url)
    wait_until_ready(page)
    model = page.locator("#swaa-model input")
    model.fill("does-not-exist/nope-model")
    model.press("Enter")
    page.get_by_role("button", name="Load model").click()
    toast = page.locator(".toast-body").filter(has_text="does-not-exist/nope-model")
    expect(toast).to_contain_text("Still using smollm2-135m", timeout=120_000)
    # The dropdown is back on the model in use; its facts and every control are intact, with no error badge.
    default_title = dict((name, title) for title, name in model_choices())[DEFAULT_MODEL]
    expect(model).to_have_value(default_title)
    expect(page.locator("#swaa-facts")).to_contain_text("30 layers")
    expect(page.get_by_label("Window size W", exact=False).first).to_be_visible()
    expect(page.locator(".error")).to_have_count(0)
    page.screenshot(path=str(artifacts / "06-failed-load.png"), full_page=True)
    assert not page.errors, page.errors


def test_a_binary_upload_keeps_the_text(page, app_url, artifacts, tmp_path):
    from playwright.sync_api import expect

    page.goto(app_url)
    wait_until_ready(page)
    page.get_by_label("Your text (paste, upload or example)").check()
    mine = "My own notes: 東京の猫は三匹。 🐈 مرحبا"
    page.locator("#swaa-document textarea").fill(mine)
    binary = tmp_path / "notes.txt"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    page.locator("input[type=file]").first.set_input_files(str(binary))
    toast = page.locator(".toast-body").filter(has_text="notes.txt is a binary file")
    expect(toast).to_be_visible(timeout=60_000)
    expect(page.locator("#swaa-document textarea")).to_have_value(mine)
    page.screenshot(path=str(artifacts / "07-bad-upload.png"), full_page=True)

    good = tmp_path / "letter.md"
    good.write_text("Dear Ana, the key is under the blue pot. 🔑", encoding="utf-8")
    page.locator("input[type=file]").first.set_input_files(str(good))
    expect(page.locator("#swaa-document textarea")).to_have_value("Dear Ana, the key is under the blue pot. 🔑")
    assert not page.errors, page.errors


# The width a dropdown's text may take before it runs under the arrow, and the given texts wider than that, each
# measured in the box's own font.
_TOO_WIDE_JS = """([input, texts]) => {
  const icon = input.parentElement.querySelector('.icon-wrap');
  const box = input.getBoundingClientRect();
  const room = (icon ? icon.getBoundingClientRect().left : box.right) - box.left - 4;
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = getComputedStyle(input).font;
  return texts.filter(text => ctx.measureText(text).width > room);
}"""


def _too_wide(page, box, texts: list[str]) -> list[str]:
    return page.evaluate(_TOO_WIDE_JS, [box.element_handle(), texts])


def test_dropdown_choices_fit_their_boxes(page, app_url, artifacts):
    """On a 1400 px screen every choice of the page's dropdowns shows whole, and so do the column names the
    attention tab offers after a run (every paper recipe at the default window, with sinks)."""
    from playwright.sync_api import expect

    from swaa_core.eval.recipes import list_recipes, recipe_label, resolve_recipe

    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(app_url)
    wait_until_ready(page)
    for label in ("Model", "Recipe preset", "Task"):
        box = page.get_by_label(label, exact=True)
        box.click()
        options = page.locator(f"#{box.get_attribute('aria-controls')} [role=option]")
        expect(options.first).to_be_visible()
        choices = [options.nth(i).get_attribute("aria-label") for i in range(options.count())]
        assert len(choices) > 2 and _too_wide(page, box, choices) == [], label
        page.keyboard.press("Escape")
    page.screenshot(path=str(artifacts / "08-sidebar-1400.png"), full_page=True)
    page.get_by_role("tab", name="Why: attention & masks").click()
    column = page.get_by_label("SWAA column", exact=True)
    expect(column).to_be_visible()
    names = [recipe_label(r, resolve_recipe(r.name, 30, window=256)) for r in list_recipes() if r.sliding]
    assert _too_wide(page, column, names) == []
    assert not page.errors, page.errors


@pytest.mark.parametrize("typed", ["-5", "0", "99999"])
def test_a_refused_window_never_runs_and_the_last_valid_value_stays(page, app_url, capfd, typed):
    """Reference: the value the page had before (256, the default). Gradio's own check raised in every event (two
    tracebacks) and the browser then clamped the number, so the run went ahead with W=8."""
    from playwright.sync_api import expect

    page.goto(app_url)
    wait_until_ready(page)
    capfd.readouterr()
    box = page.locator("input[aria-label='number input for Window size W']")
    box.fill(typed)
    box.press("Enter")
    expect(page.locator(".toast-body").filter(has_text="Window size W takes 8 to 8192")).to_have_count(
        1, timeout=30_000
    )
    expect(box).to_have_value("256", timeout=30_000)
    page.click("#swaa-run")
    expect(page.locator("#swaa-board")).to_contain_text("W=256", timeout=60_000)
    page.click("#swaa-stop")
    assert "W=8)" not in page.locator("#swaa-board").inner_text()
    assert "Traceback" not in capfd.readouterr().err
