"""``inpaintd serve``'s options are ServerConfig's fields: one definition, parser built from it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pytest

from inpaintd.protocol.endpoint import DEFAULT_ENDPOINT, DEFAULT_PORT
from inpaintd.server import DEFAULT_MODEL
from inpaintd.server.serving import options
from inpaintd.server.serving.options import ServerConfig, add_options, config_from_args

#: Every flag `serve` had when the options were defined once (issue 24), and those added
#: since (--reply-budget-mb, issue 25): none may go or be renamed, since scripts and the
#: plug-ins' local servers spell them.
FLAGS = {
    "--bind", "--device", "--precision", "--preload", "--curve", "--insecure",
    "--refine-memory", "--max-message-mb", "--max-queue", "--max-pixels",
    "--max-jobs-per-client", "--upload-timeout", "--upload-min-rate", "--upload-budget-mb",
    "--hang-timeout", "--cancel-grace", "--exit-when-idle", "--exit-with-parent", "--max-batch",
    "--ray", "--gpus-per-worker", "--no-workers-timeout", "--worker-startup-timeout",
    "--reply-budget-mb", "--metrics", "--metrics-public",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaintd serve")
    add_options(parser)
    return parser


def test_every_flag_is_kept_and_each_is_one_field() -> None:
    parser = _parser()
    flags = {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
    assert flags == FLAGS
    dests = [a.dest for a in parser._actions if a.dest != "help"]
    assert len(dests) == len(set(dests)) == len(FLAGS)
    assert set(dests) <= {f.name for f in dataclasses.fields(ServerConfig)}


def test_no_flags_give_the_dataclass_defaults() -> None:
    assert config_from_args(_parser().parse_args([])) == ServerConfig()


def test_each_flag_sets_its_field() -> None:
    args = _parser().parse_args([
        "--bind", "tcp://0.0.0.0:1", "--device", "cpu", "--precision", "fp32", "--preload",
        "a", "b", "--curve", "~/keys", "--insecure", "--refine-memory", "3",
        "--max-message-mb", "2", "--max-queue", "3", "--max-pixels", "4",
        "--max-jobs-per-client", "5", "--upload-timeout", "6", "--upload-min-rate", "7",
        "--upload-budget-mb", "8", "--hang-timeout", "9", "--cancel-grace", "10",
        "--exit-when-idle", "11", "--exit-with-parent", "--max-batch", "12", "--ray", "auto",
        "--gpus-per-worker", "0.5", "--no-workers-timeout", "13",
        "--worker-startup-timeout", "14"])
    config = config_from_args(args, log_level=logging.DEBUG)
    assert config == ServerConfig(
        bind="tcp://0.0.0.0:1", device="cpu", precision="fp32", preload=("a", "b"),
        curve_dir=Path("~/keys").expanduser(), insecure=True, refine_memory_gib=3.0,
        max_message_mb=2.0, max_queue=3, max_pixels=4, max_jobs_per_client=5,
        upload_timeout_s=6.0, upload_min_rate_kib=7.0, upload_budget_mb=8.0,
        hang_timeout_s=9.0, cancel_grace_s=10.0, exit_when_idle_s=11.0, exit_with_parent=True,
        max_batch=12, ray_address="auto", gpus_per_worker=0.5, no_workers_timeout_s=13.0,
        worker_startup_timeout_s=14.0, log_level=logging.DEBUG)
    assert isinstance(config.max_queue, int) and isinstance(config.max_message_mb, float)


def test_preload_alone_means_the_default_model() -> None:
    assert config_from_args(_parser().parse_args(["--preload"])).preload == (DEFAULT_MODEL,)


def test_help_names_the_defaults_from_the_fields() -> None:
    text = _parser().format_help()
    assert "{default" not in text and "{max_side}" not in text
    assert "the largest side (16384)" in " ".join(text.split())  # another field's default
    assert "(default 64);" in " ".join(text.split())  # --max-queue
    assert f"(default: {DEFAULT_ENDPOINT})" in " ".join(text.split())
    assert "refine: true; default 12)" in " ".join(text.split())  # a float shown as 12
    assert "scale-out:" in text  # the Ray options keep their group


def test_the_port_is_defined_once() -> None:
    from inpaintd.server.serving import service

    assert DEFAULT_ENDPOINT == f"tcp://127.0.0.1:{DEFAULT_PORT}"
    assert options.DEFAULT_BIND == service.DEFAULT_BIND == DEFAULT_ENDPOINT
    assert not hasattr(service, "DEFAULT_PORT")


@pytest.mark.parametrize("argv", [["--max-queue", "x"], ["--precision", "fp8"]])
def test_bad_values_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)
