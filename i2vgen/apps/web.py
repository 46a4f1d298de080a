"""`i2vgen app`: a local web page to drop an image, type a prompt and watch the video (the `app` extra, Gradio).

    i2vgen app [--model PATH_OR_HUB_ID] [--variant fp16] [--device cuda] [--dtype float16]
               [--host 127.0.0.1] [--port 7860]

The page calls I2VGenXLPipeline as `i2vgen generate` does and shows the equivalent command with the seed it
used, so any result can be made again from the command line. One generation runs at a time per model (Gradio's
queue with concurrency 1, and a lock around the pipeline), so two browser tabs cannot run the model out of
memory; Stop (or closing the tab) ends the sampling at the next denoising step through callback_on_step_end.
Bad input is one readable line in the page. Nothing leaves the machine: it binds to localhost by default,
Gradio's analytics are off and its default theme's fonts are served by the app itself.
"""

import argparse
import dataclasses
import logging
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from i2vgen.apps.estimate import ModelShape, check_estimate, estimate
from i2vgen.apps.render import (DTYPES, EMBEDDED_MODEL, ModelOptions, UsageError, VideoRequest, load_pipeline,
                                read_image, render, save_video)

ASSETS = EMBEDDED_MODEL.parent.parent / "assets"
EXAMPLES = [  # the demo's first frames, with a prompt each
    (ASSETS / "red_circle.png", "a red circle moving right"),
    (ASSETS / "landscape.png", "clouds drifting over the hills"),
]
MAX_SEED = 2**31 - 1
LONG_FRAMES = 128  # the most frames with "Long video" (FreeNoise) on; without it, the frames setting's maximum
CSS = "#info pre, #info code { white-space: pre-wrap; }"  # the whole command in view
STOPPED = "**Stopped.** No video was made; press Generate to start again."
log = logging.getLogger("i2vgen.app")


class Setting(NamedTuple):
    """One option of the page: its label ("Name (note)"), the range the server accepts, its default and step."""
    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1  # whole numbers in multiples of `step`; a float step allows any value in range


def model_settings(pipe, embedded: bool) -> dict[str, Setting]:
    """Options and limits from the loaded model. Sizes go from the smallest that survives every UNet
    downsampling up to the model's own size (larger costs memory and leaves what it was trained on)."""
    height, width = pipe.default_size
    smallest = max(8, pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.down_block_types) - 1))
    # The embedded demo was trained on 8-frame clips and is evaluated at 25 steps, guidance 6 (scripts/demo.sh);
    # other models get the reference pipeline's defaults.
    frames, steps, guidance = (8, 25, 6.0) if embedded else (16, 50, 9.0)
    return {
        "frames": Setting(f"Frames (up to {LONG_FRAMES} with Long video on)", 1, 32, frames),
        "context_length": Setting("Long video: window in frames (the model's training length)", 2, 32, frames),
        "fps": Setting("Frames per second (a condition and the video's rate)", 1, 60, 16),
        "steps": Setting("Denoising steps", 1, 100, steps),
        "guidance": Setting("Guidance scale (1: no classifier-free guidance)", 1.0, 20.0, guidance, 0.5),
        "height": Setting("Height", smallest, height, height, 8),
        "width": Setting("Width", smallest, width, width, 8),
    }


def setting_name(s: Setting) -> str:
    return s.label.split(" (")[0]


def allowed(s: Setting) -> str:
    """The values `s` takes, in words."""
    if not float(s.step).is_integer():
        return f"a number from {s.minimum:g} to {s.maximum:g}"
    return (f"a multiple of {s.step:g} from {s.minimum:g} to {s.maximum:g}" if s.step > 1 else
            f"a whole number from {s.minimum:g} to {s.maximum:g}")


def sampler_names() -> list[str]:
    """Samplers the page offers, by the names of `i2vgen generate --scheduler`: ddim (the model's own) first."""
    from i2vgen.schedulers import NAMED

    return list(NAMED)


class Stopped(Exception):
    """Raised inside the denoising loop when the request was stopped."""


class AppModel:
    """One loaded pipeline behind a lock, and the page's request handlers."""

    def __init__(self, model: str | None = None, variant: str | None = None, device: str | None = None,
                 dtype: str | None = None):
        # The run-wide options of `i2vgen generate`, loaded as it loads them.
        self.options = ModelOptions(model=model, variant=variant, device=device, dtype=dtype)
        self.pipe = load_pipeline(self.options, verbose=False)
        self.settings = model_settings(self.pipe, embedded=model is None)
        self.out_dir = Path(tempfile.mkdtemp(prefix="i2vgen-app-"))
        self._lock = threading.Lock()  # one generation at a time, whatever the web server does
        self._stopped_at: dict[str, float] = {}  # session -> when its user last pressed Stop

    def stop(self, session: str):
        """Stop this session's running or waiting request at its next denoising step."""
        self._stopped_at[session] = time.monotonic()

    def check_upload(self, image: dict | None):
        """On upload ({"path", "orig_name"}): a file that is not an image is taken off the page at once, with a
        one-line reason; an image stays as it is."""
        import gradio as gr

        if not image or not image.get("path"):
            return gr.skip(), ""
        try:
            read_image(image["path"])
        except UsageError as error:
            name = image.get("orig_name") or Path(image["path"]).name
            return None, f"**Not an image:** {str(error).replace(image['path'], name)}"
        return gr.skip(), ""

    def check(self, name: str, value, long_video: bool = False) -> float:
        """`value` for setting `name`, or UsageError with the allowed range (more frames for a long video). The
        page's number boxes send what was typed, unclamped, so a value out of range is refused here, never
        silently moved into it."""
        s = self.settings[name]
        if name == "frames" and long_video:
            s = s._replace(maximum=LONG_FRAMES)
        whole = float(s.step).is_integer()
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not s.minimum <= value <= s.maximum
                or (whole and value % s.step)):
            raise UsageError(f"{setting_name(s)} must be {allowed(s)}, got {value!r}")
        return int(value) if whole else float(value)

    def generate(self, image: dict | None, prompt: str, negative_prompt: str, settings: dict,
                 seed: float | None = None, sampler: str = "ddim", session: str = "", progress=None,
                 long_video: bool = False, prompt_changes: str = ""):
        """Make one video. `image` is the uploaded file ({"path", "orig_name"}), `settings` the values of
        `self.settings`, seed None or -1 for a random one; `long_video`: FreeNoise with the window
        settings["context_length"]; `prompt_changes`: lines "FRAME: prompt". Returns (mp4 path, seed, equivalent
        command, notes: one line each, e.g. the prompt was truncated)."""
        requested = time.monotonic()
        if not image or not image.get("path"):
            raise UsageError("Add a first frame: upload an image (or pick an example below the button).")
        name = image.get("orig_name") or Path(image["path"]).name
        try:
            pil_image = read_image(image["path"])
        except UsageError as error:
            raise UsageError(str(error).replace(image["path"], name)) from None
        values = {key: self.check(key, settings.get(key, setting.value), long_video)  # a missing one: its default
                  for key, setting in self.settings.items()}
        if seed is None or seed == -1:
            seed = random.randrange(MAX_SEED)
        if isinstance(seed, bool) or not isinstance(seed, (int, float)) or not 0 <= seed <= MAX_SEED \
                or seed % 1:
            raise UsageError(f"Seed must be -1 (random) or a whole number from 0 to {MAX_SEED}, got {seed!r}")
        if sampler not in sampler_names():
            raise UsageError(f"Sampler must be one of {', '.join(sampler_names())}, got {sampler!r}")
        seed, steps = int(seed), values["steps"]
        # The video as `i2vgen generate` would make it: rendered and saved by the same code.
        fast = sampler == "fast"  # pipe.enable_fast_sampling(), as `i2vgen generate --fast`: with caching
        video = VideoRequest(image=image["path"], prompt=prompt, negative_prompt=negative_prompt or None,
                             scheduler="ddim" if fast else sampler, fast=fast, seed=seed, **values,
                             free_noise=bool(long_video),
                             prompt_at=[line for line in prompt_changes.splitlines() if line.strip()],
                             context_stride=max(1, values["context_length"] // 4),  # diffusers' 16 / 4
                             out=Path(tempfile.mkdtemp(dir=self.out_dir)) / f"i2vgen-seed{seed}.mp4")
        video.prompt_schedule()  # a bad line: one message before any model work
        try:
            video.check_long_video()
        except UsageError as error:
            raise UsageError(str(error).replace("--context-length", "Window")) from None
        found = estimate(video, ModelShape.of_pipeline(self.pipe), self.pipe.execution_device, self.pipe.dtype)
        log.info(found.line())
        names = {key: setting_name(self.settings[key]) for key in ("height", "width", "frames", "steps")}
        check_estimate(video, found, names, hint="")

        def on_step_end(pipe, step, t, tensors):
            if self._stopped_at.get(session, -1.0) > requested:
                raise Stopped()
            if progress is not None:
                progress((step + 1, steps), desc="Denoising", unit="steps")
            return {}

        with self._lock:
            if self._stopped_at.get(session, -1.0) > requested:
                raise Stopped()
            if progress is not None:
                progress(0, desc="Encoding the image and the prompt")
            notes = []
            frames = render(self.pipe, video, pil_image, seed, callback_on_step_end=on_step_end, notify=notes.append)
        save_video(frames, video)
        return video.out, seed, self.command(name, video, seed), notes

    def command(self, image_name: str, video: VideoRequest, seed: int) -> str:
        """The `i2vgen generate` command that makes the same video."""
        options = {**dataclasses.asdict(self.options), **dataclasses.asdict(video), "image": image_name, "seed": seed,
                   "out": "video.mp4"}
        if options["scheduler"] == "ddim":  # the default
            options["scheduler"] = None
        args = ["i2vgen", "generate"]
        for key in ("image", "prompt", "negative_prompt", "model", "variant", "device", "dtype", "frames", "fps",
                    "scheduler", "steps", "guidance", "height", "width", "seed", "out"):
            if options[key] is not None:
                args += [f"--{key.replace('_', '-')}", str(options[key])]
        for change in video.prompt_at:
            args += ["--prompt-at", change]
        if video.free_noise:
            args += ["--free-noise", "--context-length", str(video.context_length),
                     "--context-stride", str(video.context_stride)]
        return shlex.join(args + ["--fast"] * video.fast)


def _generate_handler(app: AppModel):
    """The Generate button's handler: (the video, its seed and command line), or (no video, one line of error).
    Every message goes to the one status area under the video, replacing the last one, so messages never pile
    up as toasts would (the server's log keeps an unexpected error's traceback)."""
    import gradio as gr

    def run(image, prompt, negative_prompt, frames, fps, steps, guidance, height, width, seed, sampler, long_video,
            context_length, prompt_changes, request: gr.Request, progress=gr.Progress()):
        settings = dict(frames=frames, fps=fps, steps=steps, guidance=guidance, height=height, width=width,
                        context_length=context_length)
        try:
            path, seed, command, notes = app.generate(image, prompt or "", negative_prompt or "", settings, seed,
                                                      sampler, request.session_hash, progress, long_video,
                                                      prompt_changes or "")
        except UsageError as error:
            return None, f"**Error:** {error}"
        except Stopped:
            return None, STOPPED
        except Exception as error:  # the page gets one line; the server's log keeps the traceback
            log.exception("generation failed")
            message = str(error).splitlines()[0] if str(error) else ""
            return None, f"**Generation failed:** {type(error).__name__}: {message}"
        info = "".join(f"**Note:** {note}.\n\n" for note in notes)
        info += (f"Seed **{seed}**. The same video from the command line (with your image file):\n\n"
                f"```bash\n{command}\n```")
        return str(path), info

    return run


def build_page(app: AppModel):
    """The Gradio page around `app`."""
    import gradio as gr

    from i2vgen.schedulers.fast import FAST_STEPS

    run = _generate_handler(app)

    def stop(request: gr.Request):
        app.stop(request.session_hash)
        return None, STOPPED

    def leave(request: gr.Request):
        app.stop(request.session_hash)

    def number(name):
        # A number box, not a slider: a slider's box moves a typed 1000 to its maximum without a word; this one
        # sends what was typed, and AppModel.check refuses it with the range.
        s = app.settings[name]
        note = s.label.partition(" (")[2].rstrip(")")
        return gr.Number(s.value, label=setting_name(s), info="; ".join(filter(None, [allowed(s), note])),
                         step=s.step, elem_id=name)

    note = ("The embedded tiny demo model knows only 64x64 synthetic shapes moving left, right, up or down "
            "(try the red circle); run `i2vgen app --model ali-vilab/i2vgen-xl` for real videos."
            if app.options.model is None else f"Model: `{app.options.model}`.")
    with gr.Blocks(title="i2vgen", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"# i2vgen: image to video\nDrop an image, describe the motion, generate. {note}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], height=256,
                                 label="First frame", elem_id="image")
                prompt = gr.Textbox(label="Prompt", placeholder="what should happen in the video", elem_id="prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="what to steer away from",
                                             elem_id="negative_prompt")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_button = gr.Button("Stop", elem_id="stop")
                with gr.Accordion("Settings", open=True):
                    numbers = [number(name) for name in ("frames", "fps", "steps", "guidance", "height", "width")]
                    seed = gr.Number(-1, precision=0, label="Seed (-1: a random one)", elem_id="seed")
                    sampler = gr.Dropdown(sampler_names(), value="ddim", label="Sampler", elem_id="sampler",
                                          info=f"ddim: the model's own; fast: enable_fast_sampling (with caching), "
                                               f"made for {FAST_STEPS} steps")
                with gr.Accordion("Long video and prompt changes", open=False):
                    long_video = gr.Checkbox(False, label="Long video (FreeNoise): more frames than the model "
                                                          "was trained on", elem_id="long_video")
                    context_length = number("context_length")
                    prompt_changes = gr.Textbox(label="Prompt changes, one a line: FRAME: prompt", lines=2,
                                                placeholder="8: a red circle moving left", elem_id="prompt_changes")
            with gr.Column():
                video = gr.Video(label="Video", autoplay=True, loop=True, buttons=["download"], elem_id="video")
                info = gr.Markdown(elem_id="info")
        examples = EXAMPLES[:1] if app.options.model is None else EXAMPLES  # the demo knows only shapes
        gr.Examples([[str(path), text] for path, text in examples if path.is_file()], inputs=[image, prompt])
        # preprocess=False: the handler gets the uploaded file's path and reads it itself, so an unreadable
        # file becomes our one-line message instead of Gradio's own processing error.
        event = generate.click(run, [image, prompt, negative_prompt, *numbers, seed, sampler, long_video,
                                     context_length, prompt_changes], [video, info],
                               preprocess=False, concurrency_limit=1, api_name="generate")
        stop_button.click(stop, None, [video, info], cancels=[event], queue=False)
        page.unload(leave)
        image.upload(app.check_upload, image, [image, info], preprocess=False, queue=False)
    return page


def port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 65535, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="i2vgen app", description="A local web page for image-to-video "
                                     "generation: upload an image, type a prompt, watch the video.")
    parser.add_argument("--model", help="local diffusers-layout folder or hub id, e.g. ali-vilab/i2vgen-xl "
                                        "(default: the embedded tiny demo model, 64x64 synthetic shapes)")
    parser.add_argument("--variant", help='weights variant to load, e.g. "fp16"')
    parser.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: float16 on CUDA, else float32)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                                                            "machine only; 0.0.0.0 opens it to your network)")
    parser.add_argument("--port", type=port_number, default=7860, help="port, 1 to 65535 (default: 7860)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports nor version checks
    try:
        import gradio  # noqa: F401
        import imageio_ffmpeg  # noqa: F401
    except ImportError as error:
        print(f"i2vgen app: error: the web app needs Gradio and imageio-ffmpeg ({error.name} is missing): "
              "pip install 'i2vgen[app]'", file=sys.stderr)
        return 2
    try:
        app = AppModel(args.model, args.variant, args.device, args.dtype)
    except UsageError as error:
        print(f"i2vgen app: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"i2vgen app: error: cannot load the model: {error}", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"i2vgen app: listening on {args.host}: other machines can reach the page and use the model",
              file=sys.stderr)
    page = build_page(app)
    page.queue(default_concurrency_limit=1, max_size=32)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` shuts down as Ctrl-C does
    try:
        # quiet: Gradio's own lines would offer share=True, a public link this app does not make
        page.launch(server_name=args.host, server_port=args.port, show_error=False, max_file_size="50mb",
                    ssr_mode=False, footer_links=["api", "settings"], css=CSS, quiet=True, prevent_thread_lock=True)
        print(f"i2vgen app: open http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
        page.block_thread()
    except KeyboardInterrupt:
        pass
    except OSError as error:  # e.g. the port is taken
        print(f"i2vgen app: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        page.close()
        shutil.rmtree(app.out_dir, ignore_errors=True)
    # Server closed, files removed: skip the interpreter's teardown of torch, transformers and Gradio, which
    # took 6 s here, so that Ctrl-C or kill ends the app at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
