"""Griffe extension for the API pages: Sphinx roles in docstrings become links.

The package's docstrings name other objects the Sphinx way (``:class:`QCFS```, ``:func:`~ann2snn.convert```),
which Markdown would show as a literal ``:class:``. This rewrites each role into an optional cross-reference:
a link when the target is documented on some page, plain code otherwise (never a warning). Names resolve like
Python's scopes: the object itself, its parents up to the package, then as an absolute path; ``~`` shows only
the last component, as in Sphinx. Loaded by mkdocstrings (``extensions`` in mkdocs.yml); nothing in the package
imports it.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`(?P<tilde>~?)\.?(?P<name>[A-Za-z_][\w.]*)(?:\(\))?`")


def _lookup(collection, path: str):
    try:
        return collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _target(obj: griffe.Object, name: str) -> str | None:
    """The canonical path ``name`` refers to from ``obj``'s docstring, or None when it is not in the package."""
    collection = obj.modules_collection
    scope: griffe.Object | None = obj
    candidates = []
    while scope is not None:
        candidates.append(f"{scope.path}.{name}")
        scope = scope.parent
    candidates.append(name)
    for path in candidates:
        found = _lookup(collection, path)
        if found is None:
            continue
        try:
            return found.final_target.path if found.is_alias else found.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return None


def _rewrite(obj: griffe.Object) -> None:
    def replace(match: re.Match) -> str:
        name = match["name"]
        shown = html.escape(name.rsplit(".", 1)[-1] if match["tilde"] else name)
        target = _target(obj, name)
        if target is None:
            return f"`{name if not match['tilde'] else name.rsplit('.', 1)[-1]}`"
        return f'<autoref identifier="{html.escape(target)}" optional><code>{shown}</code></autoref>'

    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(replace, obj.docstring.value)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into optional cross-references once the whole package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        for obj in _walk(pkg):
            _rewrite(obj)
