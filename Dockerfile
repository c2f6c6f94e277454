FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY orchestration ./orchestration
COPY tasks ./tasks
COPY config ./config
RUN pip install --no-cache-dir '.[postgres,flower]'
RUN useradd --create-home app
USER app
