"""Events: recorded when received (emit, webhook, stream, schedule); triggers start runs."""
