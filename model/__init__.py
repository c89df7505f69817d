"""The voice-model sessions: one implementation per OpenAI voice API behind one interface."""
