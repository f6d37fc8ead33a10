"""A real browser (Debian's Chromium, headless, driven by Selenium) against a real
``uvicorn`` server: log in, label three images with the keys, draw a box, flip two
thumbnails in the grid review; then a fresh ``Store`` sees exactly that."""

from __future__ import annotations

import shutil
import time

import pytest
from web_helpers import PASSWORDS, build_project

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from expertloop.store import Store  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")


@pytest.fixture
def live(tmp_path):
    """(base URL, project location, image root) of a uvicorn server in a thread."""
    from expertloop.web.app import WebConfig, create_app
    from expertloop.web.testing import serve_in_thread

    loc, root = str(tmp_path / "project"), tmp_path / "images"
    store = build_project(loc, tmp_path / "project", root)
    # views at most 32 pixels on a side: the 40 x 60 images are sent at 20 x 30,
    # and the page must still save marks in full-resolution pixels
    app = create_app(store, WebConfig(image_roots=[root], max_side=32))
    with serve_in_thread(app) as url:
        yield url, loc, root
    store.close()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait(driver, cond, timeout=15):
    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def log_in(driver, base, name):
    driver.get(base + "/login")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "login").click()
    wait(driver, lambda d: d.find_elements(By.ID, "tasks"))


def image_ready(driver, iid) -> bool:
    return driver.find_element(By.ID, "image").get_attribute("data-ready") == str(iid)


def saved(driver) -> int:
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-saved") or 0)


def test_browser_session(live, browser):
    base, loc, _root = live
    log_in(browser, base, "bob")
    assert "bob (annotator)" in browser.find_element(By.ID, "who").text
    assert browser.get_cookie("el_session")["httpOnly"] is True
    browser.find_element(By.LINK_TEXT, "scans").click()
    # three images labelled with the keys: 2 = abnormal, 1 = normal, 3 = unsure
    body = browser.find_element(By.TAG_NAME, "body")
    for n, (iid, key) in enumerate([(1, "2"), (2, "1"), (3, "3")], 1):
        wait(browser, lambda d, i=iid: image_ready(d, i))
        time.sleep(0.3)  # the expert looks at the image
        body.send_keys(key)
        body.send_keys(Keys.ENTER)
        wait(browser, lambda d, k=n: saved(d) == k)
    assert browser.find_element(By.ID, "done-count").text == "3"
    frames = [li.get_attribute("class") for li in
              browser.find_elements(By.CSS_SELECTOR, "#strip .thumb")]
    assert frames[:3] == ["thumb done"] * 3 and "current" in frames[3]
    # one box on the contour task
    browser.get(base + "/c/2")
    wait(browser, lambda d: image_ready(d, 1))
    browser.find_element(By.ID, "tool-box").click()
    canvas = browser.find_element(By.ID, "overlay")
    # the canvas is zoomed to fit the viewport: its on-screen size is the drawn one
    rect = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];",
        canvas)
    w, h = int(rect[0]), int(rect[1])
    ActionChains(browser).move_to_element_with_offset(canvas, -w // 4, -h // 4) \
        .click_and_hold().move_by_offset(w // 3, h // 4).release().perform()
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("1")
    body.send_keys(Keys.ENTER)
    wait(browser, lambda d: saved(d) == 1)
    # grid review as another annotator: flip two thumbnails, accept the rest
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.find_elements(By.ID, "login"))
    log_in(browser, base, "cy")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Review predicted “normal”").click()
    wait(browser, lambda d: d.find_elements(By.ID, "grid"))
    for iid in (2, 5):
        browser.find_element(By.CSS_SELECTOR, f'img.flip[data-id="{iid}"]').click()
    time.sleep(0.2)
    browser.find_element(By.ID, "accept").click()
    wait(browser, lambda d: d.find_elements(By.ID, "empty"))

    with Store.open(loc) as st:
        bob = {r.image_id: r for r in st.annotations("ada", "scans", annotator="bob")}
        assert {i: r.label for i, r in bob.items()} == \
            {1: "abnormal", 2: "normal", 3: "unsure"}
        assert all(r.updated_by == "bob" and r.time_spent >= 0.25 for r in bob.values())
        assert bob[2].source == "accepted-model" and bob[1].source == "manual"
        (box,) = st.annotations("ada", "cells")
        assert box.annotator == "bob"
        (shape,) = box.value["shapes"]
        assert shape["type"] == "rectangle" and shape["label"] == "cell"
        ys = sorted({p[0] for p in shape["points"]})
        xs = sorted({p[1] for p in shape["points"]})
        assert len(ys) == len(xs) == 2  # an axis-aligned box in (row, col) pixels
        # dragged from a quarter left/up of the centre by a third/quarter of the size
        # of the 40 x 60 image on screen: rows 10..20, columns 15..35 in pixels
        assert ys == pytest.approx([10, 20], abs=1.5)
        assert xs == pytest.approx([15, 35], abs=1.5)
        cy = {r.image_id: r for r in st.annotations("ada", "scans", annotator="cy")}
        assert {i: (r.label, r.source) for i, r in cy.items()} == {
            1: ("normal", "accepted-model"), 2: ("abnormal", "manual"),
            4: ("normal", "accepted-model"), 5: ("abnormal", "manual")}
        assert all(r.time_spent > 0 for r in cy.values())
