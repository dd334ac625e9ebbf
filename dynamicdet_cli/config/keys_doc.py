"""The table of recipe keys in docs/recipes.md, generated from the recipe's own field help.

    python -m dynamicdet_cli.config.keys_doc                          # print the table
    python -m dynamicdet_cli.config.keys_doc --write docs/recipes.md  # replace its marked block

The meaning of a key is written once, as the `help` of its field in recipe.py; docs/recipes.md
holds this table between the markers below, and tests/config/test_keys_doc.py fails when the
two differ, so the manual cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from dynamicdet_cli.config.recipe import Recipe
from dynamicdet_cli.core.errors import DynamicDetError

START = "<!-- keys:start -->"
END = "<!-- keys:end -->"


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str       # dotted path, e.g. train.batch_size
    type: str      # int, float, str, bool, list[int], list[float]
    default: str   # as it would be written in YAML
    allowed: str   # range or choices ("" when any value of the type)
    help: str      # the field's help text


def _type_name(tp) -> str:
    if get_origin(tp) is tuple:
        return f"list[{get_args(tp)[0].__name__}]"
    return tp.__name__


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


def _allowed(meta: dict) -> str:
    if meta.get("choices") is not None:
        return ", ".join(str(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


def recipe_keys(cls=Recipe, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of the recipe, in the order the dataclasses declare them."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += recipe_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        meta = dict(f.metadata)
        allowed = _allowed(meta)
        if meta.get("empty_ok"):
            allowed = f"{allowed}; [] allowed" if allowed else "[] allowed"
        rows.append(KeyDoc(f"{prefix}{f.name}", _type_name(tp), _yaml(default), allowed, meta.get("help", "")))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def recipe_key_table() -> str:
    """The markdown table of every recipe key: type, default, allowed values and meaning."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k in recipe_keys():
        allowed = _cell(k.allowed) if k.allowed else ""
        lines.append(f"| `{k.key}` | {k.type} | `{_cell(k.default)}` | {allowed} | {_cell(k.help)} |")
    return "\n".join(lines) + "\n"


def marked_block(text: str) -> str:
    """What `text` holds between the START and END markers (without them)."""
    if START not in text or END not in text.split(START, 1)[1]:
        raise DynamicDetError(f"no {START} ... {END} block to hold the recipe key table")
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def with_key_table(text: str) -> str:
    """`text` with its marked block replaced by the generated table."""
    marked_block(text)  # both markers present
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return f"{head}{START}\n{recipe_key_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the recipe key table, or write it into a markdown file's "
                                                 f"{START} ... {END} block.")
    parser.add_argument("--write", type=Path, help="markdown file whose marked block to replace, e.g. docs/recipes.md")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(recipe_key_table())
        return 0
    try:
        args.write.write_text(with_key_table(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    except (DynamicDetError, OSError) as err:
        print(f"error: {args.write}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
