"""Deployment: a run's student as ONNX (fp32 and dynamic int8), checked against PyTorch, timed, with a model card.

    kdistill export  RUN_DIR --format onnx [--int8] [--teacher] [--out DIR] [--rows N] [--speed_batches N] [--no_check]
    kdistill predict MODEL_DIR "some text" [...] | --file PATH  [--int8] [--json]

An export directory (default RUN_DIR/export) holds:

    model.onnx          the student, fp32: inputs input_ids, attention_mask (and token_type_ids when the tokenizer
                        makes them), each [batch, sequence] with both axes dynamic; output logits [batch, labels], or for
                        token_classification [batch, sequence, labels] (per sub-token; batch and sequence dynamic)
    model.int8.onnx     (--int8) dynamic int8 quantisation of model.onnx (onnxruntime.quantization.quantize_dynamic)
    config.json, tokenizer files, labels.json
    teacher/            (--teacher) the teacher exported the same way, so student and teacher can be timed on one runtime
    export_report.json  parity, int8 fidelity and accuracy, sizes, speed, versions, the command
    README.md           the model card

Checks. The fp32 ONNX logits must match PyTorch's within 1e-4 (max abs) on the run's evaluation rows; a miss makes
the command exit 1 (files are kept for inspection, the report says FAILED) unless --no_check. The int8 model's top-1
agreement with fp32 (per row, or per word at its first sub-token for token_classification) is reported against a 99.5% target, beside both accuracies: quantisation is a trade-off the
user judges, so a miss there is a warning, not a failure.

    onnx.py     exporting (fp32, int8), running an export with ONNX Runtime, parity, int8 fidelity, timing
    run.py      export_run (the whole export) and what it reads from a run directory
    predict.py  Predictor and load_predictor, for raw text
"""

from ..report.model_card import INT8_AGREEMENT_TARGET
from .onnx import (
    CARD_FILE,
    FORMATS,
    FP32_FILE,
    INPUT_NAMES,
    INT8_FILE,
    INT8_SKIPPED_OPS,
    OPSET,
    REPORT_FILE,
    OnnxClassifier,
    check_parity,
    export_model,
    export_onnx,
    input_names,
    int8_fidelity,
    int8_op_types,
    quantize_int8,
    time_models,
)
from .predict import Predictor, load_predictor
from ..rundir import locate, read_json  # noqa: F401 - the run directory's readers, as benchmarks and tests use them
from .run import EvalSplit, Run, data_config, eval_rows, eval_split, export_run, load_run, machine, model_rows, pad, teacher_dir, versions
