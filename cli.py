"""Command lines from dataclasses: every field a --flag with its type, its default and its help.

@dataclass
class Config:
    max_new_tokens: int = arg(500, "characters to generate")

ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
add_flags(ap, Config)                       # --max-new-tokens INT, default 500
cfg = Config(**vars(ap.parse_args()))
"""

import argparse
from dataclasses import field, fields


def arg(default, help: str):
    """A dataclass field with the help text its --flag shows."""
    return field(default=default, metadata={"help": help})


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the dataclass `cls`, named after it (n_layer -> --n-layer); booleans get --no-X too."""
    for f in fields(cls):
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help", " ")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            metavar = f.type.__name__.upper()
            parser.add_argument(flag, type=f.type, default=f.default, metavar=metavar, help=help_text)
