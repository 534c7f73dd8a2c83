"""avsemantic: training-free audio-event grounding (issue 16)."""
