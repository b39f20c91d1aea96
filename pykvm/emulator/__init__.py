"""The userspace x86 emulator for PVM's non-PVM mode (real mode, 16/32-bit protected mode)."""
