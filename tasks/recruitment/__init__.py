"""Recruitment: resumes parsed, candidates scored in batches of ten, routed to review."""
