"""The call bridge: one phone call between a phone leg and a voice-model session, in owned parts (``bridge.call``)."""
