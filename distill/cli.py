"""The `distill` command: a click group; thin: parse → config → stage.run(cfg)."""

from __future__ import annotations

import errno
import logging
import os
import sys
import typing
from typing import Any

import click

from distill import __version__
from distill._compat import die_with_parent_children
from distill.config import STAGE_CONFIGS, load_config
from distill.recipe import base_type, field_type, fields_of
from distill.errors import DistillError

TRACEBACK_ENV = "DISTILL_TRACEBACK"

HELP = {
    "generate": "Teacher writes n <think> traces per problem (vLLM or an OpenAI-compatible server), resumably.",
    "filter": "Keep verified-correct, well-formed, non-truncated, decontaminated traces; report the funnel.",
    "sft": "Fine-tune a student with TRL on <think>-formatted samples (full or LoRA).",
    "kd": "On-policy distillation (GKD): the student samples, the teacher's per-token distribution trains it.",
    "eval": "Score a model on AIME24/25, MATH-500, AMC23, ... the R1 way (pass@1 over n samples).",
    "publish": "Push a curated dataset to the Hugging Face Hub with a provenance card.",
    "demo": "The whole loop, offline, on a toy task: generate → filter → sft → eval, then kd and grpo from the student.",
    "grpo": "RL with verifiable rewards: TRL's GRPO on problems with gold answers (R1 / R1-Zero), full or LoRA.",
    "run": "Run a pipeline recipe's stages in order (e.g. sft → grpo → generate → filter → sft); complete ones skipped.",
}


def _runner(stage: str):
    # Imported lazily so `distill --help` stays fast and engines load only for the stage that needs them.
    import importlib

    modules = {"generate": "distill.generate", "filter": "distill.filters.run", "sft": "distill.train.sft",
               "kd": "distill.train.kd", "eval": "distill.eval.run", "publish": "distill.data.publish",
               "demo": "distill.demo", "grpo": "distill.train.grpo", "run": "distill.pipeline"}
    return importlib.import_module(modules[stage]).run


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    level = os.environ.get("DISTILL_LOG_LEVEL", "INFO" if rank == 0 else "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _click_params(cls: type) -> list[click.Parameter]:
    params: list[click.Parameter] = []
    fields = fields_of(cls)
    own = [n for n in fields if n in cls.__dict__.get("__annotations__", {})]  # the stage's own options first in --help
    for name in own + [n for n in fields if n not in own]:
        f = fields[name]
        tp, _ = base_type(field_type(cls, name))
        if typing.get_origin(tp) is dict or tp is dict:
            continue  # nested mappings (e.g. TRL pass-through) are recipe-only
        if f.metadata.get("positional"):
            params.append(click.Argument([name], required=False))
            continue
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses_MISSING else f.default
        shown = ",".join(default) if isinstance(default, list) else default
        help_text = f.metadata.get("help", "")
        if shown not in (None, "") and not f.metadata.get("required"):
            help_text += f"  [default: {shown}]"
        if f.metadata.get("required"):
            help_text += "  [required]"
        if tp is bool:
            params.append(click.Option([f"{flag}/--no-{name.replace('_', '-')}", name], default=None, help=help_text))
        else:
            click_type = {int: click.INT, float: click.FLOAT}.get(tp, click.STRING)
            choices = f.metadata.get("choices")
            if choices:
                click_type = click.Choice(choices)
            params.append(click.Option([flag, name], type=click_type, default=None, help=help_text,
                                       metavar="LIST" if typing.get_origin(tp) is list else None))
    return params


dataclasses_MISSING = __import__("dataclasses").MISSING


def _stage_command(stage: str) -> click.Command:
    cls = STAGE_CONFIGS[stage]

    def callback(config: str | None, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        if getattr(ctx, "invoked_subcommand", None):
            return  # `distill eval compare …`: the subcommand runs, not the stage
        overrides = {k: v for k, v in kwargs.items()
                     if v is not None and ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
        cfg = load_config(cls, config, overrides)
        _runner(stage)(cfg)

    params = [click.Option(["--config", "config"], type=click.Path(dir_okay=False), default=None,
                           help="YAML recipe; flags given on the command line override it")]
    if stage == "eval":  # a group so that `distill eval compare DIR…` exists; no subcommand runs the eval
        return click.Group(stage, callback=callback, params=params + _click_params(cls), help=HELP[stage],
                           short_help=HELP[stage], invoke_without_command=True,
                           commands=[_eval_compare, _eval_merge])
    return click.Command(stage, callback=callback, params=params + _click_params(cls), help=HELP[stage],
                         short_help=HELP[stage])


@click.command("compare")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--out", default=None, help="folder for compare.md and the plots  [default: DIR1/compare]")
def _eval_compare(dirs: tuple[str, ...], out: str | None) -> None:
    """Side by side: tasks × runs (pass@1 ± 95% CI), accuracy-vs-tokens and length plots."""
    from distill.eval.run import compare

    compare(list(dirs), out)


@click.command("merge")
@click.argument("dirs", nargs=-1, required=True)
@click.option("--out", default=None, help="folder for the merged results  [default: the folder holding the shards]")
def _eval_merge(dirs: tuple[str, ...], out: str | None) -> None:
    """Merge `eval --shard I/N` outputs into one results.json, the one a single run writes."""
    from distill.eval.merge import merge

    merge(list(dirs), out)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="distill")
def cli() -> None:
    """distill: distil long chain-of-thought reasoning from a teacher into small students."""


for _stage in STAGE_CONFIGS:
    cli.add_command(_stage_command(_stage))


INTERRUPTED = ("interrupted; run the same command again: generate, eval and sft resume where they stopped, filter "
               "starts over with its previous output intact")


def os_error_line(e: OSError) -> str:
    """A filesystem error (read-only folder, disk full, permission) as one line naming the path."""
    where = e.filename or "a file"
    if e.filename2:
        where = f"{e.filename} → {e.filename2}"
    hint = {errno.ENOSPC: "free some space or choose another --out", errno.EROFS: "choose a writable --out",
            errno.EACCES: "check the permissions or choose another --out", errno.EDQUOT: "free some quota",
            errno.ENOENT: "check the path"}.get(e.errno or 0, "check the path and the disk")
    return f"{where}: {e.strerror or e}; {hint}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes print one line `error: …`; DISTILL_TRACEBACK=1 shows the traceback."""
    _setup_logging()
    die_with_parent_children()  # vLLM's engine core and workers die with us, even on kill -9 (distill/_guard)
    try:
        rv = cli.main(args=argv, prog_name="distill", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except DistillError as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        click.echo(f"error: {e}", err=True)
        return 1
    except OSError as e:
        if os.environ.get(TRACEBACK_ENV):
            raise
        click.echo(f"error: {os_error_line(e)}", err=True)
        return 1
    except click.exceptions.ClickException as e:
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(INTERRUPTED, err=True)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
