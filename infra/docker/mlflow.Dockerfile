# MLflow tracking server with the PostgreSQL driver and boto3 (proxied S3/MinIO artifacts).
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow==3.17.2" "boto3==1.43.117" "psycopg2-binary==2.9.10"
EXPOSE 5000
# Loopback by default; docker-compose.yml passes --host=0.0.0.0 (the container's interfaces, for the compose network)
# and publishes the port on 127.0.0.1 of the host.
CMD ["mlflow", "server", "--host", "127.0.0.1", "--port", "5000"]
