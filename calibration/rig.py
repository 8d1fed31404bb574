"""The rig now lives in core/rig.py. This alias serves only pipeline/launcher.py, which is being changed
on the tcp branch in parallel; tests/test_layers.py holds it to that, and it goes once it imports
core.rig."""

from core.rig import Rig

__all__ = ["Rig"]
