"""Media input/output (PyAV, soundfile) and atomic writes."""
