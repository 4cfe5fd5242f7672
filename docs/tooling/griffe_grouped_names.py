"""Griffe extension: Attributes entries that document several names at once.

The docstrings document related fields together (``lr, lr_decay, lr_min: its step
size ...``), as the command lines' help does, which reads the same text. Griffe's
Google-style parser reads such an Attributes entry as the name ``lr,`` with the type
``lr_decay, lr_min``; this puts the names back together, without a type.
"""

from griffe import DocstringSectionAttributes, Extension, Object


class GroupedAttributeNames(Extension):
    def on_package(self, *, pkg, **kwargs) -> None:
        _fix(pkg, set())


def _fix(obj: Object, seen: set) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
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
