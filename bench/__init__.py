"""``just bench``: tokenspout over HTTP against the bare llama.cpp loop, measured in the same run."""
