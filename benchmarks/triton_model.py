"""Triton Python-backend model (copied as model.py by benchmarks/triton_server.py): the exported ONNX graph
on ONNX Runtime, for servers that have the Python backend only (pytriton's bundled tritonserver).

Runs inside the server's own environment (.venv-triton: numpy 1, as pytriton pins it), so it imports
nothing from skyfuse. Requests that the dynamic batcher hands over together are concatenated when their
frame sizes agree and run as one batch, as Triton's onnxruntime backend does.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # The server shares this machine's cores with its clients: workers that sleep between runs, as the
        # `onnxruntime` engine's (spinning ones slowed skyfuse-rt from 72 to 123 ms on the 2-core machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        feeds = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        responses = [None] * len(requests)
        groups = {}
        for index, arrays in enumerate(feeds):
            groups.setdefault(arrays[0].shape[1:], []).append(index)
        for indices in groups.values():
            batch = [np.concatenate([feeds[i][k] for i in indices]) for k in range(len(self.inputs))]
            results = self.session.run(self.outputs, dict(zip(self.inputs, batch)))
            start = 0
            for i in indices:
                stop = start + len(feeds[i][0])
                tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r[start:stop]))
                           for n, r in zip(self.outputs, results)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        return responses
