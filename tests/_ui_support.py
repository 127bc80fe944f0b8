"""Helpers for the browser test: a `dagster dev` server in its own process group and a headless Chromium."""
from __future__ import annotations

from contextlib import contextmanager

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("UI_TEST_CHROMIUM", "/usr/bin/chromium"))
# Everything that would make Chromium reach the network or a GPU on its own is off: the test
# machine has neither, and a stray request only adds waiting.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def missing_browser_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent (install Debian's 'chromium' package; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"the 'playwright' Python package is not importable ({exc}); it is in the dev extras"
    return None


def require_browser(what: str) -> None:
    """Skip `what` on a developer machine without a browser; in CI (CI=true) fail instead, so a CI
    run without a browser is red, never a green skip."""
    import warnings

    import pytest

    reason = missing_browser_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{what} cannot run in CI: {reason}")
    print(f"\nSKIPPING {what}: {reason}")
    # A warning lands in pytest's summary even under -q, so the skip is never silent.
    warnings.warn(UserWarning(f"{what} skipped: {reason}"))
    pytest.skip(f"{what} needs Chromium and playwright: {reason}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(base_url: str, query: str, variables: dict | None = None, timeout: float = 10.0) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"{base_url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        out = json.loads(resp.read())
    if out.get("errors"):
        raise AssertionError(f"GraphQL errors from {base_url}: {out['errors']}")
    return out["data"]


LOCATIONS_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message stack } } } } } }
"""


class DagsterDev:
    """`dagster dev` on a free port; `stop()` kills its whole process group (webserver, daemon, code server)."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.locations: list[str] = []
        self._log = open(log_path, "wb")
        exe = Path(sys.executable).parent / "dagster"
        self.proc = subprocess.Popen(
            [str(exe), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=PROJECT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: one killpg reaches every child
        )

    def log_tail(self, chars: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_loaded(self, timeout: float) -> None:
        """Until the webserver answers and the code location has loaded (or failed: then raise its error)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                data = graphql(self.base_url, LOCATIONS_QUERY, timeout=5)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = repr(exc)
                time.sleep(0.5)
                continue
            entries = data["workspaceOrError"].get("locationEntries") or []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                if errors:
                    err = errors[0]["locationOrLoadError"]
                    raise AssertionError(
                        f"code location {errors[0]['name']} failed to load: {err['message']}\n{''.join(err['stack'])}"
                    )
                self.locations = [e["name"] for e in entries]
                return
            last = f"locations: {[(e['name'], e['loadStatus']) for e in entries]}"
            time.sleep(0.5)
        raise AssertionError(f"dagster dev not ready after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self) -> None:
        # A throwaway server on a throwaway instance: nothing to shut down gracefully, and
        # `dagster dev` takes over 15 s to honour SIGTERM. Killing the group also reaches the
        # children that would outlive the leader (code server, daemon, run workers).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        self._log.close()


@contextmanager
def running_ui(env: dict[str, str], tmp_path: Path, timeout: float = 180) -> Iterator[DagsterDev]:
    """`dagster dev` started, loaded within `timeout` seconds, and killed afterwards."""
    server = DagsterDev(env, tmp_path / "dagster_dev.log")
    try:
        server.wait_loaded(timeout)
        yield server
    finally:
        server.stop()


def dagster_env(raw: Path, home: Path, dagster_home: Path) -> dict[str, str]:
    import yaml

    dagster_home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROJECT / "dagster.yaml").read_text()) or {}
    # The daemon of `dagster dev` ticks the new-data sensor (and the nightly schedule) at once,
    # which would train every model on the test machine; their runs stay queued, UI launches run.
    queue = config.setdefault("run_queue", {})
    queue["tag_concurrency_limits"] = list(queue.get("tag_concurrency_limits", [])) + [
        {"key": "unified/trigger", "limit": 0},
        {"key": "dagster/schedule_name", "limit": 0},
    ]
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ)
    env.update(
        UNIFIED_DATA=str(raw),
        UNIFIED_HOME=str(home),
        DAGSTER_HOME=str(dagster_home),
        GX_ANALYTICS_ENABLED="false",
        UNIFIED_GPUS="0",  # a UI test needs no accelerator; keeps the inventory out of nvidia-smi
        UNIFIED_THREADS_PER_STEP="1",
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    env.pop("UNIFIED_ASSET_STORE", None)
    return env


def launch_browser(playwright, user_data_dir: Path):
    """A persistent context gives a fresh, private profile folder (nothing shared with other runs)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1440, "height": 900},
    )


class Shots:
    """Screenshots into tmp; copied to $UI_SCREENSHOT_DIR when set (CI keeps them as artefacts)."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.paths = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> None:
        path = self.folder / f"{len(self.paths):02d}_{name}.png"
        self.page.screenshot(path=str(path))
        self.paths.append(path)

    def publish(self) -> None:
        target = os.environ.get("UI_SCREENSHOT_DIR")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            for p in self.paths:
                shutil.copy(p, Path(target) / p.name)


@contextmanager
def ui_page(tmp_path: Path, timeout_ms: int):
    """(page, shots) in a fresh Chromium profile; on a failure a last screenshot is taken, and the
    screenshots are published (UI_SCREENSHOT_DIR) and listed whatever the outcome."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = launch_browser(pw, tmp_path / "chromium_profile")
        ctx.set_default_timeout(timeout_ms)
        page = ctx.new_page()
        shots = Shots(page, tmp_path / "screenshots")
        try:
            yield page, shots
        except Exception:
            try:
                shots.take("failure")
            except Exception as exc:  # noqa: BLE001 - keep the original failure, not the screenshot's
                print(f"no failure screenshot: {exc}")
            raise
        finally:
            shots.publish()
            print(f"\nUI screenshots: {[str(p) for p in shots.paths]}")
            ctx.close()
