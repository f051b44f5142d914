"""The `kdistill` command: one thin, linear main() per verb.

    kdistill teach   --config run.yaml [--flag value ...]
    kdistill distill --config run.yaml
    kdistill eval    --config run.yaml
    kdistill run     --config run.yaml      # teach, distill, eval
    kdistill demo    [--output_dir runs/demo] [--seed 0] [--quick]   # offline, on scikit-learn's digits
    kdistill compare --config sweep.yaml    # a grid of strategies, temperatures, alphas and seeds, with a verdict
    kdistill report  SWEEP_DIR              # rebuild a sweep's report from its results.json
    kdistill export  RUN_DIR --format onnx [--int8] [--out DIR]
    kdistill predict MODEL_DIR "some text" [...]
    kdistill augment --input train.tsv --output transfer.tsv --text_column sentence   # Tang et al. 2019
    kdistill bilstm  --train_file train.tsv --out students/bilstm    # a BiLSTM student, for from_pretrained

Flags are the config's field names and override the YAML. A user error ends in one line on stderr and exit 2.
"""

import argparse
import logging
import os
import sys

from .errors import UserError

logger = logging.getLogger("kdistill")

VERBS = ("teach", "distill", "eval", "run", "demo", "compare", "report", "export", "predict", "augment", "bilstm")
# Verbs that parse their own arguments (the others take the run config's flags).
OWN_PARSER = ("demo", "compare", "report", "export", "predict", "augment", "bilstm")


def _format_table(result: dict) -> str:
    rows = [
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
    lines.append(f"rows: {result['rows']} ({result['split']})   " + "   ".join(extras))
    return "\n".join(lines)


def _demo(argv: list[str]) -> None:
    from . import demo
    from .report import demo as report

    parser = argparse.ArgumentParser(prog="kdistill demo", description="Hinton et al.'s soft-vs-hard experiments on digits.")
    parser.add_argument("--output_dir", default="runs/demo", help="where report.md, plots and results.json go")
    parser.add_argument("--seed", type=int, default=0, help="split, teacher and student seeds derive from it")
    parser.add_argument("--quick", action="store_true", help="reduced size: one seed, fewer steps (a smoke test)")

    def _error(message: str):
        raise UserError(f"demo: {message}")

    parser.error = _error
    args = parser.parse_args(argv)
    config = (demo.DemoConfig.reduced if args.quick else demo.DemoConfig)(output_dir=args.output_dir, seed=args.seed)
    result = demo.run_demo(config)
    print(report.format_table(result))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="kdistill", description="Knowledge distillation with honest measurements.")
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("--config", help="YAML file with data/teacher/student/distill sections")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        print("\nEvery config field is also a flag, e.g. --strategy soft --temperature 4 (see configs/*.yaml).")
        return 0
    if argv[0] in VERBS and argv[0] not in OWN_PARSER and any(a in ("-h", "--help") for a in argv[1:]):
        from transformers import HfArgumentParser

        from .config import SECTIONS

        HfArgumentParser(tuple(SECTIONS.values()), prog=f"kdistill {argv[0]} [--config FILE]").print_help()
        return 0
    # The top-level parser would take a verb's own --help; some verbs parse their arguments themselves.
    if argv[0] in OWN_PARSER:
        args, rest = argparse.Namespace(verb=argv[0]), argv[1:]
    else:
        args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=os.environ.get("KDISTILL_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    # Bars for loading and saving weights (instant for local models) would stand above a one-line error.
    hf_logging.disable_progress_bar()
    try:
        if args.verb == "demo":
            _demo(rest)
            return 0
        if args.verb in ("compare", "report"):
            from . import compare

            return (compare.compare_main if args.verb == "compare" else compare.report_main)(rest)
        if args.verb == "augment":
            from .augment import augment_main

            return augment_main(rest)
        if args.verb == "bilstm":
            from .models.bilstm import bilstm_main

            return bilstm_main(rest)
        if args.verb in ("export", "predict"):
            from . import export

            return (export.export_main if args.verb == "export" else export.predict_main)(rest)
        from . import pipeline
        from .config import parse_config

        config = parse_config(rest, args.config)
        if args.verb in ("teach", "run"):
            result = pipeline.teach(config)
            if result:
                logger.info("teacher: %s", {k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
        if args.verb in ("distill", "run"):
            result = pipeline.distill(config, progress=True)
            logger.info("student: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k not in ("loss_curve", "log_history")})
        if args.verb in ("eval", "run"):
            result = pipeline.evaluate(config, progress=True)
            if result:  # empty on the replicas of a torchrun launch: the first process evaluates
                print(_format_table(result))
                print(f"written: {os.path.join(config.output_dir, 'eval.json')}")
    except UserError as err:
        print(f"kdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdistill: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
