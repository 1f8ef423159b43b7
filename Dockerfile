# One image for every Clearance process; the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY clients ./clients
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["clearance"]
