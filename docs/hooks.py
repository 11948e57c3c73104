"""MkDocs hooks: the reference pages are written from the code at build time, so they cannot drift.

A page asks for a generated part with a marker on a line of its own, ``<!-- savedeep:NAME -->``;
:func:`on_page_markdown` replaces it with ``GENERATORS[NAME]()``. An unknown marker stops the build.
Each generator reads what the code itself uses (the config schema, the argparse parser, the error
classes, the engine's layer table, the preprocessing module's docstring), never a copy of it, and
introspects rather than naming every item, so a key, flag, error or layer added to the code shows up
here without an edit. :func:`on_files` adds the report's screenshot, which lives in benchmarks/.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- savedeep:([a-z-]+) -->$", re.MULTILINE)
# Files outside docs/ that pages show: (path in the site, path in the repo).
EXTRA_FILES = [("assets/report_demo.png", ROOT / "benchmarks" / "report_demo.png")]


def _cell(text: object) -> str:
    """Text for one Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def config_keys() -> str:
    """The config schema's own table (savedeep.config.schema_markdown, built from the key table)."""
    from savedeep.config import schema_markdown

    return schema_markdown()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands in this one action; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line argparse prints, wrapped at a fixed width (not the terminal's)."""
    formatter = argparse.HelpFormatter(parser.prog, width=80)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    """A table of the parser's arguments; the default column only where some argument has a default."""
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices:
            value = " | ".join(str(c) for c in action.choices)
        elif action.nargs == 0:
            value = ""
        else:
            value = action.metavar or action.dest.upper()
        default = action.default
        shown = (
            ""
            if default is None or default is False or default is argparse.SUPPRESS or action.nargs == 0
            else f"`{default}`"
        )
        rows.append((names, _cell(value), shown, _cell(action.help or "")))
    if any(shown for _, _, shown, _ in rows):
        return [
            "| argument | value | default | what it does |",
            "|---|---|---|---|",
            *(f"| {n} | {v} | {d} | {h} |" for n, v, d, h in rows),
        ]
    return ["| argument | value | what it does |", "|---|---|---|", *(f"| {n} | {v} | {h} |" for n, v, _, h in rows)]


def cli() -> str:
    """Every subcommand of ``savedeep`` from the parser the CLI runs (savedeep.cli.build_parser)."""
    from savedeep.cli import build_parser

    parser = build_parser()
    out = ["```text", _usage(parser), "```", "", *_option_rows(parser), ""]
    helps = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
    for name, sub in _subparsers(parser).items():
        out += [f"## savedeep {name}", "", _cell(helps.get(name) or sub.description or ""), ""]
        out += ["```text", _usage(sub), "```", "", *_option_rows(sub), ""]
    if parser.epilog:
        out += ["## Printed after the help", "", "```text", parser.epilog.strip(), "```", ""]
    return "\n".join(out)


def exit_codes() -> str:
    """The exit codes: ``savedeep.errors.EXIT_CODES`` (the one table the CLI returns through), then each
    error class with its code."""
    from savedeep import errors

    classes: dict[int, list[type]] = {}
    for obj in vars(errors).values():
        if inspect.isclass(obj) and issubclass(obj, errors.SavedeepError):
            classes.setdefault(obj.exit_code, []).append(obj)
    missing = set(classes) - {entry.code for entry in errors.EXIT_CODES}
    if missing:
        raise ValueError(f"savedeep.errors: exit code(s) {sorted(missing)} of an error class are not in EXIT_CODES")
    rows = [errors.exit_codes_markdown().rstrip("\n")]
    rows += ["", "| error class | exit code | when |", "|---|---|---|"]
    for code in sorted(classes):
        for c in classes[code]:
            rows.append(f"| `savedeep.errors.{c.__name__}` | {code} | {_cell(inspect.getdoc(c) or '')} |")
    return "\n".join(rows) + "\n"


def preprocessing() -> str:
    """The exact preprocessing specification: the "Preprocessing specification" section of the
    docstring of savedeep/data/preprocess.py (the module that implements it), up to its "Size:" note."""
    from savedeep.data import preprocess

    doc = inspect.getdoc(preprocess) or ""
    match = re.search(r"^#+ Preprocessing specification\n(.*?)(?=^Size:|\Z)", doc, re.MULTILINE | re.DOTALL)
    if not match:
        raise ValueError(
            "savedeep/data/preprocess.py's docstring has no '## Preprocessing specification' "
            "section; the docs' preprocessing page is built from it"
        )
    return match.group(1).strip() + "\n"


def layers() -> str:
    """The layer catalogue from the tables the engines and the model reader use."""
    from savedeep.caffe import model
    from savedeep.engines.torch_layers import SUPPORTED_TYPES

    dropped = sorted(getattr(model, "_DROPPED_TYPES", ())) + ["every `*Loss` type"]
    runs = sorted(set(SUPPORTED_TYPES) - set(getattr(model, "_DROPPED_TYPES", ())))
    out = [
        "**Run** by the `torch` engine (`savedeep.engines.torch_layers.SUPPORTED_TYPES`):",
        "",
        ", ".join(f"`{t}`" for t in runs) + ".",
        "",
        "**Dropped** from the net, with one warning per run: "
        + ", ".join(t if t.startswith("every") else f"`{t}`" for t in dropped)
        + ".",
        "",
        "**Refused**, with the reason savedeep prints (`savedeep.caffe.model.REFUSED_TYPES`):",
        "",
        "| layer type | why |",
        "|---|---|",
    ]
    out += [f"| `{t}` | {_cell(why)} |" for t, why in sorted(model.REFUSED_TYPES.items())]
    data = sorted(set(model.DATA_LAYER_TYPES) - set(model.REFUSED_TYPES))
    out += [
        "",
        "**Data layers**, refused with the advice to declare an `Input` layer "
        "(`savedeep.caffe.model.DATA_LAYER_TYPES`): " + ", ".join(f"`{t}`" for t in data) + ".",
    ]
    return "\n".join(out) + "\n"


def api() -> str:
    """One mkdocstrings block per public name of ``savedeep`` (its ``__all__``), in that order; mkdocstrings
    renders each from its signature and docstring when the page is converted."""
    import savedeep

    names = [n for n in savedeep.__all__ if not n.startswith("__")]
    return "\n\n".join(f"::: savedeep.{name}" for name in names) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "api": api,
    "config-keys": config_keys,
    "cli": cli,
    "exit-codes": exit_codes,
    "preprocessing": preprocessing,
    "layers": layers,
}


def render(markdown: str, where: str = "a page") -> str:
    """``markdown`` with every marker replaced by its generated text."""

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{where}: unknown marker <!-- savedeep:{name} -->; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]().rstrip("\n")

    return MARKER.sub(one, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' hook signature)
    return render(markdown, page.file.src_uri)


def on_files(files, config):  # noqa: ANN001, ANN201 (MkDocs' hook signature)
    from mkdocs.structure.files import File

    for uri, source in EXTRA_FILES:
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
