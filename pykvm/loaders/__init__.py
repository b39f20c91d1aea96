"""Image loaders: flat binaries, boot sectors, ELF executables, Multiboot 1 and 2 and PVH kernels.

``load(memory, data, format, ...)`` validates the whole image before touching
guest RAM, writes it together with the boot structures its entry mode needs
(GDT, identity page tables, multiboot info), and returns a ``BootImage`` that
says how to start it; ``detect(data)`` is what ``--format auto`` uses.
"""

from pykvm.loaders.auto import FORMATS, detect, load
from pykvm.loaders.image import BootImage, LoadRange, Module

__all__ = ["FORMATS", "BootImage", "LoadRange", "Module", "detect", "load"]
