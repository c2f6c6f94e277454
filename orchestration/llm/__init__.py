"""Model calls from steps: client, catalogue, breakers, rate limits, providers."""
