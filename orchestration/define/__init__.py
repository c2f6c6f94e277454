"""Define: workflows, steps and their policies, checked when declared; the Host protocol."""
