"""The ``chexfusion`` command line: one sub-command per pipeline step.

Sub-command modules are imported only when used, so ``chexfusion --help`` and
``chexfusion inspect`` start without importing torch. A :class:`UserError`
anywhere becomes one line on stderr and exit status 2; other exceptions are
bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import EXIT_USER_ERROR, UserError

# name -> (module, one-line help). Each module has add_arguments(parser) and run(args) -> int | None.
COMMANDS = {
    "synth": ("chexfusion.data.synth.command", "write the synthetic demo dataset in the CXR-LT format"),
    "inspect": ("chexfusion.inspect", "check a dataset CSV and its images before a long run"),
    "convert": ("chexfusion.convert", "another dataset's layout (CXR-LT 2026 / PadChest) into the CXR-LT CSV"),
    "stage1": ("chexfusion.stage1.command", "train the image-level backbone + ML-Decoder"),
    "clip": ("chexfusion.clip.command", "contrastive image-report training (CLIP; CXR-CML with loss.cml_weight)"),
    "features": ("chexfusion.feature_store.command",
                 "write the Parquet feature store from frozen stage-1 backbone(s) or pretrained encoders"),
    "stage2": ("chexfusion.stage2.command", "train the study-level Transformer fusion from the feature store"),
    "predict": ("chexfusion.predict", "study-level batch inference from raw images"),
    "ensemble": ("chexfusion.ensemble", "one run folder predicting the mean of several runs (per class: the best)"),
    "calibrate": ("chexfusion.calibrate", "fit a run's per-class temperatures on the validation split"),
    "export": ("chexfusion.export", "copy a run folder as a Hugging Face model repository (model card included)"),
    "evaluate": ("chexfusion.evaluate", "CXR-LT metrics, per-class table, plots and report"),
    "compare": ("chexfusion.compare", "paired tests between models on the same images (DeLong, bootstrap)"),
    "serve": ("chexfusion.serve.command", "the web demo"),
    "ablate": ("chexfusion.ablate", "shared vs per-view backbones and stage-2 losses: train what is missing, tables"),
    "explain": ("chexfusion.explain.command",
                "heat maps (attention, Grad-CAM, Group-CAM) of a run's findings per image"),
    "localize": ("chexfusion.explain.localize", "score heat maps against ground-truth finding regions"),
    "zero-shot": ("chexfusion.vlm.command", "training-free scores from a pretrained vision-language model"),
}


# Commands that load pretrained encoders or run folders by Hub id: they take --allow-network (chexfusion.hub).
NETWORK_COMMANDS = ("stage1", "features", "stage2", "predict", "serve", "explain", "zero-shot")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: same exit status 2, one line
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = _Parser(prog="chexfusion", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (mod_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(mod_name)
            module.add_arguments(p)
            if name in NETWORK_COMMANDS:
                p.add_argument("--allow-network", action="store_true",
                               help="download models named by a Hugging Face id that are not in the local cache "
                                    "(default: offline)")
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser, module = build_parser(argv)
        args = parser.parse_args(argv)
        if module is None:
            parser.print_help()
            return EXIT_USER_ERROR if argv else 0
        from .hub import network_scope

        with network_scope(getattr(args, "allow_network", False)):
            code = module.run(args)
        _end_processes()
        return int(code or 0)
    except UserError as exc:
        print(f"chexfusion: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # e.g. `chexfusion inspect ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("chexfusion: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _end_processes() -> None:
    """Leave a multi-process launch's process group once the command is done (imports torch only if loaded)."""
    if "torch" in sys.modules:
        from .training import end_processes

        end_processes()


if __name__ == "__main__":
    sys.exit(main())
