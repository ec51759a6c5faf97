"""The guest image for the qemu backend: build (``mvctl image build``), cache and describe it.

``build.py`` makes a kernel, an initramfs and a read-only root file system
from Debian packages only, plus a manifest; ``layout.py`` names the files so
the backend can find them without importing the builder.
"""
