# One image for every FedFleet process (web, workers, beat, virtual lab); docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDFLEET_DATA_DIR=/data
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 libusb-1.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# The CPU build of torch: the default index would pull several GB of CUDA packages.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt
COPY . .
RUN useradd --create-home --uid 1000 fedfleet && mkdir -p /data && chown fedfleet /data
USER fedfleet
RUN DJANGO_DEBUG=0 DJANGO_SECRET_KEY=build-only python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "config.asgi:application"]
