"""The stateful agent of the articles: per-user state, intent and sentiment in parallel,
a verification branch when the state requires it, conversation memory."""
