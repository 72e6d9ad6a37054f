"""tokenspout's HTTP layer: Litestar routes that translate the OpenAI and TGI protocols to the engine."""
