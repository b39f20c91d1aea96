"""Architecture facts shared by the KVM layer, the loaders and the emulator (no KVM, no emulator state)."""
