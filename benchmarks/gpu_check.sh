#!/usr/bin/env bash
# The GPU check of issue 20, in one call on a lent GPU machine: the whole test suite, the torch-cuda engine
# benchmark and the GPU pipeline cases, each under a time limit, with a summary.
#
# On the GPU machine (device tool `run`; from the repo root; pyzmq and av travel as wheels in .whl/):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The wheels (about 35 MB; versions as in .venv, neither has runtime requirements), once, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   for w in pyzmq==27.3.0 av==18.1.0; do python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$w"; done
# Anywhere else, to check the script itself (no GPU: the GPU tests skip, the benchmark has no rows):
#   PYTHON=.venv/bin/python OUT=/tmp/gc GPU_CHECK_PYTEST_ARGS=tests/test_engines_torch_cuda.py \
#       bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default python3: on the GPU machine the one with PyTorch), OUT (default
# out/gpu_check), GPU_CHECK_PYTEST_ARGS (what pytest runs, default `tests`; e.g. add `-n 8` where the
# suite is known to be safe in parallel), GPU_CHECK_BUDGET_S (default 540: every step's limit is cut to
# what is left of it, so the summary is written inside the device tool's 600 s).
# Steps: wheels (installed into /tmp/site only when pyzmq or av do not import), then nvidia-smi and the
# versions of Python and its packages are printed, then engines, pipeline, drones and the suite. The repo is not
# pip-installed: PYTHONPATH holds it, and the stage processes (`python -m pipeline`) inherit it.
# Writes into $OUT: gpu_check.log (everything printed), gpu_check.json (per step: exit code, seconds,
# status; test counts, failures and skip reasons from the JUnit XML; benchmark row counts; versions),
# tests.xml (JUnit), engines_gpu.json, pipeline_gpu.json and drones_gpu.json (the benchmarks' own JSON).
# Exit code: 0 when the wheels, tests and engines steps passed (the pipeline step is reported,
# not counted: its suite may be newer than this script).

set -uo pipefail

PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu_check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
read -r -a PYTEST_SELECTION <<<"${GPU_CHECK_PYTEST_ARGS:-tests}"
export PYTHONUNBUFFERED=1
LC_NUMERIC=C  # $EPOCHREALTIME with a decimal point, whatever the locale (not exported: for this shell only)

mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
STEPS=$(mktemp)   # one line per step: name, limit, exit code, seconds, command (tab-separated)
VERSIONS=$(mktemp)
trap 'rm -f "$STEPS" "$VERSIONS"' EXIT
STARTED=$EPOCHREALTIME

# step NAME LIMIT_S COMMAND...: run COMMAND under `timeout` (SIGINT first, so pytest still writes its
# report; SIGKILL 15 s later), its limit cut to what is left of the budget; print and record the result.
step() {
    local name=$1 limit=$2 rc seconds start left
    shift 2
    left=$(awk -v s="$STARTED" -v now="$EPOCHREALTIME" -v b="$BUDGET_S" \
        'BEGIN { printf "%d", s + b - now - 20 }')
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "== $name: skipped, no time left of the ${BUDGET_S} s budget"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" 0 skipped 0 "$*" >>"$STEPS"
        return
    fi
    echo "== $name (limit ${limit} s): $*"
    start=$EPOCHREALTIME
    timeout -s INT -k 15 "$limit" "$@"
    rc=$?
    seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    echo "== $name: exit $rc after $seconds s$( ((rc == 124 || rc == 137)) && echo " (timed out)")"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$limit" "$rc" "$seconds" "$*" >>"$STEPS"
}

# versions FILE: Python, its packages and the GPU as PyTorch sees it, printed and written to FILE as JSON
versions() {
    timeout 60 "$PYTHON" - "$1" <<'EOF'
import importlib
import importlib.metadata as metadata
import json
import os
import platform
import sys
from pathlib import Path

info = {"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
        "platform": platform.platform()}
packages = {"numpy": "numpy", "torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime",
            "onnxscript": "onnxscript", "opencv-python-headless": "cv2", "pyzmq": "zmq", "av": "av",
            "pyyaml": "yaml", "pytest": "pytest", "pytest-timeout": "pytest_timeout",
            "pytest-xdist": "xdist", "hypothesis": "hypothesis"}
for dist, module in packages.items():
    try:
        importlib.import_module(module)
        info[dist] = metadata.version(dist)
    except Exception as exc:  # missing, or present but broken: say which
        info[dist] = f"not usable ({type(exc).__name__}: {exc})"
try:
    import torch

    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
        info["cudnn"] = torch.backends.cudnn.version()
except ImportError:
    info["cuda_available"] = False
Path(sys.argv[1]).write_text(json.dumps(info))
print(json.dumps(info, indent=1))
EOF
}

# summary: $OUT/gpu_check.json from the steps, the JUnit XML and the benchmarks' JSON; a table
summary() {
    "$PYTHON" - "$STEPS" "$VERSIONS" "$OUT" "$STARTED" "$EPOCHREALTIME" <<'EOF'
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

steps_path, versions_path, out, started, ended = sys.argv[1:]
out = Path(out)
try:
    versions = json.loads(Path(versions_path).read_text())
except ValueError:
    versions = {}


def junit(path: Path) -> dict:
    """Counts, failed tests (with the first line of why) and skip reasons from a JUnit XML file."""
    if not path.exists():
        return {"junit": "not written"}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:  # pytest killed while writing it
        return {"junit": f"unreadable ({exc})"}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    failed, skipped = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        for kind in ("failure", "error"):
            for element in case.findall(kind):
                message = (element.get("message") or element.text or "").strip().splitlines()
                failed.append(f"{name} ({kind}: {message[0][:200] if message else ''})")
        for element in case.findall("skipped"):
            reason = element.get("message") or ""
            skipped[reason] = skipped.get(reason, 0) + 1
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failed_tests": failed, "skip_reasons": skipped}


def rows(path: Path) -> dict:
    if not path.exists():
        return {"rows": 0, "json": "not written"}
    return {"rows": len(json.loads(path.read_text()).get("rows", []))}


details = {"tests": lambda: junit(out / "tests.xml"), "engines": lambda: rows(out / "engines_gpu.json"),
           "pipeline": lambda: rows(out / "pipeline_gpu.json"),
           "drones": lambda: rows(out / "drones_gpu.json")}
steps = []
for line in Path(steps_path).read_text().splitlines():
    name, limit, code, seconds, command = line.split("\t", 4)
    step = {"step": name, "command": command, "limit_s": int(limit), "seconds": float(seconds)}
    if code == "skipped":
        step.update(exit_code=None, status="skipped: no time left")
    else:
        step["exit_code"] = int(code)
        step["status"] = {0: "ok", 124: "timed out", 137: "timed out"}.get(int(code), "failed")
    if name in details:
        step.update(details[name]())
    no_device = not versions.get("cuda_available")
    if name == "engines" and step["status"] == "ok" and step["rows"] == 0 and no_device:
        step["status"] = "skipped: PyTorch sees no CUDA device"
    steps.append(step)
report = {"elapsed_s": round(float(ended) - float(started), 1), "versions": versions, "steps": steps}
(out / "gpu_check.json").write_text(json.dumps(report, indent=1))

print(f"\n== summary ({report['elapsed_s']} s; {versions.get('gpu', 'no CUDA device')}, "
      f"torch {versions.get('torch')}, CUDA {versions.get('torch_cuda')})")
for step in steps:
    counts = ""
    if "passed" in step:
        counts = (f"  {step['passed']} passed, {step['failed']} failed, {step['errors']} errors, "
                  f"{step['skipped']} skipped")
    elif "rows" in step:
        counts = f"  {step['rows']} rows"
    print(f"{step['step']:<9} {step['status']:<40} {step['seconds']:7.1f} s{counts}")
    for test in step.get("failed_tests", []):
        print(f"    FAILED {test}")
print(f"written: {', '.join(sorted(p.name for p in out.iterdir()))}")
EOF
}

main() {
    echo "== gpu_check in $PWD, output in $OUT, python: $PYTHON, budget ${BUDGET_S} s, $(date -u +%FT%TZ)"
    # pyzmq and av are not on the GPU machine: install the carried wheels beside it, never the repo itself
    local site=""
    if "$PYTHON" -c 'import zmq, av' 2>/dev/null; then
        echo "== wheels: pyzmq and av import, nothing to install"
    elif compgen -G ".whl/*.whl" >/dev/null; then
        site=/tmp/site
        step wheels 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$site" .whl/*.whl
    else
        echo "== wheels: pyzmq or av does not import and there is no .whl/ to install them from"
    fi
    export PYTHONPATH=${site:+$site:}$PWD${PYTHONPATH:+:$PYTHONPATH}

    echo "== nvidia-smi"
    if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "== versions"
    versions "$VERSIONS"

    # skyfuse-rt at 640x512 and 1280x1024, batch 1 and 16 (the issue's targets: 640x512 at 1 and 16,
    # 1280x1024 at 16), each also from a raw 1280x720 visible frame pre-warped on the device
    # (fuse_unwarped); UMF-CMGR at batch 1 for the speed ratio
    step engines 150 "$PYTHON" -m benchmarks.engines --backends torch-cuda --sizes 640x512,1280x1024 \
        --batches 1,16 --visible-size 1280x720 --repeats 50 --seconds 2 --json "$OUT/engines_gpu.json"

    # HD lossless, 640x512 live, the demo configuration and a cold start, engine auto
    step pipeline 200 "$PYTHON" -m benchmarks.pipeline_sustained --suite gpu --json "$OUT/pipeline_gpu.json"

    # 1, 4 and 16 drones (640x512 thermal, 1280x720 visible) through one fuse stage, batched, lossless
    step drones 150 "$PYTHON" -m benchmarks.drones --links 1,4,16 --json "$OUT/drones_gpu.json"

    # The suite last: it takes what is left of the budget, so a slow suite never costs the benchmarks
    # -rfEs: failures, errors and skip reasons in the short summary (a lone -rs would drop the failures)
    local pytest_options=(-q -rfEs --durations=15 --junitxml="$OUT/tests.xml")
    if "$PYTHON" -c 'import pytest_timeout' 2>/dev/null; then
        pytest_options+=(--timeout=120)
    fi
    step tests 300 "$PYTHON" -m pytest "${pytest_options[@]}" "${PYTEST_SELECTION[@]}"

    summary
    ! awk -F '\t' '$1 != "pipeline" && $1 != "drones" && $3 != 0 { found = 1 } END { exit !found }' "$STEPS"
}

main 2>&1 | tee "$LOG"
