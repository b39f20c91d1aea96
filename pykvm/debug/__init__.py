"""Looking at a guest: disassembly (iced-x86), register dumps, single-stepping."""
