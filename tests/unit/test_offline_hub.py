"""Hugging Face hub ids without network: one line within seconds, or the local cache with no network call.

No test here reaches the network: offline is HF_HUB_OFFLINE=1 or a probe that says so, the cache is a tmp
HF_HOME, and every socket connection outside the loopback interface fails the test.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditkit.cli.main import main
from ditkit.data import autoencoder
from ditkit.data.autoencoder import hub_reachable, load_vae, make_tiny_vae, resolve_hub_id

HUB_VAE = "stabilityai/sd-vae-ft-ema"  # the default VAE
_LIBRARY_ENV = ("HF_HUB_VERBOSITY", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
_LIBRARY_LOGGERS = ("huggingface_hub", "diffusers", "transformers", "urllib3", "httpx", "filelock")


@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """An empty Hugging Face home, no proxies, and a record of every connection attempt off the loopback (which
    fails). The CLI's quietening of the libraries (environment, logger levels) is undone afterwards."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", *_LIBRARY_ENV):
        monkeypatch.delenv(name, raising=False)
    attempts: list[object] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    loopback = ("127.0.0.1", "::1", "localhost")

    def connect(self: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] in loopback:
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"test: no network ({address})")

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host in loopback:
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"test: no network ({host})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    levels = {name: logging.getLogger(name).level for name in _LIBRARY_LOGGERS}
    yield attempts
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _invoke(*args: str) -> tuple[int, str, float]:
    """`ditkit ARGS` in this process: (exit code, stderr with ditkit's log lines, seconds)."""
    err = io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger("ditkit").addHandler(handler)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        logging.getLogger("ditkit").removeHandler(handler)
    return code, err.getvalue(), time.perf_counter() - start


def _image_folder(root: Path) -> Path:
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (root / "cls").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "cls" / f"{i}.png")
    return root


def _cached_hub_repo(hf_home: Path, repo_id: str) -> Path:
    """A tiny AutoencoderKL laid out as huggingface_hub caches `repo_id` (refs/main -> snapshots/<commit>)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return make_tiny_vae(repo / "snapshots" / commit)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "probe"])
def test_train_with_a_hub_vae_offline_fails_in_one_line(how, no_network, tmp_path, monkeypatch) -> None:
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setattr(autoencoder, "hub_reachable", lambda timeout=3.0: False)
    data = _image_folder(tmp_path / "data")
    code, err, seconds = _invoke("train", "--out", str(tmp_path / "run"), "--data", str(data))
    assert code == 2 and seconds < 10
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert HUB_VAE in lines[0] and "offline" in lines[0]
    assert f"hf download {HUB_VAE} --local-dir DIR" in lines[0] and "--vae" in lines[0]
    assert not no_network  # nothing asked the hub
    assert not (tmp_path / "run").exists()  # refused before the run folder was written


def test_import_of_a_hub_id_offline_fails_in_one_line(no_network, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err, seconds = _invoke("import", "facebook/DiT-XL-2-256", "--out", str(tmp_path / "w.safetensors"))
    lines = err.strip().splitlines()
    assert code == 2 and seconds < 10 and len(lines) == 1, err
    assert "facebook/DiT-XL-2-256" in lines[0] and "hf download facebook/DiT-XL-2-256" in lines[0]
    assert not no_network


@pytest.mark.parametrize("offline_env", [True, False])
def test_a_cached_hub_vae_loads_with_no_network_call(offline_env, no_network, tmp_path, monkeypatch) -> None:
    folder = _cached_hub_repo(tmp_path / "hf-home", HUB_VAE)
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(timeout: float = 3.0) -> bool:
        raise AssertionError("the hub was probed although the id is cached")

    monkeypatch.setattr(autoencoder, "hub_reachable", no_probe)
    assert resolve_hub_id(HUB_VAE, setting="vae", what="VAE") == str(folder)
    vae = load_vae(HUB_VAE)
    assert vae is not None and vae.name == HUB_VAE  # recorded as asked, not as the cache folder
    assert (vae.latent_channels, vae.downsample) == (4, 2)
    assert not no_network


def test_an_uncached_hub_id_is_asked_for_only_when_the_hub_answers(no_network, monkeypatch) -> None:
    monkeypatch.setattr(autoencoder, "hub_reachable", lambda timeout=3.0: True)
    assert resolve_hub_id("owner/not-cached", setting="vae", what="VAE") == "owner/not-cached"
    with pytest.raises(ValueError, match="local-only"):
        resolve_hub_id("owner/not-cached", setting="vae", what="VAE", offline=True)
    assert not no_network


def test_the_probe_is_quick_and_reads_the_endpoint(no_network, monkeypatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:  # the loopback only
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2.0)
    start = time.perf_counter()
    assert not hub_reachable(timeout=2.0)  # the port is closed now
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    assert not hub_reachable(timeout=2.0) and time.perf_counter() - start < 5
    assert no_network == ["hub.invalid"]  # the one attempt, refused by the test


def test_the_cli_quietens_the_libraries(no_network, tmp_path) -> None:
    code, _, _ = _invoke("presets")
    assert code == 0
    for name in _LIBRARY_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() >= logging.ERROR, name
