"""The demo page at GET /, driven in a real browser (Debian's Chromium through Playwright) against a
real server: streaming text shows up before the non-streaming answer, Stop frees the server's slot,
429 and 401 are shown to the user, the layout holds on a phone-sized screen, and a thinking model's
thought is shown apart from its answer."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Route, expect, sync_playwright

from tests.conftest import ServerFactory
from tests.helpers import metrics, wait_until_idle

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
LONG_PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm at sea."
WAIT_MS = 60_000  # the longest any single wait may take: the model runs ~70 tokens/s on 2 CPU cores

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (`just test` installs Debian's chromium)"
)

OUTPUT = "[data-testid=streaming-output]"
WHOLE_OUTPUT = "[data-testid=non-streaming-output]"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context per test (its own localStorage), 1280x900 unless a test resizes it."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def text_of(page: Page, testid: str) -> str:
    return page.get_by_test_id(testid).text_content() or ""


def open_demo(page: Page, url: str, prompt: str = LONG_PROMPT, max_tokens: int = 120) -> None:
    page.goto(url)
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Max new tokens").fill(str(max_tokens))


def wait_text(page: Page, selector: str, min_chars: int = 1) -> None:
    page.wait_for_function(
        "([sel, n]) => (document.querySelector(sel).textContent || '').trim().length >= n",
        arg=[selector, min_chars],
        timeout=WAIT_MS,
    )


# Counts every change to the text of each output, to tell "piece by piece" from "all at once".
COUNT_TEXT_CHANGES = """() => {
  window.textChanges = {stream: 0, whole: 0};
  for (const [name, id] of [["stream", "streaming-output"], ["whole", "non-streaming-output"]]) {
    const node = document.querySelector(`[data-testid=${id}]`);
    new MutationObserver((records) => {
      window.textChanges[name] += records.filter((r) => r.type === "characterData").length;
    }).observe(node, {characterData: true, subtree: true});
  }
}"""


def wait_generation_over(page: Page) -> None:
    """Generate is enabled again once both requests have ended, one way or another."""
    page.wait_for_function("!document.querySelector('[data-testid=generate]').disabled", timeout=WAIT_MS)


def sse_content(body: str, field: str = "content") -> str:
    """The text of a chat completion stream: its deltas' ``field`` (content, reasoning_content), in order."""
    text = []
    for line in body.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(choice["delta"].get(field) or "")
    return "".join(text)


# Keeps a copy of each chat answer's body as the page receives it (a clone of the response: the page
# reads its own branch). Playwright cannot give a streamed fetch body back once the page cancelled it.
RECORD_ANSWERS = """() => {
  window.answers = [];
  const realFetch = window.fetch;
  window.fetch = async (url, init) => {
    const response = await realFetch(url, init);
    if (String(url).endsWith("/v1/chat/completions") && response.ok) {
      const stream = JSON.parse(init.body).stream;
      window.answers.push(response.clone().text().then((text) => ({ stream, text })));
    }
    return response;
  };
}"""


def test_streaming_text_arrives_before_the_whole_answer(page: Page, base_url: str) -> None:
    open_demo(page, base_url, max_tokens=120)
    page.wait_for_function(
        "document.querySelector('[data-testid=model-name]').textContent.trim() !== '…'", timeout=WAIT_MS
    )
    assert text_of(page, "model-name").strip()
    page.evaluate(COUNT_TEXT_CHANGES)
    page.evaluate(RECORD_ANSWERS)
    page.get_by_role("button", name="Generate").click()
    assert page.get_by_role("button", name="Stop").is_enabled()

    # The point of the demo: at some moment, streamed text is on screen while the other pane waits.
    page.wait_for_function(
        f"""() => document.querySelector('{OUTPUT}').textContent.trim().length > 0
                && document.querySelector('{WHOLE_OUTPUT}').textContent.trim().length === 0""",
        timeout=WAIT_MS,
    )
    assert page.get_by_test_id("non-streaming-waiting").is_visible()
    assert "Waiting for the whole answer" in text_of(page, "non-streaming-waiting")

    wait_generation_over(page)
    assert text_of(page, "streaming-output").strip()
    # Each pane shows exactly the text its answer carried. (Whether the two answers agree is the
    # server's batch invariance, which the batched-equality tests prove where it is promised.)
    answers = page.evaluate("Promise.all(window.answers)")
    assert len(answers) == 2
    by_mode = {a["stream"]: a["text"] for a in answers}
    assert text_of(page, "streaming-output") == sse_content(by_mode[True])
    whole = json.loads(by_mode[False])["choices"][0]["message"]["content"]
    assert text_of(page, "non-streaming-output") == whole
    for pane in ("streaming", "non-streaming"):  # this model does not think: no thought box at all
        expect(page.get_by_test_id(f"{pane}-thought")).to_be_hidden()
    assert not page.get_by_test_id("non-streaming-waiting").is_visible()
    assert page.get_by_role("button", name="Stop").is_disabled()
    for pane in ("streaming", "non-streaming"):
        assert text_of(page, f"{pane}-status").startswith("Done"), text_of(page, f"{pane}-status")
        for stat in ("ttft", "total", "tps", "tokens"):
            value = text_of(page, f"{pane}-{stat}")
            assert any(c.isdigit() for c in value), f"{pane}-{stat} is {value!r}"
        assert 1 <= int(text_of(page, f"{pane}-tokens")) <= 120
    assert any(c.isdigit() for c in text_of(page, "streaming-decode-tps"))
    # Without streaming the first text comes with the whole answer: its TTFT is its total time.
    assert text_of(page, "non-streaming-ttft") == text_of(page, "non-streaming-total")
    assert page.get_by_test_id("summary").is_visible()
    # The streaming pane grew piece by piece; the other got its text in one go.
    changes = page.evaluate("window.textChanges")
    assert changes["whole"] == 1, changes
    assert changes["stream"] >= 10, changes

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-page.png"), full_page=True)


def test_json_answer_streams_a_valid_object(page: Page, base_url: str) -> None:
    """The JSON preset sends response_format: each pane ends with an object valid for the schema, and
    the streaming pane built it piece by piece."""
    page.goto(base_url)
    page.get_by_label("Answer").select_option("person")
    assert "lighthouse keeper" in page.get_by_label("Prompt").input_value()  # the example prompt follows
    page.get_by_label("Max new tokens").fill("200")
    page.evaluate(COUNT_TEXT_CHANGES)
    page.get_by_role("button", name="Generate").click()
    wait_generation_over(page)
    for pane in ("streaming-output", "non-streaming-output"):
        person = json.loads(text_of(page, pane))
        assert set(person) == {"name", "age", "job", "hobbies"}, person
        assert isinstance(person["age"], int) and 0 <= person["age"] <= 120
        assert isinstance(person["hobbies"], list) and len(person["hobbies"]) <= 3
    assert page.evaluate("window.textChanges")["stream"] >= 5
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-page-json.png"), full_page=True)


# Records the streaming pane's state each time its thought grows: open or folded, its summary, and how
# much answer text was on screen then.
WATCH_THOUGHT = """() => {
  window.thoughtGrowth = [];
  const thought = document.querySelector("[data-testid=streaming-thought]");
  const answer = document.querySelector("[data-testid=streaming-output]");
  new MutationObserver((records) => {
    window.thoughtGrowth.push({
      pieces: records.filter((r) => r.type === "characterData").length,
      open: thought.open,
      label: thought.querySelector("summary").textContent,
      answer: answer.textContent.length,
    });
  }).observe(thought, {characterData: true, subtree: true});
}"""


def test_thinking_model_shows_its_thought_apart_from_the_answer(page: Page, r1_url: str) -> None:
    """On a DeepSeek-R1 distill's template every answer starts with a thought (closed by the server
    after 12 tokens): each pane shows it greyed and foldable above the answer, built from
    reasoning_content alone (the server sends the same text in reasoning too), never in the answer."""

    def steer(route: Route) -> None:
        # The stand-in model does not know its markers and may end inside its thought: ignore_eos
        # (llama.cpp's extension) makes it think until the budget closes the thought, then answer.
        body = route.request.post_data_json
        assert body is not None
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", steer)
    open_demo(page, r1_url, prompt="Say hello in one short sentence.", max_tokens=40)
    for pane in ("streaming", "non-streaming"):
        expect(page.get_by_test_id(f"{pane}-thought")).to_be_hidden()  # nothing before a thought comes
    page.evaluate(RECORD_ANSWERS)
    page.evaluate(WATCH_THOUGHT)
    page.get_by_role("button", name="Generate").click()
    wait_generation_over(page)

    # The streamed thought grew piece by piece, open, before any answer text arrived.
    growth = page.evaluate("window.thoughtGrowth")
    assert sum(g["pieces"] for g in growth) >= 3, growth
    assert growth[0] == {"pieces": growth[0]["pieces"], "open": True, "label": "Thinking…", "answer": 0}

    answers = page.evaluate("Promise.all(window.answers)")
    by_mode = {a["stream"]: a["text"] for a in answers}
    message = json.loads(by_mode[False])["choices"][0]["message"]
    expected = {
        "streaming": (sse_content(by_mode[True], "reasoning_content"), sse_content(by_mode[True])),
        "non-streaming": (message["reasoning_content"], message["content"]),
    }
    muted = page.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--muted').trim()")
    grey = "rgb({}, {}, {})".format(*bytes.fromhex(muted.removeprefix("#")))
    for pane, (thought_sent, answer_sent) in expected.items():
        assert text_of(page, f"{pane}-status").startswith("Done"), text_of(page, f"{pane}-status")
        box, text_box = page.get_by_test_id(f"{pane}-thought"), page.get_by_test_id(f"{pane}-thought-text")
        output = page.get_by_test_id(f"{pane}-output")
        thought, answer = text_of(page, f"{pane}-thought-text"), text_of(page, f"{pane}-output")
        assert thought.strip(), pane
        assert answer.strip(), pane
        assert (thought, answer) == (thought_sent, answer_sent), pane  # each read once, from one field
        assert thought.strip() not in answer
        # Apart from the answer, greyed, folded once the answer came, opened and folded by its summary.
        assert box.evaluate("(el) => el.tagName") == "DETAILS"
        assert not output.evaluate("(out, box) => out.contains(box)", box.element_handle())
        thought_color = text_box.evaluate("(el) => getComputedStyle(el).color")
        assert thought_color == grey
        assert thought_color != output.evaluate("(el) => getComputedStyle(el).color")
        assert box.locator("summary").text_content() == "Thought"
        expect(box).to_be_visible()
        expect(text_box).to_be_hidden()
        box.locator("summary").click()
        expect(text_box).to_be_visible()
        assert box.evaluate("(el) => el.open")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-page-thinking.png"), full_page=True)
    page.get_by_test_id("streaming-thought").locator("summary").click()
    expect(page.get_by_test_id("streaming-thought-text")).to_be_hidden()


def test_stop_aborts_both_requests_and_frees_the_slot(page: Page, start_server: ServerFactory) -> None:
    with start_server() as url:
        open_demo(page, url, max_tokens=900)
        page.get_by_role("button", name="Generate").click()
        wait_text(page, OUTPUT, 20)
        assert metrics(url)["tokenspout_requests_admitted"] == 2  # both requests are being served

        page.get_by_role("button", name="Stop").click()
        for pane in ("streaming", "non-streaming"):
            expect(page.get_by_test_id(f"{pane}-status")).to_contain_text("Stopped", timeout=WAIT_MS)
        wait_generation_over(page)
        assert page.get_by_role("button", name="Stop").is_disabled()
        assert text_of(page, "non-streaming-output") == ""

        stopped_at = text_of(page, "streaming-output")
        assert stopped_at.strip()
        idle = wait_until_idle(url, timeout=20)
        assert idle["tokenspout_requests_admitted"] == 0
        assert idle["tgi_batch_current_size"] == 0
        assert idle["tgi_queue_size"] == 0
        time.sleep(1.0)
        assert text_of(page, "streaming-output") == stopped_at  # the text stopped growing


def test_overloaded_server_shows_a_busy_message(page: Page, start_server: ServerFactory) -> None:
    with start_server("--max-concurrent-requests", "1") as url:
        open_demo(page, url, max_tokens=50)
        body = {
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": 900,
            "ignore_eos": True,  # llama.cpp's extension: the request cannot end early and free the slot
            "stream": True,
        }
        # Hold the only admitted slot with a streaming request that stays open while the page tries.
        with (
            httpx.Client(base_url=url, timeout=WAIT_MS / 1000) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            # Keep the iterator referenced: a discarded generator is closed, and closing it closes the
            # connection (httpcore), which cancels the request and frees the slot at once.
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert "chat.completion.chunk" in first
            assert metrics(url)["tokenspout_requests_admitted"] == 1

            page.get_by_role("button", name="Generate").click()
            wait_generation_over(page)
            for pane in ("streaming", "non-streaming"):
                status = text_of(page, f"{pane}-status")
                assert "The server is busy (overloaded): try again in 1 s" in status, status
                assert page.get_by_test_id(f"{pane}-status").get_attribute("data-state") == "busy"
            assert text_of(page, "streaming-output") == ""
            assert text_of(page, "non-streaming-output") == ""
            assert metrics(url)["tgi_request_failure{err=overloaded}"] == 2
            # The holding request was never disturbed: its stream goes on.
            assert next(line for line in lines if line).startswith("data:")
        # Leaving the block closed the holding request: the server cancels it and frees the slot.
        assert wait_until_idle(url, timeout=20)["tokenspout_requests_admitted"] == 0


def test_api_key_is_asked_for_then_sent(page: Page, start_server: ServerFactory) -> None:
    with start_server("--api-key", "sekrit") as url:
        open_demo(page, url, prompt="Say hello in one short sentence.", max_tokens=24)
        key = page.get_by_test_id("api-key")
        assert not key.is_visible()

        page.get_by_role("button", name="Generate").click()
        wait_generation_over(page)
        for pane in ("streaming", "non-streaming"):
            assert "needs an API key" in text_of(page, f"{pane}-status")
        assert key.is_visible()
        assert key.get_attribute("type") == "password"
        assert text_of(page, "streaming-output") == ""

        key.fill("sekrit")
        page.get_by_role("button", name="Generate").click()
        wait_generation_over(page)
        assert text_of(page, "streaming-status").startswith("Done"), text_of(page, "streaming-status")
        assert text_of(page, "non-streaming-status").startswith("Done")
        assert text_of(page, "streaming-output").strip()
        assert text_of(page, "non-streaming-output").strip()
        assert page.evaluate("localStorage.getItem('tokenspout.apiKey')") == "sekrit"
        # With the key known, the header names the model (GET /v1/models needs the key too).
        page.wait_for_function(
            "document.querySelector('[data-testid=model-name]').textContent.trim() !== '…'",
            timeout=WAIT_MS,
        )

        # A reload keeps the key (localStorage): the field is shown and filled at once.
        page.reload()
        assert page.get_by_test_id("api-key").input_value() == "sekrit"


def test_narrow_screen_stacks_the_panes(page: Page, base_url: str) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    open_demo(page, base_url, max_tokens=40)
    page.get_by_role("button", name="Generate").click()
    wait_generation_over(page)
    assert text_of(page, "streaming-output").strip()

    whole = page.get_by_test_id("non-streaming-pane").bounding_box()
    streaming = page.get_by_test_id("streaming-pane").bounding_box()
    assert whole is not None
    assert streaming is not None
    assert whole["y"] + whole["height"] <= streaming["y"]  # one under the other
    assert abs(whole["x"] - streaming["x"]) < 1
    assert whole["width"] <= 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-page-narrow.png"), full_page=True)


def test_stream_parsing_edge_cases_and_errors_are_shown(page: Page, base_url: str) -> None:
    """Answers crafted in the browser (no model): CRLF line endings, ``data:`` without a space,
    multi-byte characters, comments, then an error event mid-stream; a 500 for the other request."""

    def chunk(content: str) -> str:
        choice = {"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
        return json.dumps({"object": "chat.completion.chunk", "choices": [choice], "usage": None})

    error = {"error": {"message": "the engine failed", "type": "server_error", "param": None, "code": None}}
    events = [
        ": a comment line\r\n\r\n",
        f"data: {chunk('Hé ')}\r\n\r\n",
        f"data:{chunk('🌊 <b>waves</b>')}\n\n",
        f"data: {json.dumps(error)}\n\n",
        "data: [DONE]\n\n",
    ]

    def answer(route: Route) -> None:
        body = route.request.post_data_json
        assert body is not None
        if body["stream"]:
            assert body["stream_options"] == {"include_usage": True}
            route.fulfill(status=200, content_type="text/event-stream", body="".join(events))
        else:
            route.fulfill(status=500, content_type="application/json", json=error)

    page.route("**/v1/chat/completions", answer)
    open_demo(page, base_url, max_tokens=10)
    page.get_by_role("button", name="Generate").click()
    wait_generation_over(page)
    assert text_of(page, "streaming-output") == "Hé 🌊 <b>waves</b>"  # text, never parsed as HTML
    assert page.locator("[data-testid=streaming-output] b").count() == 0
    assert text_of(page, "streaming-status") == "Error during generation: the engine failed"
    assert text_of(page, "non-streaming-status") == "Error 500: the engine failed"
    assert text_of(page, "non-streaming-output") == ""
