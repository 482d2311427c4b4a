"""The /ui/ chat page in a real headless Chromium against a running daemon.

Uses Debian's ``chromium`` and ``chromium-driver`` packages (/usr/bin/chromium, /usr/bin/chromedriver)
driven by Selenium; nothing is downloaded. Without them the test fails and says how to install them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 30

RULES = [
    {
        "when": "run",
        "steps": [
            {"call": "shell.run", "params": {"command": "echo browser-ok"}},
            {"say": "All done: {result}"},
        ],
    },
    {"when": "", "steps": [{"say": "You said: {message}"}]},
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the browser test needs Debian's chromium packages "
            "(apt-get install -y chromium chromium-driver, or `make system-deps`)."
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager fetch a browser or a driver: the system ones are given explicitly.
    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="digitorn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def ui_app(daemon, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ui-app")
    workspace = root / "ws"
    workspace.mkdir()
    manifest = root / "uidemo.yaml"
    manifest.write_text(
        "schema_version: 2\n"
        "app: {app_id: uidemo, name: UI Demo}\n"
        "agents:\n"
        "  - id: assistant\n"
        "    brain:\n"
        "      provider: scripted\n"
        f"      config: {{rules: {_flow(RULES)}}}\n"
        "tools:\n"
        f"  modules: {{filesystem: {{workspace: '{workspace}'}}, shell: {{}}}}\n"
        "  capabilities:\n"
        "    default_policy: approve\n"
        "    grant: [{module: filesystem}]\n"
        "    approve: [{module: shell, reason: the browser test approves shell commands}]\n"
    )
    daemon.deploy(Path(manifest), force=True)
    return "uidemo"


def _flow(value) -> str:
    import json

    return json.dumps(value)  # JSON is YAML flow syntax


def _wait(driver, condition, message: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition)
    except TimeoutException:
        log = driver.find_element("id", "log").text
        status = driver.find_element("id", "status").text
        raise AssertionError(f"{message}\nstatus: {status}\nlog:\n{log}") from None


def _entries(driver, entry_type: str):
    return driver.find_elements("css selector", f"#log .entry-{entry_type}")


def test_page_is_public_html_with_a_strict_csp(daemon):
    response = httpx.get(f"{daemon.url}/ui/", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "<script src=\"/ui/assets/chat.js\"" in response.text
    script = httpx.get(f"{daemon.url}/ui/assets/chat.js", timeout=10)
    assert script.status_code == 200 and "EventSource" in script.text
    assert not re.search(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write", script.text)
    posted = httpx.post(f"{daemon.url}/ui/", data={"x": "1"}, timeout=10)
    assert posted.status_code == 405 and posted.json()["error_code"] == "METHOD_NOT_ALLOWED"
    missing = httpx.get(f"{daemon.url}/ui/assets/../settings.py", timeout=10)
    assert missing.status_code == 404 and missing.json()["success"] is False


def test_chat_with_tool_call_approval_and_answer(daemon, browser, ui_app):
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(f"{daemon.url}/ui/")
    driver.find_element("id", "api-key").send_keys(daemon.key)
    driver.find_element("id", "key-save").click()
    _wait(
        driver,
        lambda d: any(o.get_attribute("value") == ui_app for o in Select(d.find_element("id", "app-select")).options),
        "the app list never showed the deployed app",
    )
    Select(driver.find_element("id", "app-select")).select_by_value(ui_app)
    session = driver.find_element("id", "session-id")
    session.clear()
    session.send_keys("browser-1")
    driver.find_element("id", "session-open").click()
    _wait(driver, lambda d: d.find_element("id", "message").is_enabled(), "the composer never became usable")

    driver.find_element("id", "message").send_keys("please run the check")
    driver.find_element("id", "send").click()

    approve = _wait(
        driver,
        lambda d: next(iter(d.find_elements("css selector", "#log .entry-approval_request button.approve")), None),
        "no approval request appeared",
    )
    request_text = _entries(driver, "approval_request")[0].text
    assert "shell.run" in request_text and "echo browser-ok" in request_text
    assert not _entries(driver, "done"), "the turn finished before the approval was given"
    approve.click()

    _wait(driver, lambda d: _entries(d, "done"), "no final answer appeared after approving")
    calls = [e.text for e in _entries(driver, "tool_call")]
    assert any("shell.run" in text and "echo browser-ok" in text for text in calls), calls
    results = [e.text for e in _entries(driver, "result")]
    assert any("browser-ok" in text for text in results), results
    answer = _entries(driver, "done")[-1].text
    assert "All done" in answer and "browser-ok" in answer
    decision = driver.find_element("css selector", "#log .entry-approval_request .decision").text
    assert "approved" in decision
    assert all(not b.is_enabled() for b in driver.find_elements("css selector", "#log .entry-approval_request button"))

    # The same answer is in the session's history on the server.
    history = daemon.client.get(f"/api/apps/{ui_app}/sessions/browser-1/history").json()["data"]["messages"]
    assert any("All done" in (m.get("content") or "") for m in history)

    # The key was kept for the next visit, and nothing the page loaded was blocked by its CSP.
    assert driver.execute_script("return localStorage.getItem('digitorn.apiKey')") == daemon.key
    blocked = [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert not blocked, blocked


def test_content_is_escaped_not_rendered(daemon, browser, ui_app):
    driver = browser
    driver.get(f"{daemon.url}/ui/")  # key comes back from localStorage
    session = _wait(driver, lambda d: d.find_element("id", "session-id"), "no session field")
    _wait(driver, lambda d: d.find_element("id", "app-select").get_attribute("value") == ui_app, "app not reloaded")
    session.clear()
    session.send_keys("browser-2")
    driver.find_element("id", "session-open").click()
    _wait(driver, lambda d: d.find_element("id", "message").is_enabled(), "the composer never became usable")
    payload = '<img id="injected" src="x"><b id="bold">hi</b>'
    driver.find_element("id", "message").send_keys(payload)
    driver.find_element("id", "send").click()
    _wait(driver, lambda d: _entries(d, "done"), "no answer to the markup message")
    assert _entries(driver, "done")[-1].text.endswith(f"You said: {payload}")
    assert not driver.find_elements("id", "injected")
    assert not driver.find_elements("id", "bold")


def _admin_web(daemon) -> httpx.Client:
    """A superuser made with `manage.py createsuperuser`, logged in to the daemon's admin."""
    password = "browser-test-" + os.urandom(8).hex()
    created = daemon.create_superuser("ui-ops", "o@example.com", password)
    assert created.returncode == 0, created.stderr
    web = httpx.Client(base_url=daemon.url, timeout=30.0)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', web.get("/admin/login/").text).group(1)
    login = web.post("/admin/login/", data={"csrfmiddlewaretoken": token, "username": "ui-ops", "password": password})
    assert login.status_code == 302, login.text[:500]
    return web


def test_approval_given_in_the_admin_resumes_the_browser_turn(daemon, browser, ui_app):
    driver = browser
    driver.get(f"{daemon.url}/ui/")
    _wait(driver, lambda d: d.find_element("id", "app-select").get_attribute("value") == ui_app, "app not reloaded")
    session = driver.find_element("id", "session-id")
    session.clear()
    session.send_keys("browser-admin")
    driver.find_element("id", "session-open").click()
    _wait(driver, lambda d: d.find_element("id", "message").is_enabled(), "the composer never became usable")
    driver.find_element("id", "message").send_keys("run it for the operator")
    driver.find_element("id", "send").click()
    entry = _wait(driver, lambda d: next(iter(_entries(d, "approval_request")), None), "no approval request appeared")
    request_id = entry.get_attribute("data-request-id")
    assert request_id

    web = _admin_web(daemon)
    try:
        listing = web.get("/admin/approvals/approvalrequest/", params={"q": request_id})
        pk = re.search(r'/admin/approvals/approvalrequest/(\d+)/change/', listing.text).group(1)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', listing.text).group(1)
        decided = web.post(
            "/admin/approvals/approvalrequest/",
            data={"csrfmiddlewaretoken": token, "action": "approve", "_selected_action": [pk], "index": "0"},
            follow_redirects=True,
        )
        assert f"Approved: {request_id}." in decided.text, decided.text[-2000:]
    finally:
        web.close()

    # The decision reaches the page over the stream (approval_resolved) and the turn finishes.
    _wait(driver, lambda d: d.find_elements("css selector", "#log .entry-approval_request .decision"),
          "the admin's decision never reached the page")
    assert "approved" in driver.find_element("css selector", "#log .entry-approval_request .decision").text
    assert not driver.find_element("css selector", "#log .entry-approval_request button.approve").is_enabled()
    _wait(driver, lambda d: _entries(d, "done"), "the turn did not resume after the admin approved")
    assert "browser-ok" in _entries(driver, "done")[-1].text


def test_bad_key_is_reported(daemon, browser):
    driver = browser
    driver.get(f"{daemon.url}/ui/")
    driver.find_element("id", "key-forget").click()
    driver.find_element("id", "api-key").send_keys("dg_not_a_real_key")
    driver.find_element("id", "key-save").click()
    _wait(driver, lambda d: "refused" in d.find_element("id", "status").text, "a bad key was not reported")
    assert "error" in driver.find_element("id", "status").get_attribute("class")
