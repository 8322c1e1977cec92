#!/usr/bin/env python3
"""The README's config reference, generated from the schemas and the config groups.

Every key of sngan-train's config comes from a dataclass in sngan/config.py, and each field's
trailing ``# comment`` is its documentation; every group option is a YAML file in
configs/<group>/, whose leading comment says what it is. This script turns both into the
Markdown between the README's config-reference markers, so the reference cannot drift from
the code (tests/test_docs.py fails when it does).

    python scripts/config_reference.py            # print the block
    python scripts/config_reference.py --write    # rewrite it in README.md
    python scripts/config_reference.py --check    # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

from sngan.config import (
    CONFIG_DIR,
    TrainConfig,
    compose,
    compose_hydra,
    override_value,
    resolve,
    to_flat,
)

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
GROUPS = ("model", "loss", "data", "experiment")


@dataclasses.dataclass(frozen=True)
class Key:
    name: str  # full dotted key, e.g. optim.n_dis
    type: str  # the annotation as written in sngan/config.py
    default: Any
    doc: str  # the field's trailing comment


@dataclasses.dataclass(frozen=True)
class Option:
    group: str
    name: str  # the file's stem: model=<name>
    doc: str  # the file's leading comment
    sets: tuple[str, ...]  # what choosing it changes, as overrides
    default: bool


def field_comments(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (annotation source, trailing comment)} read from ``cls``'s source lines."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    (class_def,) = ast.parse(source).body
    out = {}
    for node in class_def.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = ast.get_source_segment(source, node.annotation)
            out[node.target.id] = (annotation, comments.get(node.end_lineno, ""))
    return out


def schema_keys() -> list[Key]:
    """Every leaf key of TrainConfig in declaration order, sections first, with the value
    sngan-train runs with when given no overrides (a null width resolved, for one)."""
    defaults = to_flat(compose([]))

    def walk(cls: type, prefix: str) -> list[Key]:
        docs = field_comments(cls)
        leaves, sections = [], []
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
                if dataclasses.is_dataclass(default):
                    sections += walk(type(default), f"{prefix}{f.name}.")
                    continue
            else:
                default = f.default
            annotation, doc = docs[f.name]
            if not doc:
                raise ValueError(
                    f"{cls.__name__}.{f.name} in sngan/config.py has no trailing '# comment'; "
                    "the comment is the key's documentation in the README"
                )
            leaves.append(Key(prefix + f.name, annotation, defaults[prefix + f.name], doc))
        return sections + leaves

    return walk(TrainConfig, "")


# A value as it is written in an override (``null``, ``true``, ``[0.0,0.9]``).
yaml_value = override_value


def _leading_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            lines.append(text)
    return " ".join(lines)


def composed(overrides: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """sngan-train's config with ``overrides``: each group's choice, and every key's value.

    Not validated: an option may need a key set on top of it (data=folder needs data.root).
    """
    from omegaconf import OmegaConf, open_dict

    cfg = compose_hydra(overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return {g: choices[g] for g in GROUPS}, to_flat(resolve(OmegaConf.to_object(cfg)))


def group_options() -> list[Option]:
    """Each option of each group, with what it changes relative to sngan-train's defaults."""
    options = []
    base_choices, _ = composed([])
    for group in GROUPS:
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            choices, values = composed([f"{group}={path.stem}"])
            # Group choices an option switches, then the keys it sets on top of them.
            switched = {g: c for g, c in choices.items() if g != group and c != base_choices[g]}
            _, baseline = composed([f"{g}={c}" for g, c in switched.items()])
            sets = [f"{g}={c}" for g, c in switched.items()]
            sets += [f"{k}={override_value(v)}" for k, v in values.items() if baseline[k] != v]
            doc = _leading_comment(path)
            default = base_choices[group] == path.stem
            options.append(Option(group, path.stem, doc, tuple(sets), default))
    return options


def _text(text: str) -> str:
    """Plain text for a table cell: pipes end cells and <word> would be read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def render() -> str:
    """The Markdown between the README's markers (without the markers)."""
    out = [
        "<!-- Generated by `python scripts/config_reference.py --write` from sngan/config.py "
        "and configs/: edit those, not this block. -->",
        "",
        "**Groups.** Choose one option per group (`sngan-train model=dcgan loss=hinge`); an",
        "`experiment=` preset switches groups and sets keys at once. *Sets* is what an option",
        "changes relative to sngan-train's defaults.",
        "",
        "| group | option | what it is | sets |",
        "|---|---|---|---|",
    ]
    for o in group_options():
        name = _code(o.name) + (" (default)" if o.default else "")
        sets = " ".join(_code(s) for s in o.sets) or "—"
        out.append(f"| {_code(o.group)} | {name} | {_text(o.doc)} | {sets} |")
    out += [
        "",
        "**Keys.** Every key, its type and default (those of `sngan-train` with no overrides) "
        "and meaning.",
    ]
    section = ""  # no table yet; None is the top level
    for key in schema_keys():
        head = key.name.split(".")[0] if "." in key.name else None
        if head != section:
            section = head
            title = f"`{head}.*`" if head else "top level"
            out += ["", f"*{title}*", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        default = _code(override_value(key.default))
        out.append(f"| {_code(key.name)} | {_code(key.type)} | {default} | {_text(key.doc)} |")
    return "\n".join(out) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README must contain one {START} ... {END} pair, in that order")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the block in README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    block = render()
    if not (args.write or args.check):
        print(block, end="")
        return 0
    text = args.readme.read_text()
    updated = replace_block(text, block)
    if args.check:
        if updated != text:
            print(f"{args.readme}: config reference is out of date; run {__file__} --write")
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated)
        print(f"updated the config reference in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
