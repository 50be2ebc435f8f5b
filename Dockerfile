FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
ARG EXTRAS=""
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir -e ".${EXTRAS}"
COPY . .
RUN SECRET_KEY=build DATABASE_URL=postgres://x@localhost/x python manage.py collectstatic --noinput
EXPOSE 8000
