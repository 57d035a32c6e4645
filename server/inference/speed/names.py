"""Precision names and their command-line option, without importing torch (the CLI
parses its arguments before it loads anything heavy)."""

from __future__ import annotations

import argparse

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

PRECISION_HELP = ("auto (default): bf16 on CPUs with native bf16 (AVX-512 BF16 or AMX) and on "
                  "CUDA GPUs that support it, fp16 on other GPUs, fp32 elsewhere; fp32: the "
                  "exact path; bf16/fp16: convolutions in half precision (LaMa's FFT stays "
                  "fp32). PEN-Net always runs fp32.")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
