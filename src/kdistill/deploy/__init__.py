"""Running an export without torch: `kdistill predict EXPORT_DIR` and `kdistill serve EXPORT_DIR`.

An export directory (written by `kdistill export`, see kdistill.export) is all this needs: model.onnx (or
model.int8.onnx), tokenizer.json, tokenizer_config.json, labels.json and export_report.json. It is read with ONNX
Runtime, the `tokenizers` library and numpy only, so a service can be installed without torch or transformers:

    pip install --no-deps kdistill && pip install onnxruntime tokenizers numpy starlette uvicorn

    runtime.py  ExportedModel: texts -> token ids -> ONNX Runtime -> labels and probabilities (a tagger: words ->
                tags per word -> entities with character spans)
    server.py   the HTTP service (Starlette under uvicorn) with dynamic batching and request limits

Nothing in this package may import torch, transformers or a kdistill module that does (tests/test_deploy.py checks
it in a fresh interpreter).
"""

# The files of an export directory (kdistill.export writes them; this package reads them).
FP32_FILE, INT8_FILE, REPORT_FILE, CARD_FILE = "model.onnx", "model.int8.onnx", "export_report.json", "README.md"
TOKENIZER_FILE, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
