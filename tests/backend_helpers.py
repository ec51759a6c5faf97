"""Helpers shared by the backend tests (process, qemu, Wine)."""

from __future__ import annotations


def track_slots(backend) -> list:
    """Wrap ``backend.create_slot`` so that every slot it makes is remembered; returns that list.

    The backend fixtures destroy (and check) each remembered slot at teardown.
    """
    made: list = []
    real_create = backend.create_slot

    def create(slot_id):
        slot = real_create(slot_id)
        made.append(slot)
        return slot

    backend.create_slot = create
    return made
