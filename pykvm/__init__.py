"""pykvm: a virtual-machine monitor in Python over /dev/kvm.

The KVM hosts pykvm targets run the PVM hypervisor, which only executes 64-bit
long-mode code on the hardware; pykvm emulates everything else (real mode,
32-bit protected mode, paging switches) in userspace and hands the vCPU back to
KVM as soon as PVM's conversion rules allow.
"""

__version__ = "0.1.0"
