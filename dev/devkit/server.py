"""The real ComfyUI server as a subprocess, and a small HTTP client for it.

Tests talk to it the way users' scripts do: POST /prompt, poll
/history/<id>, GET /object_info. Nothing of ComfyUI is mocked.
"""

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from .host import COMFYUI_DIR, PACK_ROOT

PACK_FOLDER_NAME = "comfyui-qrlora"
MODEL_FOLDERS = ("loras", "diffusion_models", "checkpoints", "qrlora_bases")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: str, pack_root: str = PACK_ROOT, small_models: bool = False) -> str:
    """A ComfyUI base directory with this pack linked into custom_nodes/; `small_models` also links the
    tests' DevSmallCheckpoint node (small_checkpoint_node.py), which the pack never uses."""
    for sub in ("custom_nodes", "input", "output", "user", *(os.path.join("models", m) for m in MODEL_FOLDERS)):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    links = {PACK_FOLDER_NAME: pack_root}
    if small_models:
        links["qrlora_dev_small_checkpoint.py"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "small_checkpoint_node.py")
    for name, target in links.items():
        link = os.path.join(base, "custom_nodes", name)
        if not os.path.islink(link):
            os.symlink(target, link)
    return base


def _drain(source, log) -> None:
    for line in iter(source.readline, b""):
        log.write(line)
        log.flush()


class PromptFailed(AssertionError):
    pass


class ComfyServer:
    def __init__(self, base_directory: str, port: int | None = None, python: str = sys.executable, file_size_limit: int | None = None,
                 nice: int = 0):
        """`file_size_limit` (bytes) makes every file write of the server past that size fail, as a full disk would;
        `nice` lowers its priority (a long training beside the rest of the suite takes only the cores it leaves idle)."""
        self.base = base_directory
        self.file_size_limit = file_size_limit
        self.nice = nice
        self.port = port or free_port()
        self.python = python
        self.log_path = os.path.join(base_directory, "server.log")
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_path(self) -> str:
        return os.path.join(self.base, "server.pid")

    def start(self, timeout: float = 180, detach: bool = False) -> "ComfyServer":
        """Start and wait until it answers. Detached servers outlive this process (the demo's)."""
        args = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", self.base, "--disable-auto-launch"]
        log = open(self.log_path, "ab")
        # One compute thread: on the shared 2-core CI machine, OpenMP's spinning
        # threads made a tiny model's training step about 10x slower (measured).
        env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
        limited = self.file_size_limit is not None
        self.process = subprocess.Popen(
            args, cwd=COMFYUI_DIR, stdout=subprocess.PIPE if limited else log, stderr=subprocess.STDOUT, env=env,
            start_new_session=detach, preexec_fn=self._in_child if limited or self.nice else None,
        )
        if limited:  # the log is written by this process, so the server's limit does not apply to it
            threading.Thread(target=_drain, args=(self.process.stdout, log), daemon=True).start()
        with open(self.pid_path, "w") as f:
            f.write(str(self.process.pid))
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(self.url + "/system_stats", timeout=2).read()
                return self
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def _in_child(self) -> None:
        """The server process's limits, set before it starts."""
        if self.file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size_limit, self.file_size_limit))
        if self.nice:
            os.nice(self.nice)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_size(self) -> int:
        return os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0

    def log_tail(self, since: int = 0, limit: int = 20_000) -> str:
        if not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return text[-limit:]

    def path(self, *parts) -> str:
        return os.path.join(self.base, *parts)


class Client:
    """Queue prompts, wait for them, read what they produced."""

    def __init__(self, url: str):
        self.url = url
        self.client_id = uuid.uuid4().hex

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def object_info(self, node: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node}" if node else ""))

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptFailed(f"/prompt refused the workflow ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("status_str") in ("success", "error")
            ):
                return entry
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue, wait, and return the history entry; raise if the prompt failed."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            raise PromptFailed(f"prompt failed: {json.dumps(self.error(entry), indent=1)[:4000]}")
        return entry

    def run_expecting_error(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue a prompt that must fail at run time; return the execution_error message."""
        entry = self.wait(self.queue(prompt), timeout)
        error = self.error(entry)
        if error is None:
            raise AssertionError("the prompt succeeded but was expected to fail")
        return error

    @staticmethod
    def error(entry: dict) -> dict | None:
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return data
        return None

    @staticmethod
    def ui(entry: dict, node_id: str) -> dict:
        return entry.get("outputs", {}).get(node_id, {})
