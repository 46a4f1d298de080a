"""`i2vgen app`: the request handler on the embedded model, then the running app driven in headless Chromium.

The browser tests need Playwright (the test extra) and Debian's Chromium at /usr/bin/chromium (scripts/test.sh
installs both). Where either is missing they fail with the reason: they never skip.
"""

import importlib.util
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import PIL.Image
import pytest

from i2vgen.apps.web import AppModel, Stopped
from i2vgen.apps.cli import main
from i2vgen.apps.render import UsageError

ROOT = Path(__file__).resolve().parent.parent
RED_CIRCLE = ROOT / "assets" / "red_circle.png"
PROMPT = "a red circle moving right"
CHROMIUM = os.environ.get("I2VGEN_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that reaches out of the machine (background updates, sync, QUIC probes).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
FAST = dict(frames=2, fps=16, steps=2, guidance=6.0, height=32, width=32)


def decode(path) -> np.ndarray:
    """MP4 -> (F, H, W, 3) uint8 frames."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


def load_eval_demo():
    """scripts/eval_demo.py, whose motion criterion (the one behind the demo model's documented success rate)
    judges the video the page shows."""
    spec = importlib.util.spec_from_file_location("eval_demo", ROOT / "scripts" / "eval_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    model = AppModel()
    yield model
    shutil.rmtree(model.out_dir)


def upload(path):
    return {"path": str(path), "orig_name": Path(path).name}


# ---- the request handler ----

def test_settings_come_from_the_embedded_model(app):
    s = app.settings
    assert (s["height"].minimum, s["height"].maximum, s["height"].value) == (16, 64, 64)  # 8 x 2 latents; 64 px
    assert (s["frames"].value, s["steps"].value, s["guidance"].value) == (8, 25, 6.0)  # as scripts/demo.sh


@pytest.mark.parametrize("change, message", [
    (dict(height=72), "Height must be a multiple of 8 from 16 to 64, got 72"),
    (dict(width=60), "Width must be a multiple of 8 from 16 to 64, got 60"),
    (dict(frames=0), "Frames must be a whole number from 1 to 32, got 0"),
    (dict(frames=2.5), "Frames must be a whole number from 1 to 32, got 2.5"),
    (dict(steps="10"), "Denoising steps must be a whole number from 1 to 100, got '10'"),
    (dict(guidance=25), "Guidance scale must be a number from 1 to 20, got 25"),
    (dict(fps=None), "Frames per second must be a whole number from 1 to 60, got None"),
    (dict(frames=1000), "Frames must be a whole number from 1 to 32, got 1000"),  # were clamped by the sliders
    (dict(steps=100000), "Denoising steps must be a whole number from 1 to 100, got 100000"),
    (dict(guidance=-5), "Guidance scale must be a number from 1 to 20, got -5"),
    (dict(seed=-5), "Seed must be -1 (random) or a whole number from 0 to 2147483647, got -5"),
    (dict(sampler="heun"), "Sampler must be one of ddim, unipc, dpm++, sde-dpm++, euler, fast, got 'heun'"),
])
def test_bad_settings_are_one_readable_line(app, change, message):
    settings = {**FAST, **change}
    extra = {key: settings.pop(key) for key in ("seed", "sampler") if key in settings}
    with pytest.raises(UsageError) as error:
        app.generate(upload(RED_CIRCLE), PROMPT, "", settings, **extra)
    assert str(error.value) == message


def test_the_handler_puts_every_message_in_the_one_status_area(app):
    """The Generate handler returns (no video, one line) for bad input, never a toast (gr.Error) nor a clamped value."""
    import gradio as gr

    from i2vgen.apps.web import _generate_handler

    run = _generate_handler(app)
    values = dict(frames=1000, fps=16, steps=2, guidance=6.0, height=32, width=32)
    result = run(upload(RED_CIRCLE), PROMPT, "", *values.values(), 0, "ddim", False, 8, "",
                 gr.Request(session_hash="s"), progress=None)
    assert result == (None, "**Error:** Frames must be a whole number from 1 to 32, got 1000")
    result = run(None, PROMPT, "", *FAST.values(), 0, "ddim", False, 8, "", gr.Request(session_hash="s"), progress=None)
    assert result == (None, "**Error:** Add a first frame: upload an image (or pick an example below the button).")


def test_a_video_that_would_take_hours_is_refused(app, monkeypatch):
    """The estimate (apps/estimate.py) on a device monkeypatched to 1 kFLOP/s: one line with the settings' names, the
    estimate and the limit, before any model work."""
    from i2vgen.pipelines import compute

    monkeypatch.setattr(compute, "matmul_flops_per_second", lambda device, dtype: 1e3)
    with pytest.raises(UsageError) as error:
        app.generate(upload(RED_CIRCLE), PROMPT, "", FAST, 0)
    assert re.fullmatch(r"Height 32, Width 32, Frames 2, Denoising steps 2 would take at least [\d,.]+ days on cpu "
                        r"\([\d.]+ MFLOP at 1 kFLOP/s\), over the limit of 1 h; lower them", str(error.value))


def test_missing_and_unreadable_images(app, tmp_path):
    with pytest.raises(UsageError, match=r"^Add a first frame: upload an image"):
        app.generate(None, PROMPT, "", FAST)
    bad = tmp_path / "upload123" / "holiday.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    with pytest.raises(UsageError) as error:
        app.generate({"path": str(bad), "orig_name": "holiday.png"}, PROMPT, "", FAST)
    # The user's file name, not the server's temporary path.
    assert str(error.value).startswith("cannot read image holiday.png: ") and "upload123" not in str(error.value)


@pytest.mark.parametrize("sampler", ["ddim", "unipc", "fast"])  # fast: enable_fast_sampling, shown as --fast
def test_the_shown_command_makes_the_same_video(app, tmp_path, sampler):
    path, seed, command, _ = app.generate(upload(RED_CIRCLE), PROMPT, "blurry", {**FAST, "frames": 3}, seed=None,
                                       sampler=sampler)
    args = shlex.split(command)
    assert args[:2] == ["i2vgen", "generate"] and args[args.index("--seed") + 1] == str(seed)
    assert ("--scheduler" in args) == (sampler == "unipc") and ("--fast" in args) == (sampler == "fast")
    args[args.index("--image") + 1] = str(RED_CIRCLE)
    args[args.index("--out") + 1] = str(tmp_path / "cli.mp4")
    assert main(args[1:]) == 0
    page, cli = decode(path), decode(tmp_path / "cli.mp4")
    assert page.shape == (3, 32, 32, 3) and np.array_equal(page, cli)


def test_stop_ends_the_sampling_at_the_next_step(app):
    unet_calls = []
    hook = app.pipe.unet.register_forward_hook(lambda *_: unet_calls.append(1))

    def progress(value, desc=None, unit=None):
        if value == (2, 25):  # after the second of 25 steps, the user presses Stop
            app.stop("me")

    app.stop("someone else")
    try:
        with pytest.raises(Stopped):  # guidance 1: one UNet call per step
            app.generate(upload(RED_CIRCLE), PROMPT, "", {**FAST, "steps": 25, "guidance": 1.0}, 0, session="me",
                         progress=progress)
        assert len(unet_calls) == 3
        # Stop ends only the requests made before it: the next one from the same session runs.
        app.generate(upload(RED_CIRCLE), PROMPT, "", FAST, 0, session="me")
    finally:
        hook.remove()


def test_one_request_at_a_time(app):
    order = []

    def request(name):
        app.generate(upload(RED_CIRCLE), PROMPT, "", {**FAST, "steps": 3}, 0,
                     progress=lambda value, **_: order.append(name))

    threads = [threading.Thread(target=request, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(order) == ["a"] * 4 + ["b"] * 4  # "encoding" and 3 steps each
    assert order in (sorted(order), sorted(order, reverse=True))  # one after the other, never interleaved


def test_upload_that_is_not_an_image_is_taken_off_at_once(app, tmp_path):
    bad = tmp_path / "upload7" / "notes.txt.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    image, message = app.check_upload({"path": str(bad), "orig_name": "notes.txt.png"})
    assert image is None and message.startswith("**Not an image:** cannot read image notes.txt.png: ")
    assert "upload7" not in message
    image, message = app.check_upload(upload(RED_CIRCLE))
    assert message == "" and image is not None  # gr.skip(): the image stays


def test_long_prompt_truncation_is_a_note_on_the_page(app):
    *_, notes = app.generate(upload(RED_CIRCLE), PROMPT + " and on" * 20, "", FAST, 0)
    assert notes == ["a prompt is longer than CLIP's 16 tokens and was truncated"]
    assert app.generate(upload(RED_CIRCLE), PROMPT, "", FAST, 0)[3] == []


def test_bad_port_is_refused_before_loading(capsys, monkeypatch):
    monkeypatch.setattr("i2vgen.apps.web.AppModel", None)  # loading would fail: it must not be reached
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--port", "99999"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "i2vgen app: error: argument --port: must be a whole number from 1 to 65535, got '99999'")


def test_stop_says_so_and_examples_fit_the_demo(app):
    import gradio as gr

    from i2vgen.apps.web import build_page

    page = build_page(app)
    stop = next(fn for fn in page.fns.values() if fn.name == "stop")
    assert stop.fn(gr.Request(session_hash="s")) == (
        None, "**Stopped.** No video was made; press Generate to start again.")  # the video cleared
    examples = [block for block in page.blocks.values() if isinstance(block, gr.Dataset)]
    assert [row[1] for row in examples[0].samples] == [PROMPT]  # no cloud landscapes for the shapes demo


def test_app_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: i2vgen app" in out and "--host" in out and "127.0.0.1" in out


def test_app_without_gradio_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    assert main(["app"]) == 2
    assert "pip install 'i2vgen[app]'" in capsys.readouterr().err


# ---- the running app in headless Chromium ----

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`i2vgen app` on the embedded model, on a free localhost port; always shut down."""
    folder = tmp_path_factory.mktemp("app")
    port, log_path = free_port(), folder / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_TEMP_DIR": str(folder / "gradio")}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "i2vgen.apps.cli", "app", "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the app did not start at {url}:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: scripts/test.sh installs it (pip install 'i2vgen[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (scripts/install_browser.sh, "
                    "which scripts/test.sh runs), or set I2VGEN_CHROMIUM to a Chromium binary")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=60_000)
        except Exception as error:
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {error}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh tab on the app; `page.hosts` collects the host of every request it makes."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.hosts = set()
    tab.on("request", lambda r: tab.hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
    tab.goto(server)
    tab.wait_for_selector("#generate")
    yield tab
    context.close()


def screenshot(page, tmp_path, name):
    """Screenshots go to the test's folder, or to $I2VGEN_APP_SCREENSHOTS (docs/ for the README)."""
    folder = Path(os.environ.get("I2VGEN_APP_SCREENSHOTS", tmp_path))
    page.screenshot(path=str(folder / name), full_page=True)


def test_browser_makes_a_video_of_the_circle_moving_right(page, server, tmp_path):
    page.locator("#image input[type=file]").set_input_files(str(RED_CIRCLE))
    page.locator("#prompt textarea").fill(PROMPT)
    for name, value in (("steps", "10"), ("seed", "0")):  # 10 steps: 10 of 10 seeds move it right
        page.locator(f"#{name} input[type=number]").fill(value)
        page.locator(f"#{name} input[type=number]").press("Enter")
    # Note whether the progress bar over the denoising steps ever shows.
    page.evaluate("""() => { window.sawProgress = false; new MutationObserver(() => {
        if (document.body.innerText.includes('Denoising')) window.sawProgress = true;
    }).observe(document.body, {childList: true, subtree: true, characterData: true}); }""")
    page.click("#generate")
    page.wait_for_selector("#video video[src]")
    # Playable: Chromium decoded the file, knows its size and length, and plays it.
    state = page.evaluate("""async () => {
        const v = document.querySelector('#video video');
        // Bounded waits: a video that never loads or plays fails the assertions below instead of hanging.
        const within = (promise, ms) => Promise.race([promise, new Promise(r => setTimeout(r, ms))]);
        if (v.readyState < 2) await within(new Promise(r => v.addEventListener('loadeddata', r, {once: true})), 30000);
        v.muted = true; const played = await within(v.play().then(() => true, () => false), 30000);
        return {width: v.videoWidth, height: v.videoHeight, duration: v.duration, error: v.error && v.error.code,
                src: v.src, progress: window.sawProgress, played: played === true};
    }""")
    assert (state["width"], state["height"], state["error"], state["played"]) == (64, 64, None, True)
    assert state["duration"] == pytest.approx(8 / 16, abs=0.07)  # 8 frames at 16 fps, give or take a frame
    assert state["progress"]
    info = page.inner_text("#info")
    assert "Seed 0" in info and "i2vgen generate --image red_circle.png" in info and "--steps 10" in info
    screenshot(page, tmp_path, "app.png")

    # The video the page shows, decoded: the circle moves right (the demo model's evaluation criterion:
    # at least 6 px along, more than across, and the first frame kept, PSNR >= 20 dB).
    response = page.request.get(state["src"])
    assert response.ok
    (tmp_path / "shown.mp4").write_bytes(response.body())
    frames = decode(tmp_path / "shown.mp4")
    assert frames.shape == (8, 64, 64, 3)
    image = np.asarray(PIL.Image.open(RED_CIRCLE).convert("RGB")) / 255
    result = load_eval_demo().judge(frames / 255, image, "right")
    assert result["success"], result
    # Offline: every request the page made went to the app itself (no CDN, fonts or analytics).
    assert page.hosts == {server.split("/")[2]}


def test_browser_bad_input_shows_one_message_at_a_time(page, tmp_path):
    """Each bad input's message replaces the last one in the status area (#info): after five, one message is in
    view and no toast. Out-of-range settings typed in the boxes are refused with their range, not clamped."""
    from playwright.sync_api import expect

    info = page.locator("#info")
    page.click("#generate")  # no image
    expect(info).to_have_text("Error: Add a first frame: upload an image (or pick an example below the button).")
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"not an image")
    page.locator("#image input[type=file]").set_input_files(str(bad))
    expect(info).to_contain_text("Not an image: cannot read image not_an_image.png")
    page.locator("#image input[type=file]").set_input_files(str(RED_CIRCLE))
    page.locator("#prompt textarea").fill(PROMPT)
    for name, value, message in (
            ("frames", "1000", "Frames must be a whole number from 1 to 32, got 1000"),
            ("steps", "100000", "Denoising steps must be a whole number from 1 to 100, got 100000"),
            ("guidance", "-5", "Guidance scale must be a number from 1 to 20, got -5")):
        box = page.locator(f"#{name} input[type=number]")
        default = box.input_value()
        box.fill(value)
        box.press("Enter")
        page.click("#generate")
        expect(info).to_have_text(f"Error: {message}")
        box.fill(default)
        box.press("Enter")
    page.wait_for_timeout(500)  # a toast would have appeared by now
    assert page.locator("[data-testid='toast-body']").count() == 0
    assert page.get_by_text("Add a first frame").count() == 0 and page.get_by_text("Not an image").count() == 0
    screenshot(page, tmp_path, "app_error.png")
    assert "Traceback" not in page.inner_text("body")


def test_long_video_and_prompt_changes(app, tmp_path):
    """Frames beyond the plain limit only with Long video on; the shown command (with --free-noise, --prompt-at)
    makes the same video."""
    settings = {**FAST, "frames": 40, "context_length": 8}
    with pytest.raises(UsageError, match="^Frames must be a whole number from 1 to 32, got 40$"):
        app.generate(upload(RED_CIRCLE), PROMPT, "", settings, 0)
    with pytest.raises(UsageError, match="--prompt-at must be FRAME:TEXT"):
        app.generate(upload(RED_CIRCLE), PROMPT, "", settings, 0, long_video=True, prompt_changes="soon: stop")
    path, seed, command, _ = app.generate(upload(RED_CIRCLE), PROMPT, "", settings, 0, long_video=True,
                                          prompt_changes="20: a red circle moving left\n")
    args = shlex.split(command)
    assert "--free-noise" in args and args[args.index("--prompt-at") + 1] == "20: a red circle moving left"
    args[args.index("--image") + 1] = str(RED_CIRCLE)
    args[args.index("--out") + 1] = str(tmp_path / "cli.mp4")
    assert main(args[1:]) == 0
    page, cli = decode(path), decode(tmp_path / "cli.mp4")
    assert page.shape == (40, 32, 32, 3) and np.array_equal(page, cli)
