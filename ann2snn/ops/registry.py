"""The registry: every operator record, indexed for lookup by graph node or by module."""

from __future__ import annotations

from torch import fx, nn

from ann2snn.neurons import StatefulModule
from ann2snn.ops.base import OpRecord, Spiking
from ann2snn.ops.records import QANN_RECORDS, SPIKING_RECORDS

__all__ = ["REGISTRY", "RECORDS", "record_for", "record_for_module", "kind_of", "KINDS", "stateless_kinds",
           "stateful_kinds"]

#: every operator record, QANN operators first
REGISTRY: tuple[OpRecord, ...] = QANN_RECORDS + SPIKING_RECORDS
#: record name -> record
RECORDS: dict[str, OpRecord] = {r.name: r for r in REGISTRY}


def _index(records: tuple[OpRecord, ...]):
    by_opcode: dict[str, OpRecord] = {}
    by_class: dict[type, OpRecord] = {}
    by_function: dict[object, list[OpRecord]] = {}
    by_method: dict[str, list[OpRecord]] = {}
    if len({r.name for r in records}) != len(records):
        raise ValueError("two operator records share a name")

    def put(table: dict, key, r: OpRecord) -> None:
        if key in table:
            raise ValueError(f"operator records {table[key].name!r} and {r.name!r} both match {key!r}")
        table[key] = r

    for r in records:
        for op in r.opcodes:
            put(by_opcode, op, r)
        for cls in r.modules:
            put(by_class, cls, r)
        for fn in r.functions:
            by_function.setdefault(fn, []).append(r)
        for name in r.methods:
            by_method.setdefault(name, []).append(r)
    for table in (by_function, by_method):
        for key, rs in table.items():
            if sum(r.when is None for r in rs) > 1:
                raise ValueError(f"operator records {[r.name for r in rs]} all match {key!r} unconditionally")
            rs.sort(key=lambda r: r.when is None)  # conditional patterns first
    return by_opcode, by_class, by_function, by_method


_BY_OPCODE, _BY_CLASS, _BY_FUNCTION, _BY_METHOD = _index(REGISTRY)


def record_for_module(m: nn.Module) -> OpRecord | None:
    """The record of module ``m``: that of its class, or of its nearest registered base class."""
    for cls in type(m).__mro__:
        r = _BY_CLASS.get(cls)
        if r is not None:
            return r
    return None


def record_for(node: fx.Node, modules: dict[str, nn.Module]) -> OpRecord | None:
    """The record whose patterns match ``node`` (``modules``: the graph module's ``named_modules()``), or None."""
    if node.op in _BY_OPCODE:
        return _BY_OPCODE[node.op]
    if node.op == "call_module":
        return record_for_module(modules[node.target])
    if node.op == "call_function":
        try:
            candidates = _BY_FUNCTION.get(node.target, ())
        except TypeError:  # an unhashable callable
            return None
    elif node.op == "call_method":
        candidates = _BY_METHOD.get(node.target, ())
    else:
        return None  # get_attr: parameters used directly in forward
    return next((r for r in candidates if r.when is None or r.when(node)), None)


def kind_of(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The node kind (the exporters' table key): its record's ``kind``; ``stateful`` for a spiking operator
    without a record (the exporters then name the missing builder); else ``unsupported``."""
    r = record_for(node, modules)
    if r is not None:
        return r.kind
    if node.op == "call_module" and isinstance(modules[node.target], StatefulModule):
        return "stateful"
    return "unsupported"


#: every node kind a graph may hold, and ``unsupported``
KINDS: tuple[str, ...] = (*dict.fromkeys(r.kind for r in REGISTRY), "unsupported")


def stateless_kinds() -> tuple[str, ...]:
    """Kinds kept as they are in a spiking network (each needs an emitter in ``exporters.common.STATELESS``)."""
    return tuple(dict.fromkeys(r.kind for r in REGISTRY if r.spiking is Spiking.STATELESS))


def stateful_kinds() -> tuple[str, ...]:
    """``StatefulModule.kind`` of every spiking operator (each needs a builder in ``exporters.common.STATEFUL``)."""
    return tuple(r.stateful_kind for r in REGISTRY if r.spiking is Spiking.STATEFUL)
