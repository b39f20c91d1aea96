"""The opcode table: iced ``Mnemonic`` -> translation handler, merged from the family modules.

A handler receives a ``codegen.Gen`` for one decoded instruction and either fills in a
template (returning None) or returns a ready closure. It sets ``g.terminal`` when the
instruction ends its block. Mnemonics absent here are reported as unemulated.
"""

from __future__ import annotations

from pykvm.emulator import ops_alu, ops_data, ops_flow, ops_string, ops_system

HANDLERS: dict = {}
for _module in (ops_alu, ops_data, ops_flow, ops_string, ops_system):
    HANDLERS.update(_module.HANDLERS)
