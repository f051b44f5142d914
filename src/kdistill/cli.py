"""The `kdistill` command: every verb's parser, and one short, linear function per verb.

    kdistill teach   --config run.yaml [--flag value ...]
    kdistill distill --config run.yaml
    kdistill eval    --config run.yaml      # or: kdistill eval RUN_DIR (the config the run recorded)
    kdistill run     --config run.yaml      # teach, distill, eval
    kdistill demo    [--output_dir runs/demo] [--seed 0] [--quick]   # offline, on scikit-learn's digits
    kdistill compare --config sweep.yaml    # a grid of strategies, temperatures, alphas and seeds, with a verdict
    kdistill report  SWEEP_DIR              # rebuild a sweep's report from its results.json
    kdistill export  RUN_DIR --format onnx [--int8] [--out DIR]
    kdistill predict MODEL_DIR "some text" [...]     # on an export: ONNX Runtime, no torch
    kdistill serve   EXPORT_DIR [--port 8000]        # an HTTP service with dynamic batching
    kdistill augment --input train.tsv --output transfer.tsv --text_column sentence   # Tang et al. 2019
    kdistill generate RUN_DIR --prompts prompts.txt [--teacher --out transfer.txt]   # causal_lm; Kim & Rush 2016

Flags of teach, distill, eval and run are the config's field names and override the YAML. A verb parses its
arguments, calls library functions with typed arguments and prints what they return; the library prints nothing.
Heavy modules (torch, transformers) are imported inside the verbs, so `kdistill --help` answers at once. A user
error ends in one line on stderr and exit 2: a UserError, and an OSError (a file that cannot be read or written: the
path and why, permission denied, is a directory, no space left on device, ...), a full disk included when a library
wrapped it (torch.save's "file write failed" while a checkpoint is saved).
"""

import argparse
import itertools
import json
import logging
import os
import shlex
import sys

from .errors import UserError, os_error_line, raise_on_usage_error, write_failure_line

logger = logging.getLogger("kdistill")

# The verbs whose flags are the run config's fields (see config.py).
PIPELINE_VERBS = ("teach", "distill", "eval", "run")
# Verbs that may run without torch and transformers (on an export): they load transformers only if they need it.
LIGHT_VERBS = ("predict", "serve")
# Verbs that were removed, and what replaces them.
REMOVED = {
    "bilstm": "`kdistill bilstm` is gone: a run builds its BiLSTM student itself with student_init: bilstm "
              "(sizes: bilstm_vocab_size, bilstm_embedding_dim, bilstm_hidden_size; see configs/sst2_bilstm.yaml)",
}


def _parser(verb: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A verb's parser: a bad command line is a one-line UserError ('VERB: ...'), not argparse's usage dump."""
    parser = argparse.ArgumentParser(prog=f"kdistill {verb}", description=description, epilog=epilog)
    return raise_on_usage_error(parser, verb)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation with honest measurements.")
    parser.add_argument("verb", choices=list(VERBS))
    parser.add_argument("--config", help="YAML file with data/teacher/student/distill sections")
    return parser


def _format_table(result: dict) -> str:
    rows = [
        ("entity F1 (seqeval)", "f1", "{:.4f}"),
        ("entity precision", "precision", "{:.4f}"),
        ("entity recall", "recall", "{:.4f}"),
        ("accuracy", "accuracy", "{:.4f}"),
        ("macro-F1", "macro_f1", "{:.4f}"),
        ("ECE (15 bins)", "ece", "{:.4f}"),
        ("agreement w/ teacher", "agreement", "{:.4f}"),
        ("KL(teacher||student)", "kl_to_teacher", "{:.4f}"),
        ("epsilon max|pt-ps|^2", "epsilon", "{:.4f}"),
        ("parameters", "parameters", "{:,}"),
        ("size on disk (MB)", "size_bytes", None),
        ("latency b=1 (ms)", "latency_ms_b1", "{:.2f}"),
        ("throughput b=64 (rows/s)", "throughput_b64", "{:.1f}"),
    ]
    s, t = result["student"], result["teacher"]
    lines = [f"{'metric':<26}{'student':>14}{'teacher':>14}", "-" * 54]
    for title, key, fmt in rows:
        if key not in s and key not in t:
            continue  # a metric this task does not have (entity F1 for a classifier, macro-F1 for a tagger)
        cells = []
        for side in (s, t):
            value = side.get(key)
            if value is None:
                cells.append("-")
            elif key == "size_bytes":
                cells.append(f"{value / 1e6:.1f}")
            else:
                cells.append(fmt.format(value))
        lines.append(f"{title:<26}{cells[0]:>14}{cells[1]:>14}")
    extras = [f"{k}: {result[k]:.2f}x" for k in ("compression", "speedup_b1", "speedup_b64") if k in result]
    words = f", {s['words']} words" if "words" in s else ""  # a tagger's metrics are over words
    lines.append(f"rows: {result['rows']}{words} ({result['split']})   " + "   ".join(extras))
    from .report.common import teachers_text

    ensemble = teachers_text(result, "f1" if "f1" in t else "accuracy")
    if ensemble:  # several teachers: the teacher column is their combination
        lines.append(f"the teacher column is the ensemble of {len(result['teachers'])} {ensemble}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the verbs


def _flag_values(argv: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """The values the command line gives the fields `names` (`--name value` or `--name=value`)."""
    out = {}
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key.startswith("--") and key[2:] in names:
            if eq:
                out[key[2:]] = value
            elif i + 1 < len(argv):
                out[key[2:]] = argv[i + 1]
    return out


def _flag_names(argv: list[str]) -> list[str]:
    """The names of the `--name` flags on a command line (`--no_name` counts as `name`, its negation)."""
    names = [arg[2:].partition("=")[0] for arg in argv if arg.startswith("--")]
    return names + [n[3:] for n in names if n.startswith("no_")]


def _teacher_flag(argv: list[str]) -> list[str]:
    """`--teacher RUN_DIR` (or a model directory): learn from that run's fine-tuned teacher, as
    `--no_teacher_train --teacher_model RUN_DIR/teacher` would say."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--teacher" or arg.startswith("--teacher="):
            if arg == "--teacher":
                if i + 1 >= len(argv):
                    raise UserError("--teacher needs a run directory (or a fine-tuned model directory)")
                value, i = argv[i + 1], i + 2
            else:
                value, i = arg.split("=", 1)[1], i + 1
            from .rundir import teacher_of

            out += ["--no_teacher_train", "--teacher_model", teacher_of(value)]
            continue
        out.append(arg)
        i += 1
    return out


def _pipeline(verb: str, argv: list[str]) -> int:
    """teach, distill, eval and run: the run config from --config and flags (or, for `eval RUN_DIR`, from the
    run's own record), then the pipeline's steps."""
    run_dir = None
    if verb == "eval" and argv and not argv[0].startswith("-"):
        run_dir, argv = argv[0], argv[1:]
    args, rest = _top_parser().parse_known_args([verb, *_teacher_flag(argv)])
    if run_dir and args.config:
        raise UserError("eval: give a run directory or --config, not both")
    from .config_sections import DATA_FILE_FIELDS, check_data_files, preflight, read_yaml

    raw = None
    if args.config:
        # Read once: a FIFO or `<(...)` gives its text only once. A typo, a bad number or a missing file in the config
        # file is one line before torch loads (under 2 s).
        raw = read_yaml(args.config)
        preflight(raw, args.config, set(_flag_names(rest)))
    _quiet_transformers()
    from .config import flatten_yaml, parse_config

    if run_dir:
        from .rundir import recorded_values

        flat = recorded_values(run_dir)
    else:
        flat = flatten_yaml(raw, source=args.config) if args.config else {}
    # The data files that flags or a run's record name (preflight checked the config file's) are checked before the
    # Trainer's arguments set up a device and before torch's models load.
    check_data_files({**flat, **_flag_values(rest, DATA_FILE_FIELDS)})
    config = parse_config(rest, flat=flat)
    from . import evaluation, pipeline
    from .rundir import output_dir_lock

    with output_dir_lock(config):  # one writer per output_dir, for the whole command
        if verb in ("teach", "run"):
            result = pipeline.teach(config)
            if result:
                logger.info("teacher: %s", {k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
        if verb in ("distill", "run"):
            result = pipeline.distill(config, progress=True)
            logger.info("student: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()
                                        if k not in ("loss_curve", "log_history")})
        if verb in ("eval", "run"):
            result = evaluation.evaluate(config, progress=True)
            if result:  # empty on the replicas of a torchrun launch: the first process evaluates
                print(_format_table(result))
                print(f"written: {os.path.join(config.output_dir, 'eval.json')}")
    return 0


def _demo(argv: list[str]) -> int:
    parser = _parser("demo", "Hinton et al.'s soft-vs-hard experiments on digits.")
    parser.add_argument("--output_dir", default="runs/demo", help="where report.md, plots and results.json go")
    parser.add_argument("--seed", type=int, default=0, help="split, teacher and student seeds derive from it")
    parser.add_argument("--quick", action="store_true", help="reduced size: one seed, fewer steps (a smoke test)")
    args = parser.parse_args(argv)
    from . import demo
    from .report.demo import format_table

    config = (demo.DemoConfig.reduced if args.quick else demo.DemoConfig)(output_dir=args.output_dir, seed=args.seed)
    print(format_table(demo.run_demo(config)))
    return 0


def _compare(argv: list[str]) -> int:
    parser = _parser(
        "compare", "Run a grid of strategies, temperatures, alphas and seeds; report whether soft labels pay off.",
        epilog="Other flags are run-config fields (e.g. --num_train_epochs 2) and apply to every run.",
    )
    parser.add_argument("--config", required=True, help="sweep YAML: run-config sections plus 'students' and 'grid'")
    parser.add_argument("--output_dir", help="the sweep directory (default: the config's output_dir)")
    parser.add_argument("--no_keep_models", action="store_true",
                        help="delete each run's weights once it is evaluated, except the first run of each student")
    args, rest = parser.parse_known_args(argv)
    from .compare import load_sweep, run_sweep

    sweep = load_sweep(args.config)
    if args.output_dir:
        sweep.output_dir = args.output_dir
    _print_sweep(run_sweep(sweep, rest, keep_models=not args.no_keep_models), sweep.output_dir)
    return 0


def _report(argv: list[str]) -> int:
    parser = _parser("report", "Rebuild a sweep's report from its results.json.")
    parser.add_argument("sweep_dir", help="a directory holding results.json (written by kdistill compare)")
    parser.add_argument("--out", help="where the report goes (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    from .report.compare import read_results, write_report

    out = args.out or args.sweep_dir
    _print_sweep(write_report(out, read_results(args.sweep_dir)), out)
    return 0


def _print_sweep(results: dict, directory: str) -> None:
    """What compare and report end with: the verdict, the table and where the report is."""
    from .report.compare import format_summary

    print(format_summary(results))
    print(f"report: {os.path.join(directory, 'report.md')} (and report.html)")


def _export(argv: list[str]) -> int:
    """Exit 1 when the fp32 parity check fails (without --no_check)."""
    from . import export
    from .report.model_card import summary_text

    parser = _parser("export", "Export a run's student to ONNX (and int8), check it, time it, write a model card.")
    parser.add_argument("run_dir", help="a kdistill run directory (holds student/, labels.json, run_config.json)")
    parser.add_argument("--format", required=True, choices=export.FORMATS, help="export format (onnx)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic int8 quantisation)")
    parser.add_argument("--teacher", action="store_true",
                        help="also export the teacher (to OUT/teacher) and time it in ONNX Runtime")
    parser.add_argument("--out", help="output directory (default RUN_DIR/export)")
    parser.add_argument("--rows", type=int, default=1000, help="evaluation rows for the parity and int8 checks")
    parser.add_argument("--data", help="labelled file for the checks, instead of the run's test/validation file")
    parser.add_argument("--speed_batches", type=int, default=20, help="timed batches per speed measurement (0 skips it)")
    parser.add_argument("--speed_rounds", type=int, default=3, help="round-robin rounds of the speed measurement")
    parser.add_argument("--no_check", action="store_true",
                        help="report a failed fp32 parity check but exit 0 (the default exit is 1)")
    args = parser.parse_args(argv)
    report = export.export_run(args.run_dir, args.out, int8=args.int8, teacher=args.teacher, rows=args.rows,
                               data_file=args.data, speed_batches=args.speed_batches, speed_rounds=args.speed_rounds,
                               command="kdistill export " + shlex.join(argv))
    print(summary_text(report))
    return 0 if report["passed"] or args.no_check else 1


def _predict(argv: list[str]) -> int:
    from .deploy import FP32_FILE, INT8_FILE
    from .deploy.runtime import format_prediction, read_texts

    parser = _parser("predict", "Classify texts with an exported (ONNX) or PyTorch model.")
    parser.add_argument("model_dir", help="an export directory (runs on ONNX Runtime, without torch), a model "
                                          "directory (a run's student/) or a run directory")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--file", help="a text file, one text per line (blank lines skipped), read as it is predicted")
    parser.add_argument("--encoding", default="utf-8", help="the --file's text encoding (default utf-8; e.g. latin-1)")
    parser.add_argument("--int8", action="store_true", help="use model.int8.onnx of an export directory")
    parser.add_argument("--json", action="store_true", help="one JSON object per text (JSON Lines)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, help="ONNX Runtime's threads (default: every core)")
    args = parser.parse_intermixed_args(argv)  # texts may come after flags: predict DIR --int8 "a text"
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        raise UserError("predict: --batch_size and --threads must be at least 1")
    if not args.texts and not args.file:
        raise UserError("predict: give texts to classify, or --file PATH")
    texts = itertools.chain(args.texts, read_texts(args.file, args.encoding) if args.file else ())
    if os.path.isfile(os.path.join(args.model_dir, INT8_FILE if args.int8 else FP32_FILE)):
        # An export: ONNX Runtime and the tokenizers library, no torch (a cold start in well under 2 s).
        from .deploy.runtime import ExportedModel

        predictions = ExportedModel.load(args.model_dir, args.int8, args.threads).predict_stream(texts, args.batch_size)
    else:
        _quiet_transformers()
        from .export import load_predictor

        predictions = load_predictor(args.model_dir, args.int8).predict_stream(texts, args.batch_size)
    count = 0
    for count, (text, prediction) in enumerate(predictions, 1):
        if args.json:
            print(json.dumps({"text": text, **prediction}))
        else:
            print(f"{format_prediction(prediction)}\t{text}")
    sys.stdout.flush()
    if not count:
        raise UserError(f"predict: {args.file} holds no text (only blank lines)")
    return 0


def _serve(argv: list[str]) -> int:
    from .deploy.server import ServeConfig, serve

    parser = _parser("serve", "Serve an export directory over HTTP (POST /predict, GET /health, GET /model), on ONNX "
                              "Runtime without torch, batching concurrent requests.")
    parser.add_argument("export_dir", help="an export directory (kdistill export RUN_DIR --format onnx)")
    defaults = ServeConfig()
    parser.add_argument("--host", default=defaults.host,
                        help=f"address to bind (default {defaults.host}: this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port}; 0 picks a free one)")
    parser.add_argument("--int8", action="store_true", help="serve model.int8.onnx")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="server processes, each with its own model (default 1)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime's threads per worker (default: cores / workers)")
    parser.add_argument("--max_batch", type=int, default=defaults.max_batch,
                        help=f"texts batched into one model call (default {defaults.max_batch}; 1 turns batching off)")
    parser.add_argument("--max_wait_ms", type=float, default=defaults.max_wait_ms,
                        help=f"how long a text waits for others to batch with (default {defaults.max_wait_ms} ms)")
    parser.add_argument("--max_texts", type=int, default=defaults.max_texts,
                        help=f"texts in one request at most (default {defaults.max_texts})")
    parser.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes,
                        help=f"request body size at most (default {defaults.max_body_bytes})")
    parser.add_argument("--max_text_chars", type=int, default=defaults.max_text_chars,
                        help=f"characters in one text at most (default {defaults.max_text_chars})")
    args = vars(parser.parse_args(argv))
    export_dir = args.pop("export_dir")
    return serve(export_dir, ServeConfig(**args))


def _augment(argv: list[str]) -> int:
    from .augment import MASK, AugmentConfig, augment_file

    parser = _parser("augment",
                     "New unlabelled sentences from a training file (Tang et al. 2019), for data.transfer_file.")
    parser.add_argument("--input", required=True, help="the training file (csv/tsv/json/jsonl/parquet)")
    parser.add_argument("--output", required=True, help="the transfer file to write (.tsv, one text column)")
    parser.add_argument("--text_column", default="text", help="the input's text column (also the output's)")
    parser.add_argument("--column_names", nargs="+", help="column names of a csv/tsv file without a header")
    parser.add_argument("--max_rows", type=int, help="augment only the first N rows")
    parser.add_argument("--pos_corpus", help="a CoNLL-format tagged corpus for part-of-speech replacement "
                        "(e.g. conll2003/train.txt); without it, words are only masked and n-grams sampled")
    defaults = vars(AugmentConfig())
    for name, value in defaults.items():
        if name != "mask_token":
            parser.add_argument(f"--{name}", type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--mask_token", default=MASK, help="the teacher tokenizer's mask token (default [MASK])")
    args = parser.parse_args(argv)
    config = AugmentConfig(**{k: getattr(args, k) for k in defaults})
    made, rows = augment_file(args.input, args.output, args.text_column, config, column_names=args.column_names,
                              max_rows=args.max_rows, pos_corpus=args.pos_corpus)
    print(f"{made} sentences from {rows} rows -> {args.output}")
    return 0


def _generate(argv: list[str]) -> int:
    from .generate import Decoding, generate, model_dir, read_prompts, write_completions

    parser = _parser("generate", "Complete prompts with a causal_lm run's student (or --teacher): one JSON line per "
                                 "prompt, or --out FILE.",
                     epilog="Sequence-level KD (Kim & Rush 2016): --teacher --out transfer.txt writes prompt + teacher "
                            "completion as text, for a student run's transfer_file.")
    parser.add_argument("run_dir", help="a causal_lm run directory (its student/), or a model directory")
    parser.add_argument("--prompts", required=True, help="a text file, one prompt per line (blank lines skipped)")
    parser.add_argument("--teacher", action="store_true", help="complete with the run's teacher, not its student")
    parser.add_argument("--out", help="write here instead of stdout: a .txt file as a transfer set (prompt + "
                                      "completion, one after another), any other as JSON Lines")
    defaults = Decoding()
    parser.add_argument("--max_new_tokens", type=int, default=defaults.max_new_tokens,
                        help=f"tokens generated per prompt at most (default {defaults.max_new_tokens})")
    parser.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding (the default)")
    parser.add_argument("--num_beams", type=int, default=defaults.num_beams,
                        help="beam search with this many beams (default 1: greedy); Kim & Rush decode with 5")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature")
    parser.add_argument("--top_p", type=float, default=defaults.top_p, help="nucleus sampling's mass (default 1: off)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the sampling seed")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size, help="prompts per generate call")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda, ...)")
    args = parser.parse_args(argv)
    decoding = Decoding(args.max_new_tokens, args.do_sample, args.temperature, args.top_p, args.seed, args.batch_size,
                        args.num_beams)
    decoding.check()
    model_dir(args.run_dir, args.teacher)  # a wrong directory is said before the prompts are read
    rows = generate(args.run_dir, read_prompts(args.prompts), decoding, teacher=args.teacher, device=args.device)
    if args.out:
        write_completions(args.out, rows)
        print(f"{len(rows)} completions -> {args.out}")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0


VERBS = {
    "teach": lambda argv: _pipeline("teach", argv),
    "distill": lambda argv: _pipeline("distill", argv),
    "eval": lambda argv: _pipeline("eval", argv),
    "run": lambda argv: _pipeline("run", argv),
    "demo": _demo,
    "compare": _compare,
    "report": _report,
    "export": _export,
    "predict": _predict,
    "serve": _serve,
    "augment": _augment,
    "generate": _generate,
}


# ------------------------------------------------------------------------------------------------ main


def help_text(verb: str, show_all: bool = False) -> str:
    """`kdistill VERB --help`: kdistill's own fields first, by section; with `show_all`, then every flag the
    Trainer's TrainingArguments adds (about 120), else one line on how to see them."""
    import copy
    import inspect

    from .config import SECTIONS, _field_names, config_parser

    own_flags = {f"--{name}" for cls in SECTIONS.values() for name in inspect.get_annotations(cls)}
    parser = config_parser(prog=f"kdistill {verb} [--config FILE]")
    lines = [f"usage: kdistill {verb} [--config FILE] [--FIELD VALUE ...]", "",
             "Flags override the YAML file's values; each is a key of the section it is listed under.", ""]
    def shown(actions):  # each flag once, as its field is named (HfArgumentParser adds a --dashed-alias too)
        out = []
        for action in actions:
            action = copy.copy(action)
            action.option_strings = [o for o in action.option_strings if "-" not in o[2:]] or action.option_strings
            if action.option_strings[0].startswith("--no_"):
                action.default = argparse.SUPPRESS  # its parser default (False) is not the field's
            out.append(action)
        return out

    for section, cls in SECTIONS.items():
        names = [n for n in _field_names(cls) if n in inspect.get_annotations(cls)]
        actions = [a for a in parser._actions if any(o.lstrip("-").removeprefix("no_") in names and
                                                      (o in own_flags or o.startswith("--no_")) for o in a.option_strings)]
        formatter = parser._get_formatter()
        title = f"{section} ({cls.__name__})" if section != "distill" else "distill (kdistill's own)"
        formatter.start_section(title)
        formatter.add_arguments(shown(actions))
        formatter.end_section()
        lines.append(formatter.format_help().rstrip())
        lines.append("")
    trainer = [a for a in parser._actions if a.option_strings and not any(
        o in own_flags or o.removeprefix("--no_") in {f.lstrip("-") for f in own_flags} for o in a.option_strings)
        and "-h" not in a.option_strings]
    if show_all:
        formatter = parser._get_formatter()
        formatter.start_section(f"distill: transformers.TrainingArguments ({len(trainer)} flags)")
        formatter.add_arguments(shown(trainer))
        formatter.end_section()
        lines.append(formatter.format_help().rstrip())
    else:
        lines.append(f"distill: transformers.TrainingArguments adds {len(trainer)} more flags (--gradient_accumulation_steps, "
                     f"--bf16, --report_to, --resume_from_checkpoint, ...): kdistill {verb} --help-all lists them.")
    return "\n".join(lines) + "\n"


def _config_help(verb: str, show_all: bool) -> None:
    print(help_text(verb, show_all), end="")


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("KDISTILL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")


def _quiet_transformers() -> None:
    """transformers' warnings only, and no bars for loading weights (instant for local models; they would stand
    above a one-line error). Verbs that need transformers call it; predict and serve on an export never do."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        print("\nEvery config field is also a flag, e.g. --strategy soft --temperature 4 (see configs/*.yaml).")
        return 0
    if argv[0] not in VERBS and argv[0] not in REMOVED:
        # An option before the verb (`kdistill --config run.yaml teach`), or no verb: argparse finds the verb, or
        # prints its usage and "invalid choice" and exits 2.
        args, rest = _top_parser().parse_known_args(argv)
        argv = [args.verb, *(["--config", args.config] if args.config else []), *rest]
    verb, rest = argv[0], argv[1:]
    if verb in PIPELINE_VERBS and any(a in ("-h", "--help", "--help-all") for a in rest):
        _config_help(verb, show_all="--help-all" in rest)
        return 0
    _setup_logging()
    if verb not in LIGHT_VERBS and verb not in PIPELINE_VERBS:  # _pipeline does it once the config file is checked
        _quiet_transformers()
    try:
        if verb in REMOVED:
            raise UserError(REMOVED[verb])
        return VERBS[verb](rest)
    except UserError as err:
        print(f"kdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdistill: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a file the user can fix: unreadable, a directory, a full or read-only disk
        logger.debug("the error's traceback", exc_info=True)
        print(f"kdistill: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        line = write_failure_line(err)  # a full disk, wrapped by torch.save or safetensors (a checkpoint being saved)
        if line is None:
            raise
        logger.debug("the error's traceback", exc_info=True)
        print(f"kdistill: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
