"""Griffe extension: two conventions of the plastix docstrings, rendered as meant.

* An Attributes entry may document several names at once (``lr, lr_decay, lr_min: its
  step size ...``), as the command lines' help does, which reads the same text. Griffe's
  Google-style parser reads it as the name ``lr,`` with the type ``lr_decay, lr_min``;
  the names are put back together, without a type.
* A paragraph that introduces an indented block ends in ``::`` (reStructuredText's
  literal-block marker, read as such by ``help()``); Markdown shows it literally, so the
  site shows one colon.
"""

import re

from griffe import DocstringSectionAttributes, Extension, Object

LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


class PlastixDocstrings(Extension):
    def on_package(self, *, pkg, **kwargs) -> None:
        _fix(pkg, set())


def _fix(obj: Object, seen: set) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = LITERAL_MARKER.sub(":", obj.docstring.value)
        for section in obj.docstring.parsed:  # parsed once and cached, so fixed for good
            if isinstance(section, DocstringSectionAttributes):
                for attribute in section.value:
                    if attribute.name.endswith(",") and attribute.annotation is not None:
                        others = str(attribute.annotation).strip("()")  # parsed as a tuple
                        attribute.name = f"{attribute.name} {others}"
                        attribute.annotation = None
    for member in obj.members.values():
        if not member.is_alias:
            _fix(member, seen)
