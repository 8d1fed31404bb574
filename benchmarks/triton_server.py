"""A real Triton Inference Server on this machine, for the `triton` engine's tests and benchmark.

The `nvidia-pytriton` wheel bundles a `tritonserver` binary with the Python backend only (no onnxruntime or
TensorRT backend), in its own environment (`make test-triton` creates .venv-triton: pytriton pins numpy<2).
So the model repository that `skyfuse export --triton-repo` writes is served with one change: each
config.pbtxt names the Python backend instead of the onnxruntime platform, and the version directory gets
benchmarks/triton_model.py as model.py, which runs the same model.onnx on ONNX Runtime. Everything else in
the configuration (tensor names, types and dims, batching, parameters) is parsed and enforced by Triton.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from engines.triton_repo import PLATFORM

ROOT = Path(__file__).resolve().parent.parent
SERVER_VENV = Path(os.environ.get("SKYFUSE_TRITON_VENV") or ROOT / ".venv-triton")
MODEL_PY = Path(__file__).with_name("triton_model.py")
_PROBE = """
import importlib.util, json, sys, sysconfig
spec = importlib.util.find_spec("pytriton")
print(json.dumps({"package": spec.submodule_search_locations[0], "libdir": sysconfig.get_config_var("LIBDIR"),
                  "version": f"{sys.version_info[0]}.{sys.version_info[1]}"}))
"""


def server_environment() -> dict | str:
    """Where pytriton's server lives in the server venv ({package, libdir, version}), or why it cannot run."""
    python = SERVER_VENV / "bin" / "python"
    if not python.exists():
        return f"no Triton server environment at {SERVER_VENV} (`make test-triton` creates it)"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"nvidia-pytriton is not installed in {SERVER_VENV}: {probe.stderr.strip()[-300:]}"
    return json.loads(probe.stdout)


def python_backend_repository(repository: Path, target: Path) -> None:
    """Copy the exported `repository` to `target`, each model served by the Python backend (model.py)."""
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text()
        platform = f'platform: "{PLATFORM}"'
        if platform not in text:
            raise ValueError(f"{config} does not name the {PLATFORM} platform")
        model = target / config.parent.name
        shutil.copytree(config.parent, model)
        (model / "config.pbtxt").write_text(text.replace(platform, 'backend: "python"'))
        for version in model.glob("[0-9]*"):
            shutil.copyfile(MODEL_PY, version / "model.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalTriton:
    """`tritonserver` serving `repository` (as python_backend_repository makes it) on 127.0.0.1, gRPC only;
    a context manager that waits until every model is ready and stops the server on exit."""

    def __init__(self, repository: str | Path, startup_s: float = 120.0):
        self.repository, self.startup_s = Path(repository), startup_s
        self.url = ""
        self.process: subprocess.Popen | None = None
        self.log = ""

    def __enter__(self) -> LocalTriton:
        env = server_environment()
        if isinstance(env, str):
            raise RuntimeError(env)
        self._workdir = tempfile.TemporaryDirectory(prefix="skyfuse-triton-")
        work = Path(self._workdir.name)
        dist = Path(env["package"]) / "tritonserver"
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (backend / name).symlink_to(dist / "backends" / "python" / name)
        stub = dist / "python_backend_stubs" / env["version"] / "triton_python_backend_stub"
        (backend / "triton_python_backend_stub").symlink_to(stub)
        models = work / "models"
        python_backend_repository(self.repository, models)
        port = _free_port()
        self.url = f"127.0.0.1:{port}"
        # The stub links libpython: without the server interpreter's LIBDIR first it loads the system's. It
        # finds its packages (onnxruntime, numpy 1) through the `python` first on PATH: the server venv's.
        libs = [str(Path(env["package"]).parent / "nvidia_pytriton.libs"), env["libdir"]]
        libs.append(os.environ.get("LD_LIBRARY_PATH", ""))
        variables = {**os.environ, "LD_LIBRARY_PATH": ":".join(libs),
                     "PATH": f"{SERVER_VENV / 'bin'}:{os.environ['PATH']}"}
        self._log_file = open(work / "server.log", "w+b")  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            [str(dist / "bin" / "tritonserver"), f"--model-repository={models}",
             f"--backend-directory={work / 'backends'}", "--grpc-address=127.0.0.1", f"--grpc-port={port}",
             "--allow-http=false", "--allow-metrics=false", "--log-verbose=0"],
            env=variables, stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + self.startup_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n"
                                       f"{self._read_log()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return
                except Exception:  # tritonclient's InferenceServerException while the port is not yet open
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"tritonserver not ready after {self.startup_s:.0f} s:\n{self._read_log()}")

    def _read_log(self) -> str:
        self._log_file.seek(0)
        return self._log_file.read().decode(errors="replace")[-4000:]

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton unloads its models and exits
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log = self._read_log()
        self._log_file.close()
        self._workdir.cleanup()
