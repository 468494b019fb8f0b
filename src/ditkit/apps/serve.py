"""A local web page to sample from a trained DiT: a class grid with a progress bar, and latent walks (Gradio).

`ditkit serve --ckpt PATH` opens the model once and serves http://127.0.0.1:7860. Requests wait in one
queue and run one at a time, so users never share a job. `build_app` puts Gradio over
ditkit.apps.page_sampler.PageSampler (the request handling) and shows its InputErrors in the page.
Gradio is the optional `web` extra (pip install 'ditkit[web]') and is imported by this module only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ditkit.apps.page_sampler import (
    GUIDANCE,
    MAX_FRAMES,
    MAX_IMAGES,
    MAX_PER_CLASS,
    WALK_KINDS,
    OnStep,
    PageSampler,
    page_message,
)
from ditkit.config.constants import Objective
from ditkit.runtime.distributed import resolve_device
from ditkit.runtime.errors import InputError
from ditkit.training.run import open_for_sampling

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # this machine only; another host only when asked (--host)
DEFAULT_PORT = 7860
MAX_QUEUE = 32  # requests waiting; more are turned away with a message
_GRADIO = "gradio"  # the module the `web` extra installs


def require_gradio() -> None:
    """A one-line error when the `web` extra is missing (checked before the model is loaded)."""
    if importlib.util.find_spec(_GRADIO) is None:
        raise InputError("the web page needs Gradio: pip install 'ditkit[web]'")


def _gradio() -> Any:
    require_gradio()
    # No version check or telemetry calls from the page's server (read when Blocks are built).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return importlib.import_module(_GRADIO)


def _in_page(gr: Any, job: Callable[[], Any]) -> Any:
    """Run a job; any error becomes a message in the page (a toast), never a stack trace, and the server goes on."""
    try:
        return job()
    except InputError as err:  # the user's input
        raise gr.Error(page_message(err), print_exception=False) from None
    except Exception as err:  # a bug or the machine (out of memory): the traceback goes to the server's log
        log.exception("ditkit serve: a request failed")
        message = f"sampling failed ({type(err).__name__}: {page_message(err)}); the server's log has the details"
        raise gr.Error(message, print_exception=False) from None


def _progress_reporter(progress: Any) -> OnStep:
    return lambda done, total: progress((done, total), desc="sampling", unit="steps")


def build_app(sampler: PageSampler, *, title: str = "ditkit") -> Any:
    """The page (a gradio.Blocks, queued: one job at a time); `launch()` it, or see `serve`."""
    gr = _gradio()
    # delete_cache: Gradio's copies of served files older than an hour go, every hour and at shutdown.
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## {title}\n{sampler.describe()}")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                _sample_tab(gr, sampler)
            with gr.Tab("Latent walk", id="walk"):
                _walk_tab(gr, sampler)
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return app


def _class_box(gr: Any, sampler: PageSampler, label: str, value: Any, elem_id: str, multiselect: bool) -> Any:
    info = "type to search: a name or an id" if sampler.class_names else "class ids"
    return gr.Dropdown(
        sampler.class_choices(),
        value=value,
        multiselect=multiselect,
        label=label,
        info=info,
        filterable=True,
        allow_custom_value=True,
        visible=sampler.num_classes > 0,
        elem_id=elem_id,
    )


def _sample_tab(gr: Any, sampler: PageSampler) -> None:
    start, conditional = sampler.start, sampler.num_classes > 0
    with gr.Row():
        with gr.Column(scale=1):
            classes = _class_box(gr, sampler, "Classes", sampler.default_classes(), "classes", multiselect=True)
            per_class = gr.Slider(
                1,
                MAX_PER_CLASS if conditional else MAX_IMAGES,
                value=4 if conditional else 16,
                step=1,
                label="Images per class" if conditional else "Images",
                elem_id="per_class",
            )
            cfg = gr.Number(
                start.cfg_scale,
                label="Guidance scale",
                info="1 = no guidance, 0 = unconditional",
                step=0.5,
                elem_id="cfg",
            )
            guidance = gr.Radio(list(GUIDANCE), value="all channels", label="Guide", elem_id="guidance")
            with gr.Row():
                algo = gr.Dropdown(list(sampler.samplers), value=start.sampler, label="Sampler", elem_id="sampler")
                steps = gr.Number(start.num_steps, label=f"Steps (2-{sampler.max_steps})", elem_id="steps")
            seed = gr.Number(0, label="Seed", info="image i has seed image_seed(seed, i)", elem_id="seed")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=2):
            grid = gr.Image(
                label="Samples",
                type="filepath",
                format="png",
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="grid",
            )
            rows = gr.Markdown(elem_id="rows")
            png = gr.File(label="Download PNG", interactive=False, elem_id="png")

    def run(classes, per_class, cfg, guidance, algo, steps, seed, progress=gr.Progress()):  # noqa: B008 (Gradio's way)
        on_step = _progress_reporter(progress)
        path, caption_ = _in_page(
            gr, lambda: sampler.grid(classes, per_class, cfg, guidance, algo, steps, seed, on_step)
        )
        return str(path), caption_, str(path)

    button.click(
        run,
        [classes, per_class, cfg, guidance, algo, steps, seed],
        [grid, rows, png],
        api_name="grid",
        concurrency_id="model",
        concurrency_limit=1,
    )


def _walk_tab(gr: Any, sampler: PageSampler) -> None:
    start, defaults = sampler.start, sampler.default_classes()
    with gr.Row():
        with gr.Column(scale=1):
            kinds = list(WALK_KINDS) if sampler.num_classes else list(WALK_KINDS)[:1]
            kind = gr.Radio(kinds, value=kinds[0], label="Walk", elem_id="walk_kind")
            with gr.Row():
                class_a = _class_box(gr, sampler, "Class A", defaults[0] if defaults else None, "class_a", False)
                class_b = _class_box(gr, sampler, "Class B", defaults[-1] if defaults else None, "class_b", False)
            with gr.Row():
                seed_a = gr.Number(0, label="Seed A", elem_id="seed_a")
                seed_b = gr.Number(1, label="Seed B (noise walk)", elem_id="seed_b")
            frames = gr.Slider(2, MAX_FRAMES, value=16, step=1, label="Frames", elem_id="frames")
            cfg = gr.Number(start.cfg_scale, label="Guidance scale", step=0.5, elem_id="walk_cfg")
            with gr.Row():
                walk_samplers = list(sampler.walk_samplers)
                algo = gr.Dropdown(walk_samplers, value=start.sampler, label="Sampler", elem_id="walk_sampler")
                steps = gr.Number(start.num_steps, label=f"Steps (2-{sampler.max_steps})", elem_id="walk_steps")
            button = gr.Button("Walk", variant="primary", elem_id="walk_button")
        with gr.Column(scale=2):
            gif = gr.Image(
                label="Latent walk (GIF)", type="filepath", interactive=False, buttons=["download"], elem_id="walk_gif"
            )

    def run(kind, class_a, class_b, seed_a, seed_b, frames, cfg, algo, steps, progress=gr.Progress()):  # noqa: B008
        on_step = _progress_reporter(progress)
        return str(
            _in_page(
                gr, lambda: sampler.walk(kind, class_a, class_b, seed_a, seed_b, frames, cfg, algo, steps, on_step)
            )
        )

    button.click(
        run,
        [kind, class_a, class_b, seed_a, seed_b, frames, cfg, algo, steps],
        [gif],
        api_name="walk",
        concurrency_id="model",
        concurrency_limit=1,
    )


def launch(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """Start serving `app` in the background (no share link, no server-side rendering); returns its URL."""
    _check_port(port)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up requests to itself
    try:
        _, url, _ = app.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            inbrowser=False,
            prevent_thread_lock=True,
            quiet=True,
            show_error=False,
        )
    except OSError as err:
        if "empty port" in str(err):  # Gradio's words for "in use"
            raise InputError(f"port {port} on {host} is in use; choose another port", setting="port") from None
        raise InputError(
            f"cannot serve on {host}:{port} ({page_message(err)}); choose another host or port", setting="host"
        ) from None
    return url


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise InputError(f"port must be in 1..65535; got {port}", setting="port")


@contextlib.contextmanager
def _terminate_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a service manager stopping the page) ends it like Ctrl+C: the server closes, temp files go."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    ckpt: str | os.PathLike,
    *,
    vae: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    device: str = "auto",
    num_heads: int | None = None,
    objective: Objective | None = None,
) -> None:
    """Open `ckpt` (weights or a run folder) once and serve the page at http://host:port until Ctrl+C;
    `objective` "flow" for SiT's checkpoints (weights that record no process)."""
    require_gradio()  # before the model: a missing extra or a bad port is one line, not a load and then an error
    _check_port(port)
    opened = open_for_sampling(ckpt, vae=vae, device=resolve_device(device), num_heads=num_heads, objective=objective)
    with tempfile.TemporaryDirectory(prefix="ditkit-serve-") as work_dir, _terminate_as_ctrl_c():
        app = build_app(PageSampler(opened, work_dir), title=f"ditkit: {Path(ckpt).name}")
        try:
            url = launch(app, host, port)
            if host not in (DEFAULT_HOST, "localhost", "::1"):
                log.warning("ditkit serve: listening on %s: anyone who can reach this machine can use the page", host)
            log.info("ditkit serve: %s (the model %s; Ctrl+C stops)", url, ckpt)
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            log.info("ditkit serve: stopped")
        finally:
            app.close()
