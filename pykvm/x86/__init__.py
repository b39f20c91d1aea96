"""Architecture facts shared by the KVM layer, the loaders, the debugger and the emulator:
the CPU-state model (``state``), control-register and flag bits, descriptors, paging walks and
boot-time structures. Nothing here imports KVM or the emulator."""
