"""The artifact store: content-addressed artifact directories plus a SQLite index."""

from slmops.store.artifact import KINDS, Artifact, Manifest, Parent, StageInfo
from slmops.store.refs import ModelRef, resolve
from slmops.store.registry import Store, open_store

__all__ = ["KINDS", "Artifact", "Manifest", "ModelRef", "Parent", "StageInfo", "Store", "open_store", "resolve"]
