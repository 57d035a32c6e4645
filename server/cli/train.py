"""``inpaintd train lama|pennet --data DIR [DIR ...] --out DIR [--config NAME] [--resume]``.

``python -m inpaintd.server.cli.train lama ...`` runs the same thing.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from inpaintd.protocol.errors import InpaintdError

log = logging.getLogger(__name__)


def add_train_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on ``subparsers``; it sets ``func=run_train``."""
    from ..train.presets import PRESETS, trainable_architectures

    p = subparsers.add_parser(
        "train", help="train a LaMa or PEN-Net generator on a folder of images",
        description="Train a generator on a folder of images. State goes to --out; "
                    "--resume continues from --out/last.pt.")
    p.add_argument("arch", choices=trainable_architectures(), help="which generator to train")
    p.add_argument("--data", required=True, type=Path, nargs="+", metavar="DIR",
                   help="folders of training images (each split into training and held-out "
                        "validation images: see docs/training.md)")
    p.add_argument("--out", required=True, type=Path,
                   help="run folder: checkpoints, samples, history, best weights")
    p.add_argument("--config", default=None, choices=sorted(PRESETS),
                   help="training recipe (default: lama-compact-cpu / pennet-cpu; on "
                        "--resume: the run's own)")
    p.add_argument("--steps", type=int, default=None,
                   help="train until this step (default: the recipe's)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder for decoded, downscaled image copies "
                        "(default ~/.cache/inpaintd-train/images)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: recipe)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: recipe)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start a new run's generator from these weights (our .safetensors, or "
                        "bundled:lama / bundled:pennet); default: the recipe's")
    p.add_argument("--val-every", type=int, default=None, help="validate every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def _install_stop_handlers(trainer: object) -> None:
    """Ctrl-C and SIGTERM stop training at the next step boundary, so ``last.pt`` is
    consistent; a second signal interrupts at once (the trainer still checkpoints).

    A process started in the background by a non-interactive shell inherits SIGINT as
    *ignored*, and would never stop on Ctrl-C/SIGINT; the handler is installed explicitly.
    """
    def stop(signum: int, _frame: object) -> None:
        if getattr(trainer, "stop_requested", False):
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this step", signum)
        trainer.stop_requested = True  # type: ignore[attr-defined]

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` subcommand; returns the exit status."""
    from ..train.data import DEFAULT_CACHE
    from ..train.presets import default_preset, get_preset
    from ..train.trainer import Trainer

    args.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("inpaintd").addHandler(handler)
    logging.getLogger("inpaintd").setLevel(logging.INFO)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg = None
        if args.config is not None or not (args.resume and (args.out / "last.pt").exists()):
            cfg = get_preset(args.config or default_preset(args.arch))
            if cfg.arch != args.arch:
                raise InpaintdError(f"config {cfg.name} trains {cfg.arch}, not {args.arch}")
        overrides = {}
        if args.threads is not None:
            overrides["threads"] = args.threads
        if args.workers is not None:
            overrides["workers"] = args.workers
        if args.no_bf16:
            overrides["bf16"] = False
        if args.val_every is not None:
            overrides["val_every"] = args.val_every
        if args.steps is not None:
            overrides["steps"] = args.steps
        if args.init is not None:
            overrides["init"] = args.init
        if overrides and cfg is None:
            from ..train.trainer import load_checkpoint
            from ..train.presets import TrainConfig
            cfg = TrainConfig.from_dict(load_checkpoint(args.out / "last.pt")["config"])
        if cfg is not None and overrides:
            cfg = cfg.replace(**overrides)
        trainer = Trainer(cfg, args.data, args.out, resume=args.resume,
                          cache_dir=args.cache or DEFAULT_CACHE,
                          progress=not args.no_progress)
        if trainer.cfg.arch != args.arch:
            raise InpaintdError(f"the run in {args.out} trains {trainer.cfg.arch}, "
                                f"not {args.arch}")
        _install_stop_handlers(trainer)
        result = trainer.run()
        if trainer.stop_requested:
            log.warning("stopped by a signal at step %d; resume with --resume", result.end_step)
            return 130
        log.info("stopped at step %d", result.end_step)
        return 0
    except KeyboardInterrupt:
        log.warning("interrupted; the last checkpoint is in %s", args.out)
        return 130
    except InpaintdError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        logging.getLogger("inpaintd").removeHandler(handler)
        handler.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry: ``python -m inpaintd.server.cli.train lama --data ...``."""
    parser = argparse.ArgumentParser(prog="inpaintd")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        argv = ["train", *argv]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
